//! Connection options against private servers: TLS with a custom CA and a client certificate
//! (the server verifies client certificates), and NKey authentication.
//!
//! The certificates in `tests/it/tls/` were made with:
//!
//! ```sh
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca-key.pem
//! openssl req -x509 -new -key ca-key.pem -sha256 -days 36500 -subj "/CN=jetstream-bridge test CA" \
//!   -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
//! # server (SAN IP:127.0.0.1, DNS:localhost, serverAuth) and client (clientAuth), each:
//! openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server-key.pem
//! openssl req -new -key server-key.pem -subj "/CN=jetstream-bridge test server" -out server.csr
//! openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 36500 \
//!   -sha256 -extfile server.ext -out server.pem
//! ```

use std::path::PathBuf;

use jetstream_bridge_config::Config;
use jetstream_bridge_testkit::NatsServer;
use jetstream_bridge_topology::{connect, EnsureOptions, TopologyErrorKind, TopologySpec};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/tls")
        .join(name)
}

/// A client with the custom CA and its certificate connects over TLS and provisions; without the
/// client certificate the server refuses it, and the error is a `Connection` error.
#[tokio::test]
async fn tls_with_custom_ca_and_client_certificate() {
    let server = NatsServer::builder()
        .config(format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
            fixture("server.pem"),
            fixture("server-key.pem"),
            fixture("ca.pem"),
        ))
        .spawn()
        .await;
    let builder = || {
        Config::builder("prod", "orders", "billing")
            .nats_urls(format!("tls://127.0.0.1:{}", server.port()))
            .connect_retry_attempts(1)
            .connect_timeout("3s")
            .tls_ca_file(fixture("ca.pem"))
    };
    let config = builder()
        .tls_client_cert(fixture("client.pem"))
        .tls_client_key(fixture("client-key.pem"))
        .build()
        .unwrap();
    let connection = connect(&config).await.unwrap();
    let report = connection
        .ensure_topology(&TopologySpec::from_config(&config), &EnsureOptions::new())
        .await
        .unwrap();
    assert_eq!(report.applied().len(), 3, "{report}");

    let without_client_cert = builder().build().unwrap();
    let err = connect(&without_client_cert).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Connection, "{err}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.to_lowercase().contains("certificate"), "{cause}");
}

/// NKey authentication from `nkey_seed`; a wrong seed is a `Connection` error that never shows
/// the Ruby gem's production guide.
#[tokio::test]
async fn nkey_seed_authenticates() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{ users = [ {{ nkey: {} }} ] }}",
            user.public_key()
        ))
        .spawn()
        .await;
    let config = |seed: String| {
        Config::builder("prod", "orders", "billing")
            .nats_urls(server.client_url())
            .connect_retry_attempts(1)
            .nkey_seed(seed)
            .build()
            .unwrap()
    };
    let connection = connect(&config(user.seed().unwrap())).await.unwrap();
    connection.client().flush().await.unwrap();

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let err = connect(&config(stranger.clone())).await.unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Connection, "{err}");
    let text = format!("{err} {err:?} {}", std::error::Error::source(&err).unwrap());
    assert!(!text.contains(&stranger), "{text}");
}
