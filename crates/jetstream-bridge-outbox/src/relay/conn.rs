//! The relay's own connections: one for claims, one for bookkeeping. Each is taken out of the
//! pool for the relay's lifetime (it does not count against the pool's size and is closed when
//! the relay ends), so its session settings never reach a connection the application uses,
//! and each statement on it is one round trip (autocommit; no `BEGIN`/`SET LOCAL`/`COMMIT`).
//!
//! - Both: `application_name = jetstream_bridge_relay`, for `pg_stat_activity`.
//! - Claims: `synchronous_commit = off`: a claim does not wait for its WAL flush. A server
//!   crash can lose the last claims, and nothing else: the mark of a batch is committed
//!   synchronously and flushes the WAL written before it, its claim included. The rows of a
//!   lost claim were not marked, so they are published again whether their lease survived or
//!   not (JetStream deduplicates them), as after a relay crash between publish and mark.
//! - Unordered claims: `enable_sort = off` (why: see `Inner::claim`).
//! - Ordered claims: `plan_cache_mode = force_custom_plan`: the claim is a prepared statement
//!   (parsed once per connection) but planned with each execution's values, never with a
//!   generic plan PostgreSQL might switch to after a few executions, because whether to sort
//!   by key depends on them. The unordered claim keeps cached plans: with `enable_sort = off`
//!   every plan of it walks `idx_outbox_claim` in id order.
//! - Bookkeeping keeps `synchronous_commit` as configured: a mark, once counted, stays.

use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::PgPool;
use crate::error::{OutboxError, OutboxErrorKind, Result};

/// The `application_name` of the relay's own connections.
pub(super) const APPLICATION_NAME: &str = "jetstream_bridge_relay";

/// A connection of the relay, locked for its statements.
pub(super) type OwnGuard<'a> = MappedMutexGuard<'a, AsyncPgConnection>;

/// One of the relay's own connections (taken on first use and again after an error).
pub(super) struct OwnConn {
    slot: Mutex<Option<AsyncPgConnection>>,
    /// Session settings, run once per connection.
    setup: String,
}

impl OwnConn {
    /// The claim connection: asynchronous commit; `enable_sort = off` unless `ordered` (the
    /// ordered claim sorts by key, and is planned per execution instead).
    pub(super) fn claims(ordered: bool) -> Self {
        let mut setup =
            format!("SET application_name = '{APPLICATION_NAME}'; SET synchronous_commit = off");
        setup.push_str(if ordered {
            "; SET plan_cache_mode = force_custom_plan"
        } else {
            "; SET enable_sort = off"
        });
        Self::with_setup(setup)
    }

    /// The bookkeeping connection.
    pub(super) fn bookkeeping() -> Self {
        Self::with_setup(format!("SET application_name = '{APPLICATION_NAME}'"))
    }

    fn with_setup(setup: String) -> Self {
        Self {
            slot: Mutex::new(None),
            setup,
        }
    }

    /// The connection, locked (one statement sequence at a time); taken out of `pool` and set
    /// up first when there is none.
    pub(super) async fn get(&self, pool: &PgPool) -> Result<OwnGuard<'_>> {
        let mut slot = self.slot.lock().await;
        if slot.is_none() {
            let mut conn = Object::take(pool.get().await.map_err(OutboxError::pool)?);
            conn.batch_execute(&self.setup)
                .await
                .map_err(OutboxError::database)?;
            *slot = Some(conn);
        }
        MutexGuard::try_map(slot, Option::as_mut).map_err(|_| {
            OutboxError::with_source(
                OutboxErrorKind::DatabaseUnavailable,
                "the relay's connection is missing",
            )
        })
    }

    /// Closes the connection after a failed statement (lost, or in an unknown state); the next
    /// [`get`](Self::get) takes a new one.
    pub(super) async fn discard(&self) {
        self.slot.lock().await.take();
    }
}
