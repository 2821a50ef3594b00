//! Delivery: exactly-once effects, gem-published messages, panics, concurrency, in-progress acks.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use jetstream_bridge_config::{Envelope, SubjectLayout};
use jetstream_bridge_consumer::{Event, Handler, HandlerError, Metadata};
use jetstream_bridge_inbox::{Inbox, InboxStatus};

use crate::{envelope, wait, Behaviour, Env, TestHandler};

/// The same event stored twice (gem-style lowercase msg-id, not deduplicated by the server) has
/// its effects once: the second copy is acked as a duplicate without calling the handler.
#[tokio::test(flavor = "multi_thread")]
async fn same_event_delivered_twice_has_effects_once() {
    let env = Env::new(|c| c).await;
    let e = envelope(1);
    let first = env.publish_gem(&e).await;
    let second = env.publish_gem(&e).await;
    assert_ne!(first, second, "the server stored both copies");
    let handler = TestHandler::new(Behaviour::Succeed);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed + s.duplicates >= 2).await;
    assert_eq!((stats.processed, stats.duplicates), (1, 1));
    assert_eq!(handler.calls().len(), 1);
    assert_eq!(env.effects().await, 1);
    let mut conn = env.db.conn().await;
    assert_eq!(
        Inbox::new()
            .status(&mut conn, e.event_id.as_str())
            .await
            .unwrap(),
        Some(InboxStatus::Processed)
    );
    drop(conn);
    handle.shutdown().await.unwrap();
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Messages exactly as the Ruby gem publishes them (gem key order, lowercase `nats-msg-id`
/// only) are consumed, on env-prefixed (4.x) and env-less (7.x) subjects.
#[tokio::test(flavor = "multi_thread")]
async fn gem_published_messages_are_consumed_in_both_layouts() {
    for (layout, fixture) in [
        (
            SubjectLayout::EnvPrefixed,
            include_str!(
                "../../../jetstream-bridge-config/tests/fixtures/gem-4.x/user_created.json"
            ),
        ),
        (
            SubjectLayout::EnvLess,
            include_str!(
                "../../../jetstream-bridge-config/tests/fixtures/gem-7.x/user_created.json"
            ),
        ),
    ] {
        let env = Env::with_layout(layout, |c| c).await;
        let body = fixture.trim_end().as_bytes().to_vec();
        let parsed = Envelope::from_slice(&body).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("nats-msg-id", parsed.event_id.as_str());
        env.publish_raw(headers, body).await;
        let handler = TestHandler::new(Behaviour::Succeed);
        let handle = env
            .consumer()
            .handler(handler.clone())
            .build()
            .unwrap()
            .spawn();
        wait(&handle, |s| s.processed >= 1).await;
        let calls = handler.calls();
        assert_eq!(calls[0].event_id, parsed.event_id.as_str(), "{layout:?}");
        assert_eq!(calls[0].deliveries, 1);
        handle.shutdown().await.unwrap();
        assert_eq!(env.effects().await, 1);
        env.teardown().await;
    }
}

/// A handler panic is a retryable failure of that message; the runtime keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn handler_panic_is_retried_and_the_runtime_lives() {
    let env = Env::new(|c| c).await;
    let handler = TestHandler::new(Behaviour::PanicFirst);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    env.publish_gem(&envelope(1)).await;
    let stats = wait(&handle, |s| s.processed >= 1).await;
    assert_eq!((stats.panics, stats.retried), (1, 1));
    env.publish_gem(&envelope(2)).await;
    wait(&handle, |s| s.processed >= 2).await;
    let deliveries: Vec<u32> = handler.calls().iter().map(|c| c.deliveries).collect();
    assert_eq!(deliveries, [1, 2, 1]);
    // The panicked attempt's effect rolled back: one row per event.
    assert_eq!(env.effects().await, 2);
    assert_eq!(
        env.db
            .count(
                "SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed' \
             AND processing_attempts = 2"
            )
            .await,
        1
    );
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// Concurrency is bounded: with 3 slots no more than 3 handlers run at once (and 3 do).
#[tokio::test(flavor = "multi_thread")]
async fn concurrency_is_bounded() {
    let env = Env::new(|c| c.batch_size(10)).await;
    for n in 0..9 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(300)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .concurrency(3)
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 9).await;
    assert_eq!(handler.max_running(), 3);
    handle.shutdown().await.unwrap();
    assert_eq!(env.effects().await, 9);
    env.teardown().await;
}

