//! `Inbox::record`, `mark_processed`, `record_failure`, retention and migrations on a real database.

use std::time::Duration;

use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use jetstream_bridge_config::Envelope;
use jetstream_bridge_inbox::{Inbox, InboxEntry, InboxStatus, Recorded};
use jetstream_bridge_testkit::TestDb;
use serde_json::json;

fn entry(seq: u64) -> InboxEntry {
    let envelope = Envelope::builder("user.created", json!({"id": seq}))
        .producer("a")
        .build()
        .unwrap();
    InboxEntry::from_envelope(&envelope)
        .with_message("a.sync.b", "stream-1", seq, 1)
        .with_headers([("nats-msg-id", envelope.event_id.as_str())])
}

#[derive(QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    processing_attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    error_message: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    stream_seq: Option<i64>,
    #[diesel(sql_type = Text)]
    payload_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    stream: Option<String>,
    #[diesel(sql_type = Bool)]
    failed_at_set: bool,
}

async fn row(db: &TestDb, event_id: &str) -> Option<Row> {
    let mut conn = db.conn().await;
    diesel::sql_query(
        "SELECT status, processing_attempts, error_message, stream_seq, stream, \
         failed_at IS NOT NULL AS failed_at_set, jsonb_typeof(payload) AS payload_type \
         FROM jetstream_inbox_events WHERE event_id = $1",
    )
    .bind::<Text, _>(event_id)
    .get_result(&mut conn)
    .await
    .ok()
}

/// A new event is recorded as processing, committed as processed, then reported as a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn new_then_processed_then_duplicate() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let e = entry(1);
    let mut conn = db.conn().await;
    let first = conn
        .transaction::<_, jetstream_bridge_inbox::InboxError, _>(async |conn| {
            let r = inbox.record(conn, &e).await?;
            inbox.mark_processed(conn, &e.event_id).await?;
            Ok(r)
        })
        .await
        .unwrap();
    assert_eq!(first, Recorded::New);
    let r = row(&db, &e.event_id).await.unwrap();
    assert_eq!((r.status.as_str(), r.processing_attempts), ("processed", 1));
    assert_eq!(r.stream_seq, Some(1));
    assert_eq!(r.payload_type, "object");
    assert!(!r.failed_at_set, "never failed");
    let again = inbox.record(&mut conn, &e).await.unwrap();
    assert_eq!(again, Recorded::Duplicate);
    assert_eq!(
        inbox.status(&mut conn, &e.event_id).await.unwrap(),
        Some(InboxStatus::Processed)
    );
    drop(conn);
    db.teardown().await;
}

/// A rolled-back attempt leaves no row; its failure recorded outside is retried as new.
#[tokio::test(flavor = "multi_thread")]
async fn failure_outside_the_rolled_back_transaction() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let e = entry(2);
    let mut conn = db.conn().await;
    let err = conn
        .transaction::<(), jetstream_bridge_inbox::InboxError, _>(async |conn| {
            assert_eq!(inbox.record(conn, &e).await?, Recorded::New);
            Err(jetstream_bridge_inbox::InboxError::from(
                diesel::result::Error::RollbackTransaction,
            ))
        })
        .await;
    assert!(err.is_err());
    assert!(row(&db, &e.event_id).await.is_none());
    inbox.record_failure(&mut conn, &e, "boom").await.unwrap();
    let r = row(&db, &e.event_id).await.unwrap();
    assert_eq!(r.status, "failed");
    assert_eq!(r.processing_attempts, 1);
    assert_eq!(r.error_message.as_deref(), Some("boom"));
    // The retry claims the failed row again.
    assert_eq!(inbox.record(&mut conn, &e).await.unwrap(), Recorded::New);
    let r = row(&db, &e.event_id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.processing_attempts),
        ("processing", 2)
    );
    assert_eq!(
        r.error_message.as_deref(),
        Some("boom"),
        "kept while retrying"
    );
    // A successful attempt clears the last error, on the per-message path and the batch path.
    inbox
        .record_failure(&mut conn, &e, "boom again")
        .await
        .unwrap();
    assert_eq!(
        inbox
            .record_processed_batch(&mut conn, std::slice::from_ref(&e))
            .await
            .unwrap(),
        vec![Recorded::New]
    );
    let r = row(&db, &e.event_id).await.unwrap();
    assert_eq!((r.status.as_str(), r.error_message), ("processed", None));
    assert!(
        r.failed_at_set,
        "failed_at keeps the time of the last failure"
    );
    let single = entry(3);
    inbox
        .record_failure(&mut conn, &single, "boom")
        .await
        .unwrap();
    assert_eq!(
        inbox.record_processed(&mut conn, &single).await.unwrap(),
        Recorded::New
    );
    let r = row(&db, &single.event_id).await.unwrap();
    assert_eq!((r.status.as_str(), r.error_message), ("processed", None));
    assert!(
        r.failed_at_set,
        "failed_at keeps the time of the last failure"
    );
    // `record` + `mark_processed` (the hand-written loop) end the same way.
    let manual = entry(4);
    inbox
        .record_failure(&mut conn, &manual, "boom")
        .await
        .unwrap();
    assert_eq!(
        inbox.record(&mut conn, &manual).await.unwrap(),
        Recorded::New
    );
    inbox
        .mark_processed(&mut conn, &manual.event_id)
        .await
        .unwrap();
    let r = row(&db, &manual.event_id).await.unwrap();
    assert_eq!((r.status.as_str(), r.error_message), ("processed", None));
    assert!(
        r.failed_at_set,
        "failed_at keeps the time of the last failure"
    );
    drop(conn);
    db.teardown().await;
}

