//! [`PgServer`]: a private PostgreSQL server process, for fault tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use rustix::process::Signal;
use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::{self, LOOPBACK};

const INSTALL_HINT: &str = "install it with `apt-get install postgresql` (or run \
    `bash .ci/services.sh`), or set JB_TEST_PG_BIN_DIR to the directory holding `initdb` and \
    `postgres`";

/// How long one start may take until a connection succeeds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`PgServer::stop`] waits after the fast-shutdown signal before it SIGKILLs.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Starts tried before giving up: a fresh port each time on first start (another process may
/// take the free port first); the same port on restart (after `kill9`, a dying backend may
/// still hold the old shared memory for a moment).
const START_ATTEMPTS: usize = 3;

const POLL: Duration = Duration::from_millis(20);

/// A private PostgreSQL server on `127.0.0.1` (a free port) with its data directory and socket
/// in a temp directory, trust authentication for the `postgres` role, and `fsync=off` for speed
/// (committed rows survive [`kill9`](Self::kill9), just not a machine crash), for tests that
/// kill or restart the database.
///
/// When the test runs as root, `initdb` and `postgres` run as the `postgres` OS user (they
/// refuse root) and the temp directory is handed to that user. The binaries come from
/// `$JB_TEST_PG_BIN_DIR`, else `initdb` on `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
///
/// The postmaster is a child of the test process; `Drop` SIGKILLs it and its backends by PID
/// and deletes the temp directory.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// use jetstream_bridge_testkit::PgServer;
///
/// let pg = PgServer::spawn().await;
/// let conn = pg.connect().await;
/// pg.kill9();               // crash: postmaster and backends SIGKILLed
/// pg.restart().await;       // same port and data, after crash recovery
/// # drop(conn);
/// # }
/// ```
#[derive(Debug)]
pub struct PgServer {
    bin_dir: PathBuf,
    dir: TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl PgServer {
    /// Runs `initdb` in a temp directory, starts `postgres`, and waits until it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// When the binaries are missing (with an install hint), when running as root without a
    /// `postgres` OS user, or when the server does not start; the message includes its log.
    pub async fn spawn() -> Self {
        let bin_dir = find_bin_dir();
        let run_as = if rustix::process::geteuid().is_root() {
            Some(postgres_os_user())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("jb-pg-")
            .tempdir()
            .expect("cannot create a temp directory for PostgreSQL");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap_or_else(|e| {
                panic!(
                    "cannot hand {} to the postgres OS user: {e}",
                    dir.path().display()
                )
            });
        }
        let mut server = Self {
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("postgres.log"),
            bin_dir,
            dir,
            run_as,
            port: 0,
            child: Mutex::new(None),
        };
        server.initdb().await;

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = process::free_ports(1)[0];
            match server.start().await {
                Ok(child) => {
                    *server.child.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(child);
                    return server;
                }
                Err(e) => failures.push(e),
            }
        }
        panic!("PostgreSQL did not start: {}", failures.join("\n\n"));
    }

    async fn initdb(&self) {
        let mut cmd = tokio::process::Command::new(self.bin_dir.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().await.unwrap_or_else(|e| {
            panic!(
                "cannot run {}/initdb: {e}; {INSTALL_HINT}",
                self.bin_dir.display()
            )
        });
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", &format!("listen_addresses={LOOPBACK}")])
            // Committed data survives kill9 (it is in the OS page cache); only a machine crash
            // could lose it. `synchronous_commit` stays on: with it off, a SIGKILL would lose
            // the last commits still in shared memory.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=50"])
            .args(["-c", "shared_buffers=16MB"])
            .current_dir(self.dir.path());
        let (out, err) = process::log_stdio(&self.log_path);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some((uid, gid)) = self.run_as {
            // std drops root's supplementary groups before setuid.
            cmd.uid(uid).gid(gid);
        }
        cmd.process_group(0);
        cmd
    }

    /// Starts the postmaster and waits until a connection succeeds.
    async fn start(&self) -> Result<Child, String> {
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("cannot start {}/postgres: {e}", self.bin_dir.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let url = self.url();
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), AsyncPgConnection::establish(&url));
            if let Ok(Ok(_conn)) = attempt.await {
                return Ok(child);
            }
            let problem = match child.try_wait() {
                Ok(Some(status)) => format!("exited with {status}"),
                _ if Instant::now() > deadline => format!("not ready after {START_TIMEOUT:?}"),
                _ => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let pid = child.id();
            process::kill_and_reap(child, true);
            return Err(format!(
                "postgres (pid {pid}, port {}) {problem}\n{}",
                self.port,
                process::log_tail(&self.log_path, 30)
            ));
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    #[must_use]
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `database` on this server.
    #[must_use]
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@{LOOPBACK}:{}/{database}", self.port)
    }

    /// The port; the same after every restart.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID, `None` after [`kill9`](Self::kill9) or [`stop`](Self::stop).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The data directory (kept across restarts).
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (stdout and stderr of every start, appended).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Connects to the `postgres` database.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn connect(&self) -> AsyncPgConnection {
        let url = self.url();
        AsyncPgConnection::establish(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to private PostgreSQL at {url}: {e}"))
    }

    /// Simulates a crash: SIGKILLs the postmaster and its backends by PID and reaps the
    /// postmaster. Open connections break and new ones are refused until
    /// [`restart`](Self::restart). No-op when not running.
    pub fn kill9(&self) {
        if let Some(child) = self.child().take() {
            process::kill_and_reap(child, true);
        }
    }

    /// Fast shutdown (SIGINT: open transactions roll back, connections close) and wait; SIGKILL
    /// after 30 s. No-op when not running.
    pub async fn stop(&self) {
        let child = self.child().take();
        if let Some(child) = child {
            process::terminate(child, Signal::INT, STOP_GRACE, true).await;
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and data directory
    /// (running crash recovery after [`kill9`](Self::kill9)) and waits until it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// When it does not come back; the message includes its log.
    pub async fn restart(&self) {
        self.stop().await;
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match self.start().await {
                Ok(child) => {
                    *self.child() = Some(child);
                    return;
                }
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "PostgreSQL did not restart on port {}: {}",
            self.port,
            failures.join("\n\n")
        );
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(child) = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            process::kill_and_reap(child, true);
        }
    }
}

/// The directory holding `initdb` and `postgres`.
fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JB_TEST_PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
                .collect()
        })
        .unwrap_or_default();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    let fallbacks: Vec<PathBuf> = versioned.into_iter().map(|(_, dir)| dir).collect();
    let initdb = process::find_binary("initdb", None, &fallbacks, INSTALL_HINT);
    // `initdb` on PATH may be a symlink into the real bin directory, where `postgres` lives.
    let canonical = initdb.canonicalize().ok();
    let found = [initdb.parent(), canonical.as_deref().and_then(Path::parent)]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("postgres").is_file())
        .map(Path::to_path_buf);
    found.unwrap_or_else(|| {
        panic!(
            "no `postgres` binary next to {}; {INSTALL_HINT}",
            initdb.display()
        )
    })
}

/// `(uid, gid)` of the `postgres` OS user, from `/etc/passwd`.
fn postgres_os_user() -> (u32, u32) {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                match fields.as_slice() {
                    ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                    _ => None,
                }
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "PgServer runs as root, and initdb/postgres refuse root, but there is no \
                 `postgres` OS user to run them as; {INSTALL_HINT} (the package creates the user)"
            )
        })
}
