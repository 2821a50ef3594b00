//! The overlap guard and DLQ placement detection.

use jetstream_bridge_config::SubjectLayout;
use jetstream_bridge_testkit::TestNats;
use jetstream_bridge_topology::{
    ensure_topology, plan, DlqPlacement, Problem, TopologyErrorKind, TopologySpec,
};

use crate::{options, stream_info, stream_subjects, Pair};

/// A foreign stream capturing `{env}.{app}.sync.>` blocks provisioning with a typed error that
/// names it and every conflicting pair; nothing is created.
#[tokio::test]
async fn overlap_with_a_foreign_stream_is_a_typed_error_and_creates_nothing() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvPrefixed);
    let s = pair.a.subjects();
    let foreign_subject = format!("{}.{}.sync.>", pair.a.env().unwrap(), pair.a.app_name());
    let mut foreign = t.stream_config("foreign");
    foreign.subjects = vec![foreign_subject.clone()];
    let foreign = t
        .create_stream(foreign)
        .await
        .cached_info()
        .config
        .name
        .clone();

    let spec = TopologySpec::from_config(&pair.a);
    let err = ensure_topology(js, &spec, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::SubjectOverlap, "{err}");
    let conflicts: Vec<_> = err
        .conflicts()
        .iter()
        .map(|c| {
            (
                c.subject.clone(),
                c.stream.clone(),
                c.other_stream.clone(),
                c.other_subject.clone(),
            )
        })
        .collect();
    assert_eq!(
        conflicts,
        [
            (
                s.source().to_string(),
                spec.stream_name().to_owned(),
                foreign.clone(),
                foreign_subject.clone()
            ),
            (
                s.dlq().to_string(),
                spec.dlq_stream_name().to_owned(),
                foreign.clone(),
                foreign_subject.clone()
            ),
        ],
        "every conflict, including the DLQ stream's"
    );
    let message = err.to_string();
    assert!(
        message.contains(&foreign) && message.contains(&foreign_subject),
        "{message}"
    );
    assert!(stream_info(js, spec.stream_name()).await.is_none());
    assert!(stream_info(js, spec.dlq_stream_name()).await.is_none());

    // The dry run shows the same conflicts as problems next to the actions.
    let plan = plan(js, &spec, &options()).await.unwrap();
    assert_eq!(plan.problems().len(), 2, "{plan}");
    assert!(matches!(plan.problems()[0], Problem::SubjectOverlap(_)));
    assert!(plan.to_string().contains("problem: subject"), "{plan}");
    t.teardown().await;
}

/// The gem puts the DLQ subject in the main stream; provisioning with the default separate DLQ
/// stream detects that and says how to switch; and the other way round.
#[tokio::test]
async fn dlq_placement_mismatch_is_detected_both_ways() {
    let t = TestNats::shared().await;
    let js = t.jetstream();
    let pair = Pair::new(&t, SubjectLayout::EnvLess);
    let gem = TopologySpec::from_config(&pair.a).with_dlq_placement(DlqPlacement::MainStream);
    ensure_topology(js, &gem, &options()).await.unwrap();

    let separate = TopologySpec::from_config(&pair.a);
    let err = ensure_topology(js, &separate, &options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::DlqPlacement, "{err}");
    assert!(
        err.to_string().contains("--dlq-placement main-stream"),
        "{err}"
    );
    assert!(stream_info(js, separate.dlq_stream_name()).await.is_none());

    // The peer may still choose a separate DLQ stream for its own DLQ subject.
    let peer = TopologySpec::from_config(&pair.b);
    ensure_topology(js, &peer, &options()).await.unwrap();
    assert_eq!(
        stream_subjects(js, peer.dlq_stream_name()).await,
        [pair.b.subjects().dlq().as_str()]
    );
    // …after which app b cannot move its DLQ subject into the main stream.
    let b_gem = TopologySpec::from_config(&pair.b).with_dlq_placement(DlqPlacement::MainStream);
    let err = ensure_topology(js, &b_gem, &options()).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::DlqPlacement, "{err}");
    assert!(
        err.to_string().contains("--dlq-placement separate-stream"),
        "{err}"
    );
    t.teardown().await;
}
