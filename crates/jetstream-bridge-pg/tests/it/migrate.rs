//! The migration runner on fresh databases: every table, idempotence, components, concurrent
//! runs, changed migrations.

use jetstream_bridge_pg::{Component, MigrationState, Migrator, PgErrorKind};

use crate::{count, has_table, Db};

#[tokio::test]
async fn all_creates_every_table_once() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    let pending = Migrator::all().pending(&mut conn).await.unwrap();
    assert_eq!(pending.len(), Migrator::all().migrations().count());
    let applied = Migrator::all().run(&mut conn).await.unwrap();
    assert_eq!(applied, pending);
    for component in Component::ALL {
        assert!(has_table(&mut conn, component.table()).await, "{component}");
    }
    assert!(Migrator::all().run(&mut conn).await.unwrap().is_empty());
    assert!(Migrator::all().pending(&mut conn).await.unwrap().is_empty());
    let status = Migrator::all().status(&mut conn).await.unwrap();
    assert!(status.iter().all(|s| s.state == MigrationState::Applied));
    drop(conn);
    db.drop_db().await;
}

#[tokio::test]
async fn only_one_component_then_the_rest() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    let inbox = Migrator::only(Component::Inbox)
        .run(&mut conn)
        .await
        .unwrap();
    assert!(!inbox.is_empty());
    assert!(has_table(&mut conn, "jetstream_inbox_events").await);
    assert!(!has_table(&mut conn, "jetstream_outbox_events").await);
    let rest = Migrator::all().run(&mut conn).await.unwrap();
    assert!(!rest.is_empty());
    assert!(rest.iter().all(|name| !inbox.contains(name)));
    assert!(has_table(&mut conn, "jetstream_outbox_events").await);
    drop(conn);
    db.drop_db().await;
}

/// Several deploys at once: each migration is applied by exactly one of them, all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_runs_apply_each_migration_once() {
    let db = Db::new().await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        runs.push(tokio::spawn(async move {
            use diesel_async::AsyncConnection;
            let mut conn = diesel_async::AsyncPgConnection::establish(&url)
                .await
                .unwrap();
            Migrator::all().run(&mut conn).await
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().unwrap());
    }
    applied.sort();
    let mut expected: Vec<String> = Migrator::all()
        .migrations()
        .map(|m| m.name().to_owned())
        .collect();
    expected.sort();
    assert_eq!(applied, expected);
    let mut conn = db.conn().await;
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM __diesel_schema_migrations"
        )
        .await,
        i64::try_from(expected.len()).unwrap()
    );
    drop(conn);
    db.drop_db().await;
}

/// An applied migration whose SQL differs from the embedded one stops the run before it
/// applies anything.
#[tokio::test]
async fn a_changed_migration_is_refused() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    Migrator::only(Component::Outbox)
        .run(&mut conn)
        .await
        .unwrap();
    let outbox = Migrator::only(Component::Outbox)
        .migrations()
        .next()
        .unwrap()
        .name();
    use diesel_async::RunQueryDsl;
    diesel::sql_query("UPDATE jetstream_bridge_migrations SET checksum = 'edited'")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = Migrator::all().run(&mut conn).await.unwrap_err();
    match err.kind() {
        PgErrorKind::MigrationChanged { name, applied, .. } => {
            assert_eq!(name, outbox);
            assert_eq!(applied, "edited");
        }
        other => panic!("expected MigrationChanged, got {other:?}"),
    }
    assert!(
        !has_table(&mut conn, "jetstream_inbox_events").await,
        "nothing may be applied after a changed migration is found"
    );
    let status = Migrator::all().status(&mut conn).await.unwrap();
    assert!(status
        .iter()
        .any(|s| matches!(&s.state, MigrationState::Changed { applied } if applied == "edited")));
    drop(conn);
    db.drop_db().await;
}

/// Migrations applied by the diesel CLI (versions without checksums) are adopted: nothing is
/// applied again, and their checksums are recorded.
#[tokio::test]
async fn migrations_applied_without_checksums_are_adopted() {
    let db = Db::new().await;
    let mut conn = db.conn().await;
    Migrator::all().run(&mut conn).await.unwrap();
    use diesel_async::RunQueryDsl;
    diesel::sql_query("DROP TABLE jetstream_bridge_migrations")
        .execute(&mut conn)
        .await
        .unwrap();
    let status = Migrator::all().status(&mut conn).await.unwrap();
    assert!(status.iter().all(|s| s.state == MigrationState::Applied));
    assert!(Migrator::all().run(&mut conn).await.unwrap().is_empty());
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM jetstream_bridge_migrations"
        )
        .await,
        i64::try_from(Migrator::all().migrations().count()).unwrap()
    );
    drop(conn);
    db.drop_db().await;
}
