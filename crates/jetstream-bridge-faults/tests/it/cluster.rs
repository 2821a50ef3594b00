//! Scenario 5: 3-node cluster, R3 stream, the stream leader SIGKILLed during relay + consume.

use std::time::{Duration, Instant};

use jetstream_bridge_testkit::NatsCluster;

use crate::{client, Figures, Scenario};

const EVENTS: usize = 3_000;
/// Events relayed and applied after the kill that count as "continued".
const PROGRESS: i64 = 300;

/// The relay and the consumer (one worker process, connected to all three nodes) carry on
/// after the stream leader dies: every event is stored once and applied once.
#[tokio::test(flavor = "multi_thread")]
async fn stream_leader_killed_during_relay_and_consume_loses_nothing() {
    let cluster = NatsCluster::spawn(3).await;
    let urls = cluster.client_urls();
    let js = client(&urls, None).await;
    // The testkit's cluster has no authorization: the secret is only in the PostgreSQL URL.
    let secret = format!("pw{}", jetstream_bridge_testkit::unique_token());
    let s = Scenario::new(
        "cluster_r3_leader_kill9",
        urls.join(","),
        js,
        secret,
        3,
        &[],
    )
    .await;
    // Enqueued over ~6 s, so the relay and the consumer are both busy when the leader dies.
    let producer = s.trickle(EVENTS, 100, Duration::from_millis(200)).await;
    let mut worker = s.worker("both", &[]);
    s.wait_count(EVENTS as i64 / 3, || s.applied()).await;
    assert!(
        !producer.is_finished(),
        "the kill must land while events are still produced"
    );

    let mut stream = s.js.get_stream(s.spec.stream_name()).await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("stream leader");
    let index = cluster.node_index(&leader).expect("leader is a node");
    let (sent_at_kill, applied_at_kill) = (s.sent().await, s.applied().await);
    cluster.node(index).kill9();
    let killed = Instant::now();
    // Progress beyond what the worker could have had in hand at the kill (a fetch is 100).
    s.wait_count(sent_at_kill + PROGRESS, || s.sent()).await;
    s.wait_count(applied_at_kill + PROGRESS, || s.applied())
        .await;
    let recovery = killed.elapsed();
    producer.await.unwrap();
    s.wait_count(EVENTS as i64, || s.sent()).await;
    s.wait_count(EVENTS as i64, || s.applied()).await;
    s.wait_count(1, || async {
        i64::from(s.stream_state().await.is_some_and(|(m, _)| m == 0))
    })
    .await;
    worker.assert_running();
    worker.kill9();

    let (_, last_sequence) = s.stream_state().await.unwrap();
    let duplicates = s.duplicate_effects().await;
    let applied = s.applied().await;
    let new_leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader);
    assert_ne!(new_leader.as_deref(), Some(leader.as_str()));
    assert_eq!(applied, EVENTS as i64);
    assert_eq!(duplicates, 0);
    assert_eq!(last_sequence, EVENTS as u64, "stream entries");
    assert_eq!(
        s.count("SELECT count(*) AS n FROM jetstream_outbox_events WHERE status <> 'sent'")
            .await,
        0
    );
    let log_lines = s.assert_no_secret_in_logs();
    println!(
        "  {}: leader {leader} killed, new leader {new_leader:?}",
        s.name
    );
    s.summary(&Figures {
        events: EVENTS,
        cycles: 1,
        lost: EVENTS as i64 - applied,
        duplicate_effects: Some(duplicates),
        duplicate_stream_entries: last_sequence as i64 - EVENTS as i64,
        recovery,
        log_lines,
        ..Figures::default()
    });
    s.teardown().await;
}
