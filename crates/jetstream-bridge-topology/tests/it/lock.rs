//! The stream lock, driven by hand through its wire protocol (a key-value entry per stream,
//! created with `Nats-Expected-Last-Subject-Sequence`), as another deploy would hold it.

use std::time::Duration;

use async_nats::HeaderMap;
use jetstream_bridge_config::SubjectLayout;
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{ensure_topology, DlqPlacement, TopologyErrorKind, TopologySpec};
use serde_json::{json, Value};

use crate::{create_work_queue, options, stream_info, stream_subjects, Pair};

/// Creates a key-value bucket the way `nats kv add <bucket> --history 1 --ttl <ttl>` does,
/// tracked for teardown.
async fn create_bucket(t: &TestNats, bucket: &str, ttl: Duration) {
    let name = format!("KV_{bucket}");
    t.track_stream(name.clone());
    let answer: Value = t
        .jetstream()
        .request(
            format!("STREAM.CREATE.{name}"),
            &json!({
                "name": name,
                "subjects": [format!("$KV.{bucket}.>")],
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": true,
                "deny_delete": true,
                "allow_direct": true,
                "storage": "file",
                "max_age": u64::try_from(ttl.as_nanos()).unwrap(),
                "duplicate_window": u64::try_from(ttl.min(Duration::from_secs(120)).as_nanos()).unwrap(),
            }),
        )
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{answer}");
}

fn lock_subject(bucket: &str, stream: &str) -> String {
    format!("$KV.{bucket}.stream.{stream}")
}

