//! Error classification, the pool and retention against the real server.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use jetstream_bridge_pg::{
    classify, delete_in_batches, pool, pool_error, DbErrorClass, Migrator, PgErrorKind, Retention,
};

use crate::{count, Db};

#[tokio::test]
async fn a_missing_table_and_a_unique_violation_are_classified() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    let missing = diesel::sql_query("SELECT 1 FROM jetstream_inbox_events")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(classify(&missing), DbErrorClass::UndefinedTable);
    Migrator::all().run(&mut conn).await.unwrap();
    let insert = "INSERT INTO jetstream_outbox_events (event_id, subject) VALUES ('e1', 's')";
    diesel::sql_query(insert).execute(&mut conn).await.unwrap();
    let dup = diesel::sql_query(insert)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        classify(&dup),
        DbErrorClass::UniqueViolation {
            constraint: Some("idx_outbox_event_id".to_owned())
        }
    );
    let bad = diesel::sql_query("UPDATE jetstream_outbox_events SET status = 'nope'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(classify(&bad), DbErrorClass::Rejected);
    drop(conn);
    db.drop_db().await;
}

/// A terminated backend (an administrator's shutdown) is an outage, not the statement's fault.
#[tokio::test]
async fn a_terminated_connection_is_unavailable() {
    let db = Db::new().await;
    let mut victim = db.conn().await;
    let mut admin = db.conn().await;
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(&mut victim)
        .await
        .unwrap()
        .pid;
    diesel::sql_query(format!("SELECT pg_terminate_backend({pid})"))
        .execute(&mut admin)
        .await
        .unwrap();
    let err = diesel::sql_query("SELECT 1")
        .execute(&mut victim)
        .await
        .unwrap_err();
    assert_eq!(classify(&err), DbErrorClass::Unavailable, "{err}");
    drop((victim, admin));
    db.drop_db().await;
}

#[tokio::test]
async fn a_pool_that_cannot_connect_is_unavailable() {
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let pool = pool("postgres://postgres@127.0.0.1:1/none", 1).unwrap();
    let Err(err) = pool.get().await else {
        panic!("a pool pointing at a closed port handed out a connection");
    };
    let err = pool_error(err);
    assert!(err.is_transient(), "{err:?}");
    let Err(zero) = jetstream_bridge_pg::pool("postgres://x", 0) else {
        panic!("a pool of size 0 was built");
    };
    assert_eq!(
        zero.kind(),
        &PgErrorKind::InvalidArgument("pool size must be at least 1")
    );
}

#[tokio::test]
async fn retention_deletes_only_old_rows_of_the_status_in_batches() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    Migrator::all().run(&mut conn).await.unwrap();
    diesel::sql_query(
        "INSERT INTO jetstream_outbox_events (event_id, subject, status, sent_at) \
         SELECT 'old' || g, 's', 'sent', now() - interval '10 days' FROM generate_series(1, 5) g \
         UNION ALL SELECT 'new' || g, 's', 'sent', now() FROM generate_series(1, 2) g \
         UNION ALL SELECT 'failed' || g, 's', 'failed', now() - interval '10 days' \
           FROM generate_series(1, 3) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let outbox = Retention {
        table: "jetstream_outbox_events",
        status: "sent",
        timestamp_column: "sent_at",
    };
    let deleted = delete_in_batches(&mut conn, outbox, Duration::from_secs(86_400), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 5);
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM jetstream_outbox_events"
        )
        .await,
        5
    );
    let err = delete_in_batches(&mut conn, outbox, Duration::ZERO, 0)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), PgErrorKind::InvalidArgument(_)));
    let injected = Retention {
        table: "jetstream_outbox_events; DROP TABLE x",
        ..outbox
    };
    assert!(delete_in_batches(&mut conn, injected, Duration::ZERO, 1)
        .await
        .is_err());
    drop(conn);
    db.drop_db().await;
}
