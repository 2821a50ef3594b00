//! `/metrics` after real messages through a real consumer runtime with the metrics
//! middleware.

use std::time::Duration;

use jetstream_bridge_consumer::{Consumer, Event, Handler, HandlerError};
use jetstream_bridge_health::{Metrics, METRICS_CONTENT_TYPE};

use crate::{get, parse_metrics, serve, Env, WAIT};

/// Succeeds, except for `order.rejected` (permanent failure → DLQ).
struct RejectSome;

impl Handler for RejectSome {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        if event.envelope.event_type == "order.rejected" {
            return Err(HandlerError::permanent("rejected"));
        }
        Ok(())
    }
}

/// Counts per status and event type, the duration histogram, the DLQ size and the consumer
/// lag in `/metrics` match what the consumer did; the liveness route sees the running
/// consumer.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_the_messages_a_consumer_handled() {
    let env = Env::new(|c| c).await;
    let metrics = Metrics::new();
    let handle = Consumer::builder(&env.config, env.t.jetstream().clone())
        .handler(RejectSome)
        .middleware(metrics.middleware())
        .fetch_wait(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    let health = env
        .health()
        .metrics(metrics)
        .consumer_stats(handle.stats())
        .build();
    let addr = serve(health).await;

    for n in 0..3 {
        env.publish("user.created", n).await;
    }
    env.publish("order.rejected", 3).await;
    let stats = tokio::time::timeout(
        WAIT,
        handle.wait_for(|s| s.processed >= 3 && s.dead_lettered >= 1),
    )
    .await
    .expect("consumer progress")
    .unwrap();
    assert_eq!((stats.processed, stats.dead_lettered), (3, 1));

    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, METRICS_CONTENT_TYPE);
    let m = parse_metrics(&r.body);
    let v = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no `{series}` in:\n{}", r.body))
    };
    assert_eq!(
        v(r#"jetstream_messages_total{status="success",event_type="user.created"}"#),
        3.0
    );
    assert_eq!(
        v(r#"jetstream_messages_total{status="permanent",event_type="order.rejected"}"#),
        1.0
    );
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("jetstream_messages_total{"))
            .count(),
        2,
        "{}",
        r.body
    );
    assert_eq!(
        v(r#"jetstream_processing_duration_seconds_count{event_type="user.created"}"#),
        3.0
    );
    assert_eq!(
        v(r#"jetstream_processing_duration_seconds_bucket{le="+Inf",event_type="user.created"}"#),
        3.0
    );
    assert_eq!(v("jetstream_dlq_size"), 1.0);
    assert_eq!(v("jetstream_consumer_pending"), 0.0);
    assert_eq!(v("jetstream_health_up"), 1.0);

    let live = get(addr, "/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["runtime"]["consumer"]["running"], true);

    handle.shutdown().await.unwrap();
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["reasons"],
        serde_json::json!(["consumer runtime shutting down"])
    );
    // Ended after a shutdown began: still live.
    assert_eq!(get(addr, "/health/live").await.status, 200);
    env.teardown().await;
}
