//! The fault suite: `fault-worker` processes and private servers killed with SIGKILL, exact
//! counts checked in PostgreSQL and the stream. Every scenario prints one `SUMMARY` line
//! (`cargo test -p jetstream-bridge-faults -- --nocapture`), the figures in
//! `docs/RELIABILITY.md`.

// Test code: panics are the assertions; the summary lines are the suite's report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod cluster;
mod consumer;
mod nats;
mod poison;
mod relay;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use diesel_async::SimpleAsyncConnection;
use futures_util::{StreamExt, TryStreamExt};
use jetstream_bridge_config::{Config, MSG_ID_HEADER};
use jetstream_bridge_faults::{vars, ATTEMPTS_DDL, EFFECTS_DDL};
use jetstream_bridge_outbox::{NewEvent, Outbox};
use jetstream_bridge_testkit::{eventually, unique_token, NatsServer, TestDb};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};
use serde_json::json;

/// Bound for a whole phase (all events through); a healthy run takes a fraction of it.
pub(crate) const PHASE: Duration = Duration::from_secs(120);

/// The worker's defaults (see `jetstream_bridge_faults::vars`).
const DEFAULT_MAX_DELIVER: &str = "10";
const DEFAULT_BACKOFF: &str = "200ms";
const DEFAULT_ACK_WAIT: &str = "2s";

/// The NATS user of the private servers with authorization.
const NATS_USER: &str = "fw";

/// One scenario's world: a database with the outbox, inbox, `effects` and `attempts` tables,
/// a stream provisioned for the relay's and the consumer's configs, a secret in every URL the
/// workers get, and a log file all its workers write to.
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) secret: String,
    pub(crate) db: TestDb,
    pub(crate) db_url: String,
    pub(crate) nats_urls: String,
    pub(crate) js: Context,
    pub(crate) relay_config: Config,
    pub(crate) spec: TopologySpec,
    env: String,
    stream: String,
    replicas: usize,
    settings: Vec<(String, String)>,
    logs: tempfile::TempDir,
    started: Instant,
}

/// A private single server requiring user and password; returns it and the secret.
pub(crate) async fn secured_server() -> (NatsServer, String) {
    let secret = format!("pw{}", unique_token());
    let server = NatsServer::with_config(format!(
        "authorization {{ user: {NATS_USER}, password: \"{secret}\" }}"
    ))
    .await;
    (server, secret)
}

/// `nats://fw:<secret>@127.0.0.1:<port>`.
pub(crate) fn url_with_credentials(server: &NatsServer, secret: &str) -> String {
    format!("nats://{NATS_USER}:{secret}@127.0.0.1:{}", server.port())
}

/// A test client of `server` (a JetStream context with a short request timeout).
pub(crate) async fn client(urls: &[String], secret: Option<&str>) -> Context {
    let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    if let Some(secret) = secret {
        options = options.user_and_password(NATS_USER.into(), secret.into());
    }
    let client = options.connect(urls).await.unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    js
}

