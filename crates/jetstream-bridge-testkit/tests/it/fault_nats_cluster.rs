use std::time::Duration;

use jetstream_bridge_testkit::async_nats::jetstream::{
    self,
    stream::{Config, StorageType},
};
use jetstream_bridge_testkit::{eventually, NatsCluster};

use crate::pid_alive;

/// An R3 stream keeps accepting publishes after its leader node is SIGKILLed.
#[tokio::test(flavor = "multi_thread")]
async fn r3_stream_survives_losing_its_leader() {
    let cluster = NatsCluster::spawn(3).await;
    assert_eq!(cluster.client_urls().len(), 3);
    // A short request timeout, so a publish lost with the killed leader is retried quickly.
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(cluster.connect().await);
    let mut stream = js
        .create_stream(Config {
            name: "orders".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            storage: StorageType::File,
            ..Config::default()
        })
        .await
        .unwrap();
    js.publish("orders.1", "before".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("an R3 stream has a leader");
    let victim = cluster
        .node_index(&leader)
        .expect("leader is one of our nodes");
    let pid = cluster.node(victim).pid().unwrap();
    cluster.node(victim).kill9();
    assert!(!pid_alive(pid));

    // Re-election has no event a client can await; retry the publish until a new leader acks.
    let ack = eventually(Duration::from_secs(30), || async {
        js.publish("orders.2", "after".into()).await?.await
    })
    .await;
    assert_eq!(ack.stream, "orders");
    let info = stream.info().await.unwrap();
    assert_ne!(
        info.cluster.as_ref().and_then(|c| c.leader.as_deref()),
        Some(leader.as_str())
    );
    assert!(info.state.messages >= 2, "{:?}", info.state);

    // The killed node comes back on its ports and rejoins.
    cluster.node(victim).restart().await;
    cluster.wait_ready().await;
}
