//! Direct publish (outbox off).

use std::time::Duration;

use jetstream_bridge_config::Envelope;
use jetstream_bridge_outbox::{NewEvent, OutboxErrorKind, Publisher};
use serde_json::json;

use crate::{stream_len, Env};

/// A direct publish reports stream, sequence, event id and subject; publishing the same
/// envelope again is reported as a duplicate and stored once.
#[tokio::test(flavor = "multi_thread")]
async fn publish_reports_the_ack_and_dedupes_a_repeat() {
    let env = Env::new().await;
    let publisher = Publisher::new(&env.config, env.js());
    let envelope = Envelope::builder("user.created", json!({"id": 1}))
        .producer("orders")
        .build()
        .unwrap();
    let first = publisher.publish(envelope.clone()).await.unwrap();
    assert_eq!(first.stream, env.stream.cached_info().config.name);
    assert_eq!(first.sequence, 1);
    assert!(!first.duplicate);
    assert_eq!(first.event_id, envelope.event_id);
    assert_eq!(first.subject, env.config.subjects().source().as_str());
    let again = publisher.publish(envelope).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequence, 1);
    assert_eq!(stream_len(&env.stream).await, 1);
    env.teardown().await;
}

/// A pipelined batch reports one result per event in input order; a failing event (no stream,
/// after its retries) does not affect the others.
#[tokio::test(flavor = "multi_thread")]
async fn publish_batch_reports_per_event_results() {
    let env = Env::new().await;
    let publisher = Publisher::new(&env.config, env.js())
        .retry_attempts(2)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
        .max_in_flight(4);
    let mut events: Vec<NewEvent> = (0..10)
        .map(|i| NewEvent::new("user.created", json!({ "id": i })))
        .collect();
    events.insert(
        5,
        NewEvent::new("user.created", json!({"id": "x"})).subject(env.t.subject("nowhere")),
    );
    events.push(NewEvent::new("user.created", json!("not an object")));
    let results = publisher.publish_batch(events).await;
    assert_eq!(results.len(), 12);
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 10);
    let sequences: Vec<u64> = ok.iter().map(|p| p.sequence).collect();
    assert_eq!(
        sequences,
        (1..=10).collect::<Vec<_>>(),
        "input order is kept"
    );
    let no_stream = results[5].as_ref().unwrap_err();
    assert_eq!(no_stream.kind(), OutboxErrorKind::NoStream);
    assert!(no_stream.event_id().is_some());
    assert_eq!(
        results[11].as_ref().unwrap_err().kind(),
        OutboxErrorKind::InvalidEvent
    );
    assert_eq!(stream_len(&env.stream).await, 10);
    env.teardown().await;
}

/// Transient failures of a batch are retried together, pipelined: 40 events to a subject no
/// stream captures take about two back-offs in all, not two per event (serial retries would
/// need at least 40 × 2 × 100 ms).
#[tokio::test(flavor = "multi_thread")]
async fn batch_retries_are_pipelined() {
    let env = Env::new().await;
    let publisher = Publisher::new(&env.config, env.js())
        .retry_attempts(3)
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(200));
    let nowhere = env.t.subject("nowhere");
    let started = std::time::Instant::now();
    let results =
        publisher
            .publish_batch((0..40).map(|i| {
                NewEvent::new("user.created", json!({ "id": i })).subject(nowhere.as_str())
            }))
            .await;
    let took = started.elapsed();
    assert_eq!(results.len(), 40);
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::NoStream);
        assert!(err.is_transient());
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    env.teardown().await;
}
