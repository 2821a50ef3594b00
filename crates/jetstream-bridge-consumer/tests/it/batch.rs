//! Batch mode: one transaction per pull request, fallback to single events on failure.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::{DELIVERIES_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER};
use jetstream_bridge_consumer::{Event, HandlerError, InboxBatchHandler};
use jetstream_bridge_testkit::eventually;
use tokio::sync::Notify;

use crate::{envelope, header, wait, Env, WAIT};

/// Inserts one `effects` row per event; records each call's size; fails the whole batch
/// (permanently, or retryably with `retry`) when it contains the event with payload id
/// `poison`; on call number `hang_on` (1-based) it writes its rows, notifies `hung` and never
/// returns.
#[derive(Clone, Default)]
struct Recorder {
    sizes: Arc<Mutex<Vec<usize>>>,
    poison: Option<u64>,
    retry: bool,
    hang_on: Option<usize>,
    hung: Arc<Notify>,
}

impl InboxBatchHandler for Recorder {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let call = {
            let mut sizes = self.sizes.lock().unwrap();
            sizes.push(events.len());
            sizes.len()
        };
        for event in events {
            diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind::<diesel::sql_types::Text, _>(event.envelope.event_id.as_str())
                .execute(conn)
                .await?;
        }
        if let Some(poison) = self.poison {
            if events
                .iter()
                .any(|e| e.envelope.payload["id"].as_u64() == Some(poison))
            {
                return Err(if self.retry {
                    HandlerError::retry("poison")
                } else {
                    HandlerError::permanent("poison")
                });
            }
        }
        if self.hang_on == Some(call) {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// The events of one pull request reach the batch handler together, in one transaction; a
/// second copy of an event is filtered out as a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn batch_handler_gets_the_pull_request_in_one_call() {
    let env = Env::new(|c| c.batch_size(20)).await;
    let first = envelope(0);
    env.publish_gem(&first).await;
    for n in 1..10 {
        env.publish_gem(&envelope(n)).await;
    }
    env.publish_gem(&first).await;
    let recorder = Recorder::default();
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed + s.duplicates >= 11).await;
    assert_eq!((stats.processed, stats.duplicates), (10, 1));
    handle.shutdown().await.unwrap();
    assert_eq!(*recorder.sizes.lock().unwrap(), [10]);
    assert_eq!(env.effects().await, 10);
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Collects the event ids of each call, without the inbox; fails retryably when a batch holds
/// more than one event with payload id `poison`.
#[derive(Clone, Default)]
struct Plain {
    calls: Arc<Mutex<Vec<Vec<u64>>>>,
    poison: Option<u64>,
}

impl jetstream_bridge_consumer::BatchHandler for Plain {
    async fn handle_batch(&self, events: &[Event]) -> Result<(), HandlerError> {
        let ids: Vec<u64> = events
            .iter()
            .map(|e| e.envelope.payload["id"].as_u64().unwrap())
            .collect();
        let poisoned = self
            .poison
            .is_some_and(|p| ids.len() > 1 && ids.contains(&p));
        self.calls.lock().unwrap().push(ids);
        if poisoned {
            return Err(HandlerError::retry("poison"));
        }
        Ok(())
    }
}

/// Without the inbox a batch handler gets the pull request in one call (no connection); a
/// failed batch is replayed event by event, every event included.
#[tokio::test(flavor = "multi_thread")]
async fn batch_handler_without_the_inbox() {
    let env = Env::new(|c| c.batch_size(20).use_inbox(false)).await;
    for n in 0..4 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = Plain {
        poison: Some(2),
        ..Plain::default()
    };
    let handle = env
        .consumer_without_inbox()
        .batch_handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 4).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        (stats.processed, stats.retried, stats.duplicates),
        (4, 0, 0)
    );
    assert_eq!(
        *handler.calls.lock().unwrap(),
        [vec![0, 1, 2, 3], vec![0], vec![1], vec![2], vec![3]]
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_inbox_events")
            .await,
        0
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A failing batch rolls back and its events are processed one by one: the poison event is
/// dead-lettered alone, its batch mates commit once.
#[tokio::test(flavor = "multi_thread")]
async fn failing_batch_falls_back_to_single_events() {
    let env = Env::new(|c| c.batch_size(20)).await;
    for n in 0..5 {
        env.publish_gem(&envelope(n)).await;
    }
    let recorder = Recorder {
        poison: Some(3),
        ..Recorder::default()
    };
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 4 && s.dead_lettered >= 1).await;
    assert_eq!(stats.retried, 0);
    handle.shutdown().await.unwrap();
    assert_eq!(*recorder.sizes.lock().unwrap(), [5, 1, 1, 1, 1, 1]);
    assert_eq!(env.effects().await, 4);
    let dlq = env.dlq_messages(1).await;
    assert_eq!(header(&dlq[0], DLQ_REASON_HEADER), Some("unrecoverable"));
    env.teardown().await;
}

