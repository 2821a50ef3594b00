//! The durable consumer as the server holds it: read back, drift, in-place update, conflicts,
//! and stream retention/storage mismatches.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, push, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use jetstream_bridge_config::{Config, SubjectLayout};
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{
    ensure_topology, lookup_durable, DriftPolicy, PlannedAction, Problem, TopologyErrorKind,
    TopologySpec,
};

use crate::{consumer_info, options, Pair};

fn with(
    pair: &Pair,
    f: impl FnOnce(jetstream_bridge_config::ConfigBuilder) -> jetstream_bridge_config::ConfigBuilder,
) -> Config {
    let a = &pair.a;
    f(Config::builder(
        a.env().unwrap().as_str(),
        a.app_name().as_str(),
        a.destination_app().as_str(),
    )
    .layout(SubjectLayout::EnvPrefixed)
    .stream_name(a.stream_name().as_str()))
    .build()
    .unwrap()
}

/// The server holds exactly the configured consumer: ack_wait 30 s stays 30 s, no backoff
///, explicit ack, deliver all, the filter, max_deliver and max_ack_pending.
#[tokio::test]
async fn consumer_read_back_equals_the_config() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = with(&pair, |b| b.max_ack_pending(64));
    ensure_topology(js, &TopologySpec::from_config(&config), &options())
        .await
        .unwrap();

    let consumer: PullConsumer = js
        .get_consumer_from_stream(
            config.durable_name().as_str(),
            config.stream_name().as_str(),
        )
        .await
        .unwrap();
    let c = &consumer.cached_info().config;
    assert_eq!(
        c.durable_name.as_deref(),
        Some(config.durable_name().as_str())
    );
    assert_eq!(c.filter_subject, config.subjects().destination().as_str());
    assert_eq!(c.ack_policy, AckPolicy::Explicit);
    assert_eq!(c.deliver_policy, DeliverPolicy::All);
    assert_eq!(c.ack_wait, Duration::from_secs(30));
    assert_eq!(c.max_deliver, 5);
    assert_eq!(c.max_ack_pending, 64);
    assert!(c.backoff.is_empty());
    assert!(c.deliver_subject.is_none());
    t.teardown().await;
}

/// `lookup_durable` reads the provisioned durable's `max_deliver` and `ack_wait`, and tells a
/// missing durable (and a missing stream) from a failed request.
#[tokio::test]
async fn lookup_durable_reads_the_server_and_reports_a_missing_durable() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = with(&pair, |b| b.max_deliver(7).ack_wait("12s"));
    let (stream, durable) = (
        config.stream_name().as_str(),
        config.durable_name().as_str(),
    );
    assert_eq!(lookup_durable(js, stream, durable).await.unwrap(), None);
    ensure_topology(js, &TopologySpec::from_config(&config), &options())
        .await
        .unwrap();
    let info = lookup_durable(js, stream, durable).await.unwrap().unwrap();
    assert_eq!(
        (info.max_deliver, info.ack_wait),
        (Some(7), Some(Duration::from_secs(12)))
    );
    assert_eq!(lookup_durable(js, stream, "absent").await.unwrap(), None);
    let err = lookup_durable(js, stream, "a.b").await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::InvalidSpec);
    t.teardown().await;
}

/// A hand-made durable with max_deliver 9 is reported as drift (and left alone); with
/// `DriftPolicy::Update` it is updated in place, not recreated, and verified.
#[tokio::test]
async fn drift_is_reported_then_updated_in_place() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = &pair.a;
    let (stream, durable) = (
        config.stream_name().as_str(),
        config.durable_name().as_str(),
    );
    let spec = TopologySpec::from_config(config);
    ensure_topology(js, &spec.clone().with_consumer(false), &options())
        .await
        .unwrap();
    js.create_consumer_on_stream(
        pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: config.subjects().destination().to_string(),
            ack_policy: AckPolicy::Explicit,
            max_deliver: 9,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
        stream,
    )
    .await
    .unwrap();
    let created = consumer_info(js, stream, durable).await.unwrap()["created"].clone();

    let err = ensure_topology(js, &spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::ConsumerDrift, "{err}");
    let drift = err.drift().unwrap();
    assert_eq!(drift.durable, durable);
    assert_eq!(drift.fields.len(), 1, "{err}");
    assert_eq!(drift.fields[0].field, "max_deliver");
    assert_eq!(
        (
            drift.fields[0].expected.as_str(),
            drift.fields[0].actual.as_str()
        ),
        ("5", "9")
    );
    assert!(err.to_string().contains("--update-drift"), "{err}");
    assert_eq!(
        consumer_info(js, stream, durable).await.unwrap()["config"]["max_deliver"],
        9
    );

    let update = options().drift_policy(DriftPolicy::Update);
    let report = ensure_topology(js, &spec, &update).await.unwrap();
    assert!(
        matches!(report.applied(), [PlannedAction::UpdateConsumer { fields, .. }] if fields[0].field == "max_deliver"),
        "{report}"
    );
    assert!(
        report.to_string().contains("max_deliver 9 -> 5"),
        "{report}"
    );
    let info = consumer_info(js, stream, durable).await.unwrap();
    assert_eq!(info["config"]["max_deliver"], 5);
    assert_eq!(
        info["created"], created,
        "updated in place, never deleted and recreated"
    );
    assert!(ensure_topology(js, &spec, &options())
        .await
        .unwrap()
        .is_unchanged());
    t.teardown().await;
}

