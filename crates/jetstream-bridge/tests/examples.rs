//! Runs the templates users copy against the real servers, so they cannot rot:
//! `examples/producer.rs` publishes an order through the outbox, and `examples/worker.rs`, run
//! as its own process, applies it, answers its health probe, and exits 0 on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs,
    unreachable_pub,
    dead_code
)]

#[path = "../examples/producer.rs"]
mod producer;
#[path = "../examples/worker.rs"]
mod worker;

use std::process::Stdio;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge::topology::{ensure_topology, EnsureOptions, TopologySpec};
use jetstream_bridge::{Config, ConfigBuilder};
use jetstream_bridge_testkit::{TestDb, TestNats};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Set in the environment of the worker process this test binary starts.
const CHILD: &str = "JB_EXAMPLE_WORKER_CHILD";

const WAIT: Duration = Duration::from_secs(30);

/// Not a test of its own: the worker process that
/// [`worker_applies_events_and_exits_cleanly_on_sigterm`] starts (this test binary run again
/// with `JB_EXAMPLE_WORKER_CHILD` set). Without it, it does nothing.
#[test]
fn worker_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    worker::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(worker::run()).unwrap();
}

fn vars(
    t: &TestNats,
    env: &str,
    stream: &str,
    app: &str,
    dest: &str,
    db: &TestDb,
) -> Vec<(String, String)> {
    [
        ("NATS_URLS", t.url()),
        ("NATS_ENV", env),
        ("APP_NAME", app),
        ("DESTINATION_APP", dest),
        ("JETSTREAM_STREAM_NAME", stream),
        ("JETSTREAM_USE_OUTBOX", "true"),
        ("JETSTREAM_USE_INBOX", "true"),
        ("JETSTREAM_DISABLE_JS_API", "false"),
        ("JETSTREAM_BACKOFF", "1s,5s,15s,30s"),
        ("DATABASE_URL", db.url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn config(vars: &[(String, String)]) -> Config {
    ConfigBuilder::from_env_pairs(vars.iter().cloned())
        .build()
        .unwrap()
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// One GET on `addr`; returns the status line.
async fn get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_applies_events_and_exits_cleanly_on_sigterm() {
    let t = TestNats::shared().await;
    let env = t.name("env");
    let stream = t.name("stream");
    t.track_stream(stream.clone());
    t.track_stream(format!("{stream}-dlq"));
    let billing_db = TestDb::new().await;
    let orders_db = TestDb::new().await;
    let billing = vars(&t, &env, &stream, "billing", "orders", &billing_db);
    let orders = vars(&t, &env, &stream, "orders", "billing", &orders_db);
    for side in [&billing, &orders] {
        ensure_topology(
            t.jetstream(),
            &TopologySpec::from_config(&config(side)),
            &EnsureOptions::new(),
        )
        .await
        .unwrap();
    }

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "worker_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("HEALTH_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(billing.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("worker: {line}");
            if line.contains("health router listening") {
                return line
                    .split("addr=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
            }
        }
        panic!("the worker ended before serving health");
    })
    .await
    .expect("the worker started within 30 s");
    // Keep echoing the worker's log (and keep its stdout pipe drained).
    let echo = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("worker: {line}");
        }
    });

    let event_id = producer::run(&config(&orders), orders_db.pool().clone())
        .await
        .unwrap();
    billing_db.wait_processed(event_id.as_str(), WAIT).await;
    let mut conn = billing_db.pool().get().await.unwrap();
    let invoices: N = diesel::sql_query("SELECT count(*) AS n FROM invoices")
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(invoices.n, 1, "the worker applied the order once");
    drop(conn);
    assert!(get(&addr, "/health/live").await.contains("200"), "liveness");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("the worker stopped within 40 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "the worker exited with {status}");
    echo.await.unwrap();

    t.teardown().await;
    billing_db.teardown().await;
    orders_db.teardown().await;
}
