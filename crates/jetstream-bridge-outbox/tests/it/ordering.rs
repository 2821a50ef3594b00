//! Per-key ordering.

use async_nats::jetstream::stream::Stream;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_outbox::NewEvent;
use serde_json::json;

use crate::{eventually, small_stream, stream_ids, wait_stats, Env, WAIT};

#[derive(QueryableByName)]
struct Attempts {
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = BigInt)]
    attempts: i64,
}

/// With two ordered relays, a key whose head event keeps failing blocks only itself; once it
/// goes through, that key's events arrive in insertion order, and so do the other key's.
#[tokio::test(flavor = "multi_thread")]
async fn per_key_order_holds_under_retries_with_two_relays() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    // Key A's events are too large for their stream (JetStream error 10054, counted against
    // the row): its head fails and retries until the stream's limit is raised.
    let (small, late_subject) = small_stream(&env).await;
    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    for i in 0..4 {
        a_ids.push(
            env.outbox
                .enqueue(
                    &mut conn,
                    NewEvent::new(
                        "user.updated",
                        json!({"id": "a", "n": i, "blob": "x".repeat(2048)}),
                    )
                    .subject(late_subject.as_str()),
                )
                .await
                .unwrap()
                .to_string(),
        );
        b_ids.push(
            env.outbox
                .enqueue(
                    &mut conn,
                    NewEvent::new("user.updated", json!({"id": "b", "n": i})),
                )
                .await
                .unwrap()
                .to_string(),
        );
    }
    let relays: Vec<_> = (0..2)
        .map(|_| {
            env.relay()
                .ordered(true)
                .max_attempts(1000)
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    let refs: Vec<_> = relays.iter().collect();
    let stats = wait_stats(&refs, |s| s.sent >= 4 && s.failed_attempts >= 2).await;
    assert_eq!(stats.sent, 4, "only key B went through");

    // Key A: only its head has been tried; the rest wait behind it untouched.
    let attempts: Vec<Attempts> = diesel::sql_query(
        "SELECT event_id, attempts::bigint AS attempts FROM jetstream_outbox_events \
         WHERE ordering_key = 'user:a' ORDER BY id",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(attempts[0].event_id, a_ids[0]);
    assert!(attempts[0].attempts >= 2);
    assert!(attempts[1..].iter().all(|a| a.attempts == 0));

    // Now key A's stream takes messages that large.
    let mut config = small.cached_info().config.clone();
    config.max_message_size = 1024 * 1024;
    env.js().update_stream(config).await.unwrap();
    let late_stream: Stream = small;
    wait_stats(&refs, |s| s.sent >= 8).await;
    for h in relays {
        h.shutdown().await.unwrap();
    }
    assert_eq!(stream_ids(&late_stream, 4).await, a_ids);
    assert_eq!(stream_ids(&env.stream, 4).await, b_ids);
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Waiting {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Transactions of this test database waiting for an advisory lock.
async fn advisory_waiters(env: &Env) -> i64 {
    let mut conn = env.db.conn().await;
    let row: Waiting = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    row.n
}

/// `Outbox::ordered(true)`: a transaction enqueueing a key another open transaction already
/// enqueued waits for it, so a later id can never commit (and be published) before an
/// earlier id of the same key. A different key does not wait.
#[tokio::test(flavor = "multi_thread")]
async fn ordered_enqueue_serializes_same_key_commits() {
    let env = Env::new().await;
    let outbox = env.outbox.clone().ordered(true);
    let event = |n: u32, key: &str| {
        NewEvent::new("user.updated", json!({"id": "k", "n": n})).ordering_key(key)
    };
    let mut first = env.db.conn().await;
    diesel::sql_query("BEGIN")
        .execute(&mut first)
        .await
        .unwrap();
    let first_id = outbox
        .enqueue(&mut first, event(1, "user:k"))
        .await
        .unwrap();

    // Another key goes through at once, even while the first transaction is open.
    let mut other = env.db.conn().await;
    tokio::time::timeout(WAIT, outbox.enqueue(&mut other, event(9, "user:other")))
        .await
        .expect("a different key must not wait")
        .unwrap();

    // The same key, enqueued and committed in a second transaction, has to wait.
    let second = tokio::spawn({
        let outbox = outbox.clone();
        let mut conn = env.db.conn().await;
        async move {
            diesel::sql_query("BEGIN").execute(&mut conn).await.unwrap();
            let id = outbox.enqueue(&mut conn, event(2, "user:k")).await.unwrap();
            diesel::sql_query("COMMIT")
                .execute(&mut conn)
                .await
                .unwrap();
            id
        }
    });
    eventually(WAIT, || async {
        let n = advisory_waiters(&env).await;
        (n == 1 || second.is_finished()).then_some(()).ok_or(n)
    })
    .await;
    assert!(
        !second.is_finished(),
        "the second transaction committed while the first still held the key"
    );
    diesel::sql_query("COMMIT")
        .execute(&mut first)
        .await
        .unwrap();
    let second_id = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();

    let relay = env.relay().ordered(true).build().unwrap().spawn();
    wait_stats(&[&relay], |s| s.sent >= 3).await;
    relay.shutdown().await.unwrap();
    let ids = stream_ids(&env.stream, 3).await;
    let position = |id: &str| ids.iter().position(|x| x == id).unwrap();
    assert!(position(first_id.as_str()) < position(second_id.as_str()));
    drop((first, other));
    env.teardown().await;
}

/// An ordered relay drains a long same-key backlog claim after claim, without waiting a poll
/// interval between events (the next event of a key becomes claimable only once the previous
/// one is marked sent, and no NOTIFY comes for rows committed long ago). With `LISTEN` off and
/// a poll interval far beyond the test's deadline, a relay that waited between rounds would
/// time out here.
#[tokio::test(flavor = "multi_thread")]
async fn ordered_relay_drains_one_key_without_waiting_between_events() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let events: Vec<_> = (0..300)
        .map(|n| NewEvent::new("user.updated", json!({"id": "one-key", "n": n})))
        .collect();
    let ids: Vec<String> = env
        .outbox
        .enqueue_batch(&mut conn, events)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let relay = env
        .relay()
        .ordered(true)
        .listen(false)
        .poll_interval(std::time::Duration::from_secs(3600))
        .build()
        .unwrap()
        .spawn();
    let stats = wait_stats(&[&relay], |s| s.sent >= 300).await;
    assert_eq!(stats.sent, 300);
    relay.shutdown().await.unwrap();
    assert_eq!(stream_ids(&env.stream, 300).await, ids, "insertion order");
    env.teardown().await;
}
