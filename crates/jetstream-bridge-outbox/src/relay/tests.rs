//! Claim-level tests against the shared servers: fencing, renewal, claim tokens, lease-less rows.

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::Config;
use jetstream_bridge_testkit::{TestDb, TestNats};
use serde_json::json;
use tokio::time::Instant;

use super::publish::BatchResult;
use super::{Relay, RelayStats};
use crate::{NewEvent, Outbox};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The shared NATS namespace, a fresh database, a config on both, and `n` committed
/// `user.created` events (ids `0..n`), for the claim-level tests below.
async fn with_events(n: u64) -> (TestNats, TestDb, Config, AsyncPgConnection) {
    let t = TestNats::shared().await;
    let db = TestDb::new().await;
    let config = Config::builder(t.subject_prefix(), "orders", "billing")
        .build()
        .unwrap();
    let mut conn = db.conn().await;
    Outbox::new(&config)
        .enqueue_batch(
            &mut conn,
            (0..n).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    (t, db, config, conn)
}

/// Relay A claims, stalls past its lease, relay B reclaims the rows: every late statement
/// of A (mark sent, mark failed, release) changes nothing, A's stale batch publishes
/// nothing when it finally runs (renewal finds the rows gone), and B finishes normally.
#[tokio::test(flavor = "multi_thread")]
async fn late_statements_of_an_expired_claim_change_nothing() {
    let (t, db, config, mut conn) = with_events(3).await;
    let mut stream = t.create_stream(t.stream_config("orders")).await;
    let relay = |id: &str| {
        Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
            .relay_id(id)
            .build()
            .unwrap()
    };
    let (a, b) = (relay("relay-a"), relay("relay-b"));
    let mut batch_a = a.inner.claim().await.unwrap();
    assert_eq!(batch_a.rows.len(), 3);
    assert!(batch_a.token.starts_with("relay-a#"));
    // A stalls; its lease runs out and B takes the rows over.
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET claimed_until = now() - interval '1 second'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let batch_b = b.inner.claim().await.unwrap();
    assert_eq!(batch_b.rows.len(), 3);
    let ids: Vec<i64> = batch_a.rows.iter().map(|r| r.id).collect();

    assert_eq!(a.inner.mark_sent(&batch_a, ids.clone()).await, Some(0));
    let failed = a
        .inner
        .mark_failed(
            &batch_a,
            ids.clone(),
            vec!["late".to_owned(); 3],
            vec![0.0; 3],
        )
        .await;
    assert_eq!(failed, Some(Vec::new()));
    assert_eq!(
        a.inner.release(&batch_a, ids.clone(), Duration::ZERO).await,
        Some(0)
    );
    let held: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM jetstream_outbox_events \
         WHERE claimed_by = $1 AND status = 'pending' AND attempts = 0 \
           AND claimed_until > now()",
    )
    .bind::<Text, _>(&batch_b.token)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(held.n, 3, "B still holds every row, untouched");

    // A's stale batch runs at last: it is renewed first and nothing is published.
    batch_a.claimed_at = Instant::now().checked_sub(a.inner.settings.lease).unwrap();
    let mut stats_a = RelayStats::default();
    let result = a.inner.process(batch_a, &mut stats_a, 0).await;
    assert_eq!(result, BatchResult::Progress);
    assert_eq!(stats_a, RelayStats::default());
    assert_eq!(stream.info().await.unwrap().state.messages, 0);

    let mut stats_b = RelayStats::default();
    b.inner.process(batch_b, &mut stats_b, 0).await;
    assert_eq!(stats_b.sent, 3);
    assert_eq!(stats_b.duplicates, 0);
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
    let sent: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM jetstream_outbox_events WHERE status = 'sent'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(sent.n, 3);
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}

/// A renewed batch keeps its rows and gets a fresh lease.
#[tokio::test(flavor = "multi_thread")]
async fn renewal_extends_the_lease_of_held_rows() {
    let (t, db, config, mut conn) = with_events(1).await;
    let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
        .lease(Duration::from_secs(600))
        .build()
        .unwrap();
    let mut batch = relay.inner.claim().await.unwrap();
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET claimed_until = now() + interval '1 second'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert!(relay.inner.renew(&mut batch).await);
    assert_eq!(batch.rows.len(), 1);
    let renewed: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM jetstream_outbox_events \
         WHERE claimed_until > now() + interval '500 seconds'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(renewed.n, 1);
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}

