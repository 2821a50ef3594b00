//! NATS restarts under a running consumer, with a private `nats-server`.

use std::time::Duration;

use async_nats::HeaderMap;
use diesel_async::SimpleAsyncConnection;
use jetstream_bridge_config::Config;
use jetstream_bridge_consumer::Consumer;
use jetstream_bridge_testkit::{NatsServer, TestDb};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};

use crate::{envelope, wait, Behaviour, TestHandler};

/// The server is killed (-9) and restarted under a running consumer: the loop survives the
/// failed pulls, the client reconnects, and consumption continues without losing the event
/// published after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_survives_a_nats_restart() {
    let server = NatsServer::spawn().await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.client_url())
        .await
        .unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    let db = TestDb::new().await;
    db.conn()
        .await
        .batch_execute("CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)")
        .await
        .unwrap();
    let config = Config::builder("restart", "orders", "billing")
        .nats_urls(server.client_url())
        .max_deliver(3)
        .backoff(["200ms"])
        .use_inbox(true)
        .build()
        .unwrap();
    let spec = TopologySpec::from_config(&config);
    ensure_topology(&js, &spec, &EnsureOptions::new())
        .await
        .unwrap();
    let handle = Consumer::builder(&config, js.clone())
        .with_inbox(db.pool().clone())
        .handler(TestHandler::new(Behaviour::Succeed))
        .fetch_wait(Duration::from_millis(300))
        .recovery_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    let publish = |n: u64| {
        let js = js.clone();
        let subject = config.subjects().destination().as_str().to_owned();
        async move {
            let e = envelope(n);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.event_id.as_str());
            loop {
                // The client may still be reconnecting: retry until the PubAck arrives.
                if let Ok(ack) = js
                    .publish_with_headers(subject.clone(), headers.clone(), e.to_vec().into())
                    .await
                {
                    if ack.await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    publish(1).await;
    wait(&handle, |s| s.processed >= 1).await;
    server.kill9();
    let before = *handle.stats().borrow();
    server.restart().await;
    publish(2).await;
    let stats = wait(&handle, |s| s.processed >= 2).await;
    assert!(stats.iterations > before.iterations);
    let report = handle.shutdown().await.unwrap();
    assert_eq!(report.stats.processed, 2);
    db.teardown().await;
}
