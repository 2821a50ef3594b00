//! Readiness tells the truth: it fails, with a reason in the JSON, while the consumer cannot
//! make progress (database unreachable, a table missing, the stream or the durable missing or
//! unusable), recovers when the cause is gone, and flips at once on shutdown. Restricted mode
//! leaves the gauges it cannot read out of `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, push};
use diesel_async::AsyncPgConnection;
use jetstream_bridge_consumer::{Consumer, Event, Handler, HandlerError};
use jetstream_bridge_health::{Health, Metrics};
use jetstream_bridge_pg::{Component, Migrator};
use jetstream_bridge_testkit::{eventually, PgServer, TestDb};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::{get, parse_metrics, serve, Env, WAIT};

/// `GET /health/ready`: the status and the JSON body.
async fn ready(addr: std::net::SocketAddr) -> (u16, Value) {
    let r = get(addr, "/health/ready").await;
    (r.status, r.json())
}

fn reasons(body: &Value) -> Vec<String> {
    body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// A fresh database without the bridge's tables: not ready, the missing tables named in the
/// report and the reasons (the outbox's own error is not repeated); ready once migrated.
#[tokio::test(flavor = "multi_thread")]
async fn missing_tables_fail_readiness_until_migrated() {
    let env = Env::new(|c| c.use_inbox(true).use_outbox(true)).await;
    let empty = TestDb::empty().await;
    let health = env.health().pool(empty.pool().clone()).build();
    let addr = serve(health.clone()).await;

    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        reasons(&body),
        [
            "table jetstream_inbox_events missing (run `jetstream-bridge migrate`)",
            "table jetstream_outbox_events missing (run `jetstream-bridge migrate`)",
        ]
    );
    let report = get(addr, "/health/jetstream").await;
    assert_eq!(report.status, 503);
    let report = report.json();
    assert_eq!(report["healthy"], false);
    assert_eq!(
        report["database"],
        json!({"reachable": true,
               "tables": ["jetstream_inbox_events", "jetstream_outbox_events"],
               "missing_tables": ["jetstream_inbox_events", "jetstream_outbox_events"]})
    );
    assert_eq!(
        report["outbox"]["error"],
        "table jetstream_outbox_events missing (run `jetstream-bridge migrate`)"
    );

    let mut conn = empty.conn().await;
    Migrator::only(Component::Inbox)
        .run(&mut conn)
        .await
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        reasons(&body),
        ["table jetstream_outbox_events missing (run `jetstream-bridge migrate`)"]
    );

    Migrator::all().run(&mut conn).await.unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reasons"], json!([]));
    let report = health.health_check().await;
    assert!(report.healthy, "{report:?}");
    assert_eq!(report.outbox.unwrap().pending, Some(0));
    drop(conn);
    empty.teardown().await;
    env.teardown().await;
}

/// A private PostgreSQL stopped under a checker: readiness fails with the database's reason
/// (liveness stays up: an outage is not a reason to restart), and recovers after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_fails_readiness_until_it_returns() {
    let env = Env::new(|c| c.use_inbox(true)).await;
    let pg = PgServer::spawn().await;
    let mut conn: AsyncPgConnection = pg.connect().await;
    Migrator::all().run(&mut conn).await.unwrap();
    drop(conn);
    let pool = jetstream_bridge_pg::pool(&pg.url(), 2).unwrap();
    let health = env
        .health()
        .pool(pool)
        .probe_timeout(Duration::from_millis(1500))
        .build();
    let addr = serve(health.clone()).await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");

    pg.stop().await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    let why = reasons(&body);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].starts_with("database unavailable"), "{why:?}");
    let report = health.health_check().await;
    let database = report.database.unwrap();
    assert!(!database.reachable);
    assert!(database.missing_tables.is_empty());
    assert_eq!(get(addr, "/health/live").await.status, 200);

    pg.restart().await;
    // The pool drops the connections the stopped server closed and opens new ones.
    eventually(WAIT, || async {
        let (status, body) = ready(addr).await;
        (status == 200).then_some(()).ok_or(body)
    })
    .await;
    env.teardown().await;
}

/// The durable deleted, then the stream: readiness names each (the report is not healthy only
/// without the stream, the Ruby gem's verdict); provisioning again brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn missing_durable_or_stream_fails_readiness() {
    let env = Env::new(|c| c).await;
    let health = env.health().build();
    let addr = serve(health.clone()).await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");
    let stream = env.config.stream_name().as_str();
    let durable = env.config.durable_name().as_str();

    env.t
        .jetstream()
        .delete_consumer_from_stream(durable, stream)
        .await
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    let why = reasons(&body);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].starts_with(&format!("durable {durable}: ")),
        "{why:?}"
    );
    let report = health.health_check().await;
    assert_eq!(report.consumer.exists, Some(false));

    let spec = TopologySpec::from_config(&env.config);
    ensure_topology(env.t.jetstream(), &spec, &EnsureOptions::new())
        .await
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");

    env.t.jetstream().delete_stream(stream).await.unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    let why = reasons(&body);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].starts_with(&format!("stream {stream}: ")), "{why:?}");
    assert!(!health.health_check().await.healthy);
    env.teardown().await;
}

