//! [`Config`]: the validated configuration every other crate reads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::builder::ConfigBuilder;
use crate::duration;
use crate::error::UnknownVariantError;
use crate::preset::Preset;
use crate::redact::{Redacted, Secret};
use crate::subject::{NatsName, Subject, SubjectLayout, SubjectToken, Subjects};
use crate::url::NatsUrls;

/// The NATS URL used when none is configured.
///
/// The gem uses `nats://localhost:4222`; we use the IPv4 loopback address so that a server
/// listening on IPv4 only is found even where `localhost` resolves to `::1` first.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How the consumer receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ConsumerMode {
    /// A durable pull consumer that fetches `batch_size` messages at a time (the default).
    #[default]
    Pull,
    /// A durable push consumer delivering to `delivery_subject` with a queue group (for
    /// accounts that may not use the JetStream API for fetching).
    Push,
}

impl ConsumerMode {
    const NAMES: &'static [&'static str] = &["pull", "push"];

    /// `pull` or `push`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }
}

impl fmt::Display for ConsumerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsumerMode {
    type Err = UnknownVariantError;

    /// `pull` or `push`, case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pull" => Ok(Self::Pull),
            "push" => Ok(Self::Push),
            _ => Err(UnknownVariantError::new("consumer mode", s, Self::NAMES)),
        }
    }
}

/// The validated configuration of one bridge (one app talking to one destination app).
///
/// Holding a `Config` means every subject token, name, duration and URL in it is valid. Build one
/// with [`Config::builder`] or [`Config::from_env`]. `Debug` and `Serialize` mask credentials
/// (URLs are redacted, the NKey seed is `***` in `Debug` and left out of `Serialize`), so both
/// are safe to log and to echo in a health report. Serialized durations are strings such as
/// `"30s"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    #[serde(flatten)]
    pub(crate) subjects: Subjects,
    pub(crate) nats_urls: NatsUrls,
    pub(crate) connect_retry_attempts: u32,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) connect_retry_delay: Duration,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) connect_timeout: Duration,
    pub(crate) connection_name: Option<String>,
    pub(crate) use_outbox: bool,
    pub(crate) use_inbox: bool,
    pub(crate) use_dlq: bool,
    pub(crate) inbox_prefix: Subject,
    pub(crate) disable_js_api: bool,
    pub(crate) consumer_mode: ConsumerMode,
    pub(crate) batch_size: usize,
    pub(crate) max_deliver: u32,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) ack_wait: Duration,
    #[serde(serialize_with = "duration::serialize_list")]
    pub(crate) backoff: Vec<Duration>,
    pub(crate) max_ack_pending: Option<u32>,
    pub(crate) handler_concurrency: usize,
    pub(crate) max_payload_bytes: usize,
    pub(crate) stream_replicas: usize,
    #[serde(serialize_with = "duration::serialize")]
    pub(crate) duplicate_window: Duration,
    pub(crate) tls_required: bool,
    #[serde(serialize_with = "serialize_path")]
    pub(crate) tls_ca_file: Option<PathBuf>,
    #[serde(serialize_with = "serialize_path")]
    pub(crate) tls_client_cert: Option<PathBuf>,
    #[serde(serialize_with = "serialize_path")]
    pub(crate) tls_client_key: Option<PathBuf>,
    #[serde(serialize_with = "serialize_path")]
    pub(crate) creds_file: Option<PathBuf>,
    #[serde(skip)]
    pub(crate) nkey_seed: Option<Secret>,
    pub(crate) database_url: Option<Redacted<String>>,
    pub(crate) preset: Option<Preset>,
}

fn serialize_path<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

