//! [`Migrator`]: the one runner for the embedded migrations (outbox and inbox tables).
//!
//! The SQL lives in this crate's `migrations/` directory (diesel's layout: one directory per
//! migration with `up.sql` and `down.sql`) and is embedded at build time. Versions are recorded
//! in diesel's own `__diesel_schema_migrations` table, so the diesel CLI, diesel's
//! `MigrationHarness` with [`MIGRATIONS`], and this runner all see the same state. The runner
//! adds what diesel lacks, in the manner of sqlx's `Migrator`:
//!
//! - an advisory lock, so concurrent deploys apply each migration once;
//! - a checksum per applied migration (`jetstream_bridge_migrations`), so a migration that was
//!   edited after it was applied is reported ([`PgErrorKind::MigrationChanged`]) instead of
//!   silently skipped;
//! - [`Component`] selection (`--only outbox|inbox`) for publish-only or consume-only services;
//! - no synchronous harness: it runs on any tokio runtime flavour, on an
//!   `&mut AsyncPgConnection`.

use std::fmt;
use std::str::FromStr;

use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::EmbeddedMigrations;

use crate::error::{PgError, PgErrorKind, Result};

/// Every migration of this crate, embedded at build time, for applications that run their
/// migrations through diesel's `MigrationHarness` (`AsyncMigrationHarness`). [`Migrator`]
/// applies the same set (a unit test keeps the two lists equal).
pub const MIGRATIONS: EmbeddedMigrations = diesel_migrations::embed_migrations!("migrations");

/// Which tables a migration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Component {
    /// `jetstream_outbox_events`: services that publish through the transactional outbox.
    Outbox,
    /// `jetstream_inbox_events`: services that consume with the idempotent inbox.
    Inbox,
}

impl Component {
    /// Every component, in migration order.
    pub const ALL: [Self; 2] = [Self::Outbox, Self::Inbox];

    /// The lowercase name used by the CLI (`outbox`, `inbox`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Inbox => "inbox",
        }
    }

    /// The table this component owns.
    #[must_use]
    pub fn table(self) -> &'static str {
        match self {
            Self::Outbox => "jetstream_outbox_events",
            Self::Inbox => "jetstream_inbox_events",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown component name (see [`Component`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown component {0:?}: expected \"outbox\" or \"inbox\"")]
pub struct UnknownComponent(String);

impl FromStr for Component {
    type Err = UnknownComponent;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "outbox" => Ok(Self::Outbox),
            "inbox" => Ok(Self::Inbox),
            _ => Err(UnknownComponent(s.to_owned())),
        }
    }
}

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    version: &'static str,
    name: &'static str,
    component: Component,
    up: &'static str,
}

impl Migration {
    /// diesel's version: the directory name's leading digits (`20261126000001`).
    #[must_use]
    pub fn version(&self) -> &'static str {
        self.version
    }

    /// The directory name (`2026-11-26-000001_create_jetstream_outbox_events`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tables it belongs to.
    #[must_use]
    pub fn component(&self) -> Component {
        self.component
    }

    /// The `up.sql` it applies.
    #[must_use]
    pub fn sql(&self) -> &'static str {
        self.up
    }

    /// A stable checksum of the SQL (FNV-1a 64, line endings normalised, hex): what
    /// [`Migrator`] records when it applies the migration and compares afterwards.
    #[must_use]
    pub fn checksum(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.up.bytes().filter(|b| *b != b'\r') {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

macro_rules! migration {
    ($version:literal, $name:literal, $component:expr) => {
        Migration {
            version: $version,
            name: $name,
            component: $component,
            up: include_str!(concat!("../migrations/", $name, "/up.sql")),
        }
    };
}

/// Every migration, oldest first.
const STEPS: &[Migration] = &[
    migration!(
        "20261126000001",
        "2026-11-26-000001_create_jetstream_outbox_events",
        Component::Outbox
    ),
    migration!(
        "20261126000002",
        "2026-11-26-000002_create_jetstream_inbox_events",
        Component::Inbox
    ),
    migration!(
        "20261204000003",
        "2026-12-04-000003_outbox_payload_json",
        Component::Outbox
    ),
    migration!(
        "20261204000004",
        "2026-12-04-000004_outbox_hot_claims",
        Component::Outbox
    ),
];

/// Session-independent key of the advisory lock that serialises concurrent migration runs
/// (`"jbmigr"` in ASCII).
const LOCK_KEY: i64 = 0x6a62_6d69_6772;

/// Where a migration stands in one database (see [`Migrator::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationState {
    /// Not applied yet.
    Pending,
    /// Applied, with the same SQL as embedded (or applied by another tool before checksums were
    /// recorded).
    Applied,
    /// Applied with SQL that differs from the embedded one.
    Changed {
        /// The checksum recorded when it was applied.
        applied: String,
    },
}

/// One migration and its state, from [`Migrator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The migration.
    pub name: &'static str,
    /// Its tables.
    pub component: Component,
    /// Applied, pending or changed.
    pub state: MigrationState,
}