/// Two instances with one fixed relay id (a restarted StatefulSet pod) claim under
/// different tokens.
#[tokio::test(flavor = "multi_thread")]
async fn instances_with_one_relay_id_claim_under_different_tokens() {
    let (t, db, config, mut conn) = with_events(2).await;
    let relay = || {
        Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
            .relay_id("pod-0")
            .batch_size(1)
            .build()
            .unwrap()
    };
    let (a, b) = (relay(), relay());
    let (batch_a, batch_b) = (
        a.inner.claim().await.unwrap(),
        b.inner.claim().await.unwrap(),
    );
    assert_eq!((batch_a.rows.len(), batch_b.rows.len()), (1, 1));
    assert!(batch_a.token.starts_with("pod-0#") && batch_a.token.ends_with("-0"));
    assert!(batch_b.token.starts_with("pod-0#") && batch_b.token.ends_with("-0"));
    assert_ne!(batch_a.token, batch_b.token);
    // The column keeps the whole token.
    let held: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM jetstream_outbox_events WHERE claimed_by IN ($1, $2)",
    )
    .bind::<Text, _>(&batch_a.token)
    .bind::<Text, _>(&batch_b.token)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(held.n, 2);
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}

/// A `publishing` row without a lease (`claimed_until` NULL, e.g. written by hand or by
/// another tool) is claimable, in both claim queries.
#[tokio::test(flavor = "multi_thread")]
async fn a_publishing_row_without_a_lease_is_reclaimed() {
    let (t, db, config, mut conn) = with_events(1).await;
    for ordered in [false, true] {
        diesel::sql_query(
            "UPDATE jetstream_outbox_events \
             SET status = 'publishing', claimed_until = NULL, claimed_by = 'lost'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
            .ordered(ordered)
            .build()
            .unwrap();
        let batch = relay.inner.claim().await.unwrap();
        assert_eq!(batch.rows.len(), 1, "ordered: {ordered}");
    }
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}

#[derive(QueryableByName)]
struct Updates {
    #[diesel(sql_type = BigInt)]
    updated: i64,
    #[diesel(sql_type = BigInt)]
    hot: i64,
}

/// A claim changes no indexed column, so (nearly) every claimed row version is a HOT update (no
/// index entry written). Fails if the claim changes `status` again or an index covers a lease
/// column (then no claim is HOT).
#[tokio::test(flavor = "multi_thread")]
async fn claims_are_hot_updates() {
    let (t, db, config, conn) = with_events(50).await;
    let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
        .build()
        .unwrap();
    let batch = relay.inner.claim().await.unwrap();
    assert_eq!(batch.rows.len(), 50);
    // The claiming backend reports its counters once idle (within about ten seconds).
    let counters = || async {
        diesel::sql_query(
            "SELECT n_tup_upd AS updated, n_tup_hot_upd AS hot FROM pg_stat_user_tables \
             WHERE relname = 'jetstream_outbox_events'",
        )
        .get_result::<Updates>(&mut db.conn().await)
        .await
        .unwrap()
    };
    jetstream_bridge_testkit::eventually(Duration::from_secs(30), || async {
        counters().await.updated >= 50
    })
    .await;
    let seen = counters().await;
    assert_eq!(seen.updated, 50);
    // Each claimed version is a little larger than the row it replaces (token and lease), so
    // a page's last rows may not fit next to their old versions; nearly all do.
    assert!(
        seen.hot * 10 >= seen.updated * 8,
        "{} of {} HOT",
        seen.hot,
        seen.updated
    );
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}

/// `Outbox::status` counts a claimed row (still `pending`, with a live lease) as publishing.
#[tokio::test(flavor = "multi_thread")]
async fn status_counts_claimed_rows_as_publishing() {
    let (t, db, config, mut conn) = with_events(3).await;
    let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
        .batch_size(2)
        .build()
        .unwrap();
    let batch = relay.inner.claim().await.unwrap();
    assert_eq!(batch.rows.len(), 2);
    let status = Outbox::status(&mut conn, 0).await.unwrap();
    assert_eq!((status.pending, status.publishing), (1, 2));
    drop(conn);
    t.teardown().await;
    db.teardown().await;
}
