//! Integration tests of topology provisioning against real NATS: the shared server
//! (`bash .ci/services.sh`, isolated by unique names) and private `nats-server` processes with
//! users and permissions.

// clippy.toml's allow-unwrap-in-tests covers `#[test]` fns only, not the helpers beside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod check;
mod concurrency;
mod connect;
mod consumer;
mod lock;
mod mixed_fleet;
mod overlap;
mod permissions;
mod provision;
mod server_facts;

use std::time::Duration;

use async_nats::jetstream;
use jetstream_bridge_config::{Config, SubjectLayout};
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::EnsureOptions;
use serde_json::Value;

/// Both sides of an app pair sharing one stream, with unique names on the shared server.
pub(crate) struct Pair {
    /// The first app (`a_<token>`) talking to `b`.
    pub(crate) a: Config,
    /// The second app (`b_<token>`) talking to `a`.
    pub(crate) b: Config,
}

impl Pair {
    /// A fresh pair with unique env (env-prefixed) or app tokens and a unique stream name whose
    /// main and DLQ streams `t` deletes at teardown.
    pub(crate) fn new(t: &TestNats, layout: SubjectLayout) -> Self {
        let env = match layout {
            SubjectLayout::EnvLess => String::new(),
            _ => t.name("env"),
        };
        let (a, b) = (t.name("a"), t.name("b"));
        let stream = t.name("stream");
        t.track_stream(stream.clone());
        t.track_stream(format!("{stream}-dlq"));
        let config = |app: &str, dest: &str| {
            Config::builder(env.as_str(), app, dest)
                .layout(layout)
                .nats_urls(t.url())
                .stream_name(stream.as_str())
                .build()
                .unwrap()
        };
        Self {
            a: config(&a, &b),
            b: config(&b, &a),
        }
    }
}

/// Options for the tests: a short request timeout.
pub(crate) fn options() -> EnsureOptions {
    EnsureOptions::new().request_timeout(Duration::from_secs(5))
}

/// The raw `$JS.API.STREAM.INFO` answer (`None`: no such stream).
pub(crate) async fn stream_info(js: &jetstream::Context, name: &str) -> Option<Value> {
    let answer: Value = js
        .request(format!("STREAM.INFO.{name}"), &serde_json::json!({}))
        .await
        .unwrap();
    match answer.get("error") {
        Some(e) if e["err_code"] == 10059 => None,
        Some(e) => panic!("STREAM.INFO {name}: {e}"),
        None => Some(answer),
    }
}

/// A stream's subjects, in the server's order.
pub(crate) async fn stream_subjects(js: &jetstream::Context, name: &str) -> Vec<String> {
    let info = stream_info(js, name).await.expect("stream exists");
    serde_json::from_value(info["config"]["subjects"].clone()).unwrap()
}

/// The raw consumer info (`None`: no such consumer).
pub(crate) async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Option<Value> {
    let answer: Value = js
        .request(
            format!("CONSUMER.INFO.{stream}.{durable}"),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    match answer.get("error") {
        Some(e) if e["err_code"] == 10014 => None,
        Some(e) => panic!("CONSUMER.INFO {stream}.{durable}: {e}"),
        None => Some(answer),
    }
}

/// The names of a stream's consumers.
pub(crate) async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let answer: Value = js
        .request(format!("CONSUMER.NAMES.{stream}"), &serde_json::json!({}))
        .await
        .unwrap();
    let mut names: Vec<String> =
        serde_json::from_value(answer["consumers"].clone()).unwrap_or_default();
    names.sort();
    names
}

/// Creates a work-queue stream with file storage, as an admin would, and tracks it.
pub(crate) async fn create_work_queue(t: &TestNats, name: &str, subjects: &[&str]) {
    t.track_stream(name);
    let answer: Value = t
        .jetstream()
        .request(
            format!("STREAM.CREATE.{name}"),
            &serde_json::json!({
                "name": name,
                "subjects": subjects,
                "retention": "workqueue",
                "storage": "file",
            }),
        )
        .await
        .unwrap();
    assert!(
        answer.get("error").is_none(),
        "STREAM.CREATE {name}: {answer}"
    );
}

/// Sorted copies, for comparing subject sets.
pub(crate) fn sorted<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.as_ref().to_owned()).collect();
    v.sort();
    v
}
