//! The helpers for testing a service: what reached the stream, what the inbox applied.

use std::time::Duration;

use async_nats::HeaderMap;
use diesel_async::RunQueryDsl;
use jetstream_bridge_testkit::{TestDb, TestNats};

#[tokio::test]
async fn wait_for_event_and_messages_see_earlier_and_later_publishes() {
    let t = TestNats::shared().await;
    let stream = t.create_stream(t.stream_config("svc")).await;
    let name = stream.cached_info().config.name.clone();
    let subject = t.subject("svc.created");
    let publish = |id: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let js = t.jetstream().clone();
        let subject = subject.clone();
        async move {
            js.publish_with_headers(subject, headers, id.as_bytes().to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("e1").await;
    let (found, ()) = tokio::join!(
        t.wait_for_event(&name, "e2", Duration::from_secs(10)),
        publish("e2")
    );
    assert_eq!(&found.payload[..], b"e2");
    let all = t
        .wait_for_messages(&name, &subject, 2, Duration::from_secs(10))
        .await;
    let bodies: Vec<&[u8]> = all.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(bodies, [b"e1".as_slice(), b"e2".as_slice()]);
    t.teardown().await;
}

#[tokio::test]
#[should_panic(expected = "no message \"missing\"")]
async fn wait_for_event_fails_when_nothing_arrives() {
    let t = TestNats::shared().await;
    let stream = t.create_stream(t.stream_config("svc-none")).await;
    let name = stream.cached_info().config.name.clone();
    t.wait_for_event(&name, "missing", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn inbox_rows_and_wait_processed() {
    let db = TestDb::new().await;
    assert!(db.inbox_events().await.is_empty());
    let mut conn = db.conn().await;
    diesel::sql_query(
        "INSERT INTO jetstream_inbox_events (event_id, event_type, status, subject) \
         VALUES ('e1', 'order.created', 'processed', 'a.b')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    db.wait_processed("e1", Duration::from_secs(5)).await;
    let rows = db.inbox_events().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event_type, "order.created");
    assert_eq!(rows[0].subject.as_deref(), Some("a.b"));
    drop(conn);
    db.teardown().await;
}
