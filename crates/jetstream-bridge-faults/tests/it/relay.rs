//! Scenario 1: the relay process is SIGKILLed three times mid-flight.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::{client, distinct, secured_server, url_with_credentials, Figures, Scenario};

/// Events relayed (the brief's 20 000).
const EVENTS: usize = 20_000;
const KILLS: usize = 3;

/// Each kill leaves rows claimed by the dead relay; the next relay takes them over after the
/// lease and publishes them again, and the stream's duplicate window drops the repeats: every
/// event is stored exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_three_times_loses_and_duplicates_nothing() {
    let (server, secret) = secured_server().await;
    let js = client(&[server.client_url()], Some(&secret)).await;
    let s = Scenario::new(
        "relay_kill9_x3",
        url_with_credentials(&server, &secret),
        js,
        secret,
        1,
        &[],
    )
    .await;
    let ids = s.enqueue(EVENTS, None).await;
    let total = EVENTS as u64;
    let relay_vars = [(jetstream_bridge_faults::vars::LEASE_MS, "2000")];
    let mut worker = s.worker("relay", &relay_vars);
    let mut recovery = Duration::ZERO;
    for k in 1..=KILLS {
        s.wait_stream_at_least(total * k as u64 / (KILLS as u64 + 1))
            .await;
        worker.kill9();
        let (at_kill, _) = s.stream_state().await.unwrap();
        let killed = Instant::now();
        worker = s.worker("relay", &relay_vars);
        s.wait_stream_at_least(at_kill + 1).await;
        recovery = recovery.max(killed.elapsed());
    }
    s.wait_count(EVENTS as i64, || s.sent()).await;
    worker.assert_running();
    worker.kill9();

    let (messages, last_sequence) = s.stream_state().await.unwrap();
    let stream_ids = s.stream_event_ids().await;
    let (unique, repeated) = distinct(&stream_ids);
    let in_stream: HashSet<&String> = stream_ids.iter().collect();
    let missing = ids.iter().filter(|id| !in_stream.contains(id)).count();
    assert_eq!(messages, total, "stream message count");
    assert_eq!(last_sequence, total, "nothing stored twice, even briefly");
    assert_eq!(unique, EVENTS, "distinct event ids in the stream");
    assert_eq!(repeated, 0);
    assert_eq!(missing, 0);
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jetstream_outbox_events WHERE status <> 'sent'")
            .await,
        0
    );
    let log_lines = s.assert_no_secret_in_logs();
    s.summary(&Figures {
        events: EVENTS,
        cycles: KILLS,
        lost: missing as i64,
        duplicate_effects: None,
        duplicate_stream_entries: repeated as i64,
        recovery,
        log_lines,
        ..Figures::default()
    });
    s.teardown().await;
}
