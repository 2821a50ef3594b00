//! Facts about nats-server (measured on 2.9.10) that the provisioning design rests on. Each
//! test fails if a server version behaves differently, which is the point: then the design
//! must be revisited.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::{ConsumerErrorKind, RetentionPolicy};
use async_nats::jetstream::ErrorCode;
use jetstream_bridge_testkit::TestNats;

/// The JetStream error code of a consumer creation error.
fn consumer_code(e: &async_nats::jetstream::stream::ConsumerError) -> Option<ErrorCode> {
    match e.kind() {
        ConsumerErrorKind::JetStream(js) => Some(js.error_code()),
        _ => None,
    }
}

/// STREAM.CREATE with the identical config of an existing stream succeeds (so concurrent
/// identical deploys all succeed); with a differing config it fails with 10058; the default
/// duplicate window is 2 minutes.
#[tokio::test]
async fn stream_create_is_idempotent_for_identical_configs_only() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let config = t.stream_config("facts");
    let created = t.create_stream(config.clone()).await;
    assert_eq!(
        created.cached_info().config.duplicate_window,
        Duration::from_secs(120)
    );
    js.create_stream(config.clone()).await.unwrap();

    let mut different = config.clone();
    different.subjects.push(t.subject("other"));
    let err = js.create_stream(different).await.unwrap_err();
    match err.kind() {
        CreateStreamErrorKind::JetStream(e) => {
            assert_eq!(e.error_code(), ErrorCode::STREAM_NAME_EXIST);
        }
        other => panic!("unexpected {other:?}"),
    }
    t.teardown().await;
}

/// A second stream overlapping another's subjects is refused with 10065, and retention cannot
/// be changed (10052): provisioning must detect both instead of trying.
#[tokio::test]
async fn overlap_and_retention_changes_are_refused() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let first = t.stream_config("one");
    let subject = first.subjects[0].clone();
    t.create_stream(first.clone()).await;
    let mut second = t.stream_config("two");
    second.subjects = vec![subject];
    let err = js.create_stream(second).await.unwrap_err();
    assert!(
        matches!(err.kind(), CreateStreamErrorKind::JetStream(e)
        if e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP),
        "{err}"
    );

    let mut changed = first;
    changed.retention = RetentionPolicy::WorkQueue;
    let err = js.update_stream(changed).await.unwrap_err();
    assert!(
        matches!(err.kind(), CreateStreamErrorKind::JetStream(e)
        if e.error_code() == ErrorCode::STREAM_INVALID_CONFIG),
        "{err}"
    );
    t.teardown().await;
}

/// "Create" of an existing durable with a different config silently updates it on 2.9 (the
/// server ignores the create action, even when sent explicitly): provisioning always reads consumer info and compares.
/// A second consumer with the same filter on a work-queue stream is refused with 10100, and a
/// work-queue consumer must deliver all (10101).
#[tokio::test]
async fn consumer_create_updates_silently_and_work_queues_allow_one_consumer_per_subject() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let mut config = t.stream_config("wq");
    config.retention = RetentionPolicy::WorkQueue;
    let stream = t.create_stream(config).await;
    let name = stream.cached_info().config.name.clone();
    let filter = t.subject("wq.x");
    let consumer = |durable: &str, max_deliver: i64| pull::Config {
        durable_name: Some(durable.to_owned()),
        filter_subject: filter.clone(),
        ack_policy: AckPolicy::Explicit,
        max_deliver,
        ..Default::default()
    };
    js.create_consumer_on_stream(consumer("d", 5), &name)
        .await
        .unwrap();
    let updated: PullConsumer = js
        .create_consumer_on_stream(consumer("d", 7), &name)
        .await
        .unwrap();
    assert_eq!(updated.cached_info().config.max_deliver, 7);
    // Even with an explicit `"action": "create"` (what 2.10+ treats as create-only).
    let answer: serde_json::Value = js
        .request(
            format!("CONSUMER.CREATE.{name}.d.{filter}"),
            &serde_json::json!({
                "stream_name": name,
                "action": "create",
                "config": {"durable_name": "d", "filter_subject": filter, "ack_policy": "explicit",
                           "deliver_policy": "all", "max_deliver": 9},
            }),
        )
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{answer}");
    assert_eq!(answer["config"]["max_deliver"], 9);

    let err = js
        .create_consumer_on_stream(consumer("other", 5), &name)
        .await
        .unwrap_err();
    assert_eq!(
        consumer_code(&err),
        Some(ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE),
        "{err}"
    );

    // A work queue also demands deliver-all (so that drift can never be a deliver policy).
    let mut new_only = consumer("new-only", 5);
    new_only.filter_subject = t.subject("wq.y");
    new_only.deliver_policy = DeliverPolicy::New;
    let err = js
        .create_consumer_on_stream(new_only, &name)
        .await
        .unwrap_err();
    assert_eq!(
        consumer_code(&err),
        Some(ErrorCode::CONSUMER_WQ_CONSUMER_NOT_DELIVER_ALL),
        "{err}"
    );
    t.teardown().await;
}