/// The default concurrency of 1 is strictly sequential, in stream order.
#[tokio::test(flavor = "multi_thread")]
async fn default_concurrency_is_sequential_in_order() {
    let env = Env::new(|c| c).await;
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(env.publish_gem(&envelope(n)).await);
    }
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(20)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 5).await;
    assert_eq!(handler.max_running(), 1);
    let order: Vec<u64> = handler.calls().iter().map(|c| c.stream_sequence).collect();
    assert_eq!(order, seqs);
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// A handler running longer than `ack_wait` is kept by in-progress acks: delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn in_progress_acks_keep_a_long_handler_from_redelivery() {
    let env = Env::new(|c| c.ack_wait("1s")).await;
    env.publish_gem(&envelope(1)).await;
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(2500)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 1).await;
    assert!(stats.progress_acks >= 3, "{stats:?}");
    let calls = handler.calls();
    assert_eq!(
        calls.len(),
        1,
        "redelivered despite progress acks: {calls:?}"
    );
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// Push mode (queue subscription on the delivery subject, no JS API call): the same
/// guarantees: a duplicate is acked without the handler, a panic is retried after the backoff.
#[tokio::test(flavor = "multi_thread")]
async fn push_mode_consumes_with_the_same_guarantees() {
    let env = Env::new(|c| c.consumer_mode(jetstream_bridge_config::ConsumerMode::Push)).await;
    let handler = TestHandler::new(Behaviour::PanicFirst);
    let handle = env
        .consumer()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let e = envelope(1);
    env.publish_gem(&e).await;
    env.publish_gem(&e).await;
    env.publish_gem(&envelope(2)).await;
    let stats = wait(&handle, |s| s.processed + s.duplicates >= 3).await;
    assert_eq!((stats.processed, stats.duplicates), (2, 1), "{stats:?}");
    assert_eq!((stats.panics, stats.retried), (1, 1));
    let report = handle.shutdown().await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert_eq!(env.effects().await, 2);
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Per-message mode: messages of one pull that wait for a slot longer than `ack_wait`
/// (concurrency 1, 5 messages × 600 ms, ack_wait 1 s) get in-progress acks while they wait:
/// none is redelivered, the server delivered each once.
#[tokio::test(flavor = "multi_thread")]
async fn messages_waiting_for_a_slot_are_not_redelivered() {
    let env = Env::new(|c| c.batch_size(5).ack_wait("1s")).await;
    for n in 0..5 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(600)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .concurrency(1)
        .progress_interval(Some(Duration::from_millis(200)))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 5).await;
    let delivered = env
        .js()
        .get_stream(env.spec.stream_name())
        .await
        .unwrap()
        .consumer_info(env.config.durable_name().as_str())
        .await
        .unwrap()
        .delivered
        .consumer_sequence;
    handle.shutdown().await.unwrap();
    assert_eq!((delivered, stats.duplicates), (5, 0), "{stats:?}");
    assert!(handler.calls().iter().all(|c| c.deliveries == 1));
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A short fetch wait: every pull ends by the runtime's own deadline (its expiry plus a
/// grace), never by the client's later timeout, so pulls follow each other at that pace and an
/// event published between them is handled within a pull cycle (at most the fetch wait plus
/// the grace).
#[tokio::test(flavor = "multi_thread")]
async fn short_pulls_end_on_time() {
    let env = Env::new(|c| c).await;
    let handler = TestHandler::new(Behaviour::Succeed);
    let handle = env
        .consumer()
        .fetch_wait(Duration::from_millis(200))
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let started = Instant::now();
    wait(&handle, |s| s.iterations >= 10).await;
    // At most 200 ms + 1 s grace each (usually the server's 408 ends them at 200 ms); a pull
    // left to the client's own timeout would take over 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(13),
        "10 pulls took {:?}",
        started.elapsed()
    );
    // A trickle of events, some arriving in the middle of a pull: each is handled within a
    // pull cycle of its publication.
    let mut published = Vec::new();
    for n in 0..30 {
        let e = envelope(n);
        env.publish_gem(&e).await;
        published.push((e.event_id.as_str().to_owned(), Instant::now()));
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    wait(&handle, |s| s.processed >= 30).await;
    let calls = handler.calls();
    let slowest = published
        .iter()
        .map(|(id, at)| {
            let call = calls.iter().find(|c| &c.event_id == id).unwrap();
            call.at.saturating_duration_since(*at)
        })
        .max()
        .unwrap();
    // A pull cycle is at most the fetch wait plus the runtime's 1 s grace (when the server's
    // end-of-pull status is late, an event published after the server let the request expire
    // waits for the next pull); 300 ms on top for a loaded machine. Left to the client's own
    // timeout it would be over 5 s.
    assert!(
        slowest < Duration::from_millis(200 + 1000 + 300),
        "an event was handled {slowest:?} after its publication"
    );
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

/// The inbox stores the body as received: a field the envelope does not model (a newer
/// producer's, or the gem's) is kept in the payload column, a number is stored exactly, and
/// every envelope field is there.
#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_payload_is_the_received_body() {
    let env = Env::new(|c| c).await;
    let e = envelope(1);
    let mut body: serde_json::Value = serde_json::from_slice(&e.to_vec()).unwrap();
    body["x_extra"] = serde_json::json!({"note": "kept"});
    // A number no f64 holds exactly, written into the text by hand (a JSON value could not).
    let mut text = serde_json::to_string(&body).unwrap();
    text.truncate(text.len() - 1);
    text.push_str(r#","x_number":123456789012345678901234567890}"#);
    let mut headers = HeaderMap::new();
    headers.insert("nats-msg-id", e.event_id.as_str());
    env.publish_raw(headers, text.into_bytes()).await;
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 1).await;
    handle.shutdown().await.unwrap();
    let kept = env
        .db
        .count(&format!(
            "SELECT count(*) AS n FROM jetstream_inbox_events WHERE event_id = '{}' \
             AND payload->'x_extra'->>'note' = 'kept' \
             AND payload->>'x_number' = '123456789012345678901234567890' \
             AND payload->>'event_type' = '{}' AND payload->'payload' = '{}'::jsonb",
            e.event_id.as_str(),
            e.event_type,
            serde_json::to_string(&e.payload).unwrap()
        ))
        .await;
    assert_eq!(kept, 1);
    env.teardown().await;
}

/// Records the metadata of every delivery; fails the first attempt (so it is redelivered).
#[derive(Clone, Default)]
struct SeesMetadata(std::sync::Arc<std::sync::Mutex<Vec<Metadata>>>);

impl Handler for SeesMetadata {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let mut seen = self.0.lock().unwrap();
        seen.push(event.metadata.clone());
        if seen.len() == 1 {
            return Err(HandlerError::retry("first attempt fails"));
        }
        Ok(())
    }
}

