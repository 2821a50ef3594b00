//! [`TestDb`]: a fresh PostgreSQL database per test, cloned from a migrated template.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::sql_types::{BigInt, Bool, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_pg::Migrator;
use tokio::sync::OnceCell;

use crate::unique::unique_token;

/// The admin connection used when neither `JB_TEST_PG_ADMIN_URL` nor `DATABASE_URL` is set.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Per-test databases older than this are dropped by the first `TestDb` of a process.
const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// Pool size of [`TestDb::pool`].
const POOL_SIZE: usize = 5;

/// Session advisory lock held while a template is checked or built (any fixed key will do;
/// this one spells "jbtmpl" in ASCII).
const TEMPLATE_LOCK_KEY: i64 = 0x6a62_746d_706c;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static SWEPT: AtomicBool = AtomicBool::new(false);

/// A fresh, empty-of-data PostgreSQL database for one test, with every jetstream-bridge table
/// (`jetstream_bridge_pg::Migrator::all()`) applied, so tests can commit, race and use `SKIP LOCKED` for real (no test transactions).
///
/// [`TestDb::new`] clones `jb_template_<hash of the migrations>`, which the first caller on the
/// server builds under a `pg_advisory_lock` (safe across threads and test binaries) and then
/// closes to connections, as `CREATE DATABASE … TEMPLATE` requires. A change to any migration
/// changes the hash, so a new template is built; old templates stay (drop them by hand with
/// `ALTER DATABASE … IS_TEMPLATE false; DROP DATABASE …` if they pile up).
///
/// Databases are named `jb_t_<unix secs>_<16 random chars>`. Call
/// [`teardown`](Self::teardown) at the end of the test. `Drop` never blocks: a detached
/// background thread tries to drop a database whose test panicked, and the first `TestDb` of
/// every later process drops `jb_t_*` databases older than an hour.
///
/// The server comes from `JB_TEST_PG_ADMIN_URL`, else `DATABASE_URL`, else
/// `postgres://postgres@127.0.0.1:5432/postgres`; the role needs `CREATEDB`.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() {
/// use diesel_async::RunQueryDsl;
/// use jetstream_bridge_testkit::TestDb;
///
/// let db = TestDb::new().await;
/// let mut conn = db.pool().get().await.unwrap();
/// diesel::sql_query("CREATE TABLE t (id int)").execute(&mut conn).await.unwrap();
/// drop(conn);
/// db.teardown().await;
/// # }
/// ```
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
    pool: Pool<AsyncPgConnection>,
    torn_down: bool,
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

#[derive(QueryableByName)]
struct DatabaseRow {
    #[diesel(sql_type = Text)]
    datname: String,
    #[diesel(sql_type = Bool)]
    datistemplate: bool,
}

impl TestDb {
    /// Creates a database cloned from the migrated template.
    ///
    /// Works on any runtime flavour: the migrations run asynchronously.
    ///
    /// # Panics
    ///
    /// When the server is unreachable, a migration fails, or the database cannot be created.
    pub async fn new() -> Self {
        let admin_url = admin_url();
        let template = TEMPLATE
            .get_or_init(|| ensure_template(admin_url.clone()))
            .await
            .clone();
        Self::create(admin_url, &format!("TEMPLATE \"{template}\"")).await
    }

    /// Creates an empty database (cloned from `template0`, no migrations).
    ///
    /// # Panics
    ///
    /// When the server is unreachable or the database cannot be created.
    pub async fn empty() -> Self {
        Self::create(admin_url(), "TEMPLATE template0").await
    }

    async fn create(admin_url: String, options: &str) -> Self {
        let mut admin = connect_admin(&admin_url).await;
        if !SWEPT.swap(true, Ordering::SeqCst) {
            drop_stale_databases(&mut admin).await;
        }
        let name = format!("jb_t_{}_{}", unix_now(), unique_token());
        diesel::sql_query(format!("CREATE DATABASE \"{name}\" {options}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE \"{name}\" {options}: {e}"));
        let url = database_url(&admin_url, &name);
        let pool = Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(&url))
            .max_size(POOL_SIZE)
            .build()
            .expect("a deadpool without timeouts needs no runtime, so building it cannot fail");
        Self {
            name,
            url,
            admin_url,
            pool,
            torn_down: false,
        }
    }

    /// The database name, `jb_t_<unix secs>_<16 random chars>`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection URL of this database (the admin URL with the database name replaced).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin URL the database was created through (`JB_TEST_PG_ADMIN_URL`, else
    /// `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`).
    #[must_use]
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A deadpool pool of up to 5 connections to this database (clone it to share).
    #[must_use]
    pub fn pool(&self) -> &Pool<AsyncPgConnection> {
        &self.pool
    }

    /// A new connection to this database, outside the pool.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test database {}: {e}", self.name))
    }

    /// Closes the pool and drops the database with `DROP DATABASE … WITH (FORCE)`, which also
    /// ends connections still open to it.
    ///
    /// # Panics
    ///
    /// When the database cannot be dropped.
    pub async fn teardown(mut self) {
        self.torn_down = true;
        self.pool.close();
        let mut admin = connect_admin(&self.admin_url).await;
        drop_database(&mut admin, &self.name)
            .await
            .unwrap_or_else(|e| panic!("cannot drop test database {}: {e}", self.name));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.pool.close();
        // Best effort and non-blocking: the test's runtime may be shutting down, so drop the
        // database from a detached thread with its own runtime.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::Builder::new()
            .name("testkit-db-cleanup".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(mut admin) = AsyncPgConnection::establish(&admin_url).await {
                        let _ = drop_database(&mut admin, &name).await;
                    }
                });
            });
    }
}

