//! A Rust service (app `a`) whose events a Ruby service (app `b`, jetstream_bridge gem 7.x)
//! consumes. The gem is emulated where it touches the server: its provisioning (add the
//! subjects no other stream holds to the work-queue stream), its durable, and its dead-letter
//! publish (the original's headers copied verbatim, then `x-dead-letter`, `x-dlq-reason`,
//! `x-deliveries`, `x-dlq-context`, the body unchanged).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{SubjectLayout, MSG_ID_HEADER, RUBY_MSG_ID_HEADER};
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{
    check, ensure_topology, plan, PlannedAction, Problem, TopologyErrorKind, TopologySpec, Warning,
};
use serde_json::{json, Value};

use crate::{options, sorted, stream_info, stream_subjects, Pair};

/// The gem's provisioning: its three subjects (source, destination, own DLQ), minus those
/// another stream holds (its overlap guard skips them), added to the work-queue stream or
/// created with it.
async fn gem_provision(t: &TestNats, stream: &str, desired: &[&str]) {
    let js = t.jetstream();
    let list: Value = js
        .request("STREAM.LIST".to_owned(), &json!({}))
        .await
        .unwrap();
    let mut existing: Option<Value> = None;
    let mut others: Vec<String> = Vec::new();
    for info in list["streams"].as_array().unwrap() {
        let subjects: Vec<String> =
            serde_json::from_value(info["config"]["subjects"].clone()).unwrap_or_default();
        if info["config"]["name"] == stream {
            existing = Some(info["config"].clone());
        } else {
            others.extend(subjects);
        }
    }
    let allowed: Vec<&str> = desired
        .iter()
        .copied()
        .filter(|d| {
            !others
                .iter()
                .any(|o| jetstream_bridge_config::subjects_overlap(o, d))
        })
        .collect();
    let answer: Value = match existing {
        None => {
            t.track_stream(stream);
            js.request(
                format!("STREAM.CREATE.{stream}"),
                &json!({"name": stream, "subjects": allowed, "retention": "workqueue", "storage": "file"}),
            )
            .await
            .unwrap()
        }
        Some(mut config) => {
            let mut subjects: Vec<String> =
                serde_json::from_value(config["subjects"].clone()).unwrap();
            for s in allowed {
                if !subjects.iter().any(|x| x == s) {
                    subjects.push(s.to_owned());
                }
            }
            config["subjects"] = json!(subjects);
            js.request(format!("STREAM.UPDATE.{stream}"), &config)
                .await
                .unwrap()
        }
    };
    assert!(answer.get("error").is_none(), "{answer}");
}

/// The gem's durable for app `b`: pull, filter = `a`'s source subject.
async fn gem_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    filter: &str,
) -> PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::Explicit,
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// What the bridge's publishers send: the canonical `Nats-Msg-Id` and the gem's lowercase
/// `nats-msg-id`, both the event id.
async fn publish_event(js: &jetstream::Context, subject: &str, event_id: &str) {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, event_id);
    headers.insert(RUBY_MSG_ID_HEADER, event_id);
    let body = json!({"event_id": event_id, "schema_version": 1, "event_type": "order.created"});
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
}

