//! [`TestNats`]: isolated names and self-cleaning streams on the shared NATS server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectOptions};
use futures_util::StreamExt;

use crate::unique::{unique_name, unique_token};

/// The shared server used when `NATS_URL` is not set.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// `max_age` given to test streams that do not set one, so forgotten messages expire.
pub const TEST_STREAM_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// Streams made by the testkit carry this description prefix, then ` created=<unix secs>`.
const MARKER: &str = "jetstream-bridge-testkit";

/// Marked streams older than this are deleted by the first [`TestNats::shared`] of a process.
const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

static SWEPT: AtomicBool = AtomicBool::new(false);

/// A connection to the shared NATS server that hands out unique names and deletes the streams
/// created through it.
///
/// Tests run in parallel against one server, so every stream, durable and subject a test uses
/// must come from [`name`](Self::name) or [`subject`](Self::subject).
///
/// Call [`teardown`](Self::teardown) at the end of the test. `Drop` never blocks: if a test
/// panics before teardown, a detached background thread tries to delete the tracked streams.
/// Whatever is still left is harmless: names are unique, [`stream_config`](Self::stream_config)
/// streams are in memory (gone when the server restarts) with [`TEST_STREAM_MAX_AGE`] on their
/// messages, and marked streams older than an hour are deleted by the next test run.
#[derive(Debug)]
pub struct TestNats {
    url: String,
    client: Client,
    jetstream: Context,
    subject_prefix: String,
    streams: Mutex<Vec<String>>,
    torn_down: bool,
}

impl TestNats {
    /// Connects to the shared server at `NATS_URL` (default [`DEFAULT_NATS_URL`]).
    ///
    /// # Panics
    ///
    /// When the server cannot be reached; the message says how to start it.
    pub async fn shared() -> Self {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned());
        Self::connect(url).await
    }

    /// Connects to the server at `url`, e.g. a private [`NatsServer`](crate::NatsServer)'s
    /// [`client_url`](crate::NatsServer::client_url).
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Self {
        let url = url.into();
        let client = ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to NATS at {url}: {e}; start it with `bash .ci/services.sh` \
                     (or `apt-get install nats-server` and run `nats-server -a 127.0.0.1 -js`), \
                     or point NATS_URL at a server with JetStream"
                )
            });
        let jetstream = jetstream::new(client.clone());
        if !SWEPT.swap(true, Ordering::SeqCst) {
            sweep_stale_streams(&jetstream).await;
        }
        Self {
            url,
            client,
            jetstream,
            subject_prefix: format!("t_{}", unique_token()),
            streams: Mutex::new(Vec::new()),
            torn_down: false,
        }
    }

    /// The server URL this connects to.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The core NATS client.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The JetStream context on [`client`](Self::client).
    #[must_use]
    pub fn jetstream(&self) -> &Context {
        &self.jetstream
    }

    /// A unique name: `base` + `_` + 16 random `[a-z0-9]` characters (`orders_k3x9…`).
    ///
    /// Valid as a stream name, a durable name and a single subject token (no dots).
    ///
    /// # Panics
    ///
    /// When `base` is empty or not `[a-z0-9_-]+`.
    #[must_use]
    #[track_caller]
    pub fn name(&self, base: &str) -> String {
        unique_name(base)
    }

    /// The subject prefix unique to this `TestNats`: one token, `t_<16 random chars>`.
    ///
    /// Put it first in every subject a test publishes to or filters on.
    #[must_use]
    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// `<subject_prefix>.<tail>`, e.g. `t.subject("orders.created")`.
    #[must_use]
    pub fn subject(&self, tail: &str) -> String {
        format!("{}.{tail}", self.subject_prefix)
    }

    /// A stream configuration for tests: name [`name(base)`](Self::name), subjects
    /// `<subject_prefix>.<base>.>`, in-memory storage, `max_age` [`TEST_STREAM_MAX_AGE`], and the
    /// testkit marker in `description`. Adjust fields, then pass it to
    /// [`create_stream`](Self::create_stream).
    #[must_use]
    #[track_caller]
    pub fn stream_config(&self, base: &str) -> Config {
        Config {
            name: self.name(base),
            subjects: vec![self.subject(&format!("{base}.>"))],
            storage: StorageType::Memory,
            max_age: TEST_STREAM_MAX_AGE,
            description: Some(marker_description()),
            ..Config::default()
        }
    }

    /// Creates a stream and tracks it for [`teardown`](Self::teardown).
    ///
    /// A zero `max_age` becomes [`TEST_STREAM_MAX_AGE`] and a missing `description` becomes the
    /// testkit marker; everything else (storage too) is used as given, so start from
    /// [`stream_config`](Self::stream_config) to get in-memory storage.
    ///
    /// # Panics
    ///
    /// When JetStream rejects the configuration.
    pub async fn create_stream(&self, config: impl Into<Config>) -> Stream {
        let mut config: Config = config.into();
        if config.max_age.is_zero() {
            config.max_age = TEST_STREAM_MAX_AGE;
        }
        if config.description.is_none() {
            config.description = Some(marker_description());
        }
        let name = config.name.clone();
        let stream = self
            .jetstream
            .create_stream(config)
            .await
            .unwrap_or_else(|e| panic!("cannot create test stream {name:?} on {}: {e}", self.url));
        self.track_stream(name);
        stream
    }

    /// Tracks a stream created elsewhere (e.g. by the code under test) so that
    /// [`teardown`](Self::teardown) deletes it too.
    pub fn track_stream(&self, name: impl Into<String>) {
        let name = name.into();
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if !streams.contains(&name) {
            streams.push(name);
        }
    }

    /// Whether a stream named `name` exists.
    ///
    /// # Panics
    ///
    /// On any error other than "stream not found".
    pub async fn stream_exists(&self, name: &str) -> bool {
        match self.jetstream.get_stream(name).await {
            Ok(_) => true,
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    false
                }
                _ => panic!("cannot look up stream {name:?} on {}: {e}", self.url),
            },
        }
    }

    /// Deletes every tracked stream (already-deleted ones are fine) and closes the connection.
    ///
    /// # Panics
    ///
    /// When a stream cannot be deleted; all deletions are attempted first.
    pub async fn teardown(mut self) {
        self.torn_down = true;
        let names = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|e| e.into_inner()));
        let failures = delete_streams(&self.jetstream, &names).await;
        let _ = self.client.flush().await;
        assert!(
            failures.is_empty(),
            "TestNats::teardown could not delete streams on {}: {failures:?}",
            self.url
        );
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let names = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        // Best effort and non-blocking: the test's runtime (and with it this client's
        // connection task) may be shutting down, so connect afresh on a detached thread.
        let url = self.url.clone();
        let _ = std::thread::Builder::new()
            .name("testkit-nats-cleanup".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    if let Ok(client) = async_nats::connect(url.as_str()).await {
                        let _ = delete_streams(&jetstream::new(client.clone()), &names).await;
                        let _ = client.flush().await;
                    }
                });
            });
    }
}

