//! Several deploys provisioning at once.

use std::sync::Arc;

use jetstream_bridge_config::SubjectLayout;
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{ensure_topology, DlqPlacement, TopologySpec};
use tokio::sync::Barrier;

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
        sorted(&[
            spec.dlq_subject().unwrap(),
            spec.peer_dlq_subject().unwrap()
        ])
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

/// Both apps of a pair deploying at the same moment, 20 times over (fresh names each round),
/// in both DLQ placements. Half the rounds start from a stream an admin made, so both deploys
/// go straight to reading and rewriting the same stream's subjects: without the stream lock,
/// one app's subjects can be lost although both deploys succeed. Every round must end with the
/// pair's four subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apps_deploying_at_the_same_moment_never_lose_a_subject() {
    let t = TestNats::shared().await;
    for round in 0..20 {
        let placement = if round % 4 < 2 {
            DlqPlacement::MainStream
        } else {
            DlqPlacement::SeparateStream
        };
        let pair = Pair::new(&t, SubjectLayout::EnvLess);
        let (a, b) = (pair.a.subjects(), pair.b.subjects());
        if round % 2 == 1 {
            let admin_subject = t.subject(&format!("admin{round}"));
            crate::create_work_queue(&t, a.stream_name().as_str(), &[&admin_subject]).await;
        }
        let specs =
            [&pair.a, &pair.b].map(|c| TopologySpec::from_config(c).with_dlq_placement(placement));
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = specs
            .iter()
            .map(|spec| {
                let (js, spec, barrier) = (t.jetstream().clone(), spec.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    ensure_topology(&js, &spec, &options()).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let js = t.jetstream();
        let mut subjects = stream_subjects(js, a.stream_name().as_str()).await;
        if placement == DlqPlacement::SeparateStream {
            subjects.extend(stream_subjects(js, specs[0].dlq_stream_name()).await);
        }
        for wanted in [a.source(), b.source(), a.dlq(), b.dlq()] {
            assert!(
                subjects.iter().any(|s| s == wanted.as_str()),
                "round {round} ({placement}): `{wanted}` lost, streams hold {subjects:?}"
            );
        }
    }
    t.teardown().await;
}
