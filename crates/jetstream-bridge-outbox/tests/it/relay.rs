//! The relay: wake-up, crash recovery, several relays, poison rows.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_config::{Envelope, MSG_ID_HEADER};
use jetstream_bridge_outbox::{NewEvent, OutboxErrorKind};
use jetstream_bridge_testkit::eventually;
use serde_json::json;

use crate::{
    all_event_ids, oversized_for_small_stream, small_stream, status_counts, stream_ids, stream_len,
    wait_sent, wait_stats, Env,
};

/// A committed row is published at once through NOTIFY, not after the poll interval.
#[tokio::test(flavor = "multi_thread")]
async fn commit_wakes_the_relay_without_waiting_for_the_poll() {
    let env = Env::new().await;
    let relay = env
        .relay()
        .poll_interval(Duration::from_secs(120))
        .build()
        .unwrap()
        .spawn();
    wait_stats(&[&relay], |s| s.listening).await;
    // Let the startup claims finish: the relay is now waiting for up to 120 s.
    let mut conn = env.db.conn().await;
    let started = Instant::now();
    env.outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 1})))
        .await
        .unwrap();
    wait_sent(&[&relay], 1).await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(5), "took {latency:?}");
    relay.shutdown().await.unwrap();
    assert_eq!(stream_len(&env.stream).await, 1);
    drop(conn);
    env.teardown().await;
}

/// A relay that published and died before marking the row leaves it claimed; once the lease
/// expires another relay publishes it again and JetStream keeps one message.
#[tokio::test(flavor = "multi_thread")]
async fn crash_between_publish_and_mark_is_deduplicated() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let id = env
        .outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 1})))
        .await
        .unwrap();
    // What the crashed relay did: claim, publish with the msg-id, then nothing.
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET status = 'publishing', claimed_by = 'dead', \
         claimed_until = now() - interval '1 second'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let envelope: Envelope = {
        #[derive(QueryableByName)]
        struct P {
            #[diesel(sql_type = Text)]
            body: String,
        }
        let p: P = diesel::sql_query("SELECT payload::text AS body FROM jetstream_outbox_events")
            .get_result(&mut conn)
            .await
            .unwrap();
        Envelope::from_slice(p.body.as_bytes()).unwrap()
    };
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, id.as_str());
    env.js()
        .publish_with_headers(
            env.config.subjects().source().as_str().to_owned(),
            headers,
            envelope.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let relay = env.relay().build().unwrap().spawn();
    let stats = wait_sent(&[&relay], 1).await;
    assert_eq!(
        stats.duplicates, 1,
        "the republish must be a JetStream duplicate"
    );
    relay.shutdown().await.unwrap();
    assert_eq!(stream_len(&env.stream).await, 1);
    assert_eq!(status_counts(&env.db).await, vec![("sent".into(), 1)]);
    drop(conn);
    env.teardown().await;
}

/// A relay task aborted mid-run (rows claimed, some published, not marked) loses nothing and
/// duplicates nothing: a second relay takes over after the lease.
#[tokio::test(flavor = "multi_thread")]
async fn aborted_relay_is_taken_over_after_the_lease() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let n: u32 = 3000;
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..n).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    let lease = Duration::from_secs(1);
    let first = env
        .relay()
        .lease(lease)
        .batch_size(200)
        .build()
        .unwrap()
        .spawn();
    wait_sent(&[&first], 1).await;
    first.abort();
    let second = env.relay().lease(lease).build().unwrap().spawn();
    eventually(crate::WAIT, || async {
        let counts = status_counts(&env.db).await;
        (counts == vec![("sent".to_owned(), i64::from(n))])
            .then_some(())
            .ok_or(counts)
    })
    .await;
    second.shutdown().await.unwrap();
    assert_eq!(stream_len(&env.stream).await, u64::from(n));
    let ids: HashSet<String> = stream_ids(&env.stream, usize::try_from(n).unwrap())
        .await
        .into_iter()
        .collect();
    assert_eq!(ids, all_event_ids(&env.db).await);
    drop(conn);
    env.teardown().await;
}

async fn several_relays_publish_each_event_once(relays: usize) {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let n: u64 = 10_000;
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..n).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    let handles: Vec<_> = (0..relays)
        .map(|_| env.relay().batch_size(250).build().unwrap().spawn())
        .collect();
    let refs: Vec<_> = handles.iter().collect();
    wait_sent(&refs, n).await;
    let mut sent = 0;
    let mut duplicates = 0;
    let mut active = 0;
    for h in handles {
        let report = h.shutdown().await.unwrap();
        sent += report.sent;
        duplicates += report.duplicates;
        active += usize::from(report.sent > 0);
    }
    assert_eq!(sent, n);
    assert_eq!(duplicates, 0, "no event was published twice");
    assert!(active > 1, "the relays shared the work");
    assert_eq!(
        status_counts(&env.db).await,
        vec![("sent".into(), n as i64)]
    );
    assert_eq!(stream_len(&env.stream).await, n);
    let ids: Vec<String> = stream_ids(&env.stream, usize::try_from(n).unwrap()).await;
    let unique: HashSet<String> = ids.into_iter().collect();
    assert_eq!(unique, all_event_ids(&env.db).await);
    drop(conn);
    env.teardown().await;
}

