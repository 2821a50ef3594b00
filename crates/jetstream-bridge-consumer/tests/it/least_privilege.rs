//! The consumer runtime itself under least-privilege users on a private `nats-server`: an admin
//! provisions, the runtime (pull and push mode, restricted mode, inbox on) consumes a few
//! events end to end and dead-letters a failing one, with no permission violation and no
//! JetStream management call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use jetstream_bridge_config::{
    Config, ConsumerMode, Envelope, DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER,
};
use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
use jetstream_bridge_testkit::{eventually, server_round_trip, NatsServer, TestDb};
use jetstream_bridge_topology::{connect, Connection, EnsureOptions, TopologySpec};
use serde_json::json;

use crate::{wait, WAIT};

const STREAM: &str = "prod-jetstream-bridge-stream";
const DURABLE: &str = "prod-orders-workers";
const SOURCE: &str = "prod.orders.sync.billing";
const DESTINATION: &str = "prod.billing.sync.orders";
const DLQ: &str = "prod.orders.sync.dlq";

/// `admin` provisions and plays the peer; `monitor` sees every message. The runtime users:
/// `seed` has exactly the production guide's minimum permissions; `pull` only what the pull
/// runtime uses; `push` only what the push runtime uses (no `$JS.API` at all; the delivery
/// subject instead of the destination subject).
fn server_config() -> String {
    format!(
        r#"
authorization {{
  users = [
    {{ user: admin, password: "admin-pw" }}
    {{ user: monitor, password: "monitor-pw" }}
    {{ user: seed, password: "seed-pw", permissions: {{
        publish: {{ allow: ["$JS.API.>", "$JS.ACK.>", "{SOURCE}", "{DESTINATION}", "{DLQ}"] }}
        subscribe: {{ allow: ["_INBOX.>", "{DESTINATION}"] }} }} }}
    {{ user: pull, password: "pull-pw", permissions: {{
        publish: {{ allow: ["$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}",
                            "$JS.ACK.{STREAM}.{DURABLE}.>", "{SOURCE}", "{DLQ}"] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}
    {{ user: push, password: "push-pw", permissions: {{
        publish: {{ allow: ["$JS.ACK.{STREAM}.{DURABLE}.>", "{SOURCE}", "{DLQ}"] }}
        subscribe: {{ allow: ["{DESTINATION}.worker", "_INBOX.>"] }} }} }}
  ]
}}
"#
    )
}

/// The config of `user` (restricted mode, the default; inbox on; three deliveries).
fn config(server: &NatsServer, user: &str, mode: ConsumerMode) -> Config {
    Config::builder("prod", "orders", "billing")
        .nats_urls(format!(
            "nats://{user}:{user}-pw@127.0.0.1:{}",
            server.port()
        ))
        .connect_retry_attempts(1)
        .consumer_mode(mode)
        .use_inbox(true)
        .max_deliver(3)
        .backoff(["100ms"])
        .build()
        .unwrap()
}

/// Writes an `effects` row in the inbox transaction; fails `order.rejected` every time.
#[derive(Clone, Default)]
struct Orders {
    seen: Arc<Mutex<Vec<String>>>,
}

impl InboxHandler for Orders {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        self.seen
            .lock()
            .unwrap()
            .push(event.envelope.event_type.clone());
        if event.envelope.event_type == "order.rejected" {
            return Err(HandlerError::retry("rejected"));
        }
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<diesel::sql_types::Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Every subject published between `marker.start` and `marker.end` (both sent by the admin).
struct Monitor {
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Monitor {
    async fn start(server: &NatsServer) -> Self {
        let client = connect(&config(server, "monitor", ConsumerMode::Pull))
            .await
            .unwrap()
            .into_client();
        let mut all = client.subscribe(">").await.unwrap();
        server_round_trip(&client).await;
        let task = tokio::spawn(async move {
            let _client = client;
            let mut seen = Vec::new();
            let mut started = false;
            while let Some(message) = all.next().await {
                let subject = message.subject.to_string();
                match subject.as_str() {
                    "marker.start" => started = true,
                    "marker.end" => break,
                    _ if started => seen.push(subject),
                    _ => {}
                }
            }
            seen
        });
        Self { task }
    }

    async fn finish(self) -> Vec<String> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
    }
}

async fn marker(admin: &Connection, subject: &'static str) {
    admin.client().publish(subject, "".into()).await.unwrap();
    server_round_trip(admin.client()).await;
}

/// `admin` publishes an envelope of `event_type` as the peer would; returns its event id.
async fn publish(admin: &Connection, event_type: &str, n: u64) -> String {
    let e = Envelope::builder(event_type, json!({ "n": n }))
        .producer("billing")
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", e.event_id.as_str());
    admin
        .jetstream()
        .publish_with_headers(DESTINATION, headers, e.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    e.event_id.as_str().to_owned()
}

/// A JetStream API answer read by the admin.
async fn info(admin: &Connection, subject: String) -> serde_json::Value {
    admin
        .jetstream()
        .request(subject, &json!({}))
        .await
        .unwrap()
}

/// Provisions as admin, runs the consumer as `user` in `mode` while the admin publishes three
/// events and one that always fails; checks the effects, the inbox, the DLQ, the durable, that
/// the server refused nothing, and returns the `$JS.API` subjects the runtime's run produced.
async fn consume_as(user: &str, mode: ConsumerMode) -> Vec<String> {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let db = TestDb::new().await;
    db.conn()
        .await
        .batch_execute("CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)")
        .await
        .unwrap();
    let admin = connect(&config(&server, "admin", mode)).await.unwrap();
    let spec = TopologySpec::from_config(&config(&server, "admin", mode));
    admin
        .ensure_topology(&spec, &EnsureOptions::new())
        .await
        .unwrap();
    let monitor = Monitor::start(&server).await;
    marker(&admin, "marker.start").await;

    let runtime_config = config(&server, user, mode);
    assert!(runtime_config.disable_js_api(), "restricted mode");
    let runtime = connect(&runtime_config).await.unwrap();
    let handler = Orders::default();
    let handle = Consumer::builder(&runtime_config, runtime.jetstream())
        .with_inbox(db.pool().clone())
        .handler(handler.clone())
        .fetch_wait(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .spawn();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(publish(&admin, "order.placed", n).await);
    }
    let rejected = publish(&admin, "order.rejected", 3).await;
    let stats = wait(&handle, |s| s.processed >= 3 && s.dead_lettered >= 1).await;
    assert_eq!(
        (stats.processed, stats.retried, stats.dead_lettered),
        (3, 2, 1),
        "{stats:?}"
    );
    let report = handle.shutdown().await.unwrap();
    assert_eq!(report.abandoned, 0);
    runtime.client().flush().await.unwrap();
    assert!(
        runtime.violations().recent().is_empty(),
        "{user} was refused: {:?}",
        runtime.violations()
    );
    marker(&admin, "marker.end").await;
    let seen = monitor.finish().await;

    // End to end: one effect per good event, committed with its inbox row.
    assert_eq!(db.count("SELECT count(*) AS n FROM effects").await, 3);
    let processed = db
        .count(&format!(
            "SELECT count(*) AS n FROM jetstream_inbox_events \
             WHERE status = 'processed' AND event_id IN ('{}')",
            ids.join("', '")
        ))
        .await;
    assert_eq!(processed, 3);
    assert_eq!(
        handler
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == "order.rejected")
            .count(),
        3,
        "the failing event was delivered max_deliver times"
    );
    // The durable took every ack; the work queue is empty; the dead letter is kept.
    let drained = eventually(WAIT, || async {
        let consumer = info(&admin, format!("CONSUMER.INFO.{STREAM}.{DURABLE}")).await;
        let stream = info(&admin, format!("STREAM.INFO.{STREAM}")).await;
        (consumer["num_ack_pending"] == 0 && stream["state"]["messages"] == 0).then_some(consumer)
    })
    .await;
    assert_eq!(drained["num_pending"], 0, "{drained}");
    let dlq = info(&admin, format!("STREAM.INFO.{STREAM}-dlq")).await;
    assert_eq!(dlq["state"]["messages"], 1, "{dlq}");
    let dead = admin
        .jetstream()
        .get_stream(format!("{STREAM}-dlq"))
        .await
        .unwrap()
        .get_last_raw_message_by_subject(DLQ)
        .await
        .unwrap();
    let headers = dead.headers;
    assert_eq!(
        headers.get(DLQ_REASON_HEADER).map(|v| v.as_str()),
        Some("max_deliver_exceeded")
    );
    assert!(
        headers
            .get(DLQ_CONTEXT_HEADER)
            .is_some_and(|v| v.as_str().contains(&rejected)),
        "{headers:?}"
    );
    db.teardown().await;
    seen.into_iter()
        .filter(|s| s.starts_with("$JS.API."))
        .collect()
}

/// Pull mode under the guide's minimum permissions: the only JetStream API requests are pulls.
#[tokio::test(flavor = "multi_thread")]
async fn pull_runtime_under_the_guides_minimum_permissions() {
    let api = consume_as("seed", ConsumerMode::Pull).await;
    let pull = format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}");
    assert!(!api.is_empty(), "the monitor saw no pull request");
    assert!(api.iter().all(|s| *s == pull), "{api:?}");
}

/// Pull mode with only the pull, ack, source and DLQ subjects to publish to.
#[tokio::test(flavor = "multi_thread")]
async fn pull_runtime_with_only_the_subjects_it_uses() {
    let api = consume_as("pull", ConsumerMode::Pull).await;
    let pull = format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}");
    assert!(api.iter().all(|s| *s == pull), "{api:?}");
}

/// Push mode with no `$JS.API` permission: a queue subscription on the delivery subject.
#[tokio::test(flavor = "multi_thread")]
async fn push_runtime_without_any_jetstream_api() {
    let api = consume_as("push", ConsumerMode::Push).await;
    assert_eq!(api, Vec::<String>::new());
}

/// The guide's minimum list lets a user subscribe to the destination subject only, not to the
/// push delivery subject (`<destination>.worker`): the server refuses the push runtime's
/// subscription, which the connection records naming the permission to grant, and nothing is
/// delivered. (Grant subscribe on the delivery subject, as the `push` user has.)
#[tokio::test(flavor = "multi_thread")]
async fn push_runtime_needs_the_delivery_subject_beyond_the_guides_list() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let admin = connect(&config(&server, "admin", ConsumerMode::Push))
        .await
        .unwrap();
    let spec = TopologySpec::from_config(&config(&server, "admin", ConsumerMode::Push));
    admin
        .ensure_topology(&spec, &EnsureOptions::new())
        .await
        .unwrap();
    let db = TestDb::new().await;
    let runtime_config = config(&server, "seed", ConsumerMode::Push);
    let runtime = connect(&runtime_config).await.unwrap();
    let handle = Consumer::builder(&runtime_config, runtime.jetstream())
        .with_inbox(db.pool().clone())
        .handler(Orders::default())
        .build()
        .unwrap()
        .spawn();
    let delivery = format!("{DESTINATION}.worker");
    let refused = eventually(WAIT, || async {
        runtime
            .violations()
            .recent()
            .into_iter()
            .find(|v| v.subject == delivery)
    })
    .await;
    assert_eq!(
        refused.operation,
        jetstream_bridge_topology::Operation::Subscribe
    );
    assert_eq!(refused.needed, delivery);
    publish(&admin, "order.placed", 1).await;
    let consumer = info(&admin, format!("CONSUMER.INFO.{STREAM}.{DURABLE}")).await;
    assert_eq!(consumer["delivered"]["consumer_seq"], 0, "{consumer}");
    assert_eq!(handle.stats().borrow().fetched, 0);
    handle.shutdown().await.unwrap();
    db.teardown().await;
}
