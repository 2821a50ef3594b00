//! [`delete_in_batches`]: the one batched retention delete that the outbox and the inbox use.

use std::time::Duration;

use diesel::sql_types::{BigInt, Double};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::error::{PgError, PgErrorKind, Result};

/// Which rows a retention run deletes: those of `table` in `status` whose `timestamp_column`
/// is older than the age given to [`delete_in_batches`].
///
/// The names are SQL identifiers written into the statement, so they are `&'static str`: they
/// come from this workspace's own table layout, never from user input.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// The table, e.g. `jetstream_outbox_events`.
    pub table: &'static str,
    /// The status whose rows may go, e.g. `sent`.
    pub status: &'static str,
    /// The timestamp that ages a row, e.g. `sent_at` (should be indexed for that status).
    pub timestamp_column: &'static str,
}

/// Deletes `retention`'s rows older than `older_than`, at most `batch_size` rows per
/// statement, oldest first, until none is left; returns how many were deleted. Each batch is
/// its own short statement (its own transaction unless the caller holds one), so a long run
/// never holds many locks, and rows locked by someone else are skipped (`SKIP LOCKED`).
///
/// # Errors
///
/// [`InvalidArgument`](PgErrorKind::InvalidArgument) for a zero `batch_size` or an
/// identifier that is not a plain lowercase name; a database error as classified by
/// [`classify`](crate::classify). Batches deleted before the error stay deleted.
///
/// # Cancel safety
///
/// Cancel safe: each batch commits on its own.
pub async fn delete_in_batches(
    conn: &mut AsyncPgConnection,
    retention: Retention,
    older_than: Duration,
    batch_size: usize,
) -> Result<u64> {
    if batch_size == 0 {
        return Err(PgError::new(PgErrorKind::InvalidArgument(
            "batch size must be at least 1",
        )));
    }
    for name in [
        retention.table,
        retention.status,
        retention.timestamp_column,
    ] {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(PgError::new(PgErrorKind::InvalidArgument(
                "retention names must be plain lowercase identifiers",
            )));
        }
    }
    let batch = i64::try_from(batch_size).unwrap_or(i64::MAX);
    let Retention {
        table,
        status,
        timestamp_column: column,
    } = retention;
    let sql = format!(
        "DELETE FROM {table} WHERE id IN ( \
           SELECT id FROM {table} \
           WHERE status = '{status}' AND {column} < now() - make_interval(secs => $1) \
           ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    );
    let mut total = 0u64;
    loop {
        let deleted = diesel::sql_query(&sql)
            .bind::<Double, _>(older_than.as_secs_f64())
            .bind::<BigInt, _>(batch)
            .execute(conn)
            .await
            .map_err(PgError::database)?;
        total += u64::try_from(deleted).unwrap_or(0);
        if i64::try_from(deleted).unwrap_or(i64::MAX) < batch {
            return Ok(total);
        }
    }
}
