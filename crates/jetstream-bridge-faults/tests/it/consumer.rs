//! Scenario 2: the consumer process (batch mode) is SIGKILLed mid-batch and restarted.

use std::time::{Duration, Instant};

use jetstream_bridge_faults::vars;

use crate::{client, secured_server, url_with_credentials, Figures, Scenario};

const EVENTS: usize = 5_000;
const KILLS: usize = 3;

/// A kill inside a batch transaction rolls the batch back (effects and inbox claims together);
/// a kill after the commit but before the acks makes JetStream redeliver events the inbox
/// already holds as processed. Either way every event's effect is there exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn consumer_killed_mid_batch_applies_every_event_once() {
    let (server, secret) = secured_server().await;
    let js = client(&[server.client_url()], Some(&secret)).await;
    let s = Scenario::new(
        "consumer_kill9_mid_batch_x3",
        url_with_credentials(&server, &secret),
        js,
        secret,
        1,
        &[(vars::ACK_WAIT, "2s"), (vars::MAX_DELIVER, "20")],
    )
    .await;
    s.enqueue(EVENTS, None).await;
    // The relay is a separate process that is never killed here.
    let _relay = s.worker("relay", &[]);
    let consumer_vars = [
        (vars::BATCH, "1"),
        (vars::BATCH_SIZE, "100"),
        // Most of a batch's time is spent inside its transaction, so kills land mid-batch.
        (vars::BATCH_DELAY_MS, "40"),
    ];
    let mut worker = s.worker("consumer", &consumer_vars);
    let mut recovery = Duration::ZERO;
    for k in 1..=KILLS {
        let threshold = (EVENTS * k / (KILLS + 1)) as i64;
        s.wait_count(threshold, || s.applied()).await;
        worker.kill9();
        let at_kill = s.applied().await;
        let killed = Instant::now();
        worker = s.worker("consumer", &consumer_vars);
        s.wait_count(at_kill + 1, || s.applied()).await;
        recovery = recovery.max(killed.elapsed());
    }
    s.wait_count(EVENTS as i64, || s.applied()).await;
    // Work-queue stream: empty once every message is acked; no redelivery can follow.
    s.wait_count(1, || async {
        i64::from(s.stream_state().await.is_some_and(|(m, _)| m == 0))
    })
    .await;
    worker.assert_running();
    worker.kill9();

    let applied = s.applied().await;
    let duplicates = s.duplicate_effects().await;
    let processed = s
        .count("SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed'")
        .await;
    let (_, last_sequence) = s.stream_state().await.unwrap();
    assert_eq!(applied, EVENTS as i64, "events with an effect");
    assert_eq!(duplicates, 0, "duplicate effects");
    assert_eq!(processed, EVENTS as i64, "inbox rows processed");
    assert_eq!(last_sequence, EVENTS as u64, "stream entries");
    assert_eq!(s.count("SELECT count(*) AS n FROM attempts").await, 0);
    let log_lines = s.assert_no_secret_in_logs();
    s.summary(&Figures {
        events: EVENTS,
        cycles: KILLS,
        lost: EVENTS as i64 - applied,
        duplicate_effects: Some(duplicates),
        duplicate_stream_entries: last_sequence as i64 - EVENTS as i64,
        recovery,
        log_lines,
        ..Figures::default()
    });
    s.teardown().await;
}
