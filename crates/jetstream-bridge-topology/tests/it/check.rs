//! `check`: the typed report a `check` command prints (and serialises for `--json`).

use jetstream_bridge_config::SubjectLayout;
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{check, ensure_topology, DurableIssue, FieldDrift, TopologySpec};
use serde_json::{json, Value};

use crate::{options, Pair};

/// Nothing provisioned: every part is missing, with the subjects provisioning would add; after
/// provisioning everything is present and `ok`.
#[tokio::test]
async fn missing_topology_then_ok() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let s = pair.a.subjects();
    let spec = TopologySpec::from_config(&pair.a);

    let report = check(js, &spec, &options()).await.unwrap();
    assert!(!report.ok);
    assert!(!report.stream.present);
    assert_eq!(
        report.stream.missing_subjects,
        [s.source().as_str(), s.destination().as_str()]
    );
    let dlq = report.dlq_stream.as_ref().unwrap();
    assert!(!dlq.present);
    assert_eq!(
        dlq.missing_subjects,
        [s.dlq().as_str(), s.peer_dlq().as_str()]
    );
    let durable = report.durable.as_ref().unwrap();
    assert!(!durable.present);
    assert_eq!(durable.name, s.durable_name().as_str());
    let text = report.to_string();
    assert!(
        text.contains(&format!("stream `{}`: missing", s.stream_name())),
        "{text}"
    );
    assert!(
        text.contains(&format!("durable `{}` on stream", s.durable_name())),
        "{text}"
    );

    ensure_topology(js, &spec, &options()).await.unwrap();
    let report = check(js, &spec, &options()).await.unwrap();
    assert!(report.ok, "{report}");
    assert!(report.stream.present && report.stream.missing_subjects.is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["durable"]["present"], true);
    assert_eq!(json["durable"]["issues"], json!([]));
    assert_eq!(
        json["dlq_stream"]["subjects"],
        json!([s.dlq().as_str(), s.peer_dlq().as_str()])
    );
    t.teardown().await;
}

/// A durable as the Ruby gem creates it (backoff sent in seconds, stored as nanoseconds, so
/// the server's ack wait becomes 1 ns): drift, and two reasons it cannot work.
#[tokio::test]
async fn a_gem_made_durable_cannot_work() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let s = pair.a.subjects();
    let spec = TopologySpec::from_config(&pair.a);
    ensure_topology(js, &spec.clone().with_consumer(false), &options())
        .await
        .unwrap();
    let stream = s.stream_name().as_str();
    let durable = s.durable_name().as_str();
    // 2.9 refuses the gem's five steps with max_deliver 5 (10116); four are accepted.
    let created: Value = js
        .request(
            format!("CONSUMER.CREATE.{stream}.{durable}.{}", s.destination()),
            &json!({"stream_name": stream, "config": {
                "durable_name": durable, "filter_subject": s.destination().as_str(),
                "ack_policy": "explicit", "deliver_policy": "all", "max_deliver": 5,
                "ack_wait": 30_000_000_000u64, "backoff": [1, 5, 15, 30]}}),
        )
        .await
        .unwrap();
    assert!(created.get("error").is_none(), "{created}");

    let report = check(js, &spec, &options()).await.unwrap();
    assert!(!report.ok);
    let d = report.durable.as_ref().unwrap();
    assert!(d.present);
    let drifted: Vec<&FieldDrift> = d.drift.iter().collect();
    assert!(
        drifted
            .iter()
            .any(|f| f.field == "ack_wait" && f.actual == "1ns"),
        "{report}"
    );
    assert!(drifted.iter().any(|f| f.field == "backoff"), "{report}");
    assert_eq!(
        d.issues,
        [
            DurableIssue::ServerBackoff {
                backoff: vec!["1ns".into(), "5ns".into(), "15ns".into(), "30ns".into()],
                ack_wait: "1ns".into(),
            },
            DurableIssue::AckWaitBelowProgressInterval {
                ack_wait: "1ns".into(),
                progress_interval: "15s".into(),
            },
        ]
    );
    assert!(
        report.problems.is_empty(),
        "drift is reported on the durable only: {report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("cannot work: server-side backoff [1ns, 5ns, 15ns, 30ns]"),
        "{text}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["durable"]["issues"][0]["kind"], "server_backoff");
    assert_eq!(json["durable"]["drift"][0]["field"], "ack_wait");
    t.teardown().await;
}
