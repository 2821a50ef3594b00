//! Several deploys provisioning at once.

use jetstream_bridge_config::SubjectLayout;
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{ensure_topology, DlqPlacement, TopologySpec};

use crate::{consumer_names, options, sorted, stream_subjects, Pair};

/// Eight deploys of the same app at once: one stream, one DLQ stream, one durable, no errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_deploys_of_one_app_agree() {
    let t = TestNats::shared().await;
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let spec = TopologySpec::from_config(&pair.a);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (js, spec) = (t.jetstream().clone(), spec.clone());
            tokio::spawn(async move { ensure_topology(&js, &spec, &options()).await })
        })
        .collect();
    for task in tasks {
        let report = task.await.unwrap().unwrap();
        assert!(report.rounds() <= 3, "{report}");
    }
    let js = t.jetstream();
    assert_eq!(stream_subjects(js, spec.stream_name()).await.len(), 2);
    assert_eq!(
        sorted(&stream_subjects(js, spec.dlq_stream_name()).await),
        sorted(&[spec.dlq_subject().unwrap(), spec.peer_dlq_subject().unwrap()])
    );
    assert_eq!(
        consumer_names(js, spec.stream_name()).await,
        [spec.durable_name().unwrap()]
    );
    assert!(ensure_topology(js, &spec, &options())
        .await
        .unwrap()
        .is_unchanged());
    t.teardown().await;
}

/// Both apps of a pair deploying four times each at once, the gem's way (DLQ subjects in the
/// main stream): creates race (10058) and subject updates race (a lost update is re-applied),
/// and the stream ends with all four subjects and both durables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_apps_deploying_at_once_end_with_all_subjects() {
    let t = TestNats::shared().await;
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let specs = [&pair.a, &pair.b]
        .map(|c| TopologySpec::from_config(c).with_dlq_placement(DlqPlacement::MainStream));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (js, spec) = (t.jetstream().clone(), specs[i % 2].clone());
            tokio::spawn(async move { ensure_topology(&js, &spec, &options()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let js = t.jetstream();
    let (a, b) = (pair.a.subjects(), pair.b.subjects());
    assert_eq!(
        sorted(&stream_subjects(js, a.stream_name().as_str()).await),
        sorted(&[
            a.source().as_str(),
            b.source().as_str(),
            a.dlq().as_str(),
            b.dlq().as_str()
        ])
    );
    assert_eq!(
        consumer_names(js, a.stream_name().as_str()).await,
        sorted(&[a.durable_name().as_str(), b.durable_name().as_str()])
    );
    t.teardown().await;
}