/// Another event at an already used stream position (a recreated stream) is stored without it.
#[tokio::test(flavor = "multi_thread")]
async fn reused_stream_position_does_not_conflict() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let (a, b) = (entry(5), entry(5));
    let mut conn = db.conn().await;
    assert_eq!(inbox.record(&mut conn, &a).await.unwrap(), Recorded::New);
    assert_eq!(inbox.record(&mut conn, &b).await.unwrap(), Recorded::New);
    assert_eq!(row(&db, &b.event_id).await.unwrap().stream_seq, None);
    drop(conn);
    db.teardown().await;
}

/// Retention deletes processed rows older than the limit, in batches, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn cleanup_deletes_old_processed_rows() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let mut conn = db.conn().await;
    for seq in 10..15 {
        let e = entry(seq);
        let _ = inbox.record(&mut conn, &e).await.unwrap();
        inbox.mark_processed(&mut conn, &e.event_id).await.unwrap();
    }
    let failed = entry(20);
    inbox.record_failure(&mut conn, &failed, "x").await.unwrap();
    diesel::sql_query("UPDATE jetstream_inbox_events SET processed_at = now() - interval '2 days'")
        .execute(&mut conn)
        .await
        .unwrap();
    let recent = entry(21);
    let _ = inbox.record(&mut conn, &recent).await.unwrap();
    inbox
        .mark_processed(&mut conn, &recent.event_id)
        .await
        .unwrap();
    let deleted = inbox
        .cleanup_processed(&mut conn, Duration::from_secs(86_400), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 5);
    assert!(row(&db, &failed.event_id).await.is_some());
    assert!(row(&db, &recent.event_id).await.is_some());
    drop(conn);
    db.teardown().await;
}

/// `record_processed` claims and marks in one statement; a rolled-back transaction leaves
/// nothing, a committed one makes the next copy a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn record_processed_commits_with_the_transaction() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let e = entry(30);
    let mut conn = db.conn().await;
    let rolled_back = conn
        .transaction::<(), jetstream_bridge_inbox::InboxError, _>(async |conn| {
            assert_eq!(inbox.record_processed(conn, &e).await?, Recorded::New);
            Err(diesel::result::Error::RollbackTransaction.into())
        })
        .await;
    assert!(rolled_back.is_err());
    assert!(row(&db, &e.event_id).await.is_none());
    let committed = conn
        .transaction::<_, jetstream_bridge_inbox::InboxError, _>(async |conn| {
            inbox.record_processed(conn, &e).await
        })
        .await
        .unwrap();
    assert_eq!(committed, Recorded::New);
    let r = row(&db, &e.event_id).await.unwrap();
    assert_eq!((r.status.as_str(), r.processing_attempts), ("processed", 1));
    assert_eq!(
        inbox.record_processed(&mut conn, &e).await.unwrap(),
        Recorded::Duplicate
    );
    drop(conn);
    db.teardown().await;
}

