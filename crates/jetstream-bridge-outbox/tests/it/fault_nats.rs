//! NATS outage with a private server: rows wait, nothing is lost or quarantined.

use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use jetstream_bridge_config::Config;
use jetstream_bridge_outbox::{NewEvent, Outbox, Relay};
use jetstream_bridge_testkit::{NatsServer, TestDb};
use serde_json::json;

use crate::{status_counts, wait_sent, wait_stats};

/// NATS killed with -9: enqueued rows stay unsent (not failed) while the relay backs off, and
/// all flow once the server is back; the stream then holds each event once.
#[tokio::test(flavor = "multi_thread")]
async fn nats_outage_keeps_rows_and_recovers() {
    let server = NatsServer::spawn().await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.client_url())
        .await
        .unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_millis(500));
    let db = TestDb::new().await;
    let config = Config::builder("outage", "orders", "billing")
        .build()
        .unwrap();
    let stream = js
        .create_stream(StreamConfig {
            name: "outage".into(),
            subjects: vec!["outage.>".into()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let outbox = Outbox::new(&config);
    let relay = Relay::builder(&config, js.clone(), db.pool().clone())
        .outage_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    let mut conn = db.conn().await;
    outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 0})))
        .await
        .unwrap();
    wait_sent(&[&relay], 1).await;

    server.kill9();
    outbox
        .enqueue_batch(
            &mut conn,
            (1..=100).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    let stats = wait_stats(&[&relay], |s| s.outages >= 2).await;
    assert_eq!(stats.sent, 1);
    assert_eq!(stats.quarantined, 0);
    let counts = status_counts(&db).await;
    assert!(
        counts.iter().all(|(status, _)| status != "failed"),
        "{counts:?}"
    );

    server.restart().await;
    let stats = wait_sent(&[&relay], 101).await;
    assert_eq!(stats.quarantined, 0);
    relay.shutdown().await.unwrap();
    assert_eq!(status_counts(&db).await, vec![("sent".into(), 101)]);
    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 101);
    drop(conn);
    db.teardown().await;
}
