//! [`Outbox`]: enqueue inside the caller's transaction, retention and maintenance.

use std::time::Duration;

use std::io::Write as _;

use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{IsNull, Output, ToSql};
use diesel::sql_types::{Array, BigInt, Double, Json, Jsonb, Nullable, Text};
use diesel::{Insertable, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::{Config, EventId};
use jetstream_bridge_pg::prepared as statement;
use serde_json::Value;

use crate::error::{BoxError, OutboxError, OutboxErrorKind, Result};
use crate::model::{contains_nul, json_text_contains_nul, Defaults, NewEvent, Prepared};
use crate::schema::jetstream_outbox_events;

/// Writes events into `jetstream_outbox_events` inside the caller's own transaction.
///
/// Cheap to clone; build one per service from its [`Config`].
///
/// # Examples
///
/// ```no_run
/// # async fn demo(
/// #     config: jetstream_bridge_config::Config,
/// #     conn: &mut diesel_async::AsyncPgConnection,
/// # ) -> Result<(), jetstream_bridge_outbox::OutboxError> {
/// use diesel_async::AsyncConnection;
/// use jetstream_bridge_outbox::{NewEvent, Outbox, OutboxError};
/// use serde_json::json;
///
/// let outbox = Outbox::new(&config);
/// let event_id = conn
///     .transaction::<_, OutboxError, _>(async |conn| {
///         // ... the business writes, on the same `conn` ...
///         outbox.enqueue(conn, NewEvent::new("user.created", json!({"id": "u-1"}))).await
///     })
///     .await?;
/// # let _ = event_id;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    defaults: Defaults,
    ordered: bool,
}

/// Takes the per-key advisory lock (two-key form: the table's namespace, the key's hash) and
/// inserts the row in one statement, so the row's `id` is drawn only after the lock is held.
const INSERT_ORDERED_SQL: &str = "\
INSERT INTO jetstream_outbox_events (event_id, subject, payload, headers, ordering_key) \
SELECT $1, $2, $3, $4, $5 \
FROM (SELECT pg_advisory_xact_lock(hashtext('jetstream_outbox_events'), hashtext($5))) AS l";

/// The per-key advisory locks of a batch, in one statement and in lock-key order (two batches
/// sharing keys then cannot deadlock each other; volatile functions in the target list run
/// after the sort).
const LOCK_KEYS_SQL: &str = "\
SELECT pg_advisory_xact_lock(hashtext('jetstream_outbox_events'), k) \
FROM (SELECT DISTINCT hashtext(key) AS k FROM unnest($1::text[]) AS key) AS keys ORDER BY k";

/// The outbox backlog, from [`Outbox::backlog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Backlog {
    /// Rows not sent yet (`pending` or `publishing`).
    pub unsent: u64,
    /// Quarantined rows (`failed`), waiting for a human.
    pub failed: u64,
    /// Age of the oldest unsent row (by `enqueued_at`); `None` when nothing is unsent.
    pub oldest_unsent_age: Option<Duration>,
}

#[derive(QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = BigInt)]
    unsent: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_secs: Option<f64>,
}

#[derive(Insertable)]
#[diesel(table_name = jetstream_outbox_events)]
struct NewRow {
    event_id: String,
    subject: String,
    payload: JsonText,
    headers: Value,
    ordering_key: String,
}

/// JSON text bound to a `json` parameter exactly as it is: the `payload` column (type `json`)
/// keeps it verbatim, so the relay publishes the bytes serialized here.
#[derive(Debug, AsExpression)]
#[diesel(sql_type = Json)]
struct JsonText(String);