/// What a handler reads of a real delivery (the runtime reads the ack subject itself): the
/// subject, stream, durable, stream and consumer sequences, delivery count, the server's
/// receive time and the headers, on the first delivery and on the redelivery.
#[tokio::test(flavor = "multi_thread")]
async fn the_handler_sees_the_delivery_metadata() {
    let env = Env::new(|c| c.use_inbox(false)).await;
    let e = envelope(1);
    let before = jetstream_bridge_config::Timestamp::now().unix_timestamp();
    let seq = env.publish_gem(&e).await;
    let seen = SeesMetadata::default();
    let handle = env
        .consumer_without_inbox()
        .handler(seen.clone())
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 1).await;
    handle.shutdown().await.unwrap();
    let after = jetstream_bridge_config::Timestamp::now().unix_timestamp();
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (i, meta) in seen.iter().enumerate() {
        let delivery = u32::try_from(i).unwrap() + 1;
        assert_eq!(
            meta.subject,
            env.config.subjects().destination().as_str(),
            "{meta:?}"
        );
        assert_eq!(meta.stream, env.config.stream_name().as_str());
        assert_eq!(meta.consumer, env.config.durable_name().as_str());
        assert_eq!(meta.stream_sequence, seq);
        assert_eq!(
            (meta.consumer_sequence, meta.deliveries),
            (u64::from(delivery), delivery)
        );
        let published = meta
            .published
            .expect("the server's receive time")
            .unix_timestamp();
        assert!((before..=after).contains(&published), "{published}");
        assert!(
            meta.headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("nats-msg-id") && v == e.event_id.as_str()),
            "{meta:?}"
        );
    }
    env.teardown().await;
}
