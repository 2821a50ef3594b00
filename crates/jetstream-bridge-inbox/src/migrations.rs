//! The inbox table's SQL migration, embedded from the workspace `migrations/` (diesel layout,
//! one directory per migration, shared by every crate that owns a table).
//!
//! [`run_pending`] applies them on an `&mut AsyncPgConnection` without diesel's synchronous
//! harness (so no `block_in_place`, any runtime flavour), recording versions in diesel's own
//! `__diesel_schema_migrations` table: the diesel CLI, [`MIGRATIONS`] with
//! `AsyncMigrationHarness`, and other crates' migration sets all see the same state.

use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;

use crate::error::{InboxError, InboxErrorKind, Result};

/// The workspace migrations (`migrations/`), embedded at build time, for applications that run
/// their migrations through diesel's `MigrationHarness` (`AsyncMigrationHarness`): the outbox
/// and inbox tables. [`run_pending`] applies only the inbox's own migration.
pub const MIGRATIONS: EmbeddedMigrations = diesel_migrations::embed_migrations!("../../migrations");

/// One embedded migration: diesel version, directory name, `up.sql`.
struct Step {
    version: &'static str,
    name: &'static str,
    up: &'static str,
}

/// The inbox's migrations among [`MIGRATIONS`], oldest first (a unit test checks they are
/// there under the same versions).
const STEPS: &[Step] = &[Step {
    version: "20261126000002",
    name: "2026-11-26-000002_create_jetstream_inbox_events",
    up: include_str!("../../../migrations/2026-11-26-000002_create_jetstream_inbox_events/up.sql"),
}];

/// Session-independent key of the advisory lock that serialises concurrent migration runs
/// (`"jbmigr"` in ASCII).
const LOCK_KEY: i64 = 0x6a62_6d69_6772;

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// Applies the inbox migrations that are not applied yet, each in its own transaction, and
/// returns the names of those applied, oldest first (empty when the database is up to date,
/// so running it again is harmless). Concurrent callers (several deploys at once) are
/// serialised by a transaction-scoped advisory lock.
///
/// # Errors
///
/// [`Migration`](InboxErrorKind::Migration) when a migration fails (its transaction is rolled
/// back; earlier ones stay applied).
///
/// # Cancel safety
///
/// Cancel safe: a migration and its version row commit together or not at all.
pub async fn run_pending(conn: &mut AsyncPgConnection) -> Result<Vec<String>> {
    let fail = |e: diesel::result::Error| InboxError::with_source(InboxErrorKind::Migration, e);
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations ( \
           version VARCHAR(50) PRIMARY KEY NOT NULL, \
           run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .await
    .or_else(|e| match e {
        // Two first-time runs racing on CREATE TABLE IF NOT EXISTS.
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => Ok(()),
        other => Err(other),
    })
    .map_err(fail)?;
    let mut applied = Vec::new();
    for step in STEPS {
        let ran = conn
            .transaction::<bool, diesel::result::Error, _>(async |conn| {
                diesel::sql_query(format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))
                    .execute(conn)
                    .await?;
                let done: Vec<Version> = diesel::sql_query(
                    "SELECT version FROM __diesel_schema_migrations WHERE version = $1",
                )
                .bind::<Text, _>(step.version)
                .load(conn)
                .await?;
                if !done.is_empty() {
                    return Ok(false);
                }
                conn.batch_execute(step.up).await?;
                diesel::sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
                    .bind::<Text, _>(step.version)
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
            .map_err(fail)?;
        if ran {
            applied.push(step.name.to_owned());
        }
    }
    Ok(applied)
}

/// The names of the inbox migrations not applied yet, oldest first.
///
/// # Errors
///
/// [`Migration`](InboxErrorKind::Migration) when the version table cannot be read.
///
/// # Cancel safety
///
/// Cancel safe (read only).
pub async fn pending(conn: &mut AsyncPgConnection) -> Result<Vec<String>> {
    let exists: Vec<Version> = diesel::sql_query(
        "SELECT coalesce(to_regclass('__diesel_schema_migrations')::text, '') AS version",
    )
    .load(conn)
    .await
    .map_err(|e| InboxError::with_source(InboxErrorKind::Migration, e))?;
    if exists
        .as_slice()
        .first()
        .is_none_or(|v| v.version.is_empty())
    {
        return Ok(STEPS.iter().map(|s| s.name.to_owned()).collect());
    }
    let done: Vec<Version> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(conn)
        .await
        .map_err(|e| InboxError::with_source(InboxErrorKind::Migration, e))?;
    Ok(STEPS
        .iter()
        .filter(|s| !done.iter().any(|d| d.version == s.version))
        .map(|s| s.name.to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;
    use diesel::pg::Pg;

    #[test]
    fn steps_match_the_embedded_migrations() {
        let embedded = MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap();
        for step in STEPS {
            assert!(
                embedded.iter().any(|m| m.name().to_string() == step.name
                    && m.name().version().to_string() == step.version),
                "{} is not among the embedded migrations",
                step.name
            );
        }
    }
}
