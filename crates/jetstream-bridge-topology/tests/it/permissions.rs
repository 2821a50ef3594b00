//! Least privilege on a private server with users: an admin provisions, runtime users with the
//! seed's minimum permissions (or fewer) publish, fetch and ack without any JetStream
//! management call, and a missing permission is a typed error naming it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use jetstream_bridge_config::Config;
use jetstream_bridge_testkit::{server_round_trip, NatsServer};
use jetstream_bridge_topology::{
    bind_pull_consumer, connect, Connection, EnsureOptions, Operation, TopologyErrorKind,
    TopologySpec,
};

const STREAM: &str = "prod-jetstream-bridge-stream";
const DURABLE: &str = "prod-orders-workers";
const SOURCE: &str = "prod.orders.sync.billing";
const DESTINATION: &str = "prod.billing.sync.orders";
const DLQ: &str = "prod.orders.sync.dlq";
const LOCKS: &str = jetstream_bridge_topology::DEFAULT_LOCK_BUCKET;

/// Users of the private server. `runtime` has exactly the Ruby gem's "Minimum permissions for the
/// bridge user"; `rpc` the same with the custom inbox prefix `$RPC`; `strict` only what the
/// pull runtime really uses; `push` only what the push runtime uses (no `$JS.API` at all);
/// `nocreate` everything but stream creation.
fn server_config() -> String {
    let own = format!(r#""{SOURCE}", "{DESTINATION}", "{DLQ}""#);
    // The provisioning user's list from docs/TOPOLOGY.md, without and with the stream lock.
    let provision = format!(
        r#""$JS.API.STREAM.LIST",
            "$JS.API.STREAM.CREATE.{STREAM}", "$JS.API.STREAM.CREATE.{STREAM}-dlq",
            "$JS.API.STREAM.INFO.{STREAM}", "$JS.API.STREAM.INFO.{STREAM}-dlq",
            "$JS.API.STREAM.UPDATE.{STREAM}", "$JS.API.STREAM.UPDATE.{STREAM}-dlq",
            "$JS.API.CONSUMER.INFO.{STREAM}.{DURABLE}",
            "$JS.API.CONSUMER.CREATE.{STREAM}.{DURABLE}.{DESTINATION}""#
    );
    let lock = format!(
        r#""$KV.{LOCKS}.stream.{STREAM}", "$KV.{LOCKS}.stream.{STREAM}-dlq",
            "$JS.API.STREAM.MSG.GET.KV_{LOCKS}", "$JS.API.STREAM.CREATE.KV_{LOCKS}""#
    );
    format!(
        r#"
authorization {{
  users = [
    {{ user: admin, password: "admin-pw" }}
    {{ user: monitor, password: "monitor-pw" }}
    {{ user: runtime, password: "runtime-pw", permissions: {{
        publish: {{ allow: ["$JS.API.>", "$JS.ACK.>", {own}] }}
        subscribe: {{ allow: ["_INBOX.>", "{DESTINATION}"] }} }} }}
    {{ user: rpc, password: "rpc-pw", permissions: {{
        publish: {{ allow: ["$JS.API.>", "$JS.ACK.>", {own}] }}
        subscribe: {{ allow: ["$RPC.>", "{DESTINATION}"] }} }} }}
    {{ user: strict, password: "strict-pw", permissions: {{
        publish: {{ allow: ["$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}",
                            "$JS.ACK.{STREAM}.{DURABLE}.>", {own}] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}
    {{ user: push, password: "push-pw", permissions: {{
        publish: {{ allow: ["$JS.ACK.{STREAM}.{DURABLE}.>", "{SOURCE}", "{DLQ}"] }}
        subscribe: {{ allow: ["{DESTINATION}.worker", "_INBOX.>"] }} }} }}
    {{ user: nocreate, password: "nocreate-pw", permissions: {{
        publish: {{ allow: ["$JS.API.>"], deny: ["$JS.API.STREAM.CREATE.>"] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}
    {{ user: provision, password: "provision-pw", permissions: {{
        publish: {{ allow: [{provision}, {lock}] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}
    {{ user: nolock, password: "nolock-pw", permissions: {{
        publish: {{ allow: [{provision}] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}
  ]
}}
"#
    )
}

fn config(server: &NatsServer, user: &str, inbox_prefix: Option<&str>) -> Config {
    let mut builder = Config::builder("prod", "orders", "billing")
        .nats_urls(format!(
            "nats://{user}:{user}-pw@127.0.0.1:{}",
            server.port()
        ))
        .connect_retry_attempts(1);
    if let Some(prefix) = inbox_prefix {
        builder = builder.inbox_prefix(prefix);
    }
    builder.build().unwrap()
}

async fn connect_as(server: &NatsServer, user: &str, inbox_prefix: Option<&str>) -> Connection {
    connect(&config(server, user, inbox_prefix)).await.unwrap()
}

fn options() -> EnsureOptions {
    EnsureOptions::new().request_timeout(Duration::from_secs(10))
}

/// What the runtime does with pre-provisioned topology: publish (PubAck), fetch through a
/// durable bound by name, ack (double ack, so the test knows the server took it), dead-letter.
async fn runtime_round_trip(connection: &Connection) {
    let js = connection.jetstream();
    let peer_event = js
        .publish(DESTINATION, "{\"from\":\"peer\"}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(SOURCE, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let consumer = bind_pull_consumer(&js, STREAM, DURABLE).unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.unwrap().unwrap();
    assert_eq!(message.subject.as_str(), DESTINATION);
    assert_eq!(message.info().unwrap().stream_sequence, peer_event.sequence);
    message.double_ack().await.unwrap();
    let dead = js.publish(DLQ, "{}".into()).await.unwrap().await.unwrap();
    assert_eq!(dead.stream, format!("{STREAM}-dlq"));
}

/// Subjects seen by a user subscribed to everything, between two markers the admin publishes.
///
/// Collecting stops once `marker.end` was seen *and* a reply on the custom `$RPC.` inbox came
/// after `marker.start`: the server's JetStream replies travel asynchronously and may trail the
/// end marker, so the monitor awaits them instead of the test sleeping.
struct Monitor {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    async fn start(server: &NatsServer) -> Self {
        let client = connect_as(server, "monitor", None).await.into_client();
        let mut all = client.subscribe(">").await.unwrap();
        server_round_trip(&client).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            let (mut started, mut ended, mut rpc_reply) = (false, false, false);
            while let Some(message) = all.next().await {
                let subject = message.subject.to_string();
                started |= subject == "marker.start";
                ended |= subject == "marker.end";
                rpc_reply |= started && subject.starts_with("$RPC.");
                log.lock().unwrap().push(subject);
                if ended && rpc_reply {
                    break;
                }
            }
        });
        Self { seen, task }
    }

    /// Waits for `marker.end` (and a `$RPC.` reply) and returns every subject seen.
    async fn finish(self) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// Admin provisions; runtime users with the Ruby gem's minimum permissions, with a custom inbox
/// prefix, and with only MSG.NEXT + ACK publish rights all publish, fetch, ack and dead-letter;
/// a monitor subscribed to `>` sees no JetStream API call from them but MSG.NEXT.
#[tokio::test]
async fn least_privilege_runtime_makes_no_management_calls() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let monitor = Monitor::start(&server).await;
    let admin = connect_as(&server, "admin", None).await;
    let spec = TopologySpec::from_config(&config(&server, "admin", None));
    let report = admin.ensure_topology(&spec, &options()).await.unwrap();
    assert_eq!(report.applied().len(), 3, "{report}");

    admin
        .client()
        .publish("marker.start", "".into())
        .await
        .unwrap();
    server_round_trip(admin.client()).await;
    for (user, prefix) in [("runtime", None), ("rpc", Some("$RPC")), ("strict", None)] {
        let runtime = connect_as(&server, user, prefix).await;
        runtime_round_trip(&runtime).await;
        assert!(
            runtime.violations().recent().is_empty(),
            "{user}: {:?}",
            runtime.violations()
        );
        runtime.client().flush().await.unwrap();
    }
    admin
        .client()
        .publish("marker.end", "".into())
        .await
        .unwrap();
    admin.client().flush().await.unwrap();

    let seen = monitor.finish().await;
    let start = seen.iter().position(|s| s == "marker.start").unwrap();
    let api = |range: &[String]| -> Vec<String> {
        range
            .iter()
            .filter(|s| s.starts_with("$JS.API."))
            .cloned()
            .collect()
    };
    let before = api(&seen[..start]);
    assert!(
        before
            .iter()
            .any(|s| s == &format!("$JS.API.STREAM.CREATE.{STREAM}")),
        "the monitor sees management calls: {before:?}"
    );
    let during = api(&seen[start..]);
    assert_eq!(
        during,
        vec![format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}"); 3],
        "runtime made management calls"
    );
    assert!(
        seen[start..]
            .iter()
            .filter(|s| s.starts_with(&format!("$JS.ACK.{STREAM}.{DURABLE}.")))
            .count()
            == 3
    );
    assert!(
        seen[start..].iter().any(|s| s.starts_with("$RPC.")),
        "replies went to the custom inbox"
    );

    // The durable really took the acks, and the dead letters are kept for browsing.
    let js = admin.jetstream();
    let info: serde_json::Value = js
        .request(
            format!("CONSUMER.INFO.{STREAM}.{DURABLE}"),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(info["num_ack_pending"], 0, "{info}");
    assert_eq!(info["delivered"]["consumer_seq"], 3, "{info}");
    let dlq: serde_json::Value = js
        .request(format!("STREAM.INFO.{STREAM}-dlq"), &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(dlq["state"]["messages"], 3, "{dlq}");
}

/// Users lacking a permission get `PermissionDenied` naming it, at once (not after the request
/// timeout): stream creation, stream listing, and subscribing the reply inbox.
#[tokio::test]
async fn missing_permission_is_named() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let spec = TopologySpec::from_config(&config(&server, "admin", None));

    let nocreate = connect_as(&server, "nocreate", None).await;
    let started = Instant::now();
    let err = nocreate
        .ensure_topology(&spec, &options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::PermissionDenied, "{err}");
    let denied = err.permission().unwrap();
    assert_eq!(denied.operation, Operation::Publish);
    assert_eq!(denied.subject, format!("$JS.API.STREAM.CREATE.{STREAM}"));
    assert!(
        err.to_string()
            .contains(&format!("publish to `$JS.API.STREAM.CREATE.{STREAM}`")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "named at once, not by timeout"
    );

    let admin = connect_as(&server, "admin", None).await;
    admin.ensure_topology(&spec, &options()).await.unwrap();
    // The same user can now verify: listing and reading are allowed, nothing is left to do.
    assert!(nocreate.plan(&spec, &options()).await.unwrap().is_empty());

    let strict = connect_as(&server, "strict", None).await;
    let err = strict.ensure_topology(&spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::PermissionDenied, "{err}");
    assert_eq!(err.permission().unwrap().subject, "$JS.API.STREAM.LIST");

    // `rpc` may subscribe to `$RPC.>` only: with the default inbox prefix every request fails.
    let wrong_inbox = connect_as(&server, "rpc", None).await;
    let err = wrong_inbox.plan(&spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::PermissionDenied, "{err}");
    let denied = err.permission().unwrap();
    assert_eq!(denied.operation, Operation::Subscribe);
    assert!(denied.subject.starts_with("_INBOX."), "{denied:?}");
    assert_eq!(denied.needed, "_INBOX.>");
    assert!(err.to_string().contains("`_INBOX.>`"), "{err}");
    // With its own prefix the same user can ask.
    let right_inbox = connect_as(&server, "rpc", Some("$RPC")).await;
    assert!(right_inbox
        .plan(&spec, &options())
        .await
        .unwrap()
        .is_empty());
}

/// async-nats 0.51 ignores a user and password embedded in the server URL (the server sees an
/// anonymous client), which is why `connect` passes them as options.
#[tokio::test]
async fn url_credentials_need_connect() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let url = format!("nats://admin:admin-pw@127.0.0.1:{}", server.port());
    let err = async_nats::ConnectOptions::new()
        .connect(url.as_str())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation
    );
    let connection = connect_as(&server, "admin", None).await;
    connection.client().flush().await.unwrap();
}

/// A push runtime without any `$JS.API` permission: a queue subscription on the delivery subject
/// receives the peer's event, acks it and dead-letters through JetStream.
#[tokio::test]
async fn push_runtime_needs_no_jetstream_api() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let admin = connect_as(&server, "admin", None).await;
    let push_config = |user: &str| {
        Config::builder("prod", "orders", "billing")
            .nats_urls(format!(
                "nats://{user}:{user}-pw@127.0.0.1:{}",
                server.port()
            ))
            .connect_retry_attempts(1)
            .consumer_mode(jetstream_bridge_config::ConsumerMode::Push)
            .build()
            .unwrap()
    };
    let config = push_config("push");
    admin
        .ensure_topology(
            &TopologySpec::from_config(&push_config("admin")),
            &options(),
        )
        .await
        .unwrap();

    let runtime = connect(&config).await.unwrap();
    let subjects = config.subjects();
    let mut deliveries = runtime
        .client()
        .queue_subscribe(
            subjects.delivery_subject().to_string(),
            subjects.push_group().to_string(),
        )
        .await
        .unwrap();
    runtime.client().flush().await.unwrap();
    admin
        .jetstream()
        .publish(DESTINATION, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
        .await
        .unwrap()
        .unwrap();
    let reply = message.reply.unwrap();
    assert!(
        reply.starts_with(&format!("$JS.ACK.{STREAM}.{DURABLE}.")),
        "{reply}"
    );
    // A double ack: the server confirms it on the inbox.
    runtime
        .client()
        .request(reply, "+ACK".into())
        .await
        .unwrap();
    let dead = runtime
        .jetstream()
        .publish(DLQ, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(dead.stream, format!("{STREAM}-dlq"));
    assert!(
        runtime.violations().recent().is_empty(),
        "{:?}",
        runtime.violations()
    );
    let info: serde_json::Value = admin
        .jetstream()
        .request(
            format!("CONSUMER.INFO.{STREAM}.{DURABLE}"),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(info["num_ack_pending"], 0, "{info}");
    assert_eq!(info["ack_floor"]["stream_seq"], 1, "{info}");
}

/// The stream lock needs its own permissions: without publish permission on the lock entry the
/// deploy fails at once naming it (and changes nothing); with the documented provisioning list
/// the deploy creates the lock bucket, takes the lock and extends the stream, and a lock held
/// by someone else is reported as such (reading its holder is allowed).
#[tokio::test]
async fn the_stream_lock_needs_its_own_permissions() {
    let server = NatsServer::builder().config(server_config()).spawn().await;
    let admin = connect_as(&server, "admin", None).await;
    let js = admin.jetstream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![DESTINATION.to_owned()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let spec = TopologySpec::from_config(&config(&server, "admin", None));

    let nolock = connect_as(&server, "nolock", None).await;
    let started = Instant::now();
    let err = nolock.ensure_topology(&spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::PermissionDenied, "{err}");
    let lock_subject = format!("$KV.{LOCKS}.stream.{STREAM}");
    assert_eq!(err.permission().unwrap().subject, lock_subject, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "named at once");
    let subjects = |info: async_nats::jetstream::stream::Info| info.config.subjects;
    assert_eq!(
        subjects(
            js.get_stream(STREAM)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .clone()
        ),
        [DESTINATION]
    );

    let provision = connect_as(&server, "provision", None).await;
    provision.ensure_topology(&spec, &options()).await.unwrap();
    let mut main = js.get_stream(STREAM).await.unwrap();
    let mut held = main.info().await.unwrap().config.subjects.clone();
    held.sort();
    assert_eq!(held, [DESTINATION, SOURCE]);
    assert!(provision.violations().recent().is_empty());

    // Someone else holds the lock while a subject is missing again.
    let mut config = main.info().await.unwrap().config.clone();
    config.subjects = vec![DESTINATION.to_owned()];
    js.update_stream(config).await.unwrap();
    // The key's last entry is the delete marker `provision` left when it released the lock.
    let last: serde_json::Value = js
        .request(
            format!("STREAM.MSG.GET.KV_{LOCKS}"),
            &serde_json::json!({ "last_by_subj": lock_subject }),
        )
        .await
        .unwrap();
    assert!(last["message"].get("data").is_none(), "{last}");
    let marker = last["message"]["seq"].as_u64().unwrap().to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", marker.as_str());
    let ack: serde_json::Value = serde_json::from_slice(
        &admin
            .client()
            .request_with_headers(lock_subject, headers, "{}".into())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert!(ack.get("error").is_none(), "{ack}");
    let err = provision
        .ensure_topology(&spec, &options().lock_wait(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Conflict, "{err}");
    assert!(provision.violations().recent().is_empty());
}