/// A server-side `backoff` replaces `ack_wait` with `backoff[0]` (30 s becomes 1 s),
/// and the Ruby gem's defaults (max_deliver 5, five backoff entries) are rejected with 10116. This
/// is why provisioning never sends `backoff`.
#[tokio::test]
async fn server_side_backoff_replaces_ack_wait_and_rejects_five_steps_with_max_deliver_5() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let stream = t.create_stream(t.stream_config("backoff")).await;
    let name = stream.cached_info().config.name.clone();
    let secs = |v: &[u64]| {
        v.iter()
            .map(|s| Duration::from_secs(*s))
            .collect::<Vec<_>>()
    };
    let config = |durable: &str, backoff: Vec<Duration>| pull::Config {
        durable_name: Some(durable.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        backoff,
        ..Default::default()
    };

    let c: PullConsumer = js
        .create_consumer_on_stream(config("short", secs(&[1, 5])), &name)
        .await
        .unwrap();
    assert_eq!(c.cached_info().config.ack_wait, Duration::from_secs(1));

    let err = js
        .create_consumer_on_stream(config("seed", secs(&[1, 5, 15, 30, 60])), &name)
        .await
        .unwrap_err();
    assert_eq!(
        consumer_code(&err),
        Some(ErrorCode::CONSUMER_MAX_DELIVER_BACKOFF),
        "{err}"
    );
    t.teardown().await;
}

/// The server deduplicates on the canonical `Nats-Msg-Id` header only (exact case): the Ruby
/// gem's lowercase `nats-msg-id` stores every publish. This is why publishers send
/// both spellings and readers look the id up case-insensitively.
#[tokio::test]
async fn only_the_canonical_msg_id_header_deduplicates() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let stream = t.create_stream(t.stream_config("dedupe")).await;
    let subject = t.subject("dedupe.event");

    let publish = |name: &'static str, id: &'static str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(name, id);
        let js = js.clone();
        let subject = subject.clone();
        async move {
            js.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };

    let first = publish("nats-msg-id", "evt-lowercase").await;
    let second = publish("nats-msg-id", "evt-lowercase").await;
    assert!(!first.duplicate && !second.duplicate);
    assert_ne!(
        first.sequence, second.sequence,
        "lowercase id was deduplicated"
    );

    let third = publish("Nats-Msg-Id", "evt-canonical").await;
    let fourth = publish("Nats-Msg-Id", "evt-canonical").await;
    assert!(!third.duplicate);
    assert!(fourth.duplicate, "canonical id was not deduplicated");
    assert_eq!(third.sequence, fourth.sequence);

    let mut stream = stream;
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
    t.teardown().await;
}

/// Deduplication is per stream: a copy of a message with the same `Nats-Msg-Id` (what the gem
/// publishes as a dead letter) is a duplicate in the original's stream (nothing stored) and
/// stored in any other stream. This is why DLQ subjects belong in a stream of their own.
#[tokio::test]
async fn a_copied_msg_id_is_a_duplicate_in_the_same_stream_only() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let mut main = t.stream_config("main");
    main.subjects.push(t.subject("main_dlq"));
    let mut main = t.create_stream(main).await;
    let dlq = t.stream_config("dlq");
    let dlq_name = dlq.name.clone();
    t.create_stream(dlq).await;
    let publish = |subject: String| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "e1");
            headers.insert("nats-msg-id", "e1");
            js.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert!(!publish(t.subject("main.event")).await.duplicate);
    let same_stream = publish(t.subject("main_dlq")).await;
    assert!(same_stream.duplicate);
    assert_eq!(main.info().await.unwrap().state.messages, 1);
    let other_stream = publish(t.subject("dlq.letter")).await;
    assert!(!other_stream.duplicate);
    assert_eq!(other_stream.stream, dlq_name);
    t.teardown().await;
}

/// `STREAM.INFO` with `subjects_filter` counts the stored messages per subject, and still does
/// once the subject is removed from the stream's configuration: moving a DLQ subject checks it
/// before and after the update.
#[tokio::test]
async fn subject_counts_survive_removing_the_subject() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let config = t.stream_config("counts");
    let name = config.name.clone();
    let dlq = t.subject("counts_dlq");
    let mut with_dlq = config.clone();
    with_dlq.subjects.push(dlq.clone());
    t.create_stream(with_dlq).await;
    js.publish(dlq.clone(), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let count = || async {
        let info: serde_json::Value = js
            .request(
                format!("STREAM.INFO.{name}"),
                &serde_json::json!({ "subjects_filter": dlq }),
            )
            .await
            .unwrap();
        info["state"]["subjects"][dlq.as_str()].as_u64()
    };
    assert_eq!(count().await, Some(1));
    js.update_stream(config).await.unwrap();
    assert_eq!(count().await, Some(1));
    t.teardown().await;
}