impl Scenario {
    /// `nats_urls` are what the workers get (credentials included); `js` the test's client;
    /// `secret` is also put into the PostgreSQL URL (trust authentication ignores it).
    /// `settings` (`FW_MAX_DELIVER`, `FW_BACKOFF`, `FW_ACK_WAIT`) go to every worker and into
    /// the provisioned durable, so both agree.
    pub(crate) async fn new(
        name: &'static str,
        nats_urls: String,
        js: Context,
        secret: String,
        replicas: usize,
        settings: &[(&str, &str)],
    ) -> Self {
        let setting = |key: &str, default: &str| {
            settings
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(default.to_owned(), |(_, v)| (*v).to_owned())
        };
        let backoff: Vec<String> = setting(vars::BACKOFF, DEFAULT_BACKOFF)
            .split(',')
            .map(str::to_owned)
            .collect();
        let max_deliver: u32 = setting(vars::MAX_DELIVER, DEFAULT_MAX_DELIVER)
            .parse()
            .unwrap();
        let ack_wait = setting(vars::ACK_WAIT, DEFAULT_ACK_WAIT);
        let db = TestDb::new().await;
        db.conn()
            .await
            .batch_execute(&format!("{EFFECTS_DDL}; {ATTEMPTS_DDL};"))
            .await
            .unwrap();
        let mut url = url::Url::parse(db.url()).unwrap();
        url.set_password(Some(&secret)).unwrap();
        let token = unique_token();
        let env = format!("f{token}");
        let stream = format!("faults-{token}");
        let config = |app: &str, peer: &str| {
            Config::builder(env.as_str(), app, peer)
                .stream_name(stream.as_str())
                .stream_replicas(replicas)
                .disable_js_api(false)
                .max_deliver(max_deliver)
                .backoff(backoff.clone())
                .ack_wait(ack_wait.as_str())
                .build()
                .unwrap()
        };
        let relay_config = config("orders", "billing");
        let consumer_config = config("billing", "orders");
        let spec = TopologySpec::from_config(&consumer_config);
        for config in [&relay_config, &consumer_config] {
            ensure_topology(
                &js,
                &TopologySpec::from_config(config),
                &EnsureOptions::new(),
            )
            .await
            .unwrap();
        }
        Self {
            name,
            secret,
            db,
            db_url: url.into(),
            nats_urls,
            js,
            relay_config,
            spec,
            env,
            stream,
            replicas,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            logs: tempfile::tempdir().unwrap(),
            started: Instant::now(),
        }
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.logs.path().join("workers.log")
    }

