//! Failures: unreachable NATS or PostgreSQL, missing tables, missing topology, invalid
//! configuration: a clear message, a non-zero exit, and never a password in the output.

use jetstream_bridge_testkit::TestDb;

use crate::Env;

const PASSWORD: &str = "s3cr3t-pw-417";

fn assert_masked(text: &str) {
    assert!(!text.contains(PASSWORD), "password in output: {text}");
}

/// NATS that does not answer: every NATS command fails naming the (masked) server.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_nats_is_a_clear_error_without_the_password() {
    let url = format!("nats://admin:{PASSWORD}@127.0.0.1:1");
    let env = Env::new(&[("NATS_URLS", url.as_str())]).await;
    for args in [
        &["dlq", "list"][..],
        &["dlq", "replay", "--all", "--json"],
        &["ensure-topology"],
        &["health", "--json"],
        &["check"],
    ] {
        let run = env.cli(args).await;
        let text = run.failure();
        assert!(text.contains("cannot connect to NATS"), "{args:?}: {text}");
        assert!(
            text.contains("nats://admin:***@127.0.0.1:1"),
            "{args:?}: {text}"
        );
        assert_masked(&text);
    }
    env.teardown().await;
}

/// PostgreSQL that does not answer: database commands fail naming the (masked) server.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_is_a_clear_error_without_the_password() {
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/app");
    let env = Env::new(&[("DATABASE_URL", url.as_str())]).await;
    for args in [
        &["migrate"][..],
        &["outbox", "status", "--json"],
        &["outbox", "retry-failed", "--all"],
        &["inbox", "cleanup"],
        &["check", "--json"],
    ] {
        let run = env.cli(args).await;
        let text = run.failure();
        assert!(
            text.contains("cannot connect to PostgreSQL"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("postgres://postgres:***@127.0.0.1:1/app"),
            "{args:?}: {text}"
        );
        assert_masked(&text);
    }
    let flag = crate::run_with(&[], &["--database-url", &url, "inbox", "status"]).await;
    assert_masked(&flag.failure());
    env.teardown().await;
}

/// A database without the tables: the commands say to run `migrate`; `check` reports them
/// missing.
#[tokio::test(flavor = "multi_thread")]
async fn missing_tables_say_to_migrate() {
    let env = Env::with_db(TestDb::empty().await, &[]).await;
    env.provision().await;
    for args in [
        &["outbox", "status"][..],
        &["inbox", "status", "--json"],
        &["outbox", "cleanup"],
    ] {
        let text = env.cli(args).await.failure();
        assert!(text.contains("does not exist"), "{args:?}: {text}");
        assert!(
            text.contains("jetstream-bridge migrate"),
            "{args:?}: {text}"
        );
    }
    let check = env.cli(&["check", "--json"]).await;
    let text = check.failure();
    let v: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["item"] == "table jetstream_inbox_events" && f["level"] == "problem"),
        "{text}"
    );
    env.teardown().await;
}

/// No stream holds the DLQ subject (topology not provisioned): the DLQ commands say so.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_without_topology_says_to_provision() {
    let env = Env::new(&[]).await;
    let text = env.cli(&["dlq", "list"]).await.failure();
    assert!(text.contains("no stream holds the DLQ subject"), "{text}");
    assert!(text.contains("ensure-topology"), "{text}");
    env.teardown().await;
}

/// An invalid configuration lists every problem, naming the variables.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_configuration_names_the_variables() {
    let env = Env::new(&[("APP_NAME", ""), ("JETSTREAM_MAX_DELIVER", "many")]).await;
    let text = env.cli(&["dlq", "list"]).await.failure();
    assert!(text.contains("APP_NAME"), "{text}");
    assert!(text.contains("JETSTREAM_MAX_DELIVER"), "{text}");
    let text = env.cli(&["dlq", "purge"]).await.failure();
    assert!(text.contains("--all"), "a selector is required: {text}");
    env.teardown().await;
}