/// Applies the embedded migrations: all of them, or those of some [`Component`]s.
///
/// ```no_run
/// # async fn run(conn: &mut diesel_async::AsyncPgConnection) -> Result<(), jetstream_bridge_pg::PgError> {
/// use jetstream_bridge_pg::{Component, Migrator};
///
/// // Every table; a second run applies nothing.
/// let applied = Migrator::all().run(conn).await?;
/// // A consume-only service:
/// Migrator::only(Component::Inbox).run(conn).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Migrator {
    components: Vec<Component>,
}

impl Default for Migrator {
    fn default() -> Self {
        Self::all()
    }
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    checksum: Option<String>,
}

impl Migrator {
    /// Every migration (outbox and inbox tables).
    #[must_use]
    pub fn all() -> Self {
        Self {
            components: Component::ALL.to_vec(),
        }
    }

    /// Only the migrations of `component`.
    #[must_use]
    pub fn only(component: Component) -> Self {
        Self {
            components: vec![component],
        }
    }

    /// The migrations of the selected components, oldest first.
    pub fn migrations(&self) -> impl Iterator<Item = &'static Migration> + '_ {
        STEPS
            .iter()
            .filter(|m| self.components.contains(&m.component))
    }

    /// The selected migrations and their state in this database. Read only: it creates no
    /// table.
    ///
    /// # Errors
    ///
    /// [`Unavailable`](PgErrorKind::Unavailable) or [`Rejected`](PgErrorKind::Rejected) when
    /// the version tables cannot be read.
    pub async fn status(&self, conn: &mut AsyncPgConnection) -> Result<Vec<MigrationStatus>> {
        let applied = read_applied(conn).await?;
        Ok(self
            .migrations()
            .map(|m| MigrationStatus {
                name: m.name,
                component: m.component,
                state: match applied.iter().find(|a| a.version == m.version) {
                    None => MigrationState::Pending,
                    Some(Applied {
                        checksum: Some(sum),
                        ..
                    }) if *sum != m.checksum() => MigrationState::Changed {
                        applied: sum.clone(),
                    },
                    Some(_) => MigrationState::Applied,
                },
            })
            .collect())
    }

    /// The names of the selected migrations not applied yet, oldest first.
    ///
    /// # Errors
    ///
    /// As [`status`](Self::status).
    pub async fn pending(&self, conn: &mut AsyncPgConnection) -> Result<Vec<String>> {
        Ok(self
            .status(conn)
            .await?
            .into_iter()
            .filter(|s| s.state == MigrationState::Pending)
            .map(|s| s.name.to_owned())
            .collect())
    }

