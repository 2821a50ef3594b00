//! Batch mode: one transaction per pull request, fallback to single events on failure.

use std::sync::{Arc, Mutex};

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::DLQ_REASON_HEADER;
use jetstream_bridge_consumer::{BatchHandler, Event, HandlerError};

use crate::{envelope, header, wait, Env};

/// Inserts one `effects` row per event; records each call's size; fails the whole batch
/// (permanently) when it contains the event with payload id `poison`.
#[derive(Clone, Default)]
struct Recorder {
    sizes: Arc<Mutex<Vec<usize>>>,
    poison: Option<u64>,
}

impl BatchHandler for Recorder {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        self.sizes.lock().unwrap().push(events.len());
        let conn = conn.expect("inbox on");
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
                return Err(HandlerError::permanent("poison"));
            }
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
    assert_eq!(env.main_stream_len().await, 0);
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