/// Two relays over 10k rows: every event exactly once in the stream, no row left pending.
#[tokio::test(flavor = "multi_thread")]
async fn two_relays_publish_10k_events_exactly_once() {
    several_relays_publish_each_event_once(2).await;
}

/// Four relays over 10k rows: every event exactly once in the stream, no row left pending.
#[tokio::test(flavor = "multi_thread")]
async fn four_relays_publish_10k_events_exactly_once() {
    several_relays_publish_each_event_once(4).await;
}

#[derive(QueryableByName)]
struct Poison {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

/// A row JetStream refuses for itself (larger than its stream's `max_message_size`, error
/// 10054) backs off, is quarantined after `max_attempts`, and never holds up the others.
#[tokio::test(flavor = "multi_thread")]
async fn poison_row_is_quarantined_while_the_rest_flow() {
    let env = Env::new().await;
    let (small, small_subject) = small_stream(&env).await;
    let mut conn = env.db.conn().await;
    let poison = env
        .outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", oversized_for_small_stream())
                .subject(small_subject.as_str()),
        )
        .await
        .unwrap();
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..50).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    let relay = env.relay().max_attempts(3).build().unwrap().spawn();
    let stats = wait_stats(&[&relay], |s| s.sent >= 50 && s.quarantined >= 1).await;
    relay.shutdown().await.unwrap();
    assert_eq!(stats.quarantined, 1);
    assert_eq!(stats.failed_attempts, 3);
    let row: Poison = diesel::sql_query(
        "SELECT status, attempts, last_error FROM jetstream_outbox_events WHERE event_id = $1",
    )
    .bind::<Text, _>(poison.as_str())
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 3);
    let last_error = row.last_error.unwrap_or_default();
    assert!(last_error.contains("10054"), "{last_error}");
    assert_eq!(stream_len(&env.stream).await, 50);
    assert_eq!(stream_len(&small).await, 0);
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Attempts {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    max_attempts: i64,
}