impl ToSql<Json, Pg> for JsonText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        // The binary form of `json` is its text.
        out.write_all(self.0.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl NewRow {
    fn from_prepared(p: Prepared) -> Result<Self> {
        let invalid = |source: BoxError| {
            OutboxError::with_source(OutboxErrorKind::InvalidEvent, source)
                .for_event(p.event_id.clone())
        };
        let headers = p.headers_json();
        // The envelope as a real JSON object, not a JSON string: the wire body
        // itself, stored verbatim.
        let payload = String::from_utf8(p.body).map_err(|e| invalid(e.into()))?;
        // Refused before any I/O, so the caller's transaction never aborts on it: varchar cannot
        // hold the byte 0x00 and jsonb (the headers, the consumers' inbox, any `payload::jsonb`
        // query) rejects `\u0000` (SQLSTATE 22P05).
        if json_text_contains_nul(&payload) || contains_nul(&headers) {
            return Err(invalid(
                "a string or key of the envelope contains NUL (\\u0000), which PostgreSQL \
                 jsonb cannot store"
                    .into(),
            ));
        }
        if p.ordering_key.contains('\0') {
            return Err(invalid("the ordering key contains NUL (\\u0000)".into()));
        }
        Ok(Self {
            event_id: p.event_id.into_string(),
            subject: p.subject,
            payload: JsonText(payload),
            headers,
            ordering_key: p.ordering_key,
        })
    }
}

impl Outbox {
    /// An outbox for the service described by `config`: envelopes get `producer = app_name`,
    /// events go to the configured source subject unless [`NewEvent::subject`] says otherwise,
    /// and envelopes over [`Config::max_payload_bytes`] are refused.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        Self {
            defaults: Defaults::from_config(config),
            ordered: false,
        }
    }

    /// Serialize enqueues of the same ordering key (default off; turn it on when an
    /// [ordered](crate::RelayBuilder::ordered) relay publishes this table).
    ///
    /// An ordered relay publishes a key's events in `id` order, and `id`s are drawn at insert
    /// time, not at commit: without this, two transactions enqueueing the same key can commit
    /// in the opposite order of their ids, and if the later id commits first the relay may
    /// publish it before the earlier one exists. With it, `enqueue` first takes
    /// `pg_advisory_xact_lock` on the key (in the same statement as the insert), held until the
    /// caller's transaction ends: a second transaction enqueueing the same key waits for the
    /// first to commit or roll back, so same-key ids follow commit order.
    ///
    /// Cost: same-key writers serialize for the rest of their transactions (keep them short);
    /// unrelated keys whose 32-bit hashes collide serialize too; two transactions that enqueue
    /// the same two keys in opposite orders can deadlock (PostgreSQL aborts one with SQLSTATE
    /// 40P01, reported as the transient
    /// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable)). Writers that bypass this
    /// `Outbox` (the Ruby gem, hand-written SQL) take no lock.
    #[must_use]
    pub fn ordered(mut self, on: bool) -> Self {
        self.ordered = on;
        self
    }

    /// Writes one event on `conn`. Call it inside your own `conn.transaction(..)`: if the
    /// transaction rolls back there is no event; once it commits a relay publishes the event
    /// at least once, deduplicated by JetStream through `Nats-Msg-Id` = event id. Relays are
    /// woken at commit (a statement trigger runs `pg_notify`).
    ///
    /// Outside a transaction the row is committed at once (autocommit).
    ///
    /// # Errors
    ///
    /// Before touching the database: [`PayloadTooLarge`](crate::OutboxErrorKind::PayloadTooLarge)
    /// and [`InvalidEvent`](crate::OutboxErrorKind::InvalidEvent) (among others: a
    /// `traceparent` that is not W3C, a NUL character in any string of the envelope). From the
    /// insert: [`DuplicateEventId`](crate::OutboxErrorKind::DuplicateEventId),
    /// [`DatabaseUnavailable`](crate::OutboxErrorKind::DatabaseUnavailable) (transient) and
    /// [`Database`](crate::OutboxErrorKind::Database); the caller's transaction is then aborted
    /// and should be rolled back (returning the error from the closure does that).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that matters: dropping the future leaves the caller's
    /// transaction to decide (diesel-async rolls back a transaction whose future is dropped).
    pub async fn enqueue(
        &self,
        conn: &mut AsyncPgConnection,
        event: impl Into<NewEvent>,
    ) -> Result<EventId> {
        let prepared = event.into().prepare(&self.defaults)?;
        let event_id = prepared.event_id.clone();
        let row = NewRow::from_prepared(prepared)?;
        let inserted = if self.ordered {
            statement(INSERT_ORDERED_SQL)
                .bind::<Text, _>(&row.event_id)
                .bind::<Text, _>(&row.subject)
                .bind::<Json, _>(&row.payload)
                .bind::<Jsonb, _>(&row.headers)
                .bind::<Text, _>(&row.ordering_key)
                .execute(conn)
                .await
        } else {
            diesel::insert_into(jetstream_outbox_events::table)
                .values(&row)
                .execute(conn)
                .await
        };
        inserted.map_err(|e| OutboxError::database(e).for_event(event_id.clone()))?;
        Ok(event_id)
    }

    /// Writes several events with one multi-row `INSERT`, in order; all or nothing. Every event
    /// is checked before the database is touched.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); the first invalid event is reported.
    ///
    /// # Cancel safety
    ///
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_batch<I>(
        &self,
        conn: &mut AsyncPgConnection,
        events: I,
    ) -> Result<Vec<EventId>>
    where
        I: IntoIterator,
        I::Item: Into<NewEvent>,
    {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for event in events {
            let prepared = event.into().prepare(&self.defaults)?;
            ids.push(prepared.event_id.clone());
            rows.push(NewRow::from_prepared(prepared)?);
        }
        if self.ordered && !rows.is_empty() {
            let keys: Vec<&str> = rows.iter().map(|r| r.ordering_key.as_str()).collect();
            statement(LOCK_KEYS_SQL)
                .bind::<Array<Text>, _>(keys)
                .execute(conn)
                .await
                .map_err(OutboxError::database)?;
        }
        // Postgres takes at most 65535 bind parameters per statement (5 per row).
        for chunk in rows.chunks(10_000) {
            diesel::insert_into(jetstream_outbox_events::table)
                .values(chunk)
                .execute(conn)
                .await
                .map_err(OutboxError::database)?;
        }
        Ok(ids)
    }

    /// Deletes `sent` rows whose `sent_at` is older than `older_than`, `batch_size` rows per
    /// statement (each its own short transaction, so no long locks), until none is left.
    /// Returns how many rows were deleted. Pending and failed rows are never deleted.
    ///
    /// # Errors
    ///
    /// [`Database`](crate::OutboxErrorKind::Database); rows deleted by earlier batches stay
    /// deleted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: each batch commits on its own; a cancelled call just deletes less.
    pub async fn delete_sent_older_than(
        conn: &mut AsyncPgConnection,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64> {
        jetstream_bridge_pg::delete_in_batches(
            conn,
            jetstream_bridge_pg::Retention {
                table: "jetstream_outbox_events",
                status: "sent",
                timestamp_column: "sent_at",
            },
            older_than,
            batch_size.max(1),
        )
        .await
        .map_err(OutboxError::pg)
    }

    /// The backlog for health checks and alerts: unsent and quarantined row counts and the age
    /// of the oldest unsent row (count *and* age: a count alone hides a stuck old row). One statement,
    /// served by the partial claim index.
    ///
    /// # Errors
    ///
    /// [`Database`](crate::OutboxErrorKind::Database).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (read only).
    pub async fn backlog(conn: &mut AsyncPgConnection) -> Result<Backlog> {
        let row: BacklogRow = diesel::sql_query(
            "SELECT \
               count(*) FILTER (WHERE status IN ('pending', 'publishing')) AS unsent, \
               count(*) FILTER (WHERE status = 'failed') AS failed, \
               extract(epoch FROM now() - min(enqueued_at) \
                 FILTER (WHERE status IN ('pending', 'publishing')))::float8 AS oldest_secs \
             FROM jetstream_outbox_events WHERE status IN ('pending', 'publishing', 'failed')",
        )
        .get_result(conn)
        .await
        .map_err(OutboxError::database)?;
        Ok(Backlog {
            unsent: u64::try_from(row.unsent).unwrap_or(0),
            failed: u64::try_from(row.failed).unwrap_or(0),
            oldest_unsent_age: row
                .oldest_secs
                .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or_default()),
        })
    }

    /// Puts up to `limit` quarantined (`failed`) rows back to `pending` with `attempts` reset,
    /// oldest first (the gem's `retry_failed`). Returns how many.
    ///
    /// # Errors
    ///
    /// [`Database`](crate::OutboxErrorKind::Database).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (one statement).
    pub async fn retry_failed(conn: &mut AsyncPgConnection, limit: usize) -> Result<u64> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = diesel::sql_query(
            "UPDATE jetstream_outbox_events SET status = 'pending', attempts = 0, \
               last_error = NULL, next_attempt_at = now(), updated_at = now() \
             WHERE id IN (SELECT id FROM jetstream_outbox_events WHERE status = 'failed' \
               ORDER BY id LIMIT $1)",
        )
        .bind::<BigInt, _>(limit)
        .execute(conn)
        .await
        .map_err(OutboxError::database)?;
        Ok(n as u64)
    }
}
