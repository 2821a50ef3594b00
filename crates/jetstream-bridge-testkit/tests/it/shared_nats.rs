use std::time::Duration;

use jetstream_bridge_testkit::async_nats::jetstream::stream::{Config, StorageType};
use jetstream_bridge_testkit::{eventually, TestNats, TEST_STREAM_MAX_AGE};

/// Names and subject prefixes are unique per call and valid as stream names and tokens.
#[tokio::test(flavor = "multi_thread")]
async fn names_are_unique_and_valid() {
    let a = TestNats::shared().await;
    let b = TestNats::shared().await;
    let (n1, n2) = (a.name("orders"), a.name("orders"));
    assert_ne!(n1, n2);
    for name in [&n1, &n2] {
        assert!(name.starts_with("orders_"), "{name}");
        assert!(
            name.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{name}"
        );
    }
    assert_ne!(a.subject_prefix(), b.subject_prefix());
    assert!(!a.subject_prefix().contains('.'));
    assert_eq!(
        a.subject("orders.created"),
        format!("{}.orders.created", a.subject_prefix())
    );
    a.teardown().await;
    b.teardown().await;
}

/// A stream made through `TestNats` is in memory with a `max_age`, takes messages on the
/// prefixed subjects, and is gone after `teardown`.
#[tokio::test(flavor = "multi_thread")]
async fn teardown_deletes_created_streams() {
    let t = TestNats::shared().await;
    let observer = TestNats::shared().await;
    let mut stream = t.create_stream(t.stream_config("orders")).await;
    let name = stream.cached_info().config.name.clone();
    assert_eq!(stream.cached_info().config.storage, StorageType::Memory);
    assert_eq!(stream.cached_info().config.max_age, TEST_STREAM_MAX_AGE);

    let ack = t
        .jetstream()
        .publish(t.subject("orders.created"), "hello".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, name);
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    assert!(observer.stream_exists(&name).await);

    t.teardown().await;
    assert!(!observer.stream_exists(&name).await);
    observer.teardown().await;
}

/// A stream created by other code and registered with `track_stream` is deleted too, and a
/// zero `max_age` gets the test default.
#[tokio::test(flavor = "multi_thread")]
async fn tracked_streams_are_deleted() {
    let t = TestNats::shared().await;
    let name = t.name("external");
    t.jetstream()
        .create_stream(Config {
            name: name.clone(),
            subjects: vec![t.subject("external.>")],
            storage: StorageType::Memory,
            ..Config::default()
        })
        .await
        .unwrap();
    t.track_stream(&name);
    let defaulted = t
        .create_stream(Config {
            name: t.name("defaults"),
            subjects: vec![t.subject("defaults")],
            storage: StorageType::Memory,
            ..Config::default()
        })
        .await;
    assert_eq!(defaulted.cached_info().config.max_age, TEST_STREAM_MAX_AGE);
    let defaulted = defaulted.cached_info().config.name.clone();

    let observer = TestNats::shared().await;
    t.teardown().await;
    assert!(!observer.stream_exists(&name).await);
    assert!(!observer.stream_exists(&defaulted).await);
    observer.teardown().await;
}

/// Dropping a `TestNats` without `teardown` (as a panicking test does) still deletes its
/// streams, from a background thread.
#[tokio::test(flavor = "multi_thread")]
async fn drop_cleans_up_in_the_background() {
    let t = TestNats::shared().await;
    let stream = t.create_stream(t.stream_config("dropped")).await;
    let name = stream.cached_info().config.name.clone();
    let observer = TestNats::shared().await;
    assert!(observer.stream_exists(&name).await);
    drop(t);

    // No event tells us when the detached cleanup thread is done.
    eventually(Duration::from_secs(10), || async {
        !observer.stream_exists(&name).await
    })
    .await;
    observer.teardown().await;
}