/// Durables the runtime cannot work with, as the server holds them: a server-side backoff, an
/// `ack_wait` not longer than the in-progress ack interval, a push durable for a pull runtime.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_durable_configuration_fails_readiness() {
    let env = Env::new(|c| c.ack_wait("30s")).await;
    let stream_name = env.config.stream_name().as_str();
    let durable = env.config.durable_name().as_str();
    let filter = env.config.subjects().destination().as_str().to_owned();
    let stream = env.t.jetstream().get_stream(stream_name).await.unwrap();
    let health = env.health().build();
    let addr = serve(health.clone()).await;

    let replace = |config: pull::Config| {
        let stream = stream.clone();
        async move {
            stream.delete_consumer(durable).await.unwrap();
            stream.create_consumer(config).await.unwrap();
        }
    };
    let base = pull::Config {
        durable_name: Some(durable.to_owned()),
        filter_subject: filter.clone(),
        max_deliver: 3,
        ..pull::Config::default()
    };

    replace(pull::Config {
        backoff: vec![Duration::from_secs(20), Duration::from_secs(40)],
        ..base.clone()
    })
    .await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    let why = reasons(&body);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].starts_with(&format!(
            "durable {durable}: server-side backoff [20s, 40s]"
        )),
        "{why:?}"
    );
    let report = health.health_check().await;
    assert_eq!(report.consumer.exists, Some(true));
    assert_eq!(report.consumer.problems.len(), 1);

    // The consumer's default in-progress interval is ack_wait / 2 = 15 s.
    replace(pull::Config {
        ack_wait: Duration::from_secs(10),
        ..base.clone()
    })
    .await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        reasons(&body),
        [format!(
            "durable {durable}: ack_wait 10s is not longer than the in-progress ack interval \
             15s: messages are redelivered while their handler runs"
        )]
    );
    // A runtime sending in-progress acks every 5 s is fine with it.
    let tuned = env
        .health()
        .progress_interval(Some(Duration::from_secs(5)))
        .build();
    assert!(tuned.readiness().await.ready);

    stream.delete_consumer(durable).await.unwrap();
    stream
        .create_consumer(push::Config {
            durable_name: Some(durable.to_owned()),
            deliver_subject: format!("{filter}.elsewhere"),
            filter_subject: filter.clone(),
            ack_wait: Duration::from_secs(30),
            ..push::Config::default()
        })
        .await
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        reasons(&body),
        [format!(
            "durable {durable}: a push durable (delivering to {filter}.elsewhere) cannot be \
             pulled; the runtime is in pull mode"
        )]
    );

    replace(pull::Config {
        ack_wait: Duration::from_secs(30),
        ..base
    })
    .await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");
    env.teardown().await;
}

/// Takes 300 ms per event.
struct Slow;

impl Handler for Slow {
    async fn handle(&self, _event: &Event) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }
}

/// In restricted mode the checker cannot read the durable; a runtime bound to one the Ruby gem
/// made (server-side backoff in nanoseconds: redelivered at once) sees redeliveries while its
/// handler runs, and readiness fails on its counter with the fix; `/metrics` shows it.
#[tokio::test(flavor = "multi_thread")]
async fn restricted_runtime_on_a_gem_made_durable_fails_readiness() {
    let env = Env::new(|c| c.max_deliver(5)).await;
    let stream = env
        .t
        .jetstream()
        .get_stream(env.config.stream_name().as_str())
        .await
        .unwrap();
    let durable = env.config.durable_name().as_str();
    stream.delete_consumer(durable).await.unwrap();
    // As gem 7.x sends it: backoff in seconds, read by the server as nanoseconds.
    stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: env.config.subjects().destination().as_str().to_owned(),
            max_deliver: 5,
            backoff: [1, 5, 15, 30].map(Duration::from_nanos).to_vec(),
            ..pull::Config::default()
        })
        .await
        .unwrap();
    let restricted = env.config_with(|c| c.max_deliver(5).disable_js_api(true));
    let handle = Consumer::builder(&restricted, env.t.jetstream().clone())
        .handler(Slow)
        .concurrency(3)
        .fetch_wait(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    let metrics = Metrics::new();
    let health = Health::builder(&restricted, env.t.jetstream().clone())
        .consumer_stats(handle.stats())
        .metrics(metrics)
        .min_probe_interval(Duration::ZERO)
        .build();
    let addr = serve(health).await;
    assert_eq!(ready(addr).await.0, 200, "nothing received yet");
    for n in 0..3 {
        env.publish("order.placed", n).await;
    }
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.early_redeliveries > 0))
        .await
        .expect("early redeliveries seen")
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    let why = reasons(&body);
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].starts_with(&format!(
            "durable {durable}: redelivers messages while their handler still runs"
        )) && why[0].contains("ensure-topology --update-drift"),
        "{why:?}"
    );
    let report = get(addr, "/health/jetstream").await.json();
    assert_eq!(report["consumer"]["skipped"], true);
    assert_eq!(
        report["consumer"]["problems"].as_array().map(Vec::len),
        Some(1)
    );
    let m = parse_metrics(&get(addr, "/metrics").await.body);
    assert!(m["jetstream_consumer_early_redeliveries"] >= 1.0, "{m:?}");
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// Fails every event permanently (straight to the DLQ).
struct Reject;

