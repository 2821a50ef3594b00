use std::collections::HashSet;

use diesel::sql_types::{BigInt, Bool, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_testkit::TestDb;

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    v: bool,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    v: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    v: i64,
}

async fn has_table(conn: &mut AsyncPgConnection, table: &str) -> bool {
    diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS v")
        .bind::<Text, _>(table)
        .get_result::<Flag>(conn)
        .await
        .unwrap()
        .v
}

async fn current_database(conn: &mut AsyncPgConnection) -> String {
    diesel::sql_query("SELECT current_database()::text AS v")
        .get_result::<Name>(conn)
        .await
        .unwrap()
        .v
}

async fn database_exists(admin_url: &str, name: &str) -> bool {
    let mut admin = AsyncPgConnection::establish(admin_url).await.unwrap();
    diesel::sql_query("SELECT count(*) AS v FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .get_result::<Count>(&mut admin)
        .await
        .unwrap()
        .v
        == 1
}

/// Two test databases are separate: a table created in one is absent from the other; the pool
/// and `conn` both reach the test's own database.
#[tokio::test(flavor = "multi_thread")]
async fn databases_are_isolated() {
    let a = TestDb::new().await;
    let b = TestDb::new().await;
    assert_ne!(a.name(), b.name());

    let mut pooled = a.pool().get().await.unwrap();
    assert_eq!(current_database(&mut pooled).await, a.name());
    diesel::sql_query("CREATE TABLE only_in_a (id int)")
        .execute(&mut pooled)
        .await
        .unwrap();
    drop(pooled);

    assert!(has_table(&mut a.conn().await, "only_in_a").await);
    let mut conn_b = b.conn().await;
    assert_eq!(current_database(&mut conn_b).await, b.name());
    assert!(!has_table(&mut conn_b, "only_in_a").await);
    drop(conn_b);

    a.teardown().await;
    b.teardown().await;
}

/// `teardown` drops the database even while a pooled connection is still checked out.
#[tokio::test(flavor = "multi_thread")]
async fn teardown_drops_the_database() {
    let db = TestDb::new().await;
    let (name, admin) = (db.name().to_owned(), db.admin_url().to_owned());
    assert!(database_exists(&admin, &name).await);
    let _open = db.conn().await;
    db.teardown().await;
    assert!(!database_exists(&admin, &name).await);
}

/// Many tasks can create databases at once (one builds the template, the others wait), and
/// every clone carries the workspace migrations.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creation_from_the_migrated_template() {
    let tasks: Vec<_> = (0..6).map(|_| tokio::spawn(TestDb::new())).collect();
    let mut dbs = Vec::new();
    for task in tasks {
        dbs.push(task.await.unwrap());
    }
    let names: HashSet<&str> = dbs.iter().map(TestDb::name).collect();
    assert_eq!(names.len(), dbs.len());

    let expected = jetstream_bridge_pg::Migrator::all().migrations().count();
    for db in &dbs {
        let mut conn = db.conn().await;
        let applied = diesel::sql_query("SELECT count(*) AS v FROM __diesel_schema_migrations")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .v;
        assert_eq!(applied, i64::try_from(expected).unwrap());
        assert!(has_table(&mut conn, "jetstream_inbox_events").await);
        assert!(has_table(&mut conn, "jetstream_outbox_events").await);
    }
    for db in dbs {
        db.teardown().await;
    }
}

/// `TestDb::empty` has no migrations table.
#[tokio::test(flavor = "multi_thread")]
async fn empty_database_is_unmigrated() {
    let db = TestDb::empty().await;
    assert!(!has_table(&mut db.conn().await, "__diesel_schema_migrations").await);
    db.teardown().await;
}
