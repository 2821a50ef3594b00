//! [`Relay`]: publishes committed outbox rows to JetStream.
//!
//! ```text
//!            ┌──────────── NOTIFY jetstream_outbox_events (at commit) / poll_interval ─┐
//!            ▼                                                                          │
//!  claim ≤ batch_size rows ──► publish, ≤ max_in_flight acks pending ──► one UPDATE … sent
//!  (FOR UPDATE SKIP LOCKED,        (Nats-Msg-Id = event_id,               one UPDATE … back-off
//!   lease claimed_until,            the stored payload bytes)             (attempts, failed)
//!   claim token claimed_by;                                               one UPDATE … release
//!   a HOT update)
//! ```
//!
//! One module per stage: `claim` (claim and renew), `publish` (publish through the shared
//! PubAck window and sort the outcomes), `record` (the fenced bookkeeping); `run` is the loop
//! that overlaps them, `listen` the `LISTEN` wake-ups, `mute` the subjects without responders,
//! `sql` the statements (and why a claim is a HOT update), `settings` the builder.
//!
//! A row is marked sent only after its PubAck. A crash between the PubAck and the mark leaves
//! the row claimed; its lease expires and a relay publishes it again, which JetStream drops as
//! a duplicate within the stream's duplicate window.
//!
//! Every claim writes a fresh token (`<relay id>#<instance nonce>-<claim number>`) into
//! `claimed_by`, and every later statement about the claimed rows (renew, mark sent, mark
//! failed, release) is fenced by `claimed_by = token AND status = 'pending'`: a relay whose
//! lease expired and whose rows another relay took over changes nothing.

mod claim;
mod conn;
mod listen;
mod mute;
mod publish;
mod record;
mod run;
mod settings;
mod sql;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use async_nats::jetstream::Context;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::AsyncPgConnection;
use jetstream_bridge_config::Config;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::settings::RelayBuilder;

use self::conn::OwnConn;
use self::mute::MuteList;
use self::settings::Settings;
use crate::error::{OutboxError, OutboxErrorKind, Result};

/// The diesel-async deadpool pool the relay takes connections from.
pub type PgPool = Pool<AsyncPgConnection>;

/// The `NOTIFY` channel the outbox trigger signals on commit.
pub const NOTIFY_CHANNEL: &str = "jetstream_outbox_events";

/// Counters of a relay since it started (see [`RelayHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and marked sent by this relay (including JetStream duplicates); counted
    /// from the rows the fenced `UPDATE` changed, so rows another relay took over are not.
    pub sent: u64,
    /// Publishes JetStream reported as duplicates (already stored within the window).
    pub duplicates: u64,
    /// Failed publish attempts that were counted against a row (it backs off).
    pub failed_attempts: u64,
    /// Rows quarantined as `failed`.
    pub quarantined: u64,
    /// Batches claimed.
    pub batches: u64,
    /// Times the relay backed off because the database or NATS was unavailable.
    pub outages: u64,
    /// Whether the `LISTEN` connection is up (commits wake the relay at once).
    pub listening: bool,
}

impl RelayStats {
    /// Adds the counters of `delta` (`listening` is left alone).
    fn add(&mut self, delta: &Self) {
        self.sent += delta.sent;
        self.duplicates += delta.duplicates;
        self.failed_attempts += delta.failed_attempts;
        self.quarantined += delta.quarantined;
        self.batches += delta.batches;
        self.outages += delta.outages;
    }
}

/// What [`Relay::run_until`] and [`RelayHandle::shutdown`] return: the final counters.
pub type RelayReport = RelayStats;

/// Publishes committed outbox rows to JetStream. Several relays may run against one
/// table; see the module docs in `docs/OUTBOX.md`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(
/// #     config: jetstream_bridge_config::Config,
/// #     jetstream: async_nats::jetstream::Context,
/// #     pool: jetstream_bridge_outbox::PgPool,
/// # ) -> Result<(), jetstream_bridge_outbox::OutboxError> {
/// use jetstream_bridge_outbox::Relay;
///
/// let relay = Relay::builder(&config, jetstream, pool).batch_size(500).build()?;
/// let handle = relay.spawn();
/// // ... later, on SIGTERM:
/// let report = handle.shutdown().await?;
/// println!("{} events sent", report.sent);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