impl Config {
    /// Starts a [`ConfigBuilder`] with the three required values and every other option at its
    /// default. Nothing is checked until [`ConfigBuilder::build`].
    ///
    /// `env` is required by the default [`SubjectLayout::EnvPrefixed`]. For the env-less layout
    /// (gem ≥ 4.5), call [`.layout(SubjectLayout::EnvLess)`](ConfigBuilder::layout); `env` may
    /// then be empty (a non-empty env is still validated and reported, but not used in subjects).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use jetstream_bridge_config::{Config, SubjectLayout};
    ///
    /// let config = Config::builder("production", "orders", "billing")
    ///     .nats_urls("nats://n1:4222,nats://n2:4222")
    ///     .batch_size(50)                    // gem default: 25
    ///     .max_deliver(10)                   // 5
    ///     .ack_wait("60s")                   // 30s; accepts &str or Duration
    ///     .backoff(["2s", "10s", "30s"])     // [1s, 5s, 15s, 30s, 60s]
    ///     .build()?;
    /// assert_eq!(config.subjects().source().as_str(), "production.orders.sync.billing");
    /// assert_eq!(config.ack_wait(), Duration::from_secs(60));
    ///
    /// let env_less = Config::builder("", "orders", "billing")
    ///     .layout(SubjectLayout::EnvLess)
    ///     .build()?;
    /// assert_eq!(env_less.subjects().source().as_str(), "orders.sync.billing");
    /// # Ok::<(), jetstream_bridge_config::ConfigError>(())
    /// ```
    pub fn builder(
        env: impl Into<String>,
        app_name: impl Into<String>,
        destination_app: impl Into<String>,
    ) -> ConfigBuilder {
        ConfigBuilder::new(env, app_name, destination_app)
    }

    /// Reads the configuration from the process environment and validates it; shorthand for
    /// `ConfigBuilder::from_env().build()`. See the crate README for the variables.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) listing every unreadable or invalid value.
    pub fn from_env() -> crate::Result<Self> {
        ConfigBuilder::from_env().build()
    }

    /// Every subject and name this service uses.
    #[must_use]
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The subject layout.
    #[must_use]
    pub fn layout(&self) -> SubjectLayout {
        self.subjects.layout()
    }

    /// The environment name (`None` only with the env-less layout and no env given).
    #[must_use]
    pub fn env(&self) -> Option<&SubjectToken> {
        self.subjects.env()
    }

    /// This service's name.
    #[must_use]
    pub fn app_name(&self) -> &SubjectToken {
        self.subjects.app_name()
    }

    /// The peer service's name.
    #[must_use]
    pub fn destination_app(&self) -> &SubjectToken {
        self.subjects.destination_app()
    }

    /// The stream name (shorthand for `subjects().stream_name()`).
    #[must_use]
    pub fn stream_name(&self) -> &NatsName {
        self.subjects.stream_name()
    }

    /// The durable consumer name (shorthand for `subjects().durable_name()`).
    #[must_use]
    pub fn durable_name(&self) -> &NatsName {
        self.subjects.durable_name()
    }

    /// The NATS servers (default [`DEFAULT_NATS_URL`]).
    #[must_use]
    pub fn nats_urls(&self) -> &NatsUrls {
        &self.nats_urls
    }

    /// How many times to try connecting before giving up (default 3, at least 1).
    #[must_use]
    pub fn connect_retry_attempts(&self) -> u32 {
        self.connect_retry_attempts
    }

    /// The base delay between connection attempts; attempt `n` waits `n` times this
    /// (default 2s, may be zero).
    #[must_use]
    pub fn connect_retry_delay(&self) -> Duration {
        self.connect_retry_delay
    }

