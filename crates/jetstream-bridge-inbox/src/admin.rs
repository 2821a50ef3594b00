//! Operating the inbox table: [`Inbox::summary`] (counts by status, the oldest unfinished row,
//! top errors); what `jetstream-bridge inbox status` runs. Retention is
//! [`Inbox::cleanup_processed`].

use std::time::Duration;

use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::error::Result;
use crate::store::Inbox;

/// A snapshot of the inbox table, from [`Inbox::summary`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InboxSummary {
    /// Rows written by a plain insert and never claimed.
    pub received: u64,
    /// Rows claimed by a running attempt (or left so by a crashed runtime).
    pub processing: u64,
    /// Events applied.
    pub processed: u64,
    /// Events whose last attempt failed (retried or dead-lettered by the consumer).
    pub failed: u64,
    /// Age of the oldest row not processed (by `received_at`).
    pub oldest_unprocessed_age: Option<Duration>,
    /// When the newest event was processed, as an age.
    pub last_processed_age: Option<Duration>,
    /// The most frequent `error_message` texts of failed rows, most frequent first.
    pub top_errors: Vec<(String, u64)>,
}

#[derive(QueryableByName)]
struct SummaryRow {
    #[diesel(sql_type = BigInt)]
    received: i64,
    #[diesel(sql_type = BigInt)]
    processing: i64,
    #[diesel(sql_type = BigInt)]
    processed: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = Nullable<Double>)]
    oldest_secs: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    last_processed_secs: Option<f64>,
}

#[derive(QueryableByName)]
struct ErrorRow {
    #[diesel(sql_type = Text)]
    error: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn age(secs: Option<f64>) -> Option<Duration> {
    secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default())
}

impl Inbox {
    /// Counts by status, the age of the oldest unprocessed row and of the last processing, and
    /// the `top_errors` most frequent error messages of failed rows (two read-only statements).
    ///
    /// # Errors
    ///
    /// [`Database`](crate::InboxErrorKind::Database) (for instance when the table does not
    /// exist).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (read only).
    pub async fn summary(
        &self,
        conn: &mut AsyncPgConnection,
        top_errors: usize,
    ) -> Result<InboxSummary> {
        let row: SummaryRow = diesel::sql_query(
            "SELECT \
               count(*) FILTER (WHERE status = 'received') AS received, \
               count(*) FILTER (WHERE status = 'processing') AS processing, \
               count(*) FILTER (WHERE status = 'processed') AS processed, \
               count(*) FILTER (WHERE status = 'failed') AS failed, \
               extract(epoch FROM now() - min(received_at) \
                 FILTER (WHERE status <> 'processed'))::float8 AS oldest_secs, \
               extract(epoch FROM now() - max(processed_at))::float8 AS last_processed_secs \
             FROM jetstream_inbox_events",
        )
        .get_result(conn)
        .await?;
        let errors: Vec<ErrorRow> = diesel::sql_query(
            "SELECT error_message AS error, count(*) AS n FROM jetstream_inbox_events \
             WHERE status = 'failed' AND error_message IS NOT NULL \
             GROUP BY error_message ORDER BY n DESC, error LIMIT $1",
        )
        .bind::<BigInt, _>(i64::try_from(top_errors).unwrap_or(i64::MAX))
        .load(conn)
        .await?;
        Ok(InboxSummary {
            received: count(row.received),
            processing: count(row.processing),
            processed: count(row.processed),
            failed: count(row.failed),
            oldest_unprocessed_age: age(row.oldest_secs),
            last_processed_age: age(row.last_processed_secs),
            top_errors: errors.into_iter().map(|e| (e.error, count(e.n))).collect(),
        })
    }
}
