//! PostgreSQL outage with a private server: the relay backs off and recovers, LISTEN included.

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use jetstream_bridge_config::Config;
use jetstream_bridge_outbox::{NewEvent, Outbox, Relay};
use jetstream_bridge_testkit::{PgServer, TestNats};
use serde_json::json;

use crate::{stream_len, wait_sent, wait_stats};

/// PostgreSQL killed with -9 under a running relay: the relay survives (backs off), and after
/// the restart new commits are relayed, woken by a re-established LISTEN.
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_is_survived() {
    let pg = PgServer::spawn().await;
    let t = TestNats::shared().await;
    let stream = t.create_stream(t.stream_config("orders")).await;
    let config = Config::builder(t.subject_prefix(), "orders", "billing")
        .build()
        .unwrap();
    let mut conn = pg.connect().await;
    jetstream_bridge_pg::Migrator::all()
        .run(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let pool = Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
        pg.url(),
    ))
    .max_size(4)
    .build()
    .unwrap();
    let relay = Relay::builder(&config, t.jetstream().clone(), pool)
        .poll_interval(Duration::from_secs(120))
        .outage_backoff(Duration::from_millis(50), Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    let outbox = Outbox::new(&config);
    wait_stats(&[&relay], |s| s.listening).await;
    let mut conn = pg.connect().await;
    outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 1})))
        .await
        .unwrap();
    wait_sent(&[&relay], 1).await;
    drop(conn);

    pg.kill9();
    // The LISTEN connection notices and the relay keeps trying (it never ends).
    wait_stats(&[&relay], |s| !s.listening).await;
    pg.restart().await;
    wait_stats(&[&relay], |s| s.listening).await;

    let mut conn = pg.connect().await;
    outbox
        .enqueue_batch(
            &mut conn,
            (2..=20).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    wait_sent(&[&relay], 20).await;
    let report = relay.shutdown().await.unwrap();
    assert_eq!(report.sent, 20);
    assert_eq!(stream_len(&stream).await, 20);
    drop(conn);
    t.teardown().await;
}