/// The gem's consumer gives up on the next message: it publishes the dead letter and, when
/// that publish succeeded, acks the original. Returns the dead letter's PubAck.
async fn gem_dead_letters_next(
    consumer: &PullConsumer,
    js: &jetstream::Context,
    dlq_subject: &str,
) -> async_nats::jetstream::publish::PublishAck {
    let message = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap()
        .next()
        .await
        .expect("a message")
        .unwrap();
    let info = message.info().unwrap();
    let mut headers = HeaderMap::new();
    for (name, values) in message.headers.as_ref().unwrap().iter() {
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert("x-dead-letter", "true");
    headers.insert("x-dlq-reason", "max_deliver_exceeded");
    headers.insert("x-deliveries", info.delivered.to_string().as_str());
    let context = json!({
        "event_id": message.headers.as_ref().unwrap().get(RUBY_MSG_ID_HEADER).unwrap().as_str(),
        "reason": "max_deliver_exceeded",
        "error_class": "RuntimeError",
        "error_message": "boom",
        "deliveries": info.delivered,
        "original_subject": message.subject.as_str(),
        "sequence": {"stream": info.stream_sequence, "consumer": info.consumer_sequence},
        "consumer": info.consumer,
        "stream": info.stream,
        "published_at": "2026-01-01T00:00:00Z",
    });
    headers.insert("x-dlq-context", context.to_string().as_str());
    let ack = js
        .publish_with_headers(dlq_subject.to_owned(), headers, message.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    message.ack_with(AckKind::Ack).await.unwrap();
    ack
}

/// Messages a stream stores on `subject`.
async fn stored_on(js: &jetstream::Context, stream: &str, subject: &str) -> u64 {
    let info: Value = js
        .request(
            format!("STREAM.INFO.{stream}"),
            &json!({ "subjects_filter": subject }),
        )
        .await
        .unwrap();
    info["state"]["subjects"][subject].as_u64().unwrap_or(0)
}

/// Our layout first: the Rust side claims the Ruby peer's DLQ subject in the DLQ stream, the
/// gem's provisioning leaves it there, and the gem's dead letter (carrying the original's
/// `Nats-Msg-Id`) is stored.
#[tokio::test]
async fn in_our_layout_a_ruby_consumers_dead_letters_are_stored() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    let spec = TopologySpec::from_config(&pair.a);
    let report = ensure_topology(js, &spec, &options()).await.unwrap();
    assert!(report.warnings().is_empty(), "{report}");
    assert_eq!(
        stream_subjects(js, spec.dlq_stream_name()).await,
        [a.dlq().as_str(), b.dlq().as_str()]
    );

    let stream = a.stream_name().as_str();
    gem_provision(
        &t,
        stream,
        &[
            b.source().as_str(),
            b.destination().as_str(),
            b.dlq().as_str(),
        ],
    )
    .await;
    assert_eq!(
        sorted(&stream_subjects(js, stream).await),
        sorted(&[a.source().as_str(), b.source().as_str()]),
        "the gem leaves its DLQ subject in the DLQ stream"
    );
    let ruby = gem_consumer(js, stream, b.durable_name().as_str(), a.source().as_str()).await;

    publish_event(js, a.source().as_str(), "e1").await;
    let dead = gem_dead_letters_next(&ruby, js, b.dlq().as_str()).await;
    assert_eq!(dead.stream, spec.dlq_stream_name());
    assert!(!dead.duplicate);
    let stored: Value = js
        .request(
            format!("STREAM.MSG.GET.{}", spec.dlq_stream_name()),
            &json!({ "last_by_subj": b.dlq().as_str() }),
        )
        .await
        .unwrap();
    assert_eq!(stored["message"]["seq"], dead.sequence, "{stored}");
    assert_eq!(
        stored_on(js, stream, a.source().as_str()).await,
        0,
        "the original was acked"
    );
    let check = check(js, &spec, &options()).await.unwrap();
    assert!(check.warnings.is_empty(), "{check}");
    t.teardown().await;
}

/// The gem's layout first (its DLQ subject in the work-queue stream): the dead letter of an
/// event published with `Nats-Msg-Id` is dropped as a duplicate while the original is acked,
/// and provisioning and the check say so. Moving the (empty) DLQ subject to the DLQ stream
/// fixes it, and the gem's next provisioning leaves it there.
#[tokio::test]
async fn in_the_gems_layout_dead_letters_are_dropped_until_the_subject_moves() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    let stream = a.stream_name().as_str();
    let gem_subjects = [
        b.source().as_str(),
        b.destination().as_str(),
        b.dlq().as_str(),
    ];
    gem_provision(&t, stream, &gem_subjects).await;
    let ruby = gem_consumer(js, stream, b.durable_name().as_str(), a.source().as_str()).await;

    let spec = TopologySpec::from_config(&pair.a);
    let report = ensure_topology(js, &spec, &options()).await.unwrap();
    let expected = Warning::DeadLettersDropped {
        stream: stream.to_owned(),
        source_subject: a.source().to_string(),
        dlq_subject: b.dlq().to_string(),
        stream_subject: b.dlq().to_string(),
        dlq_stream: Some(spec.dlq_stream_name().to_owned()),
    };
    assert_eq!(
        report.warnings(),
        std::slice::from_ref(&expected),
        "{report}"
    );
    assert!(report.to_string().contains("warning: stream"), "{report}");
    let found = check(js, &spec, &options()).await.unwrap();
    assert_eq!(found.warnings, [expected]);
    assert!(found.ok, "a warning alone does not fail the check: {found}");
    let json = serde_json::to_value(&found).unwrap();
    assert_eq!(json["warnings"][0]["kind"], "dead_letters_dropped");
    assert_eq!(json["warnings"][0]["dlq_subject"], b.dlq().as_str());

    // The drop: the server answers `duplicate`, stores nothing, and the gem acks the original.
    publish_event(js, a.source().as_str(), "e1").await;
    let dead = gem_dead_letters_next(&ruby, js, b.dlq().as_str()).await;
    assert!(dead.duplicate, "{dead:?}");
    assert_eq!(stored_on(js, stream, b.dlq().as_str()).await, 0);
    assert_eq!(stored_on(js, stream, a.source().as_str()).await, 0);
    let dlq_stream = stream_info(js, spec.dlq_stream_name()).await.unwrap();
    assert_eq!(dlq_stream["state"]["messages"], 0, "the event is gone");

    // The fix: move the empty DLQ subject.
    let moving = options().move_dlq_subjects(true);
    let planned = plan(js, &spec, &moving).await.unwrap();
    assert!(planned.warnings().is_empty(), "{planned}");
    let report = ensure_topology(js, &spec, &moving).await.unwrap();
    assert!(
        report.applied().iter().any(|a| matches!(a,
            PlannedAction::MoveDlqSubject { subject, .. } if subject == b.dlq().as_str())),
        "{report}"
    );
    assert!(report.warnings().is_empty(), "{report}");
    assert_eq!(
        sorted(&stream_subjects(js, spec.dlq_stream_name()).await),
        sorted(&[a.dlq().as_str(), b.dlq().as_str()])
    );
    publish_event(js, a.source().as_str(), "e2").await;
    let dead = gem_dead_letters_next(&ruby, js, b.dlq().as_str()).await;
    assert!(!dead.duplicate);
    assert_eq!(dead.stream, spec.dlq_stream_name());

    // The gem provisions again (a restart): its DLQ subject stays where it is.
    gem_provision(&t, stream, &gem_subjects).await;
    assert!(!stream_subjects(js, stream)
        .await
        .contains(&b.dlq().to_string()));
    assert!(check(js, &spec, &options())
        .await
        .unwrap()
        .warnings
        .is_empty());
    t.teardown().await;
}