/// `record_processed_batch` claims many entries in one statement: new events (also a failed
/// one) are written processed; an already processed event and a repeated id are duplicates;
/// a rolled-back transaction leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn record_processed_batch_claims_new_events_once() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let mut conn = db.conn().await;
    let (done, failed) = (entry(40), entry(41));
    let _ = inbox.record_processed(&mut conn, &done).await.unwrap();
    inbox
        .record_failure(&mut conn, &failed, "boom")
        .await
        .unwrap();
    // A new event at an already used stream position (a recreated stream) is stored without it.
    let (a, b, reused) = (entry(42), entry(43), entry(40));
    let batch = [
        a.clone(),
        done.clone(),
        b.clone(),
        a.clone(),
        failed.clone(),
        reused.clone(),
    ];
    let rolled_back = conn
        .transaction::<(), jetstream_bridge_inbox::InboxError, _>(async |conn| {
            let r = inbox.record_processed_batch(conn, &batch).await?;
            assert_eq!(r[0], Recorded::New);
            Err(diesel::result::Error::RollbackTransaction.into())
        })
        .await;
    assert!(rolled_back.is_err());
    assert!(row(&db, &a.event_id).await.is_none());
    assert_eq!(row(&db, &failed.event_id).await.unwrap().status, "failed");

    let recorded = conn
        .transaction::<_, jetstream_bridge_inbox::InboxError, _>(async |conn| {
            inbox.record_processed_batch(conn, &batch).await
        })
        .await
        .unwrap();
    use Recorded::{Duplicate, New};
    assert_eq!(recorded, [New, Duplicate, New, Duplicate, New, New]);
    for (e, attempts) in [(&a, 1), (&b, 1), (&failed, 2), (&reused, 1), (&done, 1)] {
        let r = row(&db, &e.event_id).await.unwrap();
        assert_eq!(
            (r.status.as_str(), r.processing_attempts),
            ("processed", attempts),
            "{}",
            e.event_id
        );
        assert_eq!(r.payload_type, "object");
    }
    assert_eq!(row(&db, &a.event_id).await.unwrap().stream_seq, Some(42));
    assert_eq!(row(&db, &reused.event_id).await.unwrap().stream_seq, None);
    // Entries without a known stream position (message metadata unavailable) are stored
    // with NULL stream and stream_seq: several of them in one statement do not collide on
    // the `(stream, stream_seq)` unique index.
    let unknown: Vec<InboxEntry> = (50..53)
        .map(|n| {
            let envelope = Envelope::builder("user.created", json!({"id": n}))
                .producer("a")
                .build()
                .unwrap();
            InboxEntry::from_envelope(&envelope).with_message("a.sync.b", "", 0, 1)
        })
        .collect();
    assert_eq!(
        inbox
            .record_processed_batch(&mut conn, &unknown)
            .await
            .unwrap(),
        [New, New, New]
    );
    for e in &unknown {
        let r = row(&db, &e.event_id).await.unwrap();
        assert_eq!((r.stream.as_deref(), r.stream_seq), (None, None));
        assert_eq!(r.status, "processed");
    }
    // Everything is processed now: the same batch is all duplicates; an empty one is empty.
    assert!(inbox
        .record_processed_batch(&mut conn, &batch)
        .await
        .unwrap()
        .iter()
        .all(|r| *r == Duplicate));
    assert!(inbox
        .record_processed_batch(&mut conn, &[])
        .await
        .unwrap()
        .is_empty());
    drop(conn);
    db.teardown().await;
}

/// Indicative pure-PostgreSQL cost of the consumer's batch transaction (`BEGIN`, one
/// `record_processed_batch` of 100, one multi-row business insert, `COMMIT`); run with
/// `cargo test --release -p jetstream-bridge-inbox --test it batch_claim_cost -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly"]
async fn batch_claim_cost() {
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let mut conn = db.conn().await;
    diesel::sql_query("CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let (batches, size) = (100u64, 100u64);
    let all: Vec<Vec<InboxEntry>> = (0..batches)
        .map(|b| (0..size).map(|i| entry(b * size + i)).collect())
        .collect();
    let started = std::time::Instant::now();
    for batch in &all {
        conn.transaction::<_, jetstream_bridge_inbox::InboxError, _>(async |conn| {
            let recorded = inbox.record_processed_batch(conn, batch).await?;
            assert!(recorded.iter().all(|r| *r == Recorded::New));
            let ids: Vec<&str> = batch.iter().map(|e| e.event_id.as_str()).collect();
            diesel::sql_query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
                .bind::<diesel::sql_types::Array<Text>, _>(ids)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{batches} transactions of {size}: {:.2} ms each, {:.0} events/s",
        elapsed.as_secs_f64() * 1e3 / batches as f64,
        (batches * size) as f64 / elapsed.as_secs_f64()
    );
    drop(conn);
    db.teardown().await;
}

/// The inbox's statements are prepared once per connection and reused (named statements in
/// `pg_prepared_statements`), not parsed and planned on every call.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_statements_are_prepared_once_per_connection() {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let db = TestDb::new().await;
    let inbox = Inbox::new();
    let mut conn = db.conn().await;
    for seq in 1..=3 {
        let _ = inbox
            .record_processed(&mut conn, &entry(100 + seq))
            .await
            .unwrap();
        let _ = inbox
            .record_processed_batch(&mut conn, &[entry(200 + seq), entry(300 + seq)])
            .await
            .unwrap();
        inbox
            .record_failure(&mut conn, &entry(400 + seq), "boom")
            .await
            .unwrap();
    }
    let prepared: N = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE statement LIKE 'INSERT INTO jetstream_inbox' || '_events%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    // One each: the single-event claim, the batch claim, the failure record.
    assert_eq!(prepared.n, 3);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM jetstream_inbox_events")
            .await,
        12
    );
}
