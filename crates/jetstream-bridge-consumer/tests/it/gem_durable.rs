//! A durable as the Ruby gem creates it (server-side backoff in nanoseconds, so the server
//! redelivers at once) bound in restricted mode, where the runtime cannot read its
//! configuration: the runtime notices the redeliveries that arrive while a handler still runs,
//! says so once and counts them; a usable durable with a handler slower than its `ack_wait`
//! (kept alive by in-progress acks) counts none.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{envelope, wait, Behaviour, Env, TestHandler};

/// Replaces the provisioned durable with one as gem 7.x makes it (four backoff steps sent in
/// seconds, stored as nanoseconds; nats-server 2.9 refuses five with `max_deliver` 5).
async fn gem_made_durable(env: &Env) {
    let js = env.js();
    let stream = env.spec.stream_name();
    let durable = env.config.durable_name().as_str();
    js.delete_consumer_from_stream(durable, stream)
        .await
        .unwrap();
    let destination = env.config.subjects().destination().as_str().to_owned();
    let created: Value = js
        .request(
            format!("CONSUMER.CREATE.{stream}.{durable}.{destination}"),
            &json!({"stream_name": stream, "config": {
                "durable_name": durable, "filter_subject": destination,
                "ack_policy": "explicit", "deliver_policy": "all", "max_deliver": 5,
                "ack_wait": 30_000_000_000u64, "backoff": [1, 5, 15, 30]}}),
        )
        .await
        .unwrap();
    assert!(created.get("error").is_none(), "{created}");
}

#[tokio::test(flavor = "multi_thread")]
async fn restricted_runtime_notices_a_gem_made_durable() {
    let env = Env::new(|c| c.max_deliver(5).backoff(["1s"])).await;
    gem_made_durable(&env).await;
    let runtime_config = env
        .config_builder()
        .max_deliver(5)
        .backoff(["1s"])
        .disable_js_api(true)
        .build()
        .unwrap();
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(300)));
    let handle = crate::test_timings(
        jetstream_bridge_consumer::Consumer::builder(&runtime_config, env.js())
            .with_inbox(env.db.pool().clone()),
    )
    .concurrency(3)
    .handler(handler.clone())
    .build()
    .unwrap()
    .spawn();
    for n in 0..3 {
        env.publish_gem(&envelope(n)).await;
    }
    let stats = wait(&handle, |s| s.early_redeliveries > 0 && s.processed >= 3).await;
    assert!(stats.early_redeliveries > 0, "{stats:?}");
    handle.shutdown().await.unwrap();
    // The inbox kept the redeliveries from applying an event twice.
    assert_eq!(env.effects().await, 3);
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_usable_durable_redelivers_nothing_early() {
    // ack_wait 1 s, in-progress acks every 500 ms, a handler that takes 1.5 s: the in-progress
    // acks keep every message from being redelivered.
    let env = Env::new(|c| c.ack_wait("1s")).await;
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(1500)));
    let handle = env
        .consumer()
        .concurrency(2)
        .progress_interval(Some(Duration::from_millis(500)))
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    for n in 0..2 {
        env.publish_gem(&envelope(n)).await;
    }
    let stats = wait(&handle, |s| s.processed >= 2).await;
    assert_eq!(
        (stats.early_redeliveries, stats.progress_acks > 0),
        (0, true),
        "{stats:?}"
    );
    assert!(handler.calls().iter().all(|c| c.deliveries == 1));
    handle.shutdown().await.unwrap();
    env.teardown().await;
}
