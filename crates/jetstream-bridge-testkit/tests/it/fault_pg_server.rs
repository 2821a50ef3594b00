use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_testkit::PgServer;

use crate::pid_alive;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count_rows(conn: &mut AsyncPgConnection) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM events")
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}

/// After `kill9` connections fail; after `restart` the committed row is still there.
#[tokio::test(flavor = "multi_thread")]
async fn kill9_refuses_connections_until_restart() {
    let pg = PgServer::spawn().await;
    let mut conn = pg.connect().await;
    diesel::sql_query("CREATE TABLE events (id int primary key)")
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query("INSERT INTO events VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();

    let pid = pg.pid().unwrap();
    pg.kill9();
    assert!(!pid_alive(pid));
    assert!(AsyncPgConnection::establish(&pg.url()).await.is_err());
    assert!(
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .is_err(),
        "the old connection's backend must be gone too"
    );

    let port = pg.port();
    pg.restart().await;
    assert_eq!(pg.port(), port);
    let mut conn = pg.connect().await;
    assert_eq!(count_rows(&mut conn).await, 1);
}

/// `stop` shuts down; `restart` works after it; `Drop` kills the postmaster by PID.
#[tokio::test(flavor = "multi_thread")]
async fn stop_restart_and_drop() {
    let pg = PgServer::spawn().await;
    let first = pg.pid().unwrap();
    pg.stop().await;
    assert!(!pid_alive(first));
    assert!(AsyncPgConnection::establish(&pg.url()).await.is_err());

    pg.restart().await;
    let pid = pg.pid().unwrap();
    diesel::sql_query("SELECT 1")
        .execute(&mut pg.connect().await)
        .await
        .unwrap();
    let data_dir = pg.data_dir().to_path_buf();
    drop(pg);
    assert!(!pid_alive(pid), "postmaster {pid} still exists after drop");
    assert!(
        !data_dir.exists(),
        "the temp data directory must be deleted"
    );
}
