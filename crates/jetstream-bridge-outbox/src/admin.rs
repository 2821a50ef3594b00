//! Operating the outbox table: [`Outbox::status`] (counts by status, oldest pending age, top
//! errors) and [`Outbox::requeue_failed`] (quarantined rows back to `pending`, relays woken);
//! what `jetstream-bridge outbox …` runs. Retention is [`Outbox::delete_sent_older_than`].

use std::time::Duration;

use diesel::sql_types::{Array, BigInt, Double, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::error::{OutboxError, OutboxErrorKind, Result};
use crate::relay::NOTIFY_CHANNEL;
use crate::store::Outbox;

/// A snapshot of the outbox table, from [`Outbox::status`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Unsent rows waiting for a relay (not claimed, or their claim's lease ran out).
    pub pending: u64,
    /// Unsent rows claimed by a relay right now (a lease in `claimed_until` that has not run
    /// out; the relay leaves a claimed row's `status` at `pending`).
    pub publishing: u64,
    /// Rows acknowledged by JetStream (until retention deletes them).
    pub sent: u64,
    /// Quarantined rows, waiting for [`Outbox::requeue_failed`].
    pub failed: u64,
    /// Age of the oldest unsent (`pending` or `publishing`) row, by `enqueued_at`.
    pub oldest_pending_age: Option<Duration>,
    /// The most frequent `last_error` texts of unsent and failed rows, most frequent first.
    pub top_errors: Vec<ErrorCount>,
}

/// One error text and how many rows carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorCount {
    /// The error text (`last_error` / `error_message`).
    pub error: String,
    /// Rows carrying it.
    pub count: u64,
    /// Their status (`failed`, `pending`, …).
    pub status: String,
}

/// Which quarantined rows [`Outbox::requeue_failed`] puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailedRows {
    /// Every `failed` row.
    All,
    /// The `failed` rows of these event ids.
    EventIds(Vec<String>),
}

/// What [`Outbox::requeue_failed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Requeued {
    /// Event ids put back to `pending`.
    pub requeued: Vec<String>,
    /// Event ids asked for that are not `failed` rows (unknown, or not quarantined).
    pub not_failed: Vec<String>,
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    publishing: i64,
    #[diesel(sql_type = BigInt)]
    sent: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct ErrorRow {
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct EventIdRow {
    #[diesel(sql_type = Text)]
    event_id: String,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Outbox {
    /// Counts by status, the age of the oldest unsent row and the `top_errors` most frequent
    /// `last_error` texts of unsent and failed rows (two read-only statements).
    ///
    /// # Errors
    ///
    /// [`Database`](OutboxErrorKind::Database) (for instance when the table does not exist)
    /// or [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (read only).
    pub async fn status(conn: &mut AsyncPgConnection, top_errors: usize) -> Result<OutboxStatus> {
        let row: StatusRow = diesel::sql_query(
            "SELECT \
               count(*) FILTER (WHERE status IN ('pending', 'publishing') \
                 AND (claimed_until IS NULL OR claimed_until <= now())) AS pending, \
               count(*) FILTER (WHERE status IN ('pending', 'publishing') \
                 AND claimed_until > now()) AS publishing, \
               count(*) FILTER (WHERE status = 'sent') AS sent, \
               count(*) FILTER (WHERE status = 'failed') AS failed, \
               extract(epoch FROM now() - min(enqueued_at) \
                 FILTER (WHERE status IN ('pending', 'publishing')))::float8 AS oldest_secs \
             FROM jetstream_outbox_events",
        )
        .get_result(conn)
        .await
        .map_err(OutboxError::database)?;
        let errors: Vec<ErrorRow> = diesel::sql_query(
            "SELECT last_error AS error, status, count(*) AS n FROM jetstream_outbox_events \
             WHERE status <> 'sent' AND last_error IS NOT NULL \
             GROUP BY last_error, status ORDER BY n DESC, error LIMIT $1",
        )
        .bind::<BigInt, _>(i64::try_from(top_errors).unwrap_or(i64::MAX))
        .load(conn)
        .await
        .map_err(OutboxError::database)?;
        Ok(OutboxStatus {
            pending: count(row.pending),
            publishing: count(row.publishing),
            sent: count(row.sent),
            failed: count(row.failed),
            oldest_pending_age: row
                .oldest_secs
                .map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()),
            top_errors: errors
                .into_iter()
                .map(|e| ErrorCount {
                    error: e.error,
                    count: count(e.n),
                    status: e.status,
                })
                .collect(),
        })
    }

    /// Puts quarantined (`failed`) rows back to `pending` with `attempts` reset and
    /// `last_error` cleared, and wakes the relays (`NOTIFY`, delivered at commit), so a running
    /// relay publishes them at once. One transaction.
    ///
    /// # Errors
    ///
    /// [`InvalidEvent`](OutboxErrorKind::InvalidEvent) for an empty id list;
    /// [`Database`](OutboxErrorKind::Database) /
    /// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable) (nothing changed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: one transaction, committed or not.
    pub async fn requeue_failed(
        conn: &mut AsyncPgConnection,
        rows: &FailedRows,
    ) -> Result<Requeued> {
        let wanted: Option<Vec<String>> = match rows {
            FailedRows::All => None,
            FailedRows::EventIds(ids) if ids.is_empty() => {
                return Err(OutboxError::with_source(
                    OutboxErrorKind::InvalidEvent,
                    "no event id given",
                ))
            }
            FailedRows::EventIds(ids) => Some(ids.clone()),
        };
        let requeued: Vec<EventIdRow> = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let rows: Vec<EventIdRow> = diesel::sql_query(
                    "UPDATE jetstream_outbox_events SET status = 'pending', attempts = 0, \
                       last_error = NULL, next_attempt_at = now(), claimed_until = NULL, \
                       claimed_by = NULL, updated_at = now() \
                     WHERE status = 'failed' \
                       AND ($1::text[] IS NULL OR event_id = ANY($1::text[])) \
                     RETURNING event_id",
                )
                .bind::<Nullable<Array<Text>>, _>(wanted.as_deref())
                .load(conn)
                .await?;
                if !rows.is_empty() {
                    diesel::sql_query("SELECT pg_notify($1, '')")
                        .bind::<Text, _>(NOTIFY_CHANNEL)
                        .execute(conn)
                        .await?;
                }
                Ok(rows)
            })
            .await
            .map_err(OutboxError::database)?;
        let requeued: Vec<String> = requeued.into_iter().map(|r| r.event_id).collect();
        let not_failed = wanted
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !requeued.contains(id))
            .collect();
        Ok(Requeued {
            requeued,
            not_failed,
        })
    }
}
