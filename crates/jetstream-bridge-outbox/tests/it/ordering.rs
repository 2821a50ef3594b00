//! Per-key ordering.

use async_nats::jetstream::stream::Stream;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_outbox::NewEvent;
use serde_json::json;

use crate::{stream_ids, wait_stats, Env};

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
    // Key A goes to a subject no stream captures yet: its head fails and retries.
    let late_subject = env.t.subject("late.events");
    let mut a_ids = Vec::new();
    let mut b_ids = Vec::new();
    for i in 0..4 {
        a_ids.push(
            env.outbox
                .enqueue(
                    &mut conn,
                    NewEvent::new("user.updated", json!({"id": "a", "n": i}))
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
        .map(|_| env.relay().ordered(true).max_attempts(1000).build().spawn())
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

    // Now a stream captures key A's subject.
    let mut late = env.t.stream_config("late");
    late.subjects = vec![env.t.subject("late.>")];
    let late_stream: Stream = env.t.create_stream(late).await;
    wait_stats(&refs, |s| s.sent >= 8).await;
    for h in relays {
        h.shutdown().await.unwrap();
    }
    assert_eq!(stream_ids(&late_stream, 4).await, a_ids);
    assert_eq!(stream_ids(&env.stream, 4).await, b_ids);
    drop(conn);
    env.teardown().await;
}