/// What the stages share: clients, settings, claim numbering and the mute list.
struct Inner {
    jetstream: Context,
    pool: PgPool,
    settings: Settings,
    /// Claims made so far: the claim number in the claim token.
    claims: AtomicU64,
    /// Random per relay instance, in the claim token: a fixed `relay_id` (a pod name) reused by
    /// a replacement process never repeats the tokens of a stalled predecessor.
    nonce: u32,
    /// Subjects that answered "no responders", left out of claims until their back-off ends.
    muted: MuteList,
    /// The relay's own connections for claims and for bookkeeping (see `conn`).
    claim_conn: OwnConn,
    record_conn: OwnConn,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// A pooled connection (lease renewals).
    async fn conn(&self) -> Result<Object<AsyncPgConnection>> {
        self.pool.get().await.map_err(OutboxError::pool)
    }
}

/// A running relay (from [`Relay::spawn`]).
#[derive(Debug)]
#[must_use = "dropping the handle leaves the relay running; call `shutdown()`"]
pub struct RelayHandle {
    token: CancellationToken,
    join: JoinHandle<Result<RelayReport>>,
    stats: watch::Receiver<RelayStats>,
}

impl RelayHandle {
    /// A receiver of the relay's counters, updated after every batch; await
    /// `wait_for(|s| s.sent >= n)` to wait for progress.
    #[must_use]
    pub fn stats(&self) -> watch::Receiver<RelayStats> {
        self.stats.clone()
    }

    /// Stops the relay: it finishes the batch in flight (publish and mark), then returns.
    ///
    /// # Errors
    ///
    /// [`RelayTask`](OutboxErrorKind::RelayTask) if the relay task panicked or was aborted.
    ///
    /// # Cancel safety
    ///
    /// Cancelling this future leaves the relay stopping in the background.
    pub async fn shutdown(self) -> Result<RelayReport> {
        self.token.cancel();
        self.join
            .await
            .map_err(|e| OutboxError::with_source(OutboxErrorKind::RelayTask, e))?
    }

    /// Aborts the relay task at once, without finishing the batch (a crash, for tests): rows
    /// it claimed are published again by another relay once their lease expires. Its `LISTEN`
    /// connection is closed (a drop guard cancels the listener task).
    pub fn abort(self) {
        self.join.abort();
    }
}

impl Relay {
    /// Starts building a relay that publishes with `jetstream` the rows of the database behind
    /// `pool`. The relay takes three connections out of the pool for as long as it runs (for
    /// `LISTEN`, claims and bookkeeping; they do not count against the pool's size) and borrows
    /// pooled ones only to renew a lease.
    ///
    /// Defaults: batch 500, 256 acks in flight, lease 30 s, poll 1 s, 10 attempts, row
    /// back-off 1 s..5 min, outage back-off 100 ms..10 s, lowercase msg-id header on,
    /// unordered, `LISTEN` on, relay id `<app_name>-<UUIDv7>`. Each row carries its own
    /// subject.
    pub fn builder(config: &Config, jetstream: Context, pool: PgPool) -> RelayBuilder {
        RelayBuilder {
            jetstream,
            pool,
            settings: Settings::new(config),
        }
    }

    /// Runs the relay in place until `signal` completes, then finishes the batch in flight
    /// and returns the counters. Database and NATS errors never end the loop; they back off.
    ///
    /// # Errors
    ///
    /// None today (the result leaves room for fatal errors).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future may stop between publish and mark; the rows are
    /// then republished after their lease (deduplicated by JetStream). Use the signal. The
    /// `LISTEN` connection is closed when the future is dropped.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<RelayReport> {
        let token = CancellationToken::new();
        let (tx, _rx) = watch::channel(RelayStats::default());
        let run = self.inner.run(token.clone(), Arc::new(tx));
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => result,
            () = signal => {
                token.cancel();
                run.await
            }
        }
    }

    /// Spawns the relay on the Tokio runtime and returns a handle to watch and stop it.
    pub fn spawn(self) -> RelayHandle {
        let token = CancellationToken::new();
        let (tx, rx) = watch::channel(RelayStats::default());
        let inner = self.inner;
        let join = tokio::spawn({
            let token = token.clone();
            async move { inner.run(token, Arc::new(tx)).await }
        });
        RelayHandle {
            token,
            join,
            stats: rx,
        }
    }
}
