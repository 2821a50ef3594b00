//! Creating, re-running, extending and dry-running topology on the shared server.

use std::time::Duration;

use jetstream_bridge_config::{Config, ConsumerMode, SubjectLayout};
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{
    ensure_topology, plan, DlqPlacement, PlannedAction, StreamRole, TopologySpec,
    DEFAULT_DLQ_MAX_AGE,
};

use crate::{consumer_info, options, sorted, stream_info, stream_subjects, Pair};

/// Both layouts: the first run creates the main stream, the DLQ stream and the durable; the
/// second run changes nothing.
#[tokio::test]
async fn creates_then_reruns_without_changes_in_both_layouts() {
    for layout in [SubjectLayout::EnvPrefixed, SubjectLayout::EnvLess] {
        let t = TestNats::shared().await;
        let js = t.jetstream();
        let pair = Pair::new(&t, layout);
        let spec = TopologySpec::from_config(&pair.a);
        let s = pair.a.subjects();

        let report = ensure_topology(js, &spec, &options()).await.unwrap();
        let kinds: Vec<_> = report
            .applied()
            .iter()
            .map(|a| match a {
                PlannedAction::CreateStream { role, .. } => format!("create {role:?}"),
                other => format!("{other:?}")
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned(),
            })
            .collect();
        assert_eq!(
            kinds,
            ["create Main", "create Dlq", "CreateConsumer"],
            "{report}"
        );
        assert_eq!(report.rounds(), 2, "one round applies, the next verifies");

        let main = stream_info(js, s.stream_name().as_str()).await.unwrap();
        assert_eq!(main["config"]["retention"], "workqueue");
        assert_eq!(main["config"]["storage"], "file");
        assert_eq!(main["config"]["num_replicas"], 1);
        assert_eq!(main["config"]["duplicate_window"], 120_000_000_000u64);
        assert_eq!(
            sorted(&stream_subjects(js, s.stream_name().as_str()).await),
            sorted(&[s.source().as_str(), s.destination().as_str()])
        );
        let dlq_name = format!("{}-dlq", s.stream_name());
        let dlq = stream_info(js, &dlq_name).await.unwrap();
        assert_eq!(
            dlq["config"]["retention"], "limits",
            "the DLQ can be browsed"
        );
        assert_eq!(dlq["config"]["storage"], "file");
        assert_eq!(
            dlq["config"]["max_age"],
            u64::try_from(DEFAULT_DLQ_MAX_AGE.as_nanos()).unwrap()
        );
        assert_eq!(
            stream_subjects(js, &dlq_name).await,
            [s.dlq().as_str(), s.peer_dlq().as_str()],
            "the peer's DLQ subject is claimed in the DLQ stream too"
        );
        let consumer = consumer_info(js, s.stream_name().as_str(), s.durable_name().as_str())
            .await
            .unwrap();
        assert_eq!(
            consumer["config"]["filter_subject"],
            s.destination().as_str()
        );
        if layout == SubjectLayout::EnvLess {
            assert_eq!(
                s.source().as_str(),
                format!("{}.sync.{}", pair.a.app_name(), pair.b.app_name())
            );
        }

        let again = ensure_topology(js, &spec, &options()).await.unwrap();
        assert!(again.is_unchanged(), "{again}");
        assert_eq!(again.to_string(), "no changes");
        assert_eq!(again.rounds(), 1);
        t.teardown().await;
    }
}

/// Two Ruby-style peers (DLQ in the main stream): the second side extends the stream with only
/// what it lacks, ending with all four subjects of the pair and one durable per app.
#[tokio::test]
async fn the_other_side_extends_the_stream_to_all_four_subjects() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    let stream = a.stream_name().as_str();
    let spec_a = TopologySpec::from_config(&pair.a).with_dlq_placement(DlqPlacement::MainStream);
    let spec_b = TopologySpec::from_config(&pair.b).with_dlq_placement(DlqPlacement::MainStream);

    ensure_topology(js, &spec_a, &options()).await.unwrap();
    assert_eq!(
        sorted(&stream_subjects(js, stream).await),
        sorted(&[
            a.source().as_str(),
            a.destination().as_str(),
            a.dlq().as_str()
        ])
    );
    let report = ensure_topology(js, &spec_b, &options()).await.unwrap();
    assert!(
        matches!(&report.applied()[0],
            PlannedAction::AddStreamSubjects { add, .. } if add == &[b.dlq().to_string()]),
        "{report}"
    );
    assert_eq!(
        sorted(&stream_subjects(js, stream).await),
        sorted(&[
            a.source().as_str(),
            b.source().as_str(),
            a.dlq().as_str(),
            b.dlq().as_str()
        ])
    );
    assert!(stream_info(js, &format!("{stream}-dlq")).await.is_none());
    assert!(consumer_info(js, stream, a.durable_name().as_str())
        .await
        .is_some());
    assert!(consumer_info(js, stream, b.durable_name().as_str())
        .await
        .is_some());
    for spec in [&spec_a, &spec_b] {
        assert!(ensure_topology(js, spec, &options())
            .await
            .unwrap()
            .is_unchanged());
    }
    t.teardown().await;
}