    /// Starts a worker with `role` and the extra `FW_*` settings.
    pub(crate) fn worker(&self, role: &str, extra: &[(&str, &str)]) -> Worker {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fault-worker"));
        cmd.env(vars::ROLE, role)
            .env(vars::NATS_URLS, &self.nats_urls)
            .env(vars::DATABASE_URL, &self.db_url)
            .env(vars::ENV, &self.env)
            .env(vars::STREAM, &self.stream)
            .env(vars::REPLICAS, self.replicas.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.settings {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Worker {
            child: Some(cmd.spawn().unwrap()),
        }
    }

    /// Enqueues `n` events (`{"n": i}`, plus `{"poison": true}` at index `poison`) in
    /// transactions of 1000; returns their event ids in order.
    pub(crate) async fn enqueue(&self, n: usize, poison: Option<usize>) -> Vec<String> {
        let outbox = Outbox::new(&self.relay_config);
        let mut conn = self.db.conn().await;
        let mut ids = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let events = chunk.iter().map(|&i| {
                let payload = if Some(i) == poison {
                    json!({ "n": i, "poison": true })
                } else {
                    json!({ "n": i })
                };
                NewEvent::new("user.created", payload)
            });
            let batch = outbox.enqueue_batch(&mut conn, events).await.unwrap();
            ids.extend(batch.iter().map(|id| id.as_str().to_owned()));
        }
        ids
    }

    /// Enqueues `n` events in the background, `chunk` per transaction every `every`, so the
    /// relay is busy for the whole of a fault.
    pub(crate) async fn trickle(
        &self,
        n: usize,
        chunk: usize,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let outbox = Outbox::new(&self.relay_config);
        let mut conn = self.db.conn().await;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            for start in (0..n).step_by(chunk) {
                ticker.tick().await;
                let events = (start..n.min(start + chunk))
                    .map(|i| NewEvent::new("user.created", json!({ "n": i })));
                outbox.enqueue_batch(&mut conn, events).await.unwrap();
            }
        })
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        self.db.count(sql).await
    }

    /// Outbox rows marked sent.
    pub(crate) async fn sent(&self) -> i64 {
        self.count("SELECT count(*) AS n FROM jetstream_outbox_events WHERE status = 'sent'")
            .await
    }

    /// Distinct event ids with an effect.
    pub(crate) async fn applied(&self) -> i64 {
        self.count("SELECT count(DISTINCT event_id) AS n FROM effects")
            .await
    }

    /// Effect rows beyond the first per event id.
    pub(crate) async fn duplicate_effects(&self) -> i64 {
        self.count("SELECT count(*) - count(DISTINCT event_id) AS n FROM effects")
            .await
    }

    /// `(messages, last_sequence)` of the main stream; `None` while it cannot be read (a
    /// server down, a leader election).
    pub(crate) async fn stream_state(&self) -> Option<(u64, u64)> {
        let mut stream = self.js.get_stream(self.spec.stream_name()).await.ok()?;
        let info = stream.info().await.ok()?;
        Some((info.state.messages, info.state.last_sequence))
    }

    /// Waits until the stream holds at least `n` messages.
    pub(crate) async fn wait_stream_at_least(&self, n: u64) {
        eventually(PHASE, || async {
            self.stream_state().await.is_some_and(|(m, _)| m >= n)
        })
        .await;
    }

    /// Waits until `probe` returns at least `n`; returns how long that took.
    pub(crate) async fn wait_count<F, Fut>(&self, n: i64, probe: F) -> Duration
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = i64>,
    {
        let start = Instant::now();
        eventually(PHASE, || async {
            let got = probe().await;
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} of {n}"))
            }
        })
        .await;
        start.elapsed()
    }

    /// The `Nats-Msg-Id` of every message stored in the stream (sequences 1..=last).
    pub(crate) async fn stream_event_ids(&self) -> Vec<String> {
        let stream = self.js.get_stream(self.spec.stream_name()).await.unwrap();
        let (_, last) = self.stream_state().await.unwrap();
        futures_util::stream::iter(1..=last)
            .map(|seq| {
                let stream = stream.clone();
                async move {
                    let message = stream.get_raw_message(seq).await?;
                    Ok::<_, async_nats::jetstream::stream::RawMessageError>(
                        message
                            .headers
                            .get(MSG_ID_HEADER)
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default(),
                    )
                }
            })
            .buffer_unordered(64)
            .try_collect()
            .await
            .unwrap()
    }

    /// Asserts that no worker output contains the secret, and that there was output.
    pub(crate) fn assert_no_secret_in_logs(&self) -> usize {
        let text = std::fs::read_to_string(self.log_path()).unwrap();
        assert!(
            text.contains("fault-worker: running"),
            "the workers' output was not captured:\n{text}"
        );
        assert!(
            !text.contains(&self.secret),
            "a worker printed the password; its output is in {}",
            self.log_path().display()
        );
        text.lines().count()
    }

    /// Prints the scenario's summary line.
    pub(crate) fn summary(&self, figures: &Figures) {
        println!(
            "SUMMARY {}: events={} cycles={} lost={} duplicate_effects={} \
             duplicate_stream_entries={} dead_lettered={} max_recovery_ms={} total_s={:.1} \
             log_lines_checked_for_password={}",
            self.name,
            figures.events,
            figures.cycles,
            figures.lost,
            figures
                .duplicate_effects
                .map_or("n/a".into(), |n| n.to_string()),
            figures.duplicate_stream_entries,
            figures.dead_lettered,
            figures.recovery.as_millis(),
            self.started.elapsed().as_secs_f64(),
            figures.log_lines,
        );
    }

    pub(crate) async fn teardown(self) {
        let _ = self.js.delete_stream(self.spec.stream_name()).await;
        let _ = self.js.delete_stream(self.spec.dlq_stream_name()).await;
        self.db.teardown().await;
    }
}

/// What a scenario reports.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) events: usize,
    pub(crate) cycles: usize,
    pub(crate) lost: i64,
    pub(crate) duplicate_effects: Option<i64>,
    pub(crate) duplicate_stream_entries: i64,
    pub(crate) dead_lettered: u64,
    pub(crate) recovery: Duration,
    pub(crate) log_lines: usize,
}

/// A `fault-worker` process; dropped = SIGKILLed.
pub(crate) struct Worker {
    child: Option<Child>,
}

impl Worker {
    /// SIGKILL by PID, then reap.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Still running (it never exits by itself; an exit is a failure).
    pub(crate) fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("worker was killed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker exited by itself"
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Distinct ids in `stream_ids`, and how many entries repeat one.
pub(crate) fn distinct(stream_ids: &[String]) -> (usize, usize) {
    let set: HashSet<&String> = stream_ids.iter().collect();
    (set.len(), stream_ids.len() - set.len())
}