/// Deletes `names`, ignoring "not found"; returns the other failures.
async fn delete_streams(jetstream: &Context, names: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for name in names {
        if let Err(e) = jetstream.delete_stream(name).await {
            let not_found = matches!(e.kind(),
                GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND);
            if !not_found {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    failures
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn marker_description() -> String {
    format!("{MARKER} created={}", unix_now())
}

/// Deletes streams carrying the testkit marker that are older than [`STALE_AFTER`]
/// (left behind by killed test processes). Best effort: errors are ignored.
async fn sweep_stale_streams(jetstream: &Context) {
    let cutoff = unix_now().saturating_sub(STALE_AFTER.as_secs());
    let mut stale = Vec::new();
    let mut streams = jetstream.streams();
    while let Some(Ok(info)) = streams.next().await {
        let created = info
            .config
            .description
            .as_deref()
            .and_then(|d| d.strip_prefix(MARKER))
            .and_then(|rest| rest.trim().strip_prefix("created="))
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created < cutoff) {
            stale.push(info.config.name);
        }
    }
    let _ = delete_streams(jetstream, &stale).await;
}

/// Returns once the server has processed everything `client` sent before the call, its
/// subscriptions included.
///
/// [`Client::flush`] only writes the client's buffer to the socket; a subscription is in force
/// once the server has read it. A test that subscribes on one connection and then makes another
/// connection publish must await this in between, or the first messages can pass unseen. The
/// server handles one connection's operations in order, so a probe message on a fresh inbox,
/// published and received by `client`, proves every earlier operation was handled.
///
/// # Panics
///
/// When the probe does not come back within five seconds (the client needs to publish to and
/// subscribe on its inbox prefix).
pub async fn server_round_trip(client: &Client) {
    let subject = client.new_inbox();
    let mut probe = client
        .subscribe(subject.clone())
        .await
        .unwrap_or_else(|e| panic!("server_round_trip: subscribe: {e}"));
    client
        .publish(subject, "".into())
        .await
        .unwrap_or_else(|e| panic!("server_round_trip: publish: {e}"));
    match tokio::time::timeout(Duration::from_secs(5), probe.next()).await {
        Ok(Some(_)) => {}
        Ok(None) => panic!("server_round_trip: the connection closed"),
        Err(_) => panic!("server_round_trip: no probe back within 5 s"),
    }
    let _ = probe.unsubscribe().await;
}
