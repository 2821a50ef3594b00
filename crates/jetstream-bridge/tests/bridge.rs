//! `Bridge` against the real servers: a relay and the health server run until the shutdown
//! signal, readiness turns false at once, the relay drains, the server stops, one report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use jetstream_bridge::health::Health;
use jetstream_bridge::{Bridge, Config, NewEvent, Outbox, Relay, Shutdown, StopCause};
use jetstream_bridge_testkit::{TestDb, TestNats};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(15);

/// The status code of a plain HTTP/1.1 GET.
async fn status(addr: std::net::SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_until_the_signal_then_drains_in_order() {
    let t = TestNats::shared().await;
    let db = TestDb::new().await;
    let stream = t.create_stream(t.stream_config("orders")).await;
    let stream_name = stream.cached_info().config.name.clone();
    let config = Config::builder(t.subject_prefix(), "orders", "billing")
        .build()
        .unwrap();

    let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
        .build()
        .unwrap()
        .spawn();
    let health = Health::builder(&config, t.jetstream().clone())
        .relay_stats(relay.stats())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let bridge = tokio::spawn(
        Bridge::new(shutdown.clone())
            .shutdown_timeout(WAIT)
            .relay(relay)
            .serve_health(listener, health.clone())
            .run(),
    );

    // Working: an event goes through, the probes answer.
    let outbox = Outbox::new(&config);
    let event_id = outbox
        .enqueue(
            &mut db.conn().await,
            NewEvent::new("order.created", json!({"id": 1})),
        )
        .await
        .unwrap();
    t.wait_for_event(&stream_name, event_id.as_str(), WAIT)
        .await;
    assert_eq!(status(addr, "/health/live").await.unwrap(), 200);

    shutdown.trigger();
    let report = tokio::time::timeout(WAIT, bridge).await.unwrap().unwrap();
    assert_eq!(report.cause, StopCause::Signal);
    assert!(report.is_clean(), "{report:?}");
    let relay_report = report.relay.unwrap().unwrap();
    assert!(relay_report.sent >= 1, "{relay_report:?}");
    assert!(
        !health.readiness().await.ready,
        "readiness stays false after the shutdown"
    );
    assert!(
        status(addr, "/health/live").await.is_err(),
        "the health server stops after the runtimes drained"
    );
    db.teardown().await;
    t.teardown().await;
}