impl Handler for Reject {
    async fn handle(&self, _event: &Event) -> Result<(), HandlerError> {
        Err(HandlerError::permanent("rejected"))
    }
}

/// The gauges restricted mode cannot read are absent from `/metrics`, not 0, while the DLQ
/// holds a message (which a checker allowed to ask reports, on the same metrics).
#[tokio::test(flavor = "multi_thread")]
async fn restricted_mode_leaves_unreadable_gauges_out() {
    let env = Env::new(|c| c).await;
    let handle = Consumer::builder(&env.config, env.t.jetstream().clone())
        .handler(Reject)
        .fetch_wait(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    env.publish("order.placed", 1).await;
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.dead_lettered >= 1))
        .await
        .expect("dead-lettered")
        .unwrap();
    handle.shutdown().await.unwrap();

    let metrics = Metrics::new();
    let allowed = serve(env.health().metrics(metrics.clone()).build()).await;
    let m = parse_metrics(&get(allowed, "/metrics").await.body);
    assert_eq!(m["jetstream_dlq_size"], 1.0);
    assert_eq!(m["jetstream_consumer_pending"], 0.0);

    let restricted = Health::builder(
        &env.config_with(|c| c.disable_js_api(true)),
        env.t.jetstream().clone(),
    )
    .metrics(metrics)
    .min_probe_interval(Duration::ZERO)
    .build();
    let addr = serve(restricted).await;
    let text = get(addr, "/metrics").await.body;
    let m = parse_metrics(&text);
    for gauge in [
        "jetstream_dlq_size",
        "jetstream_consumer_pending",
        "jetstream_consumer_ack_pending",
        "jetstream_stream_messages",
    ] {
        assert!(!m.contains_key(gauge), "{gauge} has a sample in:\n{text}");
        assert!(text.contains(&format!("# TYPE {gauge} gauge")), "{text}");
    }
    assert_eq!(m["jetstream_health_up"], 1.0);
    let report = get(addr, "/health/jetstream").await.json();
    assert_eq!(report["dlq"]["skipped"], true);
    assert_eq!(report["dlq"]["depth"], Value::Null);
    assert_eq!(get(addr, "/health/ready").await.status, 200);
    env.teardown().await;
}

/// Waits for the test to release it.
struct Blocking(Arc<Notify>);

impl Handler for Blocking {
    async fn handle(&self, _event: &Event) -> Result<(), HandlerError> {
        self.0.notified().await;
        Ok(())
    }
}

/// With the default 5 s rate limit (a fresh ready report cached), readiness fails at once when
/// the process begins shutting down and when the watched consumer does, while it still drains
/// its in-flight message: neither waits for the cache.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_flips_at_once_on_shutdown() {
    let env = Env::new(|c| c).await;
    let health = Health::builder(&env.config, env.t.jetstream().clone()).build();
    let addr = serve(health.clone()).await;
    let (status, body) = ready(addr).await;
    assert_eq!((status, &body["cached"]), (200, &json!(false)), "{body}");
    health.set_shutting_down();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["shutting down"], "cached": null})
    );

    let release = Arc::new(Notify::new());
    let handle = Consumer::builder(&env.config, env.t.jetstream().clone())
        .handler(Blocking(release.clone()))
        .fetch_wait(Duration::from_millis(300))
        .shutdown_timeout(WAIT)
        .build()
        .unwrap()
        .spawn();
    let mut stats = handle.stats();
    let health = Health::builder(&env.config, env.t.jetstream().clone())
        .consumer_stats(handle.stats())
        .build();
    let addr = serve(health).await;
    env.publish("order.placed", 1).await;
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.in_flight == 1))
        .await
        .expect("in flight")
        .unwrap();
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");

    let shutdown = tokio::spawn(handle.shutdown());
    let in_flight_at_stop = tokio::time::timeout(WAIT, stats.wait_for(|s| s.shutting_down))
        .await
        .expect("shutdown began")
        .unwrap()
        .in_flight;
    assert_eq!(
        in_flight_at_stop, 1,
        "the message is still draining when shutdown begins"
    );
    let (status, body) = ready(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        json!({"ready": false, "reasons": ["consumer runtime shutting down"], "cached": null})
    );
    release.notify_one();
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!(report.drained, 1);
    env.teardown().await;
}