/// Publishes `envelope` with the canonical `Nats-Msg-Id` only (the server deduplicates on it).
async fn publish_canonical(env: &Env, envelope: &jetstream_bridge_config::Envelope) {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, envelope.event_id.as_str());
    env.publish_raw(headers, envelope.to_vec()).await;
}

/// One event stored three times in one pull (canonical `Nats-Msg-Id`, the gem's lowercase
/// `nats-msg-id` the server does not deduplicate on, and no header: the body's event id) and
/// once more after the batch committed: the handler sees it once, its effects happen once,
/// every copy is acked.
#[tokio::test(flavor = "multi_thread")]
async fn duplicates_in_and_after_a_batch_have_effects_once() {
    let env = Env::new(|c| c.batch_size(20)).await;
    let events: Vec<_> = (0..5).map(envelope).collect();
    for e in &events {
        publish_canonical(&env, e).await;
    }
    env.publish_gem(&events[0]).await;
    env.publish_raw(HeaderMap::new(), events[0].to_vec()).await;
    let recorder = Recorder::default();
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed + s.duplicates >= 7).await;
    assert_eq!((stats.processed, stats.duplicates), (5, 2));
    // Already processed: acked without a handler call.
    env.publish_gem(&events[2]).await;
    let stats = wait(&handle, |s| s.duplicates >= 3).await;
    assert_eq!(
        (stats.processed, stats.duplicates, stats.retried),
        (5, 3, 0)
    );
    handle.shutdown().await.unwrap();
    assert_eq!(*recorder.sizes.lock().unwrap(), [5]);
    assert_eq!(env.effects().await, 5);
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT event_id) AS n FROM effects")
            .await,
        5
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed'")
            .await,
        5
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A retryable failure of one event: its batch rolls back, its mates commit and are acked
/// one by one, and the failing event is redelivered with backoff until it is dead-lettered
/// on delivery `max_deliver` (3), its failures recorded in the inbox.
#[tokio::test(flavor = "multi_thread")]
async fn failing_event_in_a_batch_is_retried_alone_then_dead_lettered() {
    let env = Env::new(|c| c.batch_size(20)).await;
    let events: Vec<_> = (0..5).map(envelope).collect();
    for e in &events {
        env.publish_gem(e).await;
    }
    let recorder = Recorder {
        poison: Some(3),
        retry: true,
        ..Recorder::default()
    };
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.dead_lettered >= 1).await;
    assert_eq!(
        (stats.processed, stats.retried, stats.dead_lettered),
        (4, 2, 1)
    );
    handle.shutdown().await.unwrap();
    // The batch of 5, its 5 one-by-one retries, then the redelivered poison event (alone in
    // its pull, so a batch of one and its one-by-one retry) twice.
    assert_eq!(
        *recorder.sizes.lock().unwrap(),
        [5, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    assert_eq!(env.effects().await, 4);
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT event_id) AS n FROM effects")
            .await,
        4
    );
    let dlq = env.dlq_messages(1).await;
    assert_eq!(
        header(&dlq[0], DLQ_REASON_HEADER),
        Some("max_deliver_exceeded")
    );
    assert_eq!(header(&dlq[0], DELIVERIES_HEADER), Some("3"));
    let poison_id = events[3].event_id.as_str();
    assert_eq!(
        env.db
            .count(&format!(
                "SELECT count(*) AS n FROM jetstream_inbox_events WHERE event_id = '{poison_id}' \
                 AND status = 'failed' AND processing_attempts = 3"
            ))
            .await,
        1
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A malformed body inside a batch is dead-lettered on its first delivery without an inbox
/// row; the rest of the batch goes to the handler together.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_body_in_a_batch_is_dead_lettered_and_the_rest_processed() {
    let env = Env::new(|c| c.batch_size(20)).await;
    for n in 0..2 {
        env.publish_gem(&envelope(n)).await;
    }
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, "malformed-1");
    env.publish_raw(headers, b"not json".to_vec()).await;
    for n in 2..4 {
        env.publish_gem(&envelope(n)).await;
    }
    let recorder = Recorder::default();
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 4 && s.dead_lettered >= 1).await;
    assert_eq!((stats.retried, stats.dead_lettered), (0, 1));
    handle.shutdown().await.unwrap();
    assert_eq!(*recorder.sizes.lock().unwrap(), [4]);
    assert_eq!(env.effects().await, 4);
    let dlq = env.dlq_messages(1).await;
    assert_eq!(header(&dlq[0], DLQ_REASON_HEADER), Some("malformed_json"));
    assert_eq!(header(&dlq[0], DELIVERIES_HEADER), Some("1"));
    assert_eq!(&dlq[0].payload[..], b"not json");
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_inbox_events")
            .await,
        4
    );
    assert_eq!(
        env.db
            .count(
                "SELECT count(*) AS n FROM jetstream_inbox_events WHERE event_id = 'malformed-1'"
            )
            .await,
        0
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// A batch dropped before its commit (the runtime is stopped past its shutdown timeout while
/// the handler hangs after writing its rows): nothing of it commits, no transaction is left
/// open holding inbox locks, and after redelivery every event has its effects exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn batch_dropped_before_commit_loses_nothing_and_applies_once() {
    let env = Env::new(|c| c.batch_size(5).ack_wait("1s")).await;
    for n in 0..10 {
        env.publish_gem(&envelope(n)).await;
    }
    let recorder = Recorder {
        hang_on: Some(2),
        ..Recorder::default()
    };
    let handle = env
        .consumer()
        .batch_handler(recorder.clone())
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    tokio::time::timeout(WAIT, recorder.hung.notified())
        .await
        .expect("the second batch reached the handler");
    let report = handle.shutdown().await.unwrap();
    assert_eq!(
        (report.abandoned, report.stats.processed),
        (5, 5),
        "{report:?}"
    );
    // The dropped transaction's connection was closed, not parked in the pool.
    // (Checked first, on connections outside the pool: a checkout would recycle a parked
    // connection.)
    eventually(WAIT, || async {
        let mut conn = env.db.conn().await;
        let open: crate::N = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        open.n == 0
    })
    .await;

    assert_eq!(
        env.effects().await,
        5,
        "the dropped batch committed nothing"
    );

    let again = Recorder::default();
    let rest = env
        .consumer()
        .batch_handler(again.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&rest, |s| s.processed + s.duplicates >= 5).await;
    assert_eq!((stats.processed, stats.duplicates), (5, 0));
    rest.shutdown().await.unwrap();
    assert_eq!(env.effects().await, 10);
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT event_id) AS n FROM effects")
            .await,
        10
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// The bench's batch handler shape, one statement per event (`per_row`), or one multi-row
/// statement per batch.
struct Insert {
    per_row: bool,
}