    /// Applies the selected migrations that are not applied yet, each in its own transaction
    /// together with its version row, and returns their names, oldest first (empty when the
    /// database is up to date, so running it again is harmless). Concurrent callers are
    /// serialised by an advisory lock: one applies, the others find nothing left to do.
    ///
    /// Before applying anything it checks every selected migration that is already applied:
    /// one whose SQL changed since is an error and nothing is applied. One applied without a
    /// checksum (by the diesel CLI or an older version of this crate) gets its checksum
    /// recorded.
    ///
    /// # Errors
    ///
    /// - [`MigrationChanged`](PgErrorKind::MigrationChanged): see above;
    /// - [`Migration`](PgErrorKind::Migration): a migration failed (its transaction was rolled
    ///   back, earlier ones stay applied; the source is the database's error);
    /// - [`Unavailable`](PgErrorKind::Unavailable): the database went away.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a migration and its version row commit together or not at all.
    pub async fn run(&self, conn: &mut AsyncPgConnection) -> Result<Vec<String>> {
        conn.transaction::<(), diesel::result::Error, _>(async |conn| {
            lock(conn).await?;
            conn.batch_execute(
                "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations ( \
                   version VARCHAR(50) PRIMARY KEY NOT NULL, \
                   run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
                 CREATE TABLE IF NOT EXISTS jetstream_bridge_migrations ( \
                   version VARCHAR(50) PRIMARY KEY NOT NULL, \
                   name TEXT NOT NULL, \
                   checksum TEXT NOT NULL, \
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
        })
        .await
        .map_err(PgError::database)?;

        // Refuse before applying anything when an applied migration changed.
        for status in self.status(conn).await? {
            if let MigrationState::Changed { applied } = status.state {
                let current = self
                    .migrations()
                    .find(|m| m.name == status.name)
                    .map(Migration::checksum)
                    .unwrap_or_default();
                return Err(PgError::new(PgErrorKind::MigrationChanged {
                    name: status.name.to_owned(),
                    applied,
                    current,
                }));
            }
        }
        let mut applied = Vec::new();
        for migration in self.migrations() {
            let ran = conn
                .transaction::<bool, StepError, _>(async |conn| {
                    lock(conn).await?;
                    let rows: Vec<Applied> = diesel::sql_query(
                        "SELECT d.version::text AS version, j.checksum \
                         FROM __diesel_schema_migrations d \
                         LEFT JOIN jetstream_bridge_migrations j USING (version) \
                         WHERE d.version = $1",
                    )
                    .bind::<Text, _>(migration.version)
                    .load(conn)
                    .await?;
                    let current = migration.checksum();
                    match rows.into_iter().next() {
                        Some(Applied {
                            checksum: Some(sum),
                            ..
                        }) if sum != current => Err(StepError::Changed {
                            applied: sum,
                            current,
                        }),
                        Some(Applied {
                            checksum: Some(_), ..
                        }) => Ok(false),
                        Some(Applied { checksum: None, .. }) => {
                            record_checksum(conn, migration).await?;
                            Ok(false)
                        }
                        None => {
                            conn.batch_execute(migration.up).await?;
                            diesel::sql_query(
                                "INSERT INTO __diesel_schema_migrations (version) VALUES ($1)",
                            )
                            .bind::<Text, _>(migration.version)
                            .execute(conn)
                            .await?;
                            record_checksum(conn, migration).await?;
                            Ok(true)
                        }
                    }
                })
                .await
                .map_err(|e| e.into_pg(migration.name))?;
            if ran {
                applied.push(migration.name.to_owned());
            }
        }
        Ok(applied)
    }
}

/// The check step's error: a database error or a changed migration.
enum StepError {
    Db(diesel::result::Error),
    Changed { applied: String, current: String },
}

impl From<diesel::result::Error> for StepError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

impl StepError {
    fn into_pg(self, name: &str) -> PgError {
        match self {
            Self::Db(e) if crate::classify(&e).is_transient() => PgError::database(e),
            Self::Db(e) => PgError::with_source(
                PgErrorKind::Migration {
                    name: name.to_owned(),
                },
                e,
            ),
            Self::Changed { applied, current } => PgError::new(PgErrorKind::MigrationChanged {
                name: name.to_owned(),
                applied,
                current,
            }),
        }
    }
}

async fn lock(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({LOCK_KEY})"))
        .execute(conn)
        .await
        .map(drop)
}

async fn record_checksum(
    conn: &mut AsyncPgConnection,
    migration: &Migration,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO jetstream_bridge_migrations (version, name, checksum) VALUES ($1, $2, $3) \
         ON CONFLICT (version) DO NOTHING",
    )
    .bind::<Text, _>(migration.version)
    .bind::<Text, _>(migration.name)
    .bind::<Text, _>(migration.checksum())
    .execute(conn)
    .await
    .map(drop)
}

/// Applied versions and their checksums; empty when no version table exists yet.
async fn read_applied(conn: &mut AsyncPgConnection) -> Result<Vec<Applied>> {
    #[derive(QueryableByName)]
    struct Tables {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        diesel: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ours: bool,
    }
    let tables: Tables = diesel::sql_query(
        "SELECT to_regclass('__diesel_schema_migrations') IS NOT NULL AS diesel, \
                to_regclass('jetstream_bridge_migrations') IS NOT NULL AS ours",
    )
    .get_result(conn)
    .await?;
    if !tables.diesel {
        return Ok(Vec::new());
    }
    let sql = if tables.ours {
        "SELECT d.version::text AS version, j.checksum FROM __diesel_schema_migrations d \
         LEFT JOIN jetstream_bridge_migrations j USING (version)"
    } else {
        "SELECT version::text AS version, NULL::text AS checksum FROM __diesel_schema_migrations"
    };
    Ok(diesel::sql_query(sql).load(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::migration::MigrationSource;
    use diesel::pg::Pg;

    #[test]
    fn steps_are_exactly_the_embedded_migrations() {
        let embedded = MigrationSource::<Pg>::migrations(&MIGRATIONS).unwrap();
        let mut embedded: Vec<(String, String)> = embedded
            .iter()
            .map(|m| (m.name().version().to_string(), m.name().to_string()))
            .collect();
        embedded.sort();
        let steps: Vec<(String, String)> = STEPS
            .iter()
            .map(|s| (s.version.to_owned(), s.name.to_owned()))
            .collect();
        assert_eq!(steps, embedded, "STEPS must list every migration directory");
    }

    #[test]
    fn components_select_their_steps() {
        let outbox: Vec<_> = Migrator::only(Component::Outbox)
            .migrations()
            .map(|m| m.component)
            .collect();
        assert!(!outbox.is_empty());
        assert!(outbox.iter().all(|c| *c == Component::Outbox));
        assert_eq!(Migrator::all().migrations().count(), STEPS.len());
        assert_eq!("Inbox".parse::<Component>().unwrap(), Component::Inbox);
        assert!("both".parse::<Component>().is_err());
    }

    #[test]
    fn checksum_ignores_carriage_returns_only() {
        let a = Migration {
            version: "1",
            name: "a",
            component: Component::Outbox,
            up: "CREATE TABLE a ();\n",
        };
        let crlf = Migration {
            up: "CREATE TABLE a ();\r\n",
            ..a
        };
        let other = Migration {
            up: "CREATE TABLE b ();\n",
            ..a
        };
        assert_eq!(a.checksum(), crlf.checksum());
        assert_ne!(a.checksum(), other.checksum());
        assert_eq!(a.checksum().len(), 16);
    }
}