/// Extending a stream an admin made keeps every other setting, and a desired
/// subject covered by an existing wildcard counts as present.
#[tokio::test]
async fn extending_keeps_the_admins_settings_and_honours_wildcards() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let s = pair.a.subjects();
    let stream = s.stream_name().as_str();
    let wildcard = format!("{}.{}.sync.*", pair.a.env().unwrap(), pair.a.app_name());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![wildcard.clone()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        max_messages: 1000,
        max_bytes: 10 << 20,
        description: Some("made by an admin".into()),
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    })
    .await
    .unwrap();

    let spec = TopologySpec::from_config(&pair.a).with_dlq_placement(DlqPlacement::MainStream);
    let plan = plan(js, &spec, &options()).await.unwrap();
    assert!(plan.problems().is_empty(), "{plan}");
    match &plan.actions()[0] {
        PlannedAction::AddStreamSubjects {
            add, keep, role, ..
        } => {
            // Source and DLQ are covered by `{env}.{app}.sync.*`.
            assert_eq!(add, &[s.destination().to_string()]);
            assert_eq!(keep, std::slice::from_ref(&wildcard));
            assert_eq!(*role, StreamRole::Main);
        }
        other => panic!("unexpected first action {other}"),
    }
    assert!(
        plan.notes()
            .iter()
            .any(|n| n.field == "duplicate_window" && n.actual == "5m"),
        "{plan}"
    );

    ensure_topology(js, &spec, &options()).await.unwrap();
    let info = stream_info(js, stream).await.unwrap();
    assert_eq!(
        info["config"]["subjects"],
        serde_json::json!([wildcard, s.destination().as_str()])
    );
    assert_eq!(info["config"]["max_msgs"], 1000);
    assert_eq!(info["config"]["max_bytes"], 10 << 20);
    assert_eq!(info["config"]["description"], "made by an admin");
    assert_eq!(info["config"]["duplicate_window"], 300_000_000_000u64);
    t.teardown().await;
}

/// A dry run lists the creates and changes nothing.
#[tokio::test]
async fn dry_run_changes_nothing() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let spec = TopologySpec::from_config(&pair.a);
    let plan = plan(js, &spec, &options()).await.unwrap();
    let lines: Vec<String> = plan.to_string().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{plan}");
    assert!(
        lines[0].starts_with(&format!(
            "create stream `{}` (workqueue, file, 1 replica, duplicate window 2m) with subjects",
            spec.stream_name()
        )),
        "{plan}"
    );
    assert!(lines[1].starts_with("create DLQ stream"), "{plan}");
    assert!(lines[2].starts_with("create pull consumer"), "{plan}");
    assert!(lines[2].contains("no server-side backoff"), "{plan}");
    assert!(stream_info(js, spec.stream_name()).await.is_none());
    assert!(stream_info(js, spec.dlq_stream_name()).await.is_none());
    t.teardown().await;
}

/// A push durable for restricted accounts: delivery subject and queue group from the config,
/// and a queue subscriber receives what is published.
#[tokio::test]
async fn push_consumer_delivers_to_its_queue_group() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = Config::builder(
        pair.a.env().unwrap().as_str(),
        pair.a.app_name().as_str(),
        pair.a.destination_app().as_str(),
    )
    .stream_name(pair.a.stream_name().as_str())
    .consumer_mode(ConsumerMode::Push)
    .build()
    .unwrap();
    let s = config.subjects();
    ensure_topology(js, &TopologySpec::from_config(&config), &options())
        .await
        .unwrap();
    let info = consumer_info(js, s.stream_name().as_str(), s.durable_name().as_str())
        .await
        .unwrap();
    assert_eq!(
        info["config"]["deliver_subject"],
        s.delivery_subject().as_str()
    );
    assert_eq!(info["config"]["deliver_group"], s.push_group().as_str());
    assert!(info["config"].get("backoff").is_none());

    let mut sub = t
        .client()
        .queue_subscribe(s.delivery_subject().to_string(), s.push_group().to_string())
        .await
        .unwrap();
    t.client().flush().await.unwrap();
    js.publish(s.destination().to_string(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut sub),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(msg
        .reply
        .unwrap()
        .starts_with(&format!("$JS.ACK.{}.", s.stream_name())));
    assert!(
        ensure_topology(js, &TopologySpec::from_config(&config), &options())
            .await
            .unwrap()
            .is_unchanged()
    );
    t.teardown().await;
}

/// Without the DLQ and the consumer only the main stream's two subjects are provisioned.
#[tokio::test]
async fn publish_only_service_without_dlq() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = Config::builder(
        pair.a.env().unwrap().as_str(),
        pair.a.app_name().as_str(),
        pair.a.destination_app().as_str(),
    )
    .stream_name(pair.a.stream_name().as_str())
    .use_dlq(false)
    .build()
    .unwrap();
    let spec = TopologySpec::from_config(&config).with_consumer(false);
    let report = ensure_topology(js, &spec, &options()).await.unwrap();
    assert_eq!(report.applied().len(), 1, "{report}");
    assert_eq!(stream_subjects(js, spec.stream_name()).await.len(), 2);
    assert!(stream_info(js, spec.dlq_stream_name()).await.is_none());
    assert!(crate::consumer_names(js, spec.stream_name())
        .await
        .is_empty());
    t.teardown().await;
}
