//! Integration tests of the outbox against the shared NATS and PostgreSQL (`bash .ci/services.sh`)
//! and, for faults, a private `nats-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bytes;
mod enqueue;
mod fault_nats;
mod fault_pg;
mod ordering;
mod publisher;
mod relay;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Context;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use jetstream_bridge_config::{Config, MSG_ID_HEADER};
use jetstream_bridge_outbox::{Outbox, Relay, RelayBuilder, RelayHandle, RelayStats};
pub(crate) use jetstream_bridge_testkit::eventually;
use jetstream_bridge_testkit::{TestDb, TestNats};

/// Generous bound for awaited events; a healthy run takes a fraction of it.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A per-test database and NATS namespace, a stream capturing the config's source subject.
pub(crate) struct Env {
    pub(crate) t: TestNats,
    pub(crate) db: TestDb,
    pub(crate) config: Config,
    pub(crate) stream: Stream,
    pub(crate) outbox: Outbox,
}

impl Env {
    pub(crate) async fn new() -> Self {
        let t = TestNats::shared().await;
        let db = TestDb::new().await;
        // env = the unique subject prefix, so the source subject is `<prefix>.orders.sync.billing`.
        let config = Config::builder(t.subject_prefix(), "orders", "billing")
            .build()
            .unwrap();
        let stream = t.create_stream(t.stream_config("orders")).await;
        let outbox = Outbox::new(&config);
        Self {
            t,
            db,
            config,
            stream,
            outbox,
        }
    }

    pub(crate) fn js(&self) -> Context {
        self.t.jetstream().clone()
    }

    /// A relay with test-friendly timings (fast row back-off, immediate outage retry).
    pub(crate) fn relay(&self) -> RelayBuilder {
        Relay::builder(&self.config, self.js(), self.db.pool().clone())
            .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .outage_backoff(Duration::from_millis(20), Duration::from_millis(200))
    }

    pub(crate) async fn teardown(self) {
        self.t.teardown().await;
        self.db.teardown().await;
    }
}

/// Largest message the "small" stream of [`small_stream`] stores.
pub(crate) const SMALL_MAX_MESSAGE: i32 = 1024;

/// A stream capturing `<prefix>.small.>` that refuses messages over [`SMALL_MAX_MESSAGE`]
/// bytes (JetStream error 10054): a real per-message permanent failure for events that are
/// still well under the library's own payload limit. Returns the stream and a subject in it.
pub(crate) async fn small_stream(env: &Env) -> (Stream, String) {
    let mut config = env.t.stream_config("small");
    config.max_message_size = SMALL_MAX_MESSAGE;
    (
        env.t.create_stream(config).await,
        env.t.subject("small.events"),
    )
}

/// A payload whose envelope is over [`SMALL_MAX_MESSAGE`] bytes.
pub(crate) fn oversized_for_small_stream() -> serde_json::Value {
    serde_json::json!({ "id": "big", "blob": "x".repeat(4096) })
}

/// Number of messages stored in `stream`.
pub(crate) async fn stream_len(stream: &Stream) -> u64 {
    let mut stream = stream.clone();
    stream.info().await.unwrap().state.messages
}

/// The `Nats-Msg-Id` of every message in `stream`, in stream order (exactly `n` expected).
pub(crate) async fn stream_ids(stream: &Stream, n: usize) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(n);
    let mut ids = Vec::with_capacity(n);
    while let Some(message) = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("stream messages")
    {
        let message = message.unwrap();
        let headers = message.headers.as_ref().expect("headers");
        ids.push(headers.get(MSG_ID_HEADER).unwrap().as_str().to_owned());
    }
    ids
}

/// Waits until the relays together report `sent >= n`; returns their summed counters.
pub(crate) async fn wait_sent(handles: &[&RelayHandle], n: u64) -> RelayStats {
    wait_stats(handles, |s| s.sent >= n).await
}

/// Waits until the summed counters of `handles` satisfy `done`.
pub(crate) async fn wait_stats(
    handles: &[&RelayHandle],
    done: impl Fn(&RelayStats) -> bool,
) -> RelayStats {
    let mut receivers: Vec<_> = handles.iter().map(|h| h.stats()).collect();
    let sum = |receivers: &mut Vec<tokio::sync::watch::Receiver<RelayStats>>| {
        let mut total = RelayStats::default();
        for r in receivers.iter_mut() {
            let s = *r.borrow_and_update();
            total.sent += s.sent;
            total.duplicates += s.duplicates;
            total.failed_attempts += s.failed_attempts;
            total.quarantined += s.quarantined;
            total.batches += s.batches;
            total.outages += s.outages;
            total.listening |= s.listening;
        }
        total
    };
    tokio::time::timeout(WAIT, async {
        loop {
            let total = sum(&mut receivers);
            if done(&total) {
                return total;
            }
            let changes = receivers.iter_mut().map(|r| Box::pin(r.changed()));
            let _ = futures_util::future::select_all(changes).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "relay counters did not reach the condition in {WAIT:?}: {:?}",
            sum(&mut receivers)
        )
    })
}

#[derive(QueryableByName, Debug)]
pub(crate) struct StatusCount {
    #[diesel(sql_type = Text)]
    pub(crate) status: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// Row counts by status.
pub(crate) async fn status_counts(db: &TestDb) -> Vec<(String, i64)> {
    let mut conn = db.pool().get().await.unwrap();
    let rows: Vec<StatusCount> = diesel::sql_query(
        "SELECT status, count(*) AS n FROM jetstream_outbox_events GROUP BY status ORDER BY status",
    )
    .load(&mut *conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| (r.status, r.n)).collect()
}

#[derive(QueryableByName)]
struct EventIdRow {
    #[diesel(sql_type = Text)]
    event_id: String,
}

/// Every event id in the outbox.
pub(crate) async fn all_event_ids(db: &TestDb) -> HashSet<String> {
    let mut conn = db.pool().get().await.unwrap();
    let rows: Vec<EventIdRow> = diesel::sql_query("SELECT event_id FROM jetstream_outbox_events")
        .load(&mut *conn)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.event_id).collect()
}
