//! `migrate`: every table, idempotent, concurrent runs, `--only`; and the library entry point.

use jetstream_bridge_pg::{Component, Migrator};
use jetstream_bridge_testkit::TestDb;
use serde_json::Value;

use crate::run_with;

fn db_vars(db: &TestDb) -> Vec<(String, String)> {
    vec![("DATABASE_URL".to_owned(), db.url().to_owned())]
}

async fn tables(db: &TestDb) -> i64 {
    db.count(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN \
         ('jetstream_outbox_events', 'jetstream_inbox_events')",
    )
    .await
}

/// The names of the migrations `migrator` applies, oldest first.
fn expected(migrator: &Migrator) -> Vec<String> {
    migrator.migrations().map(|m| m.name().to_owned()).collect()
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// A fresh database gets both tables; a second run applies nothing.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_creates_every_table_once() {
    let db = TestDb::empty().await;
    let first = run_with(&db_vars(&db), &["migrate", "--json"]).await.json();
    let applied = names(&first, "applied");
    assert_eq!(applied, expected(&Migrator::all()), "{first}");
    assert!(applied.iter().any(|n| n.contains("outbox")), "{first}");
    assert!(applied.iter().any(|n| n.contains("inbox")), "{first}");
    assert_eq!(tables(&db).await, 2);
    let second = run_with(&db_vars(&db), &["migrate", "--json"]).await.json();
    assert!(names(&second, "applied").is_empty(), "{second}");
    assert!(names(&second, "pending").is_empty(), "{second}");
    let text = run_with(&db_vars(&db), &["migrate"]).await;
    assert!(text.success, "{text:?}");
    assert!(text.stdout.contains("up to date"), "{text:?}");
    db.teardown().await;
}

/// Two runs at once: both succeed, and together they applied each migration exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_both_succeed_and_apply_once() {
    let db = TestDb::empty().await;
    let vars = db_vars(&db);
    let (a, b) = tokio::join!(
        run_with(&vars, &["migrate", "--json"]),
        run_with(&vars, &["migrate", "--json"])
    );
    let mut all = names(&a.json(), "applied");
    all.extend(names(&b.json(), "applied"));
    all.sort();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(all, unique, "a migration was applied twice: {a:?} {b:?}");
    let mut want = expected(&Migrator::all());
    want.sort();
    assert_eq!(all, want, "{a:?} {b:?}");
    assert_eq!(tables(&db).await, 2);
    db.teardown().await;
}

/// `--only inbox` applies the inbox table alone; a later full run adds the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn only_applies_one_component() {
    let db = TestDb::empty().await;
    let v = run_with(&db_vars(&db), &["migrate", "--only", "inbox", "--json"])
        .await
        .json();
    assert_eq!(
        names(&v, "applied"),
        expected(&Migrator::only(Component::Inbox)),
        "{v}"
    );
    assert_eq!(tables(&db).await, 1);
    let v = run_with(&db_vars(&db), &["migrate", "--json"]).await.json();
    assert_eq!(
        names(&v, "applied"),
        expected(&Migrator::only(Component::Outbox)),
        "{v}"
    );
    db.teardown().await;
}

/// The recipe for a workspace `xtask`: parse a command line and run it in process.
#[tokio::test(flavor = "multi_thread")]
async fn library_entry_point_runs_a_command() {
    use clap::Parser;

    let db = TestDb::empty().await;
    let cli = jetstream_bridge_cli::Cli::parse_from([
        "xtask",
        "--database-url",
        db.url(),
        "migrate",
        "--only",
        "outbox",
    ]);
    cli.run().await.unwrap();
    assert_eq!(tables(&db).await, 1);
    db.teardown().await;
}
