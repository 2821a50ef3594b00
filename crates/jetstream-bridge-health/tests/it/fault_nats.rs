//! Real HTTP requests against the router while a private `nats-server` is up, stopped and
//! restarted.

use std::time::Duration;

use jetstream_bridge_config::Config;
use jetstream_bridge_health::Health;
use jetstream_bridge_testkit::{eventually, NatsServer};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};

use crate::{get, serve, WAIT};

/// `/health/jetstream` answers 200 while NATS is up, 503 with the connection state once the
/// server is stopped, and 200 again after it restarts; liveness stays 200 throughout (it makes
/// no request) and readiness follows health until shutdown begins.
#[tokio::test(flavor = "multi_thread")]
async fn health_endpoint_follows_the_nats_server() {
    let server = NatsServer::spawn().await;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.client_url())
        .await
        .unwrap();
    let config = Config::builder("fault", "orders", "billing")
        .nats_urls(server.client_url())
        .disable_js_api(false)
        .build()
        .unwrap();
    ensure_topology(
        &async_nats::jetstream::new(client.clone()),
        &TopologySpec::from_config(&config),
        &EnsureOptions::new(),
    )
    .await
    .unwrap();
    let health = Health::builder(&config, async_nats::jetstream::new(client))
        .min_probe_interval(Duration::ZERO)
        .probe_timeout(Duration::from_millis(500))
        .build();
    let addr = serve(health.clone()).await;

    let up = get(addr, "/health/jetstream").await;
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.content_type, "application/json");
    let body = up.json();
    assert_eq!(body["healthy"], true);
    assert_eq!(body["connection"]["state"], "connected");
    assert!(body["connection"]["connected_at"].is_string());
    assert_eq!(body["stream"]["exists"], true);
    assert_eq!(get(addr, "/health/ready").await.status, 200);

    server.stop().await;
    let down = eventually(WAIT, || async {
        let r = get(addr, "/health/jetstream").await;
        let body = r.json();
        (r.status == 503 && body["connection"]["connected"] == false).then_some(body)
    })
    .await;
    assert_eq!(down["healthy"], false);
    assert_eq!(down["connection"]["state"], "disconnected");
    assert_eq!(down["connection"]["connected_at"], serde_json::Value::Null);
    assert_eq!(down["stream"]["exists"], false);
    assert_eq!(down["performance"]["nats_rtt_ms"], serde_json::Value::Null);
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(
        ready.json()["reasons"],
        serde_json::json!(["NATS disconnected"])
    );
    assert_eq!(get(addr, "/health/live").await.status, 200);

    server.restart().await;
    let again = eventually(WAIT, || async {
        let r = get(addr, "/health/jetstream").await;
        (r.status == 200).then(|| r.json())
    })
    .await;
    assert_eq!(again["healthy"], true);
    assert_eq!(again["connection"]["state"], "connected");
    assert_eq!(again["stream"]["exists"], true);
    assert_eq!(get(addr, "/health/ready").await.status, 200);

    health.set_shutting_down();
    let ready = get(addr, "/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["reasons"],
        serde_json::json!(["shutting down"])
    );
    assert_eq!(get(addr, "/health/live").await.status, 200);
}