/// Rows enqueued before any stream captures their subject ("no responders") are an outage,
/// not a poison: they stay pending with `attempts = 0` however often they are tried (and do
/// not slow rows of other subjects down), and flow as soon as the stream is created.
#[tokio::test(flavor = "multi_thread")]
async fn rows_wait_uncharged_for_a_missing_stream_and_flow_once_it_exists() {
    let env = Env::new().await;
    let late_subject = env.t.subject("late.events");
    let mut conn = env.db.conn().await;
    let late_ids = env
        .outbox
        .enqueue_batch(
            &mut conn,
            (0..20).map(|i| {
                NewEvent::new("user.created", json!({ "id": i })).subject(late_subject.as_str())
            }),
        )
        .await
        .unwrap();
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..30).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    // max_attempts 1: a single charged attempt would quarantine a row.
    let relay = env
        .relay()
        .max_attempts(1)
        .batch_size(10)
        .build()
        .unwrap()
        .spawn();
    let stats = wait_stats(&[&relay], |s| s.sent >= 30 && s.outages >= 3).await;
    assert_eq!(stats.sent, 30, "the other subject's rows flow meanwhile");
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(stats.quarantined, 0);
    let unsent: Vec<Attempts> = diesel::sql_query(
        "SELECT status, count(*) AS n, max(attempts)::bigint AS max_attempts \
         FROM jetstream_outbox_events WHERE subject = $1 GROUP BY status",
    )
    .bind::<Text, _>(late_subject.as_str())
    .load(&mut conn)
    .await
    .unwrap();
    assert!(
        unsent
            .iter()
            .all(|r| (r.status == "pending" || r.status == "publishing") && r.max_attempts == 0),
        "{:?}",
        unsent
            .iter()
            .map(|r| (&r.status, r.n, r.max_attempts))
            .collect::<Vec<_>>()
    );
    assert_eq!(unsent.iter().map(|r| r.n).sum::<i64>(), 20);

    let mut late = env.t.stream_config("late");
    late.subjects = vec![env.t.subject("late.>")];
    let late_stream = env.t.create_stream(late).await;
    let stats = wait_sent(&[&relay], 50).await;
    relay.shutdown().await.unwrap();
    assert_eq!(stats.failed_attempts, 0);
    assert_eq!(stats.quarantined, 0);
    assert_eq!(status_counts(&env.db).await, vec![("sent".into(), 50)]);
    let stored: HashSet<String> = stream_ids(&late_stream, 20).await.into_iter().collect();
    let expected: HashSet<String> = late_ids.iter().map(ToString::to_string).collect();
    assert_eq!(stored, expected);
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Listening {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Backends of the test database whose last statement was the relay's `LISTEN`.
async fn listen_connections(env: &Env) -> i64 {
    let mut conn = env.db.conn().await;
    let row: Listening = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    row.n
}

/// Backends of the test database opened by a relay for its claims and bookkeeping.
async fn own_connections(env: &Env) -> i64 {
    let mut conn = env.db.conn().await;
    let row: Listening = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'jetstream_bridge_relay'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    row.n
}

/// An aborted relay (and a dropped `run_until` future) closes its `LISTEN` connection (the
/// listener task is tied to the relay by a drop guard) and its own claim and bookkeeping
/// connections.
#[tokio::test(flavor = "multi_thread")]
async fn abort_and_drop_release_the_listen_connection() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    env.outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 1})))
        .await
        .unwrap();
    drop(conn);
    let relay = env.relay().build().unwrap().spawn();
    wait_stats(&[&relay], |s| s.listening && s.sent == 1).await;
    assert_eq!(listen_connections(&env).await, 1);
    assert_eq!(own_connections(&env).await, 2, "claim and bookkeeping");
    relay.abort();
    eventually(crate::WAIT, || async {
        let n = (listen_connections(&env).await, own_connections(&env).await);
        (n == (0, 0)).then_some(()).ok_or(n)
    })
    .await;

    let run = tokio::spawn(
        env.relay()
            .build()
            .unwrap()
            .run_until(std::future::pending::<()>()),
    );
    eventually(crate::WAIT, || async {
        let n = listen_connections(&env).await;
        (n == 1).then_some(()).ok_or(n)
    })
    .await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    eventually(crate::WAIT, || async {
        let n = listen_connections(&env).await;
        (n == 0).then_some(()).ok_or(n)
    })
    .await;
    env.teardown().await;
}

/// Out-of-range settings are a typed error from `build`, listing every problem.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_settings_are_a_typed_error() {
    let env = Env::new().await;
    let err = env
        .relay()
        .batch_size(0)
        .max_in_flight(0)
        .lease(Duration::ZERO)
        .max_attempts(0)
        .poll_interval(Duration::ZERO)
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .outage_backoff(Duration::from_secs(1), Duration::from_secs(400_000))
        .relay_id("")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), OutboxErrorKind::InvalidSettings);
    assert!(!err.is_transient());
    let detail = std::error::Error::source(&err).unwrap().to_string();
    for name in [
        "batch_size",
        "max_in_flight",
        "lease",
        "max_attempts",
        "poll_interval",
        "retry_backoff",
        "outage_backoff max",
        "relay_id",
    ] {
        assert!(detail.contains(name), "{name} missing from {detail}");
    }
    let too_long = env.relay().lease(Duration::from_secs(400_000)).build();
    assert_eq!(
        too_long.unwrap_err().kind(),
        OutboxErrorKind::InvalidSettings
    );
    assert!(env.relay().build().is_ok());
    env.teardown().await;
}

/// `run_until`: on the signal the relay stops claiming, finishes what it claimed and returns;
/// no row is left claimed and every row marked sent is in the stream.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_leaves_no_claimed_rows() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let n: u64 = 5000;
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..n).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = env.relay().batch_size(100).build().unwrap();
    let run = tokio::spawn(relay.run_until(async {
        let _ = stopped.await;
    }));
    // Stop as soon as the first rows are marked sent.
    crate::eventually(crate::WAIT, || async {
        status_counts(&env.db)
            .await
            .iter()
            .any(|(status, _)| status == "sent")
    })
    .await;
    stop.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    let counts = status_counts(&env.db).await;
    assert!(
        counts.iter().all(|(status, _)| status != "publishing"),
        "{counts:?}"
    );
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let claimed: Claimed = diesel::sql_query(
        "SELECT count(*) AS n FROM jetstream_outbox_events \
         WHERE claimed_by IS NOT NULL OR claimed_until IS NOT NULL",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(claimed.n, 0, "a claim outlived the shutdown");
    let sent = counts
        .iter()
        .find(|(status, _)| status == "sent")
        .map_or(0, |(_, n)| *n);
    assert_eq!(u64::try_from(sent).unwrap(), report.sent);
    assert_eq!(stream_len(&env.stream).await, report.sent);
    drop(conn);
    env.teardown().await;
}
