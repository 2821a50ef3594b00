//! Integration tests of the `jetstream-bridge` command line against the shared NATS and
//! PostgreSQL (`bash .ci/services.sh`): the binary is run as a process
//! (`CARGO_BIN_EXE_jetstream-bridge`) with a clean environment, under unique names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check_health;
mod dlq;
mod errors;
mod maintenance;
mod migrate;

use std::time::Duration;

use jetstream_bridge_config::{Config, ConfigBuilder};
use jetstream_bridge_testkit::{TestDb, TestNats};
use serde_json::Value;

/// Generous bound for awaited events; a healthy run takes a fraction of it.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_jetstream-bridge");

/// What one run of the binary printed and returned.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts success and returns stdout parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        assert!(self.success, "command failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts failure and returns stdout and stderr together.
    #[track_caller]
    pub(crate) fn failure(&self) -> String {
        assert!(!self.success, "command succeeded unexpectedly: {self:?}");
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with exactly `vars` as its environment.
pub(crate) async fn run_with(vars: &[(String, String)], args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command finished within 120 s")
    .expect("the binary runs");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A service pair (`billing` consuming from `orders`) under a unique env token and stream on
/// the shared NATS, a fresh migrated database, and the environment the binary gets.
pub(crate) struct Env {
    pub(crate) t: TestNats,
    pub(crate) db: TestDb,
    pub(crate) vars: Vec<(String, String)>,
}

impl Env {
    /// Test defaults: JS API allowed, one connect attempt, max_deliver 3, backoff 200ms/400ms,
    /// inbox on; `extra` adds or overrides variables.
    pub(crate) async fn new(extra: &[(&str, &str)]) -> Self {
        Self::with_db(TestDb::new().await, extra).await
    }

    pub(crate) async fn with_db(db: TestDb, extra: &[(&str, &str)]) -> Self {
        let t = TestNats::shared().await;
        let stream = t.name("stream");
        t.track_stream(stream.clone());
        t.track_stream(format!("{stream}-dlq"));
        let mut vars: Vec<(String, String)> = [
            ("NATS_URLS", t.url()),
            ("NATS_ENV", t.name("env").as_str()),
            ("APP_NAME", "billing"),
            ("DESTINATION_APP", "orders"),
            ("JETSTREAM_STREAM_NAME", stream.as_str()),
            ("JETSTREAM_DISABLE_JS_API", "false"),
            ("JETSTREAM_CONNECT_RETRY_ATTEMPTS", "1"),
            ("JETSTREAM_MAX_DELIVER", "3"),
            ("JETSTREAM_BACKOFF", "200ms,400ms"),
            ("JETSTREAM_ACK_WAIT", "5s"),
            ("JETSTREAM_USE_INBOX", "true"),
            ("DATABASE_URL", db.url()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        Self { t, db, vars }
    }

    /// The configuration the binary reads.
    pub(crate) fn config(&self) -> Config {
        ConfigBuilder::from_env_pairs(self.vars.iter().cloned())
            .build()
            .unwrap()
    }

    /// Runs the binary with this environment.
    pub(crate) async fn cli(&self, args: &[&str]) -> Run {
        run_with(&self.vars, args).await
    }

    /// Runs `ensure-topology` and asserts it succeeded.
    pub(crate) async fn provision(&self) {
        let run = self.cli(&["ensure-topology"]).await;
        assert!(run.success, "{run:?}");
    }

    pub(crate) async fn teardown(self) {
        self.t.teardown().await;
        self.db.teardown().await;
    }
}

/// Messages stored in stream `name`.
pub(crate) async fn stream_len(t: &TestNats, name: &str) -> u64 {
    let mut stream = t.jetstream().get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}