    /// Timeout of one connection attempt (default 5s, the gem's client setting).
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The connection name shown by the server (`None`: the connecting code picks one, e.g. the
    /// app name).
    #[must_use]
    pub fn connection_name(&self) -> Option<&str> {
        self.connection_name.as_deref()
    }

    /// Publish through the transactional outbox (default `false`).
    #[must_use]
    pub fn use_outbox(&self) -> bool {
        self.use_outbox
    }

    /// Deduplicate consumed events through the inbox (default `false`).
    #[must_use]
    pub fn use_inbox(&self) -> bool {
        self.use_inbox
    }

    /// Dead-letter failed events to [`Subjects::dlq`] (default `true`).
    #[must_use]
    pub fn use_dlq(&self) -> bool {
        self.use_dlq
    }

    /// The prefix for request/reply inboxes (default `_INBOX`).
    #[must_use]
    pub fn inbox_prefix(&self) -> &Subject {
        &self.inbox_prefix
    }

    /// When `true` (the default) the runtime makes no JetStream management calls; topology is
    /// created explicitly (`ensure-topology`).
    #[must_use]
    pub fn disable_js_api(&self) -> bool {
        self.disable_js_api
    }

    /// Pull (default) or push.
    #[must_use]
    pub fn consumer_mode(&self) -> ConsumerMode {
        self.consumer_mode
    }

    /// Messages fetched per pull (default 25, at least 1).
    #[must_use]
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Deliveries before an event goes to the DLQ (default 5, at least 1).
    #[must_use]
    pub fn max_deliver(&self) -> u32 {
        self.max_deliver
    }

    /// How long the server waits for an ack before redelivering (default 30s, positive).
    #[must_use]
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// NAK delays: after failed delivery `n` the bridge waits `backoff[n-1]`, the last entry
    /// repeating (default `[1s, 5s, 15s, 30s, 60s]`, non-empty, each positive, at most
    /// `max_deliver` entries). Only the first `max_deliver - 1` ever apply: the last delivery goes
    /// to the DLQ ([`warnings`](Self::warnings) lists the others). Never sent to the server.
    #[must_use]
    pub fn backoff(&self) -> &[Duration] {
        &self.backoff
    }

    /// The consumer's `max_ack_pending` (`None`: the server's default).
    #[must_use]
    pub fn max_ack_pending(&self) -> Option<u32> {
        self.max_ack_pending
    }

    /// How many messages are handled at once (default 1).
    #[must_use]
    pub fn handler_concurrency(&self) -> usize {
        self.handler_concurrency
    }

    /// The largest payload the bridge publishes (default 1 MiB, NATS's default `max_payload`;
    /// at most 64 MiB).
    #[must_use]
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Stream replicas when topology creates the stream (default 1, 1..=5).
    #[must_use]
    pub fn stream_replicas(&self) -> usize {
        self.stream_replicas
    }

    /// The stream's duplicate window for `Nats-Msg-Id` (default 2 min, the server's default).
    #[must_use]
    pub fn duplicate_window(&self) -> Duration {
        self.duplicate_window
    }

    /// Require TLS even for `nats://` URLs (default `false`; `tls://` URLs always use TLS).
    #[must_use]
    pub fn tls_required(&self) -> bool {
        self.tls_required
    }

    /// A CA certificate (PEM) to trust in addition to the system roots.
    #[must_use]
    pub fn tls_ca_file(&self) -> Option<&Path> {
        self.tls_ca_file.as_deref()
    }

    /// The client certificate (PEM); always set together with [`tls_client_key`](Self::tls_client_key).
    #[must_use]
    pub fn tls_client_cert(&self) -> Option<&Path> {
        self.tls_client_cert.as_deref()
    }

    /// The client certificate's private key (PEM).
    #[must_use]
    pub fn tls_client_key(&self) -> Option<&Path> {
        self.tls_client_key.as_deref()
    }

    /// A NATS `.creds` file (JWT + seed); exclusive with [`nkey_seed`](Self::nkey_seed).
    #[must_use]
    pub fn creds_file(&self) -> Option<&Path> {
        self.creds_file.as_deref()
    }

    /// An NKey seed (`SU…`) for NKey authentication; exclusive with [`creds_file`](Self::creds_file).
    #[must_use]
    pub fn nkey_seed(&self) -> Option<&Secret> {
        self.nkey_seed.as_ref()
    }

    /// The Postgres URL used by the outbox and inbox crates, if configured.
    #[must_use]
    pub fn database_url(&self) -> Option<&Redacted<String>> {
        self.database_url.as_ref()
    }

    /// The preset applied last, if any.
    #[must_use]
    pub fn preset(&self) -> Option<Preset> {
        self.preset
    }
}
