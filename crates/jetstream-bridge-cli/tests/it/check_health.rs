//! `ensure-topology`, `check` and `health`.

use std::time::Duration;

use async_nats::jetstream::consumer::Config as ConsumerConfig;
use serde_json::Value;

use crate::Env;

fn finding<'a>(v: &'a Value, item_part: &str, level: &str) -> Option<&'a Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["item"].as_str().unwrap().contains(item_part) && f["level"] == level)
}

/// `--dry-run` creates nothing; the real run creates the stream, DLQ stream and durable;
/// a second run has nothing to change.
#[tokio::test(flavor = "multi_thread")]
async fn ensure_topology_plans_applies_and_is_idempotent() {
    let env = Env::new(&[]).await;
    let config = env.config();
    let dry = env
        .cli(&["ensure-topology", "--dry-run", "--json"])
        .await
        .json();
    assert_eq!(dry["dry_run"], true);
    assert!(!dry["plan"].as_array().unwrap().is_empty(), "{dry}");
    assert!(!env.t.stream_exists(config.stream_name().as_str()).await);
    let applied = env.cli(&["ensure-topology", "--json"]).await.json();
    assert!(
        !applied["applied"].as_array().unwrap().is_empty(),
        "{applied}"
    );
    assert!(env.t.stream_exists(config.stream_name().as_str()).await);
    assert!(
        env.t
            .stream_exists(&format!("{}-dlq", config.stream_name()))
            .await
    );
    let again = env.cli(&["ensure-topology"]).await;
    assert!(
        again.success && again.stdout.contains("nothing to change"),
        "{again:?}"
    );
    env.teardown().await;
}

/// A complete, well-configured service passes `check`; backoff entries that never apply are a
/// warning (a failure with `--strict`); an ack wait not longer than the in-progress interval and
/// a durable with a server-side backoff are problems.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_what_cannot_work_as_written() {
    let env = Env::new(&[("JETSTREAM_USE_OUTBOX", "true")]).await;
    env.provision().await;
    let ok = env.cli(&["check", "--json"]).await.json();
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["problems"], 0, "{ok}");
    for item in [
        "stream ",
        "DLQ stream",
        "durable ",
        "table jetstream_outbox_events",
        "table jetstream_inbox_events",
    ] {
        assert!(finding(&ok, item, "ok").is_some(), "{item}: {ok}");
    }
    let table = env.cli(&["check"]).await;
    assert!(table.success && table.stdout.contains("AREA"), "{table:?}");

    let unused_env = [("JETSTREAM_BACKOFF", "1s,2s,3s")];
    let mut vars = env.vars.clone();
    vars.retain(|(k, _)| k != "JETSTREAM_BACKOFF");
    vars.extend(
        unused_env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let warned = crate::run_with(&vars, &["check", "--json"]).await.json();
    let w = finding(&warned, "backoff", "warning").unwrap_or_else(|| panic!("{warned}"));
    assert!(
        w["detail"].as_str().unwrap().contains("(3s) never apply"),
        "{w}"
    );
    let strict = crate::run_with(&vars, &["check", "--strict"]).await;
    assert!(strict.failure().contains("warning"), "{strict:?}");

    let slow = env
        .cli(&["check", "--progress-interval", "10s", "--json"])
        .await;
    slow.failure();
    let v: Value = serde_json::from_str(&slow.stdout).unwrap();
    assert!(finding(&v, "ack_wait", "problem").is_some(), "{v}");

    // An admin adds a server-side backoff to the durable.
    let config = env.config();
    let stream = env
        .t
        .jetstream()
        .get_stream(config.stream_name().as_str())
        .await
        .unwrap();
    let mut durable: ConsumerConfig = stream
        .consumer_info(config.durable_name().as_str())
        .await
        .unwrap()
        .config;
    durable.backoff = vec![Duration::from_secs(1), Duration::from_secs(2)];
    stream.create_consumer(durable).await.unwrap();
    let drifted = env.cli(&["check", "--json"]).await;
    drifted.failure();
    let v: Value = serde_json::from_str(&drifted.stdout).unwrap();
    let p = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["detail"]
                .as_str()
                .unwrap()
                .contains("server-side backoff")
        })
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(p["level"], "problem");
    env.teardown().await;
}

/// `health` prints the report and exits 0 when healthy, non-zero when the stream is gone.
#[tokio::test(flavor = "multi_thread")]
async fn health_exit_code_follows_the_report() {
    let env = Env::new(&[("JETSTREAM_USE_OUTBOX", "true")]).await;
    env.provision().await;
    let report = env.cli(&["health", "--json"]).await.json();
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["stream"]["exists"], true, "{report}");
    assert!(report["outbox"].is_object(), "{report}");
    let table = env.cli(&["health"]).await;
    assert!(
        table.success && table.stdout.contains("healthy"),
        "{table:?}"
    );
    let config = env.config();
    env.t
        .jetstream()
        .delete_stream(config.stream_name().as_str())
        .await
        .unwrap();
    let sick = env.cli(&["health", "--json"]).await;
    sick.failure();
    let v: Value = serde_json::from_str(&sick.stdout).unwrap();
    assert_eq!(v["healthy"], false, "{v}");
    env.teardown().await;
}