fn admin_url() -> String {
    std::env::var("JB_TEST_PG_ADMIN_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn connect_admin(admin_url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
            "cannot connect to PostgreSQL at {}: {e}; start it with `bash .ci/services.sh`, or \
             set JB_TEST_PG_ADMIN_URL (or DATABASE_URL) to a role with CREATEDB",
            redact(admin_url)
        )
        })
}

/// `admin_url` with its path replaced by `/<database>`.
pub(crate) fn database_url(admin_url: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin_url)
        .unwrap_or_else(|e| panic!("invalid PostgreSQL URL {}: {e}", redact(admin_url)));
    url.set_path(&format!("/{database}"));
    url.into()
}

/// The URL with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.into()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn drop_database(
    admin: &mut AsyncPgConnection,
    name: &str,
) -> Result<usize, diesel::result::Error> {
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin)
        .await
}

/// Drops `jb_t_<unix secs>_*` databases older than [`STALE_AFTER`] (left behind by killed test
/// processes). Best effort: another process may be dropping the same ones.
async fn drop_stale_databases(admin: &mut AsyncPgConnection) {
    let cutoff = unix_now().saturating_sub(STALE_AFTER.as_secs());
    let rows: Vec<DatabaseRow> = diesel::sql_query(
        "SELECT datname::text AS datname, datistemplate FROM pg_database \
         WHERE datname LIKE 'jb\\_t\\_%'",
    )
    .load(admin)
    .await
    .unwrap_or_default();
    for row in rows {
        let created = row
            .datname
            .strip_prefix("jb_t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if !row.datistemplate && created.is_some_and(|c| c < cutoff) {
            let _ = drop_database(admin, &row.datname).await;
        }
    }
}

/// Creates `jb_template_<hash>` unless it exists, under a session advisory lock; returns its
/// name. Runs once per process (behind [`TEMPLATE`]).
async fn ensure_template(admin_url: String) -> String {
    let template = format!("jb_template_{:016x}", migrations_hash());
    let mut admin = connect_admin(&admin_url).await;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("pg_advisory_lock for the test template: {e}"));

    let existing: Vec<DatabaseRow> = diesel::sql_query(
        "SELECT datname::text AS datname, datistemplate FROM pg_database WHERE datname = $1",
    )
    .bind::<Text, _>(&template)
    .load(&mut admin)
    .await
    .unwrap_or_else(|e| panic!("looking up template database {template}: {e}"));
    // `IS_TEMPLATE true` is set last, so a database without it is a crashed half-build.
    if !existing
        .as_slice()
        .first()
        .is_some_and(|row| row.datistemplate)
    {
        if !existing.is_empty() {
            drop_database(&mut admin, &template)
                .await
                .unwrap_or_else(|e| panic!("dropping half-built template {template}: {e}"));
        }
        build_template(&mut admin, &admin_url, &template).await;
    }

    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("pg_advisory_unlock for the test template: {e}"));
    template
}

async fn build_template(admin: &mut AsyncPgConnection, admin_url: &str, template: &str) {
    diesel::sql_query(format!("CREATE DATABASE \"{template}\" TEMPLATE template0"))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE \"{template}\": {e}"));

    let url = database_url(admin_url, template);
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to template {template}: {e}"));
    Migrator::all()
        .run(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("migrating template {template}: {e}"));
    // Dropping the connection closes it; the backend may still be exiting, which the
    // terminate below and CREATE DATABASE's own short wait for other sessions cover.
    drop(conn);

    for sql in [
        format!("ALTER DATABASE \"{template}\" ALLOW_CONNECTIONS false"),
        format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{template}' AND pid <> pg_backend_pid()"
        ),
        format!("ALTER DATABASE \"{template}\" IS_TEMPLATE true"),
    ] {
        diesel::sql_query(&sql)
            .execute(admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// FNV-1a over every embedded migration's name and checksum, so the template name changes
/// whenever a migration does.
fn migrations_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in Migrator::all().migrations() {
        for byte in migration
            .name()
            .bytes()
            .chain([0])
            .chain(migration.checksum().into_bytes())
            .chain([0])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_path() {
        assert_eq!(
            database_url(
                "postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable",
                "jb_t_1_x"
            ),
            "postgres://u:p@127.0.0.1:5432/jb_t_1_x?sslmode=disable"
        );
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
