//! The outbox backlog in the report, readiness on outbox lag, relay counters in `/metrics`.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use jetstream_bridge_outbox::{NewEvent, Outbox, Relay};

use crate::{get, parse_metrics, serve, Env, WAIT};

/// Two old unsent rows: the report shows them and their age, readiness fails on the lag limit;
/// once a watched relay published them the backlog is empty, readiness recovers and the
/// published counter says 2.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_lag_drives_readiness() {
    let env = Env::new(|c| c.use_outbox(true)).await;
    let outbox = Outbox::new(&env.config);
    let mut conn = env.db.conn().await;
    for n in 0..2 {
        outbox
            .enqueue(
                &mut conn,
                NewEvent::new("order.placed", serde_json::json!({ "n": n })),
            )
            .await
            .unwrap();
    }
    conn.batch_execute(
        "UPDATE jetstream_outbox_events SET enqueued_at = now() - interval '1 hour'",
    )
    .await
    .unwrap();

    let relay_builder = Relay::builder(
        &env.config,
        env.t.jetstream().clone(),
        env.db.pool().clone(),
    );
    let health_builder = env
        .health()
        .pool(env.db.pool().clone())
        .max_outbox_lag(Duration::from_secs(60));

    let health = health_builder.build();
    let report = health.health_check().await;
    let backlog = report.outbox.clone().unwrap();
    assert_eq!(backlog.pending, Some(2));
    assert_eq!(backlog.failed, Some(0));
    let age = backlog.oldest_pending_age_seconds.unwrap();
    assert!((3600.0..3700.0).contains(&age), "{age}");
    assert!(report.healthy, "lag is readiness, not health: {report:?}");
    let addr = serve(health.clone()).await;
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reason = ready.json()["reasons"][0].as_str().unwrap().to_owned();
    assert!(reason.starts_with("outbox lag 36"), "{reason}");
    let m = parse_metrics(&get(addr, "/metrics").await.body);
    assert_eq!(m["jetstream_outbox_pending"], 2.0);
    assert!(m["jetstream_outbox_oldest_pending_age_seconds"] >= 3600.0);

    let relay = relay_builder.build().unwrap().spawn();
    let health = env
        .health()
        .pool(env.db.pool().clone())
        .max_outbox_lag(Duration::from_secs(60))
        .relay_stats(relay.stats())
        .build();
    let mut stats = relay.stats();
    tokio::time::timeout(WAIT, stats.wait_for(|s| s.sent >= 2))
        .await
        .expect("relay progress")
        .unwrap();
    let addr = serve(health).await;
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let report = get(addr, "/health/jetstream").await.json();
    assert_eq!(
        report["outbox"],
        serde_json::json!({"pending": 0, "oldest_pending_age_seconds": null, "failed": 0})
    );
    assert_eq!(report["runtime"]["relay"]["running"], true);
    let m = parse_metrics(&get(addr, "/metrics").await.body);
    assert_eq!(m["jetstream_outbox_published_total"], 2.0);
    assert_eq!(m["jetstream_outbox_pending"], 0.0);
    assert_eq!(m["jetstream_outbox_oldest_pending_age_seconds"], 0.0);
    relay.shutdown().await.unwrap();
    drop(conn);
    env.teardown().await;
}
