//! Integration tests of the health crate against the shared NATS and PostgreSQL
//! (`bash .ci/services.sh`) and, for faults, a private `nats-server`; HTTP requests go to the
//! router served on `127.0.0.1:0`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fault_nats;
mod metrics;
mod outbox;
mod readiness;
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::HeaderMap;
use jetstream_bridge_config::{Config, ConfigBuilder, Envelope};
use jetstream_bridge_health::{router, Health};
use jetstream_bridge_testkit::{TestDb, TestNats};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for awaited events; a healthy run takes a fraction of it.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A per-test database and NATS namespace with the topology provisioned (JS API allowed).
pub(crate) struct Env {
    pub(crate) t: TestNats,
    pub(crate) db: TestDb,
    pub(crate) config: Config,
    base: ConfigBuilder,
}

impl Env {
    pub(crate) async fn new(tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        let t = TestNats::shared().await;
        let db = TestDb::new().await;
        let stream = t.name("stream");
        t.track_stream(stream.clone());
        t.track_stream(format!("{stream}-dlq"));
        let base = tune(
            Config::builder(t.name("env"), "orders", "billing")
                .nats_urls(t.url())
                .stream_name(stream.as_str())
                .disable_js_api(false)
                .use_inbox(false)
                .max_deliver(3)
                .backoff(["100ms"]),
        );
        let config = base.clone().build().unwrap();
        ensure_topology(
            t.jetstream(),
            &TopologySpec::from_config(&config),
            &EnsureOptions::new(),
        )
        .await
        .unwrap();
        Self {
            t,
            db,
            config,
            base,
        }
    }

    /// The same names with `tune` applied on top (e.g. restricted mode for the runtime).
    pub(crate) fn config_with(&self, tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Config {
        tune(self.base.clone()).build().unwrap()
    }

    /// A checker on the shared connection, probing on every call.
    pub(crate) fn health(&self) -> jetstream_bridge_health::HealthBuilder {
        Health::builder(&self.config, self.t.jetstream().clone()).min_probe_interval(Duration::ZERO)
    }

    /// Publishes an envelope of `event_type` to the consumer's subject.
    pub(crate) async fn publish(&self, event_type: &str, n: u64) {
        let e = Envelope::builder(event_type, serde_json::json!({ "n": n }))
            .producer("orders")
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.event_id.as_str());
        self.t
            .jetstream()
            .publish_with_headers(
                self.config.subjects().destination().as_str().to_owned(),
                headers,
                e.to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub(crate) async fn teardown(self) {
        self.t.teardown().await;
        self.db.teardown().await;
    }
}

/// The router of `health`, served on a free loopback port until the test ends.
pub(crate) async fn serve(health: Health) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(health)).await });
    addr
}

/// A response: status, content type, body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` over a real HTTP/1.1 connection (`Connection: close`, body read to the end).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "unexpected chunked body: {head}"
    );
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "content-length");
    }
    Response {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body: body.to_owned(),
    }
}

/// Samples of an OpenMetrics text: `name{labels}` → value (labels as written).
pub(crate) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker: {text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}
