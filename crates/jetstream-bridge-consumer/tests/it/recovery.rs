//! Recovery: a durable deleted under a running runtime.

use jetstream_bridge_consumer::{Consumer, ConsumerErrorKind, Event, Handler, HandlerError};

use crate::{envelope, wait, Behaviour, Env, TestHandler};

/// With the JS API allowed, a durable deleted under a running runtime is recreated and
/// consumption continues.
#[tokio::test(flavor = "multi_thread")]
async fn deleted_durable_is_recreated() {
    let env = Env::new(|c| c).await;
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    env.publish_gem(&envelope(1)).await;
    wait(&handle, |s| s.processed >= 1).await;
    let stream = env.js().get_stream(env.spec.stream_name()).await.unwrap();
    assert!(
        stream
            .delete_consumer(env.config.durable_name().as_str())
            .await
            .unwrap()
            .success
    );
    let stats = wait(&handle, |s| s.recoveries >= 1).await;
    assert!(stats.fetch_errors >= 1);
    env.publish_gem(&envelope(2)).await;
    wait(&handle, |s| s.processed >= 2).await;
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// In restricted mode a missing durable is not recreated: the loop keeps pulling (the server
/// stays silent to pull requests for a missing durable: no error, no messages) and resumes
/// once an operator provisions it again.
#[tokio::test(flavor = "multi_thread")]
async fn restricted_mode_keeps_retrying_until_the_durable_is_back() {
    let env = Env::new(|c| c.disable_js_api(true)).await;
    let stream = env.js().get_stream(env.spec.stream_name()).await.unwrap();
    stream
        .delete_consumer(env.config.durable_name().as_str())
        .await
        .unwrap();
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    env.publish_gem(&envelope(1)).await;
    let stats = wait(&handle, |s| s.iterations >= 2).await;
    assert_eq!((stats.recoveries, stats.fetched), (0, 0));
    jetstream_bridge_topology::ensure_topology(
        env.t.jetstream(),
        &env.spec,
        &jetstream_bridge_topology::EnsureOptions::new(),
    )
    .await
    .unwrap();
    wait(&handle, |s| s.processed >= 1).await;
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

struct Noop;

impl Handler for Noop {
    async fn handle(&self, _event: &Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A config with `use_inbox` on and a builder without the inbox is rejected at build time.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_without_pool_is_rejected() {
    let env = Env::new(|c| c).await;
    let err = Consumer::builder(&env.config, env.js())
        .handler(Noop)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ConsumerErrorKind::MissingPool);
    env.teardown().await;
}
