use std::net::TcpStream;

use jetstream_bridge_testkit::async_nats::{
    self,
    jetstream::{self, stream::Config},
    ConnectOptions,
};
use jetstream_bridge_testkit::NatsServer;

use crate::pid_alive;

fn refuses_connections(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

/// A message persisted in a file-backed stream survives `kill9` and `restart`, which reuses the
/// port and the store.
#[tokio::test(flavor = "multi_thread")]
async fn persisted_message_survives_kill9_and_restart() {
    let server = NatsServer::spawn().await;
    let port = server.port();
    let js = jetstream::new(server.connect().await);
    js.create_stream(Config {
        name: "orders".into(),
        subjects: vec!["orders.>".into()],
        ..Config::default() // file storage
    })
    .await
    .unwrap();
    let ack = js
        .publish("orders.created", "persist me".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);

    let pid = server.pid().expect("running");
    server.kill9();
    assert_eq!(server.pid(), None);
    assert!(!pid_alive(pid), "kill9 must kill and reap pid {pid}");
    assert!(refuses_connections(port));

    server.restart().await;
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    let js = jetstream::new(server.connect().await);
    let stream = js.get_stream("orders").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
    let message = stream.get_raw_message(1).await.unwrap();
    assert_eq!(message.subject.as_str(), "orders.created");
    assert_eq!(&message.payload[..], b"persist me");
}

/// `stop` ends the process gracefully; `restart` brings it back on the same port.
#[tokio::test(flavor = "multi_thread")]
async fn stop_then_restart() {
    let server = NatsServer::spawn().await;
    let (port, pid) = (server.port(), server.pid().unwrap());
    server.stop().await;
    assert!(!pid_alive(pid));
    assert!(refuses_connections(port));
    server.restart().await;
    assert_eq!(server.client_url(), format!("nats://127.0.0.1:{port}"));
    server.connect().await.flush().await.unwrap();
}

/// Dropping the server kills its process by PID.
#[tokio::test(flavor = "multi_thread")]
async fn drop_kills_the_process() {
    let server = NatsServer::spawn().await;
    let (port, pid) = (server.port(), server.pid().unwrap());
    assert!(pid_alive(pid));
    let store = server.store_dir().to_path_buf();
    drop(server);
    assert!(!pid_alive(pid), "pid {pid} still exists after drop");
    assert!(refuses_connections(port));
    assert!(!store.exists(), "the temp store must be deleted");
}

/// Configuration file text is applied: a server with a user requires those credentials.
#[tokio::test(flavor = "multi_thread")]
async fn config_text_is_applied() {
    let server = NatsServer::with_config(
        r#"authorization { users = [ { user: "svc", password: "s3cret" } ] }"#,
    )
    .await;
    let url = server.client_url();
    assert!(
        async_nats::connect(url.as_str()).await.is_err(),
        "anonymous connect must be refused"
    );
    let client = ConnectOptions::with_user_and_password("svc".into(), "s3cret".into())
        .connect(url.as_str())
        .await
        .unwrap();
    client.flush().await.unwrap();
}