/// A DLQ subject with dead letters stored in the work-queue stream is not moved (that would
/// strand them): the plan reports how many, and nothing changes. This service's own DLQ
/// subject, left in the work-queue stream by an earlier `main-stream` deploy, moves the same
/// way once it is empty.
#[tokio::test]
async fn dlq_subjects_with_stored_dead_letters_stay_and_empty_ones_move() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    let stream = a.stream_name().as_str();
    gem_provision(
        &t,
        stream,
        &[
            b.source().as_str(),
            b.destination().as_str(),
            b.dlq().as_str(),
        ],
    )
    .await;
    gem_provision(
        &t,
        stream,
        &[
            a.source().as_str(),
            a.destination().as_str(),
            a.dlq().as_str(),
        ],
    )
    .await;
    // A dead letter the gem stored there (its own lowercase header only).
    let mut headers = HeaderMap::new();
    headers.insert(RUBY_MSG_ID_HEADER, "e0");
    js.publish_with_headers(b.dlq().to_string(), headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let spec = TopologySpec::from_config(&pair.a);
    // Without moving: our own DLQ subject in the main stream is a placement problem.
    let err = ensure_topology(js, &spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::DlqPlacement, "{err}");

    let moving = options().move_dlq_subjects(true);
    let planned = plan(js, &spec, &moving).await.unwrap();
    assert_eq!(
        planned.problems(),
        [Problem::DlqNotEmpty {
            subject: b.dlq().to_string(),
            stream: stream.to_owned(),
            messages: 1,
        }],
        "{planned}"
    );
    assert!(planned.actions().iter().any(|a| matches!(a,
        PlannedAction::MoveDlqSubject { subject, .. } if subject == pair.a.subjects().dlq().as_str())));
    let err = ensure_topology(js, &spec, &moving).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::DlqPlacement, "{err}");
    assert!(
        err.to_string().contains("1 dead letter is stored there"),
        "{err}"
    );
    assert!(stream_subjects(js, stream)
        .await
        .contains(&b.dlq().to_string()));

    // Once the dead letters are purged, both move.
    let purged: Value = js
        .request(
            format!("STREAM.PURGE.{stream}"),
            &json!({ "filter": b.dlq().as_str() }),
        )
        .await
        .unwrap();
    assert_eq!(purged["purged"], 1, "{purged}");
    ensure_topology(js, &spec, &moving).await.unwrap();
    assert_eq!(
        sorted(&stream_subjects(js, stream).await),
        sorted(&[a.source().as_str(), b.source().as_str()])
    );
    assert_eq!(
        sorted(&stream_subjects(js, spec.dlq_stream_name()).await),
        sorted(&[a.dlq().as_str(), b.dlq().as_str()])
    );
    t.teardown().await;
}