/// Publishes to a lock key with an expected last sequence; returns the PubAck (or error) JSON.
async fn publish_lock(
    t: &TestNats,
    subject: &str,
    expected: u64,
    operation: Option<&str>,
) -> Value {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    let payload = match operation {
        Some(op) => {
            headers.insert("KV-Operation", op);
            ""
        }
        None => r#"{"owner":"a slow deploy"}"#,
    };
    let reply = t
        .client()
        .request_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Takes the lock as another deploy would; returns the entry's sequence.
async fn take_lock(t: &TestNats, subject: &str) -> u64 {
    let ack = publish_lock(t, subject, 0, None).await;
    ack["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("lock not taken: {ack}"))
}

/// A deploy of app B holds the lock while it reads the stream and, slowly, writes its subjects
/// back. App A's deploy, started meanwhile, must wait for the lock instead of writing between
/// B's read and B's write (which B's write would then undo), and reads B's result afterwards.
/// Fails without the lock (`stream_lock(false)`): A finishes at once and loses its subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_for_the_lock_and_then_keeps_the_holders_write() {
    let t = TestNats::shared().await;
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    let stream = a.stream_name().as_str().to_owned();
    let admin = t.subject("admin");
    create_work_queue(&t, &stream, &[&admin]).await;
    let bucket = t.name("locks");
    create_bucket(&t, &bucket, Duration::from_secs(30)).await;
    let subject = lock_subject(&bucket, &stream);

    // B: lock, read.
    let seq = take_lock(&t, &subject).await;
    let read = stream_info(t.jetstream(), &stream).await.unwrap();

    // A starts and must wait.
    let spec = TopologySpec::from_config(&pair.a).with_dlq_placement(DlqPlacement::MainStream);
    let (js, opts) = (
        t.jetstream().clone(),
        options().lock_bucket(bucket.as_str()),
    );
    let mut deploy_a = tokio::spawn(async move { ensure_topology(&js, &spec, &opts).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut deploy_a)
            .await
            .is_err(),
        "A must wait while B holds the stream lock"
    );

    // B: write what it read plus its own subjects, then release.
    let mut config = read["config"].clone();
    config["subjects"] = json!([
        admin,
        b.source().as_str(),
        a.source().as_str(),
        b.dlq().as_str()
    ]);
    let answer: Value = t
        .jetstream()
        .request(format!("STREAM.UPDATE.{stream}"), &config)
        .await
        .unwrap();
    assert!(answer.get("error").is_none(), "{answer}");
    let released = publish_lock(&t, &subject, seq, Some("DEL")).await;
    assert!(released.get("error").is_none(), "{released}");

    let report = deploy_a.await.unwrap().unwrap();
    assert!(!report.is_unchanged(), "{report}");
    let subjects = stream_subjects(t.jetstream(), &stream).await;
    for wanted in [
        admin.as_str(),
        a.source().as_str(),
        b.source().as_str(),
        a.dlq().as_str(),
        b.dlq().as_str(),
    ] {
        assert!(
            subjects.iter().any(|s| s == wanted),
            "`{wanted}` lost: {subjects:?}"
        );
    }
    // A released its lease: the key's last entry is a delete marker (no data).
    let last: Value = t
        .jetstream()
        .request(
            format!("STREAM.MSG.GET.KV_{bucket}"),
            &json!({ "last_by_subj": subject }),
        )
        .await
        .unwrap();
    assert!(last["message"]["seq"].as_u64().unwrap() > seq, "{last}");
    assert!(last["message"].get("data").is_none(), "{last}");
    t.teardown().await;
}

/// A lock held longer than the lock wait fails the deploy with `Conflict` naming the stream,
/// the bucket and how to remove a stale lock, and changes nothing; the lock of a deploy that
/// never releases it (crashed) expires with the bucket's `max_age`, and the next deploy goes
/// ahead.
#[tokio::test]
async fn a_held_lock_times_out_and_a_crashed_holders_lock_expires() {
    let t = TestNats::shared().await;
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let a = pair.a.subjects();
    let stream = a.stream_name().as_str().to_owned();
    let admin = t.subject("admin");
    create_work_queue(&t, &stream, &[&admin]).await;
    let bucket = t.name("locks");
    create_bucket(&t, &bucket, Duration::from_secs(2)).await;
    take_lock(&t, &lock_subject(&bucket, &stream)).await;

    let spec = TopologySpec::from_config(&pair.a).with_dlq_placement(DlqPlacement::MainStream);
    let opts = options().lock_bucket(bucket.as_str());
    let err = ensure_topology(
        t.jetstream(),
        &spec,
        &opts.clone().lock_wait(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Conflict, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("stream `{stream}` is locked")),
        "{message}"
    );
    assert!(
        message.contains(&format!("nats kv del {bucket} stream.{stream}")),
        "{message}"
    );
    assert_eq!(
        stream_subjects(t.jetstream(), &stream).await,
        [admin.as_str()]
    );

    // Nobody releases it; it expires after 2 s.
    ensure_topology(
        t.jetstream(),
        &spec,
        &opts.lock_wait(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    assert_eq!(stream_subjects(t.jetstream(), &stream).await.len(), 4);
    t.teardown().await;
}

/// The first deploy creates the lock bucket itself (a key-value bucket with history 1 and the
/// lock TTL as `max_age`), and later deploys reuse it.
#[tokio::test]
async fn the_lock_bucket_is_created_on_first_use() {
    let t = TestNats::shared().await;
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let stream = pair.a.stream_name().as_str().to_owned();
    create_work_queue(&t, &stream, &[&t.subject("admin")]).await;
    let bucket = t.name("locks");
    t.track_stream(format!("KV_{bucket}"));
    let opts = options()
        .lock_bucket(bucket.as_str())
        .lock_ttl(Duration::from_secs(7));
    for config in [&pair.a, &pair.b] {
        ensure_topology(t.jetstream(), &TopologySpec::from_config(config), &opts)
            .await
            .unwrap();
    }
    let info = stream_info(t.jetstream(), &format!("KV_{bucket}"))
        .await
        .unwrap();
    assert_eq!(info["config"]["max_age"], 7_000_000_000u64);
    assert_eq!(info["config"]["max_msgs_per_subject"], 1);
    assert_eq!(
        info["config"]["subjects"],
        json!([format!("$KV.{bucket}.>")])
    );
    t.teardown().await;
}
