//! Embedded migrations.

use diesel_async::RunQueryDsl;
use jetstream_bridge_outbox::migrations;
use jetstream_bridge_testkit::TestDb;

/// Migrations apply on an empty database, report themselves once, and a second run applies
/// nothing and fails nothing.
#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_twice_without_error() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    assert_eq!(
        migrations::pending(&mut conn).await.unwrap(),
        vec!["2026-11-26-000001_create_jetstream_outbox_events"]
    );
    let first = migrations::run_pending(&mut conn).await.unwrap();
    assert_eq!(
        first,
        vec!["2026-11-26-000001_create_jetstream_outbox_events"]
    );
    assert!(migrations::run_pending(&mut conn).await.unwrap().is_empty());
    assert!(migrations::pending(&mut conn).await.unwrap().is_empty());
    // The table is there and usable.
    diesel::sql_query("SELECT id FROM jetstream_outbox_events LIMIT 1")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    db.teardown().await;
}

/// The template database (built by the testkit with diesel's own harness) counts as migrated.
#[tokio::test(flavor = "multi_thread")]
async fn testkit_template_is_up_to_date() {
    let db = TestDb::new().await;
    let mut conn = db.conn().await;
    assert!(migrations::pending(&mut conn).await.unwrap().is_empty());
    assert!(migrations::run_pending(&mut conn).await.unwrap().is_empty());
    drop(conn);
    db.teardown().await;
}