/// A drift the server cannot update in place (a push durable where a pull one is configured)
/// is reported with the server's refusal; the consumer is kept as it was.
#[tokio::test]
async fn drift_the_server_cannot_update_is_reported() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = &pair.a;
    let (stream, durable) = (
        config.stream_name().as_str(),
        config.durable_name().as_str(),
    );
    let spec = TopologySpec::from_config(config);
    ensure_topology(js, &spec.clone().with_consumer(false), &options())
        .await
        .unwrap();
    let deliver_subject = t.subject("push");
    js.create_consumer_on_stream(
        push::Config {
            durable_name: Some(durable.to_owned()),
            deliver_subject: deliver_subject.clone(),
            filter_subject: config.subjects().destination().to_string(),
            ack_policy: AckPolicy::Explicit,
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        },
        stream,
    )
    .await
    .unwrap();
    let err = ensure_topology(js, &spec, &options().drift_policy(DriftPolicy::Update))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::ConsumerDrift, "{err}");
    let drift = err.drift().unwrap();
    assert_eq!(drift.fields[0].field, "deliver_subject");
    assert_eq!(drift.fields[0].actual, deliver_subject);
    assert!(drift.update_refused.is_some(), "{err}");
    // 2.9.10: "max waiting can not be updated" (a pull durable has max_waiting, a push one not).
    assert_eq!(err.jetstream_code(), Some(10012), "{err}");
    assert!(err.to_string().contains("never deleted"), "{err}");
    assert_eq!(
        consumer_info(js, stream, durable).await.unwrap()["config"]["deliver_subject"],
        deliver_subject.as_str()
    );
    t.teardown().await;
}

/// An existing stream with limits retention and memory storage is reported, never changed.
#[tokio::test]
async fn retention_and_storage_mismatch_is_reported() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let s = pair.a.subjects();
    let mut existing = t.stream_config("x");
    existing.name = s.stream_name().to_string();
    existing.subjects = vec![s.source().to_string()];
    existing.retention = RetentionPolicy::Limits;
    existing.storage = StorageType::Memory;
    t.create_stream(existing).await;

    let err = ensure_topology(js, &TopologySpec::from_config(&pair.a), &options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::StreamMismatch, "{err}");
    let fields: Vec<_> = err
        .problems()
        .iter()
        .filter_map(|p| match p {
            Problem::StreamMismatch {
                field,
                expected,
                actual,
                ..
            } => Some((*field, expected.as_str(), actual.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("retention", "workqueue", "limits"),
            ("storage", "file", "memory")
        ]
    );
    let info = crate::stream_info(js, s.stream_name().as_str())
        .await
        .unwrap();
    assert_eq!(info["config"]["retention"], "limits");
    assert_eq!(
        info["config"]["subjects"],
        serde_json::json!([s.source().as_str()])
    );
    t.teardown().await;
}

/// Another durable already filtering our destination subject on the work-queue stream (server
/// error 10100) is named in a typed error.
#[tokio::test]
async fn another_consumer_of_the_subject_is_named() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let config = &pair.a;
    let spec = TopologySpec::from_config(config);
    ensure_topology(js, &spec.clone().with_consumer(false), &options())
        .await
        .unwrap();
    js.create_consumer_on_stream(
        pull::Config {
            durable_name: Some("squatter".into()),
            filter_subject: config.subjects().destination().to_string(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        },
        config.stream_name().as_str(),
    )
    .await
    .unwrap();
    let err = ensure_topology(js, &spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::ConsumerConflict, "{err}");
    assert_eq!(err.jetstream_code(), Some(10100));
    assert!(err.to_string().contains("`squatter`"), "{err}");
    t.teardown().await;
}