impl InboxBatchHandler for Insert {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        if self.per_row {
            for event in events {
                diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
                    .bind::<diesel::sql_types::Text, _>(event.envelope.event_id.as_str())
                    .execute(conn)
                    .await?;
            }
        } else {
            let ids: Vec<&str> = events
                .iter()
                .map(|e| e.envelope.event_id.as_str())
                .collect();
            diesel::sql_query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
                .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(ids)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// Indicative batch-mode throughput on the shared servers (not a pass/fail figure; run with
/// `cargo test --release -p jetstream-bridge-consumer --test it batch_throughput -- --ignored
/// --nocapture`). `JB_BENCH_EVENTS` sets the events per run (default 5000).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly"]
async fn batch_throughput() {
    let n: usize = std::env::var("JB_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let env = Env::new(|c| c.batch_size(100)).await;
    for (label, per_row, concurrency) in [
        ("multi-row handler", false, 1),
        ("per-row handler (the bench's)", true, 1),
        ("multi-row handler", false, 1),
        ("multi-row handler, concurrency 2", false, 2),
    ] {
        let subject = env.config.subjects().destination().as_str().to_owned();
        let mut acks = futures_util::stream::FuturesUnordered::new();
        for i in 0..n {
            let e = envelope(i as u64);
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, e.event_id.as_str());
            acks.push(std::future::IntoFuture::into_future(
                env.js()
                    .publish_with_headers(subject.clone(), headers, e.to_vec().into())
                    .await
                    .unwrap(),
            ));
            if acks.len() >= 1000 {
                futures_util::StreamExt::next(&mut acks)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        while let Some(ack) = futures_util::StreamExt::next(&mut acks).await {
            ack.unwrap();
        }
        let before = env.effects().await;
        let started = std::time::Instant::now();
        let handle = env
            .consumer()
            .batch_handler(Insert { per_row })
            .concurrency(concurrency)
            .fetch_wait(Duration::from_millis(200))
            .build()
            .unwrap()
            .spawn();
        handle.wait_for(|s| s.processed >= n as u64).await.unwrap();
        let rate = n as f64 / started.elapsed().as_secs_f64();
        handle.shutdown().await.unwrap();
        eprintln!("batch mode, {label}: {rate:.0} events/s ({n} events)");
        assert_eq!(env.effects().await - before, n as i64);
    }
    env.teardown().await;
}

/// Fails every batch of more than one event (retryably); applies a one-event batch (the
/// fallback) slowly, recording the delivery count and stream sequence the handler saw.
#[derive(Clone)]
struct SlowFallback {
    each: Duration,
    seen: Arc<Mutex<Vec<(u64, u32)>>>,
}

impl InboxBatchHandler for SlowFallback {
    async fn handle_batch(
        &self,
        events: &[Event],
        _conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        if events.len() > 1 {
            return Err(HandlerError::retry("whole batch fails"));
        }
        for event in events {
            self.seen
                .lock()
                .unwrap()
                .push((event.metadata.stream_sequence, event.metadata.deliveries));
        }
        tokio::time::sleep(self.each).await;
        Ok(())
    }
}

/// A failed batch's one-by-one fallback longer than `ack_wait` (ack_wait 1 s, 5 events ×
/// 400 ms): the events waiting for their turn get in-progress acks too, so none is
/// redelivered meanwhile (a second slot keeps a pull open, which would receive such a
/// redelivery at once): every event is handled once, on its first delivery, and the
/// consumer delivered exactly five messages.
#[tokio::test(flavor = "multi_thread")]
async fn long_fallback_keeps_waiting_events_from_redelivery() {
    let env = Env::new(|c| c.batch_size(5).ack_wait("1s")).await;
    for n in 0..5 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = SlowFallback {
        each: Duration::from_millis(400),
        seen: Arc::default(),
    };
    let handle = env
        .consumer()
        .batch_handler(handler.clone())
        .concurrency(2)
        .progress_interval(Some(Duration::from_millis(200)))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 5).await;
    // Any redelivery happened before the last event's ack: it is visible in the consumer's
    // delivered count now.
    let delivered = delivered(&env).await;
    handle.shutdown().await.unwrap();
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(
        (delivered, stats.duplicates, stats.retried),
        (5, 0, 0),
        "redelivered during the fallback; handler saw {seen:?}"
    );
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|(_, d)| *d == 1), "{seen:?}");
    assert!(stats.progress_acks > 0);
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Sleeps `first` in its first call and `rest` in the others; records each call's size.
#[derive(Clone)]
struct Sleepy {
    first: Duration,
    rest: Duration,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl InboxBatchHandler for Sleepy {
    async fn handle_batch(
        &self,
        events: &[Event],
        _conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let call = {
            let mut sizes = self.sizes.lock().unwrap();
            sizes.push(events.len());
            sizes.len()
        };
        tokio::time::sleep(if call == 1 { self.first } else { self.rest }).await;
        Ok(())
    }
}

/// The consumer's delivered count (every delivery, redeliveries included).
async fn delivered(env: &Env) -> u64 {
    let mut consumer = env
        .js()
        .get_stream(env.spec.stream_name())
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            env.config.durable_name().as_str(),
        )
        .await
        .unwrap();
    consumer.info().await.unwrap().delivered.consumer_sequence
}

/// A pulled batch waiting for a concurrency slot longer than `ack_wait` (concurrency 1, the
/// batch ahead takes 1.5 s, ack_wait 1 s) gets in-progress acks while it waits: nothing is
/// redelivered (a redelivered copy would reach the next pull and count as a duplicate).
#[tokio::test(flavor = "multi_thread")]
async fn batch_waiting_for_a_slot_is_not_redelivered() {
    let env = Env::new(|c| c.batch_size(2).ack_wait("1s")).await;
    for n in 0..4 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = Sleepy {
        first: Duration::from_millis(1500),
        rest: Duration::from_millis(200),
        sizes: Arc::default(),
    };
    let handle = env
        .consumer()
        .batch_handler(handler.clone())
        .concurrency(1)
        .progress_interval(Some(Duration::from_millis(200)))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 4).await;
    let delivered = delivered(&env).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        (delivered, stats.processed, stats.duplicates),
        (4, 4, 0),
        "calls: {:?}",
        handler.sizes.lock().unwrap()
    );
    assert_eq!(*handler.sizes.lock().unwrap(), [2, 2]);
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Messages collected while a pull stays open longer than `ack_wait` (fetch wait 2 s,
/// ack_wait 1 s, fewer messages than `batch_size`) get in-progress acks during the collection:
/// the pull request is not refilled with redelivered copies.
#[tokio::test(flavor = "multi_thread")]
async fn messages_collected_during_a_long_pull_are_not_redelivered() {
    let env = Env::new(|c| c.batch_size(10).ack_wait("1s")).await;
    for n in 0..2 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = Sleepy {
        first: Duration::ZERO,
        rest: Duration::ZERO,
        sizes: Arc::default(),
    };
    let handle = env
        .consumer()
        .batch_handler(handler.clone())
        .fetch_wait(Duration::from_secs(2))
        .progress_interval(Some(Duration::from_millis(200)))
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 2).await;
    let delivered = delivered(&env).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        (delivered, stats.processed, stats.duplicates),
        (2, 2, 0),
        "calls: {:?}",
        handler.sizes.lock().unwrap()
    );
    assert_eq!(*handler.sizes.lock().unwrap(), [2]);
    env.wait_stream_drained().await;
    env.teardown().await;
}
