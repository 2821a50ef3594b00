//! The report: the Ruby gem's JSON key for key, restricted mode, the rate limit on a real
//! connection.

use std::time::Duration;

use futures_util::StreamExt;
use jetstream_bridge_config::Config;
use jetstream_bridge_health::{Health, RESTRICTED_REASON};
use jetstream_bridge_testkit::NatsServer;
use serde_json::{json, Value};

use crate::Env;

/// The example response of the Ruby gem's production guide ("Health Check Endpoint").
const SEED_EXAMPLE: &str = r#"{
  "healthy": true,
  "connection": {
    "state": "connected",
    "connected": true,
    "connected_at": "2025-11-23T10:00:00Z"
  },
  "stream": {
    "exists": true,
    "name": "production-jetstream-bridge-stream",
    "subjects": ["production.app.sync.worker"],
    "messages": 1523
  },
  "performance": {
    "nats_rtt_ms": 2.5,
    "health_check_duration_ms": 45.2
  },
  "config": {
    "env": "production",
    "app_name": "app",
    "destination_app": "worker",
    "use_outbox": true,
    "use_inbox": true,
    "use_dlq": true
  },
  "version": "4.0.3"
}"#;

/// The keys we add at the top level, after the Ruby gem's.
const ADDED_KEYS: [&str; 8] = [
    "cached",
    "checked_at",
    "skipped",
    "consumer",
    "dlq",
    "database",
    "outbox",
    "runtime",
];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `ours` has exactly the Ruby gem's keys in every nested object, with the same JSON types.
fn assert_same_shape(seed: &Value, ours: &Value, path: &str) {
    assert_eq!(kind(seed), kind(ours), "type of `{path}`: {ours}");
    match (seed, ours) {
        (Value::Object(s), Value::Object(o)) => {
            let sk: Vec<_> = s.keys().collect();
            let ok: Vec<_> = o.keys().collect();
            assert_eq!(sk, ok, "keys of `{path}`");
            for (k, v) in s {
                assert_same_shape(v, &o[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(s), Value::Array(o)) => {
            for (i, (s, o)) in s.iter().zip(o).enumerate() {
                assert_same_shape(s, o, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// A healthy report has the Ruby gem's keys, in the Ruby gem's order and with the Ruby gem's types, in
/// every section the gem's guide shows; our additions come after them.
#[tokio::test(flavor = "multi_thread")]
async fn report_matches_the_seed_json_key_for_key() {
    let env = Env::new(|c| c.use_outbox(true).use_inbox(true)).await;
    let health = env.health().pool(env.db.pool().clone()).build();
    let report = serde_json::to_value(health.health_check().await).unwrap();
    let seed: Value = serde_json::from_str(SEED_EXAMPLE).unwrap();
    let seed_keys: Vec<_> = seed.as_object().unwrap().keys().cloned().collect();
    let ours: Vec<_> = report.as_object().unwrap().keys().cloned().collect();
    let expected: Vec<String> = seed_keys
        .iter()
        .cloned()
        .chain(ADDED_KEYS.iter().map(|k| (*k).to_owned()))
        .collect();
    assert_eq!(ours, expected, "top-level keys");
    for k in &seed_keys {
        assert_same_shape(&seed[k], &report[k], k);
    }
    // The values, not only the shape.
    let c = &env.config;
    assert_eq!(report["healthy"], true);
    assert_eq!(report["connection"]["state"], "connected");
    assert_eq!(report["stream"]["name"], c.stream_name().as_str());
    assert_eq!(
        report["stream"]["subjects"],
        json!([
            c.subjects().source().as_str(),
            c.subjects().destination().as_str()
        ])
    );
    assert_eq!(report["stream"]["messages"], 0);
    assert_eq!(
        report["config"],
        json!({
            "env": c.env().unwrap().as_str(), "app_name": "orders", "destination_app": "billing",
            "use_outbox": true, "use_inbox": true, "use_dlq": true
        })
    );
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["cached"], false);
    assert_eq!(report["skipped"], Value::Null);
    assert_eq!(
        report["consumer"],
        json!({"name": c.durable_name().as_str(), "exists": true, "pending": 0,
               "ack_pending": 0, "redelivered": 0})
    );
    assert_eq!(report["dlq"]["depth"], 0);
    assert_eq!(
        report["database"],
        json!({"reachable": true, "tables": ["jetstream_inbox_events", "jetstream_outbox_events"],
               "missing_tables": []})
    );
    assert_eq!(
        report["outbox"],
        json!({"pending": 0, "oldest_pending_age_seconds": null, "failed": 0})
    );
    assert_eq!(report["runtime"], json!({"relay": null, "consumer": null}));
    env.teardown().await;
}

/// A missing stream makes the report unhealthy with the error (and no credentials in it).
#[tokio::test(flavor = "multi_thread")]
async fn missing_stream_is_unhealthy() {
    let env = Env::new(|c| c).await;
    let config = Config::builder(env.t.name("env"), "orders", "billing")
        .nats_urls(env.t.url())
        .stream_name(env.t.name("absent").as_str())
        .disable_js_api(false)
        .build()
        .unwrap();
    let health = Health::builder(&config, env.t.jetstream().clone()).build();
    let report = health.health_check().await;
    assert!(!report.healthy);
    assert!(report.connection.connected);
    assert_eq!(report.stream.exists, Some(false));
    let error = report.stream.error.unwrap();
    assert!(error.contains("NATS request failed"), "{error}");
    assert_eq!(report.consumer.exists, Some(false));
    env.teardown().await;
}

/// Within the interval, calls (sequential or concurrent) get the probe's report marked
/// cached; exactly one probe ran.
#[tokio::test(flavor = "multi_thread")]
async fn cached_reports_within_the_interval() {
    let env = Env::new(|c| c).await;
    let health = Health::builder(&env.config, env.t.jetstream().clone())
        .min_probe_interval(Duration::from_secs(3600))
        .build();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let h = health.clone();
            tokio::spawn(async move { h.health_check().await })
        })
        .collect();
    let mut reports = Vec::new();
    for c in calls {
        reports.push(c.await.unwrap());
    }
    assert_eq!(reports.iter().filter(|r| !r.cached).count(), 1);
    let later = health.health_check().await;
    assert!(later.cached && later.healthy);
    for r in &reports {
        assert_eq!(r.checked_at, later.checked_at);
        assert_eq!(
            r.performance.health_check_duration_ms,
            later.performance.health_check_duration_ms
        );
    }
    env.teardown().await;
}

/// Every `$JS.API` request `client` made before now, in order: a marker published by the same
/// client after the probe closes the list (one connection's messages stay in order).
async fn js_api_requests(
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
) -> Vec<String> {
    client
        .publish("$JS.API.ZZZ.MARKER", "".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(crate::WAIT, sub.next())
            .await
            .expect("marker")
            .unwrap();
        if m.subject.as_str() == "$JS.API.ZZZ.MARKER" {
            return seen;
        }
        seen.push(m.subject.to_string());
    }
}

/// Restricted mode makes no `$JS.API` request and says what it skipped; with the JS API
/// allowed the same probe does ask (so the observation works).
#[tokio::test(flavor = "multi_thread")]
async fn restricted_mode_makes_no_js_api_request() {
    let server = NatsServer::spawn().await;
    let observer = server.connect().await;
    let mut sub = observer.subscribe("$JS.API.>").await.unwrap();
    jetstream_bridge_testkit::server_round_trip(&observer).await;
    let client = server.connect().await;
    let build = |restricted: bool| {
        Config::builder("restricted", "orders", "billing")
            .nats_urls(server.client_url())
            .disable_js_api(restricted)
            .build()
            .unwrap()
    };

    let health = Health::builder(&build(true), async_nats::jetstream::new(client.clone())).build();
    let report = health.health_check().await;
    assert_eq!(
        js_api_requests(&client, &mut sub).await,
        Vec::<String>::new()
    );
    assert!(report.healthy, "{report:?}");
    let json = serde_json::to_value(&report).unwrap();
    let stream = build(true).stream_name().as_str().to_owned();
    assert_eq!(
        json["stream"],
        json!({"exists": null, "name": stream, "skipped": true, "reason": RESTRICTED_REASON})
    );
    assert_eq!(
        json["skipped"]["requests"],
        json!(["$JS.API.STREAM.INFO", "$JS.API.CONSUMER.INFO"])
    );
    assert_eq!(json["consumer"]["skipped"], true);
    assert_eq!(json["dlq"]["skipped"], true);
    assert!(report.performance.nats_rtt_ms.is_some());

    let health = Health::builder(&build(false), async_nats::jetstream::new(client.clone())).build();
    let report = health.health_check().await;
    let requests = js_api_requests(&client, &mut sub).await;
    assert!(
        requests.contains(&format!("$JS.API.STREAM.INFO.{stream}")),
        "{requests:?}"
    );
    assert!(!report.healthy, "no stream was provisioned: {report:?}");
}

/// A watched runtime that ends while no shutdown is under way fails liveness (503 with the
/// reason); once shutdown began, the same state is live.
#[tokio::test(flavor = "multi_thread")]
async fn liveness_fails_when_a_runtime_ends_unexpectedly() {
    let env = Env::new(|c| c).await;
    let (tx, rx) = tokio::sync::watch::channel(jetstream_bridge_outbox::RelayStats::default());
    let health = env.health().relay_stats(rx).build();
    let addr = crate::serve(health.clone()).await;
    let live = crate::get(addr, "/health/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.json()["runtime"]["relay"]["running"], true);
    drop(tx);
    let dead = crate::get(addr, "/health/live").await;
    assert_eq!(dead.status, 503, "{}", dead.body);
    assert_eq!(dead.json()["reasons"], json!(["relay runtime ended"]));
    health.set_shutting_down();
    assert_eq!(crate::get(addr, "/health/live").await.status, 200);
    env.teardown().await;
}

/// A watched consumer waiting for an unavailable database is not ready (503 with the reason)
/// but live, and `/metrics` shows the outage; once the database is back it is ready again.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_waiting_for_the_database_is_not_ready() {
    let env = Env::new(|c| c).await;
    let (tx, rx) = tokio::sync::watch::channel(jetstream_bridge_consumer::ConsumerStats::default());
    let health = env
        .health()
        .consumer_stats(rx)
        .stall_after(Some(std::time::Duration::from_millis(100)))
        .build();
    let addr = crate::serve(health.clone()).await;
    assert_eq!(crate::get(addr, "/health/ready").await.status, 200);
    tx.send_modify(|s| {
        s.db_outage = true;
        s.db_outages = 1;
        s.db_outage_time = std::time::Duration::from_secs(3);
    });
    let ready = crate::get(addr, "/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json()["reasons"],
        json!(["consumer waiting for the database"])
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let live = crate::get(addr, "/health/live").await;
    assert_eq!(live.status, 200, "waiting is no stall: {}", live.body);
    let metrics = crate::parse_metrics(&crate::get(addr, "/metrics").await.body);
    assert_eq!(metrics.get("jetstream_consumer_db_outage"), Some(&1.0));
    assert_eq!(
        metrics.get("jetstream_consumer_db_outage_seconds"),
        Some(&3.0)
    );
    tx.send_modify(|s| s.db_outage = false);
    assert_eq!(crate::get(addr, "/health/ready").await.status, 200);
    drop(tx);
    env.teardown().await;
}
