//! The config crate's public API as a downstream crate uses it: build, inspect, fail, redact.

use std::time::Duration;

use jetstream_bridge_config::{
    parse_duration, redact_url, subject_matches, subjects_overlap, Config, ConfigBuilder,
    ConfigError, ConfigProblem, DurationError, NatsUrls, Preset, Subject, SubjectLayout,
    SubjectToken, Subjects,
};

/// The style guide's example compiles and yields the documented subjects.
#[test]
fn style_guide_example() -> Result<(), ConfigError> {
    let config = Config::builder("production", "orders", "billing")
        .nats_urls("nats://n1:4222,nats://n2:4222")
        .batch_size(50)
        .max_deliver(10)
        .ack_wait("60s")
        .backoff(["2s", "10s", "30s"])
        .build()?;
    assert_eq!(
        config.subjects().source().as_str(),
        "production.orders.sync.billing"
    );
    assert_eq!(config.nats_urls().len(), 2);
    assert_eq!(config.batch_size(), 50);
    assert_eq!(config.max_deliver(), 10);
    assert_eq!(config.ack_wait(), Duration::from_secs(60));
    Ok(())
}

/// Both layouts give exactly the documented names for env production, app orders, dest billing.
#[test]
fn spec_layout_examples() {
    let cases = [
        (
            SubjectLayout::EnvPrefixed,
            "production",
            [
                "production.orders.sync.billing",
                "production.billing.sync.orders",
                "production.orders.sync.dlq",
                "production-jetstream-bridge-stream",
                "production-orders-workers",
                "production.billing.sync.orders.worker",
            ],
        ),
        (
            SubjectLayout::EnvLess,
            "",
            [
                "orders.sync.billing",
                "billing.sync.orders",
                "orders.sync.dlq",
                "jetstream-bridge-stream",
                "orders-workers",
                "billing.sync.orders.worker",
            ],
        ),
    ];
    for (layout, env, expected) in cases {
        let c = Config::builder(env, "orders", "billing")
            .layout(layout)
            .build()
            .unwrap();
        let s = c.subjects();
        assert_eq!(
            [
                s.source().as_str(),
                s.destination().as_str(),
                s.dlq().as_str(),
                s.stream_name().as_str(),
                s.durable_name().as_str(),
                s.delivery_subject().as_str(),
            ],
            expected,
            "{layout}"
        );
    }
}

/// A Rust service and its Ruby peer agree: my source is the peer's destination and vice versa.
#[test]
fn peers_mirror_each_other() {
    let me = Subjects::builder("production", "orders", "billing")
        .build()
        .unwrap();
    let peer = Subjects::builder("production", "billing", "orders")
        .build()
        .unwrap();
    assert_eq!(me.source(), peer.destination());
    assert_eq!(me.destination(), peer.source());
    assert_eq!(me.peer_dlq(), peer.dlq());
    assert_eq!(me.stream_name(), peer.stream_name());
    // The four subjects of the shared stream never overlap each other.
    let all: Vec<Subject> = me
        .all_stream_subjects(true)
        .into_iter()
        .chain(std::iter::once(me.peer_dlq().clone()))
        .collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(!subjects_overlap(a.as_str(), b.as_str()), "{a} / {b}");
        }
    }
    assert!(subject_matches("production.*.sync.>", me.source().as_str()));
}

/// Bad input everywhere yields one error listing every problem, without secrets.
#[test]
fn one_error_lists_everything_without_secrets() {
    let err = Config::builder("prod env", "orders", "bill*ing")
        .nats_urls("nats://admin:s3cr3t-pw@nats:99999")
        .ack_wait("30")
        .backoff(["1s", "-2s"])
        .stream_replicas(0)
        .nkey_seed("s3cr3t-pw")
        .database_url("postgres://app:s3cr3t-pw@db/app")
        .build()
        .unwrap_err();
    assert_eq!(err.problems().len(), 7, "{err}");
    assert!(err.problems().contains(&ConfigProblem::InvalidDuration {
        field: "ack_wait",
        value: "30".into(),
        reason: DurationError::MissingUnit,
    }));
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("nats://admin:***@nats:99999"), "{shown}");
}

/// The environment path and the builder path agree.
#[test]
fn env_and_builder_agree() {
    let from_env = ConfigBuilder::from_env_pairs([
        ("NATS_URLS", "nats://n1:4222"),
        ("NATS_ENV", "production"),
        ("APP_NAME", "orders"),
        ("DESTINATION_APP", "billing"),
        ("JETSTREAM_PRESET", "maximum_reliability"),
        ("JETSTREAM_ACK_WAIT", "90s"),
    ])
    .build()
    .unwrap();
    let built = Config::builder("production", "orders", "billing")
        .nats_urls("nats://n1:4222")
        .preset(Preset::MaximumReliability)
        .ack_wait(Duration::from_secs(90))
        .build()
        .unwrap();
    assert_eq!(from_env, built);
}

/// Free helpers work on their own.
#[test]
fn helpers() {
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(
        redact_url("nats://user:pass@host:4222"),
        "nats://user:***@host:4222"
    );
    assert!(NatsUrls::parse("nats://a,tls://b").unwrap().any_tls());
    assert!(SubjectToken::new("orders").is_ok());
}
