//! Retries with backoff and the DLQ: timing, headers, malformed bodies, permanent errors,
//! failing DLQ publishes, `use_dlq = false`.

use std::time::Duration;

use async_nats::HeaderMap;
use jetstream_bridge_config::{
    DlqContext, DEAD_LETTER_HEADER, DELIVERIES_HEADER, DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER,
    MSG_ID_HEADER,
};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions};

use crate::{envelope, header, wait, Behaviour, Env, TestHandler};

/// A failing handler is redelivered after the configured backoff (200 ms, then 400 ms, applied
/// as NAK delays) and dead-lettered on delivery `max_deliver` (3) with every DLQ header right.
#[tokio::test(flavor = "multi_thread")]
async fn retries_with_backoff_then_dead_letters_after_max_deliver() {
    let env = Env::new(|c| c).await;
    let e = envelope(1);
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, e.event_id.as_str());
    headers.insert("nats-msg-id", e.event_id.as_str());
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let body = e.to_vec();
    let seq = env.publish_raw(headers, body.clone()).await;
    let handler = TestHandler::new(Behaviour::FailAlways);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dead_lettered >= 1).await;
    assert_eq!((stats.retried, stats.dead_lettered), (2, 1));
    let calls = handler.calls();
    assert_eq!(
        calls.iter().map(|c| c.deliveries).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let gaps = [calls[1].at - calls[0].at, calls[2].at - calls[1].at];
    eprintln!("measured redelivery gaps: {gaps:?}");
    assert!(
        gaps[0] >= Duration::from_millis(200) && gaps[0] < Duration::from_millis(1200),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(400) && gaps[1] < Duration::from_millis(1400),
        "{gaps:?}"
    );

    let dlq = env.dlq_messages(1).await;
    let m = &dlq[0];
    assert_eq!(m.subject.as_str(), env.config.subjects().dlq().as_str());
    assert_eq!(&m.payload[..], &body[..], "body unchanged");
    let dlq_id = format!("dlq:{}", e.event_id);
    assert_eq!(header(m, MSG_ID_HEADER), Some(dlq_id.as_str()));
    assert_eq!(header(m, "nats-msg-id"), Some(dlq_id.as_str()));
    assert_eq!(
        header(m, "traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(header(m, DEAD_LETTER_HEADER), Some("true"));
    assert_eq!(header(m, DLQ_REASON_HEADER), Some("max_deliver_exceeded"));
    assert_eq!(header(m, DELIVERIES_HEADER), Some("3"));
    let context = DlqContext::from_json(header(m, DLQ_CONTEXT_HEADER).unwrap()).unwrap();
    assert_eq!(context.event_id.as_deref(), Some(e.event_id.as_str()));
    assert_eq!(context.reason, "max_deliver_exceeded");
    assert_eq!(context.error_class.as_deref(), Some("HandlerError"));
    assert_eq!(context.error_message.as_deref(), Some("boom"));
    assert_eq!(context.deliveries, 3);
    assert_eq!(context.sequence, Some(seq));
    // The consumer sequence of the third delivery: the fresh durable delivered only this message.
    assert_eq!(context.consumer_sequence, Some(3));
    assert_eq!(
        context.original_subject.as_deref(),
        Some(env.config.subjects().destination().as_str())
    );
    assert_eq!(context.stream.as_deref(), Some(env.spec.stream_name()));
    assert_eq!(
        context.consumer.as_deref(),
        Some(env.config.durable_name().as_str())
    );
    assert!(context.published_at.is_some());
    let raw = header(m, DLQ_CONTEXT_HEADER).unwrap();
    assert!(
        raw.contains(&format!(
            "\"sequence\":{{\"stream\":{seq},\"consumer\":3}},"
        )),
        "the gem's object form: {raw}"
    );

    handle.shutdown().await.unwrap();
    assert_eq!(
        env.main_stream_len().await,
        0,
        "original acked after the DLQ PubAck"
    );
    assert_eq!(env.effects().await, 0, "every attempt rolled back");
    assert_eq!(
        env.db
            .count(
                "SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'failed' \
             AND processing_attempts = 3 AND error_message = 'HandlerError: boom' \
             AND failed_at IS NOT NULL"
            )
            .await,
        1
    );
    env.teardown().await;
}

/// Bodies that are not an envelope (not JSON, not an object, no `event_type`) go to the DLQ on
/// the first delivery with reason `malformed_json`, without a database write or handler call.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_are_dead_lettered_on_first_delivery() {
    let env = Env::new(|c| c.max_deliver(5)).await;
    let bodies: [&[u8]; 3] = [b"not json", b"[1,2]", br#"{"event_id":"e-1","payload":{}}"#];
    for body in bodies {
        env.publish_raw(HeaderMap::new(), body.to_vec()).await;
    }
    let handler = TestHandler::new(Behaviour::Succeed);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dead_lettered >= 3).await;
    assert_eq!((stats.retried, stats.processed), (0, 0));
    assert!(handler.calls().is_empty());
    let dlq = env.dlq_messages(3).await;
    for (m, body) in dlq.iter().zip(bodies) {
        assert_eq!(&m.payload[..], body);
        assert_eq!(header(m, DLQ_REASON_HEADER), Some("malformed_json"));
        assert_eq!(header(m, DELIVERIES_HEADER), Some("1"));
        let context = DlqContext::from_json(header(m, DLQ_CONTEXT_HEADER).unwrap()).unwrap();
        assert_eq!(context.error_class.as_deref(), Some("EnvelopeError"));
    }
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_inbox_events")
            .await,
        0
    );
    handle.shutdown().await.unwrap();
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A permanent error dead-letters at once (`unrecoverable`, delivery 1).
#[tokio::test(flavor = "multi_thread")]
async fn permanent_error_is_dead_lettered_at_once() {
    let env = Env::new(|c| c.max_deliver(5)).await;
    let e = envelope(1);
    env.publish_gem(&e).await;
    let handler = TestHandler::new(Behaviour::Permanent);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dead_lettered >= 1).await;
    assert_eq!(stats.retried, 0);
    assert_eq!(handler.calls().len(), 1);
    let dlq = env.dlq_messages(1).await;
    assert_eq!(header(&dlq[0], DLQ_REASON_HEADER), Some("unrecoverable"));
    assert_eq!(header(&dlq[0], DELIVERIES_HEADER), Some("1"));
    // Only the gem's lowercase header was sent: it is re-keyed, and the canonical one added.
    let dlq_id = format!("dlq:{}", e.event_id);
    assert_eq!(header(&dlq[0], "nats-msg-id"), Some(dlq_id.as_str()));
    assert_eq!(header(&dlq[0], MSG_ID_HEADER), Some(dlq_id.as_str()));
    let context = DlqContext::from_json(header(&dlq[0], DLQ_CONTEXT_HEADER).unwrap()).unwrap();
    assert_eq!(context.error_class.as_deref(), Some("Validation"));
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// When the DLQ publish fails (its stream is gone) the original is NAKed, not acked: it is
/// redelivered, and dead-lettered once the DLQ stream is back.
#[tokio::test(flavor = "multi_thread")]
async fn failing_dlq_publish_leaves_the_original_unacked() {
    let env = Env::new(|c| c.max_deliver(10)).await;
    env.js()
        .delete_stream(env.spec.dlq_stream_name())
        .await
        .unwrap();
    env.publish_gem(&envelope(1)).await;
    let handler = TestHandler::new(Behaviour::Permanent);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dlq_publish_failures >= 2).await;
    assert_eq!(stats.dead_lettered, 0);
    assert!(
        handler.calls().iter().any(|c| c.deliveries >= 2),
        "redelivered"
    );
    assert_eq!(env.main_stream_len().await, 1, "original kept");
    ensure_topology(env.t.jetstream(), &env.spec, &EnsureOptions::new())
        .await
        .unwrap();
    wait(&handle, |s| s.dead_lettered >= 1).await;
    env.dlq_messages(1).await;
    handle.shutdown().await.unwrap();
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// With `use_dlq = false` a poison message is terminated (never silently acked as handled).
#[tokio::test(flavor = "multi_thread")]
async fn without_dlq_poison_messages_are_terminated() {
    let env = Env::new(|c| c.use_dlq(false)).await;
    env.publish_raw(HeaderMap::new(), b"not json".to_vec())
        .await;
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.terminated >= 1).await;
    assert_eq!(stats.dead_lettered, 0);
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// With the JS API allowed, the durable's `max_deliver` on the server (3) decides, not a
/// differing app config (10): the event is dead-lettered on delivery 3.
#[tokio::test(flavor = "multi_thread")]
async fn server_max_deliver_wins_over_a_differing_config() {
    let env = Env::new(|c| c).await;
    let config = env.config_builder().max_deliver(10).build().unwrap();
    env.publish_gem(&envelope(1)).await;
    let handler = TestHandler::new(Behaviour::FailAlways);
    let handle = jetstream_bridge_consumer::Consumer::builder(&config, env.js())
        .with_inbox(env.db.pool().clone())
        .handler(handler.clone())
        .fetch_wait(Duration::from_millis(500))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dead_lettered >= 1).await;
    assert_eq!(stats.retried, 2);
    let dlq = env.dlq_messages(1).await;
    assert_eq!(
        header(&dlq[0], DLQ_REASON_HEADER),
        Some("max_deliver_exceeded")
    );
    assert_eq!(header(&dlq[0], DELIVERIES_HEADER), Some("3"));
    handle.shutdown().await.unwrap();
    env.teardown().await;
}
