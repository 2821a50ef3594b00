//! Connecting to PostgreSQL and NATS with clear, masked error messages.

use std::time::Duration;

use diesel::sql_types::Bool;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::{redact_url, Config};
use jetstream_bridge_topology::Connection;

use crate::error::{CliError, CliErrorKind};
use crate::output::Out;

/// How long connecting to PostgreSQL may take.
const DB_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbox table.
pub(crate) const OUTBOX_TABLE: &str = "jetstream_outbox_events";
/// The inbox table.
pub(crate) const INBOX_TABLE: &str = "jetstream_inbox_events";

/// A connection to `url`.
pub(crate) async fn database(url: &str, out: &Out) -> Result<AsyncPgConnection, CliError> {
    let shown = redact_url(url);
    out.note(format!("connecting to PostgreSQL at {shown}"));
    match tokio::time::timeout(DB_CONNECT_TIMEOUT, AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(CliError::with_chain(
            CliErrorKind::Database,
            format!("cannot connect to PostgreSQL at {shown}"),
            &e,
        )),
        Err(_) => Err(CliError::new(
            CliErrorKind::Database,
            format!(
                "cannot connect to PostgreSQL at {shown}: no answer within {}s",
                DB_CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// A pool of up to `max_size` connections to `url` (connections are opened on demand).
pub(crate) fn pool(url: &str, max_size: usize) -> Result<jetstream_bridge_pg::Pool, CliError> {
    jetstream_bridge_pg::pool(url, max_size).map_err(|e| {
        CliError::with_chain(
            CliErrorKind::Database,
            format!("cannot build a pool for {}", redact_url(url)),
            &e,
        )
    })
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    present: bool,
}

/// Whether table `name` exists (in the search path).
pub(crate) async fn table_exists(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<bool, CliError> {
    let row: Exists = diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS present")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result(conn)
        .await
        .map_err(|e| database_error(&format!("looking up table {name}"), &e))?;
    Ok(row.present)
}

/// Fails with [`MissingTable`](CliErrorKind::MissingTable) when `name` does not exist.
pub(crate) async fn require_table(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> Result<(), CliError> {
    if table_exists(conn, name).await? {
        Ok(())
    } else {
        Err(CliError::new(
            CliErrorKind::MissingTable,
            format!("table {name} does not exist: run `jetstream-bridge migrate` first"),
        ))
    }
}

/// A database error while `doing`.
pub(crate) fn database_error(doing: &str, e: &(dyn std::error::Error + 'static)) -> CliError {
    CliError::with_chain(CliErrorKind::Database, doing, e)
}

/// Runs one retention delete (`delete`: the library's batched call) and reports it: a start
/// note, then the count (table) or `{deleted, older_than_seconds}` (`--json`). `rows` names what
/// is deleted, e.g. "sent outbox".
pub(crate) async fn cleanup<E>(
    out: &Out,
    rows: &str,
    older_than: std::time::Duration,
    batch_size: impl std::fmt::Display,
    delete: impl std::future::Future<Output = Result<u64, E>>,
) -> Result<(), CliError>
where
    E: std::error::Error + 'static,
{
    out.note(format!(
        "deleting {rows} rows older than {} in batches of {batch_size}",
        jetstream_bridge_config::format_duration(older_than)
    ));
    let started = std::time::Instant::now();
    let deleted = delete.await.map_err(|e| {
        database_error(
            &format!("deleting {rows} rows (batches deleted before the failure stay deleted)"),
            &e,
        )
    })?;
    if out.json() {
        out.value(&serde_json::json!({
            "deleted": deleted,
            "older_than_seconds": older_than.as_secs(),
        }));
    } else {
        let kind = rows.split_whitespace().next().unwrap_or(rows);
        out.line(format!(
            "deleted {deleted} {kind} row(s) in {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// A NATS connection for `config` (the library's `connect`: credentials, TLS, retries).
pub(crate) async fn nats(config: &Config, out: &Out) -> Result<Connection, CliError> {
    out.note(format!("connecting to NATS at {}", config.nats_urls()));
    jetstream_bridge_topology::connect(config)
        .await
        .map_err(|e| CliError::from_error(CliErrorKind::Nats, &e))
}
