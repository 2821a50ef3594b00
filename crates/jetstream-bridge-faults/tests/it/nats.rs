//! Scenario 3: nats-server SIGKILLed during relay, down longer than the relay's lease.

use std::time::{Duration, Instant};

use jetstream_bridge_faults::vars;

use crate::{client, distinct, secured_server, url_with_credentials, Figures, Scenario};

const EVENTS: usize = 5_000;
const LEASE: Duration = Duration::from_secs(2);
/// How long the server stays down: the fault itself, not a synchronisation.
const OUTAGE: Duration = Duration::from_secs(5);

/// The same relay process rides out the outage (no restart), resumes by itself once the
/// server is back, and no row spends an attempt or fails because of the outage.
#[tokio::test(flavor = "multi_thread")]
async fn nats_killed_longer_than_the_lease_resumes_without_loss() {
    let (server, secret) = secured_server().await;
    let js = client(&[server.client_url()], Some(&secret)).await;
    let s = Scenario::new(
        "nats_kill9_outage_over_lease",
        url_with_credentials(&server, &secret),
        js,
        secret,
        1,
        &[],
    )
    .await;
    s.enqueue(EVENTS, None).await;
    let lease_ms = LEASE.as_millis().to_string();
    let mut worker = s.worker("relay", &[(vars::LEASE_MS, lease_ms.as_str())]);
    s.wait_stream_at_least(EVENTS as u64 / 4).await;
    server.kill9();
    tokio::time::sleep(OUTAGE).await;
    worker.assert_running();
    let sent_before = s.sent().await;
    server.restart().await;
    let back = Instant::now();
    let recovery = s.wait_count(sent_before + 1, || s.sent()).await;
    s.wait_count(EVENTS as i64, || s.sent()).await;
    let catch_up = back.elapsed();
    worker.assert_running();
    worker.kill9();

    let (messages, last_sequence) = s.stream_state().await.unwrap();
    let (unique, repeated) = distinct(&s.stream_event_ids().await);
    assert_eq!(messages, EVENTS as u64, "stream message count");
    assert_eq!(last_sequence, EVENTS as u64, "nothing stored twice");
    assert_eq!(unique, EVENTS);
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jetstream_outbox_events WHERE status <> 'sent'")
            .await,
        0,
        "rows not sent"
    );
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jetstream_outbox_events WHERE attempts > 0")
            .await,
        0,
        "rows that spent an attempt on the outage"
    );
    let log_lines = s.assert_no_secret_in_logs();
    println!(
        "  {}: outage {OUTAGE:?} (lease {LEASE:?}); all sent {catch_up:?} after the restart",
        s.name
    );
    s.summary(&Figures {
        events: EVENTS,
        cycles: 1,
        lost: EVENTS as i64 - unique as i64,
        duplicate_effects: None,
        duplicate_stream_entries: repeated as i64,
        recovery,
        log_lines,
        ..Figures::default()
    });
    s.teardown().await;
}
