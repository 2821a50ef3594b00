//! [`TopologySpec`] (what to provision), [`DlqPlacement`], [`DriftPolicy`] and
//! [`EnsureOptions`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jetstream_bridge_config::{Config, ConsumerMode};

use crate::lock::LockSettings;
use crate::violations::PermissionViolations;

/// How long dead letters are kept in a [`DlqPlacement::SeparateStream`] DLQ stream unless set
/// with [`TopologySpec::with_dlq_max_age`]: 30 days.
pub const DEFAULT_DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The suffix of the default DLQ stream name: `{stream}-dlq`.
pub const DLQ_STREAM_SUFFIX: &str = "-dlq";

/// Where this service's DLQ subject (`[{env}.]{app}.sync.dlq`) is stored.
///
/// A subject can belong to one stream only, so both services of a pair must agree with what
/// is already on the server; provisioning detects a mismatch and says how to switch
/// ([`TopologyErrorKind::DlqPlacement`](crate::TopologyErrorKind::DlqPlacement)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DlqPlacement {
    /// The default: a limits-retention stream `{stream}-dlq` (file storage, `max_age`
    /// [`DEFAULT_DLQ_MAX_AGE`], optional `max_msgs`) holding the DLQ subjects. Dead letters
    /// stay there until they expire, so they can be browsed by any number of consumers and
    /// replayed; the two services of a pair share this stream. Each side also claims the
    /// peer's DLQ subject there while no stream holds it (see
    /// [`TopologySpec::with_peer_dlq_claim`]), so that a Ruby peer's dead letters never land in
    /// the work-queue stream where the server would drop them as duplicates.
    #[default]
    SeparateStream,
    /// The Ruby gem's layout: the DLQ subject is a subject of the main work-queue stream. Use it
    /// when a Ruby peer (or an earlier deploy) already put it there. Dead letters can still be
    /// read there, but a work-queue stream allows one consumer per subject and deletes each
    /// message once it is acked.
    MainStream,
}

impl DlqPlacement {
    const NAMES: &'static [&'static str] = &["separate-stream", "main-stream"];

    /// `separate-stream` or `main-stream`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SeparateStream => "separate-stream",
            Self::MainStream => "main-stream",
        }
    }
}

impl fmt::Display for DlqPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not the name of a [`DlqPlacement`] or [`DriftPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}, expected one of: {}", expected.join(", "))]
pub struct UnknownNameError {
    what: &'static str,
    value: String,
    expected: &'static [&'static str],
}

impl FromStr for DlqPlacement {
    type Err = UnknownNameError;

    /// `separate-stream` (or `separate`) and `main-stream` (or `main`), case-insensitive,
    /// `_` accepted for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "separate-stream" | "separate" => Ok(Self::SeparateStream),
            "main-stream" | "main" => Ok(Self::MainStream),
            _ => Err(UnknownNameError {
                what: "DLQ placement",
                value: s.to_owned(),
                expected: Self::NAMES,
            }),
        }
    }
}

/// What provisioning does when the durable consumer on the server differs from the
/// configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DriftPolicy {
    /// Report it as [`TopologyErrorKind::ConsumerDrift`](crate::TopologyErrorKind::ConsumerDrift)
    /// and change nothing (the default).
    #[default]
    Report,
    /// Update the consumer in place where the server allows it (e.g. `max_deliver`,
    /// `ack_wait`, `max_ack_pending`), then verify it again. A consumer is never deleted and
    /// recreated: that would lose its delivery and ack state.
    Update,
}

/// Everything provisioning creates or verifies for one service: the main stream and its
/// subjects, the DLQ placement, and the durable consumer.
///
/// Build it from the service's [`Config`] with [`from_config`](Self::from_config), then adjust
/// the DLQ settings:
///
/// ```
/// use std::time::Duration;
/// use jetstream_bridge_config::Config;
/// use jetstream_bridge_topology::{DlqPlacement, TopologySpec};
///
/// let config = Config::builder("production", "orders", "billing").build()?;
/// let spec = TopologySpec::from_config(&config);
/// assert_eq!(spec.stream_name(), "production-jetstream-bridge-stream");
/// assert_eq!(spec.stream_subjects(), ["production.orders.sync.billing", "production.billing.sync.orders"]);
/// assert_eq!(spec.dlq_subject(), Some("production.orders.sync.dlq"));
/// assert_eq!(spec.dlq_stream_name(), "production-jetstream-bridge-stream-dlq");
/// assert_eq!(spec.durable_name(), Some("production-orders-workers"));
/// assert_eq!(spec.filter_subject(), "production.billing.sync.orders");
///
/// // The Ruby gem's layout: the DLQ subject in the main work-queue stream.
/// let gem = TopologySpec::from_config(&config).with_dlq_placement(DlqPlacement::MainStream);
/// assert_eq!(gem.main_stream_subjects().len(), 3);
/// # Ok::<(), jetstream_bridge_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySpec {
    pub(crate) stream: String,
    pub(crate) source: String,
    pub(crate) destination: String,
    pub(crate) dlq: Option<String>,
    pub(crate) peer_dlq: Option<String>,
    pub(crate) claim_peer_dlq: bool,
    pub(crate) dlq_placement: DlqPlacement,
    pub(crate) dlq_stream: String,
    pub(crate) dlq_max_age: Duration,
    pub(crate) dlq_max_msgs: Option<i64>,
    pub(crate) replicas: usize,
    pub(crate) duplicate_window: Duration,
    pub(crate) consumer: Option<ConsumerSpec>,
}

/// The durable consumer part of a [`TopologySpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerSpec {
    pub(crate) durable: String,
    pub(crate) filter: String,
    pub(crate) mode: ConsumerMode,
    pub(crate) deliver_subject: String,
    pub(crate) deliver_group: String,
    pub(crate) max_deliver: u32,
    pub(crate) ack_wait: Duration,
    pub(crate) max_ack_pending: Option<u32>,
}

impl TopologySpec {
    /// The topology of the service `config` describes:
    ///
    /// - main stream [`Config::stream_name`]: work-queue retention, file storage,
    ///   [`stream_replicas`](Config::stream_replicas) and
    ///   [`duplicate_window`](Config::duplicate_window) from the config, with the source and
    ///   destination subjects (and the DLQ subject with [`DlqPlacement::MainStream`]);
    /// - with [`use_dlq`](Config::use_dlq), the DLQ subject placed per [`DlqPlacement`]
    ///   (default [`SeparateStream`](DlqPlacement::SeparateStream), stream `{stream}-dlq`);
    /// - the durable [`Config::durable_name`] (pull, or push to
    ///   [`delivery_subject`](jetstream_bridge_config::Subjects::delivery_subject) with queue
    ///   group [`push_group`](jetstream_bridge_config::Subjects::push_group)), explicit ack,
    ///   deliver all, filter = the destination subject, `max_deliver`, `ack_wait` and
    ///   `max_ack_pending` from the config, and no server-side `backoff`;
    /// - with [`use_dlq`](Config::use_dlq) and the separate DLQ stream, the peer's DLQ subject
    ///   ([`peer_dlq`](jetstream_bridge_config::Subjects::peer_dlq)) claimed in the DLQ stream
    ///   while no stream holds it ([`with_peer_dlq_claim`](Self::with_peer_dlq_claim)).
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        let s = config.subjects();
        let stream = s.stream_name().as_str().to_owned();
        Self {
            dlq_stream: format!("{stream}{DLQ_STREAM_SUFFIX}"),
            stream,
            source: s.source().as_str().to_owned(),
            destination: s.destination().as_str().to_owned(),
            dlq: config.use_dlq().then(|| s.dlq().as_str().to_owned()),
            peer_dlq: (s.peer_dlq() != s.dlq()).then(|| s.peer_dlq().as_str().to_owned()),
            claim_peer_dlq: true,
            dlq_placement: DlqPlacement::default(),
            dlq_max_age: DEFAULT_DLQ_MAX_AGE,
            dlq_max_msgs: None,
            replicas: config.stream_replicas(),
            duplicate_window: config.duplicate_window(),
            consumer: Some(ConsumerSpec {
                durable: s.durable_name().as_str().to_owned(),
                filter: s.destination().as_str().to_owned(),
                mode: config.consumer_mode(),
                deliver_subject: s.delivery_subject().as_str().to_owned(),
                deliver_group: s.push_group().as_str().to_owned(),
                max_deliver: config.max_deliver(),
                ack_wait: config.ack_wait(),
                max_ack_pending: config.max_ack_pending(),
            }),
        }
    }

    /// Where the DLQ subject goes (default [`DlqPlacement::SeparateStream`]).
    #[must_use]
    pub fn with_dlq_placement(mut self, placement: DlqPlacement) -> Self {
        self.dlq_placement = placement;
        self
    }

    /// Whether to claim the peer's DLQ subject in the separate DLQ stream while no stream holds
    /// it (default `true`; only with [`DlqPlacement::SeparateStream`]).
    ///
    /// The Ruby gem (7.x) puts its DLQ subject into the work-queue stream when it provisions,
    /// and dead-letters by copying the original's headers, including the `Nats-Msg-Id` our
    /// publishers set: in the same stream the server drops that copy as a duplicate, and the
    /// gem acks the original, so the event is lost. Claimed first in the DLQ stream, the gem's
    /// provisioning leaves the subject there (its overlap guard skips subjects other streams
    /// hold) and its dead letters are stored. A subject any stream already holds is never
    /// claimed; [`TopologyPlan::warnings`](crate::TopologyPlan::warnings) reports the lossy
    /// layout instead.
    #[must_use]
    pub fn with_peer_dlq_claim(mut self, claim: bool) -> Self {
        self.claim_peer_dlq = claim;
        self
    }

    /// The name of the separate DLQ stream (default `{stream}-dlq`). Checked when planning.
    #[must_use]
    pub fn with_dlq_stream_name(mut self, name: impl Into<String>) -> Self {
        self.dlq_stream = name.into();
        self
    }

    /// How long the separate DLQ stream keeps dead letters (default [`DEFAULT_DLQ_MAX_AGE`];
    /// zero keeps them forever). Applies when the stream is created; an existing stream's
    /// limits are never changed.
    #[must_use]
    pub fn with_dlq_max_age(mut self, max_age: Duration) -> Self {
        self.dlq_max_age = max_age;
        self
    }

    /// The most dead letters the separate DLQ stream keeps, oldest discarded first (default
    /// unlimited). Applies when the stream is created.
    #[must_use]
    pub fn with_dlq_max_msgs(mut self, max_msgs: Option<u64>) -> Self {
        self.dlq_max_msgs = max_msgs.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self
    }

    /// Whether to provision the durable consumer (default `true`); `false` for a service that
    /// only publishes.
    #[must_use]
    pub fn with_consumer(mut self, provision: bool) -> Self {
        if !provision {
            self.consumer = None;
        }
        self
    }

    /// The main stream's name.
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The source and destination subjects (what the main stream always holds for this
    /// service).
    #[must_use]
    pub fn stream_subjects(&self) -> [&str; 2] {
        [&self.source, &self.destination]
    }

    /// Every subject this service needs in the main stream: [`stream_subjects`](Self::stream_subjects)
    /// plus the DLQ subject with [`DlqPlacement::MainStream`].
    #[must_use]
    pub fn main_stream_subjects(&self) -> Vec<&str> {
        let mut subjects = vec![self.source.as_str(), self.destination.as_str()];
        if let (Some(dlq), DlqPlacement::MainStream) = (&self.dlq, self.dlq_placement) {
            subjects.push(dlq);
        }
        subjects
    }

    /// This service's DLQ subject (`None` when the config turns the DLQ off).
    #[must_use]
    pub fn dlq_subject(&self) -> Option<&str> {
        self.dlq.as_deref()
    }

    /// The peer's DLQ subject, `[{env}.]{dest}.sync.dlq`: where the service consuming this
    /// one's events dead-letters them.
    #[must_use]
    pub fn peer_dlq_subject(&self) -> Option<&str> {
        self.peer_dlq.as_deref()
    }

    /// The peer's DLQ subject when it is claimed in the DLQ stream (see
    /// [`with_peer_dlq_claim`](Self::with_peer_dlq_claim)).
    #[must_use]
    pub fn claimed_peer_dlq(&self) -> Option<&str> {
        self.peer_dlq
            .as_deref()
            .filter(|_| self.claim_peer_dlq && self.uses_dlq_stream())
    }

    /// The DLQ placement.
    #[must_use]
    pub fn dlq_placement(&self) -> DlqPlacement {
        self.dlq_placement
    }

    /// The separate DLQ stream's name (used with [`DlqPlacement::SeparateStream`]).
    #[must_use]
    pub fn dlq_stream_name(&self) -> &str {
        &self.dlq_stream
    }

    /// How long the separate DLQ stream keeps dead letters when it is created.
    #[must_use]
    pub fn dlq_max_age(&self) -> Duration {
        self.dlq_max_age
    }

    /// The most dead letters the separate DLQ stream keeps when it is created (`None`:
    /// unlimited).
    #[must_use]
    pub fn dlq_max_msgs(&self) -> Option<u64> {
        self.dlq_max_msgs.and_then(|n| u64::try_from(n).ok())
    }

    /// Whether a separate DLQ stream is part of this topology.
    #[must_use]
    pub fn uses_dlq_stream(&self) -> bool {
        self.dlq.is_some() && self.dlq_placement == DlqPlacement::SeparateStream
    }

    /// The durable consumer's name (`None` when the consumer is not provisioned).
    #[must_use]
    pub fn durable_name(&self) -> Option<&str> {
        self.consumer.as_ref().map(|c| c.durable.as_str())
    }

    /// The durable's filter subject (the destination subject).
    #[must_use]
    pub fn filter_subject(&self) -> &str {
        &self.destination
    }

    /// Whether the durable consumer is provisioned.
    #[must_use]
    pub fn provisions_consumer(&self) -> bool {
        self.consumer.is_some()
    }
}

/// Options of [`plan`](crate::plan) and [`ensure_topology`](crate::ensure_topology).
#[derive(Debug, Clone)]
#[must_use]
pub struct EnsureOptions {
    pub(crate) drift: DriftPolicy,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) violations: Option<PermissionViolations>,
    pub(crate) max_rounds: u32,
    pub(crate) lock: LockSettings,
    pub(crate) move_dlq_subjects: bool,
    pub(crate) progress_interval: Option<Option<Duration>>,
}

impl Default for EnsureOptions {
    fn default() -> Self {
        Self {
            drift: DriftPolicy::default(),
            request_timeout: None,
            violations: None,
            max_rounds: 8,
            lock: LockSettings::default(),
            move_dlq_subjects: false,
            progress_interval: None,
        }
    }
}

impl EnsureOptions {
    /// Default options: report drift, the JetStream context's own request timeout, no
    /// permission log.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do about a differing durable consumer (default [`DriftPolicy::Report`]).
    pub fn drift_policy(mut self, policy: DriftPolicy) -> Self {
        self.drift = policy;
        self
    }

    /// The timeout of each JetStream API request (default: the context's own, 10 s unless
    /// configured otherwise).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// The permission log of the client behind the JetStream context, so that a refused request
    /// fails at once with [`TopologyErrorKind::PermissionDenied`](crate::TopologyErrorKind::PermissionDenied)
    /// naming the subject (without it, it times out). [`Connection`](crate::Connection) sets
    /// this itself.
    pub fn permission_violations(mut self, violations: PermissionViolations) -> Self {
        self.violations = Some(violations);
        self
    }

    /// How many plan-and-apply rounds [`ensure_topology`](crate::ensure_topology) makes before it
    /// gives up on concurrent changes ([`TopologyErrorKind::Conflict`](crate::TopologyErrorKind::Conflict));
    /// default 8, at least 1.
    pub fn max_rounds(mut self, rounds: u32) -> Self {
        self.max_rounds = rounds.max(1);
        self
    }

    /// Whether subject updates hold the stream lock (default `true`).
    ///
    /// Adding subjects reads the stream's configuration and writes it back; JetStream has no
    /// compare-and-set for that, so two deploys doing it at once can lose one's subjects. With
    /// the lock, each update holds a lease in the key-value bucket
    /// [`lock_bucket`](Self::lock_bucket) (key `stream.<stream name>`) and re-reads the stream
    /// afterwards, adding back whatever a writer that does not take the lock dropped. Turn it
    /// off only for users who may not use the bucket; then deploy the apps of a pair one after
    /// the other.
    pub fn stream_lock(mut self, on: bool) -> Self {
        self.lock.enabled = on;
        self
    }

    /// The key-value bucket holding the stream locks (default [`DEFAULT_LOCK_BUCKET`](crate::DEFAULT_LOCK_BUCKET)); created
    /// on first use. Every deploy of a pair must use the same bucket.
    pub fn lock_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.lock.bucket = bucket.into();
        self
    }

    /// The lease time of a stream lock (default [`DEFAULT_LOCK_TTL`](crate::DEFAULT_LOCK_TTL), at least 1 s): the
    /// `max_age` the lock bucket is created with, after which the lock of a deploy that
    /// crashed expires. An existing bucket keeps its own.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// How long to wait for a stream lock another deploy holds before failing with
    /// [`TopologyErrorKind::Conflict`](crate::TopologyErrorKind::Conflict) (default: the lock
    /// TTL plus 15 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock.wait = Some(wait);
        self
    }

    /// Whether to move DLQ subjects out of the work-queue stream into the separate DLQ stream
    /// (default `false`). Applies with [`DlqPlacement::SeparateStream`] to this service's DLQ
    /// subject and to the claimed peer DLQ subject, when the main stream lists the subject
    /// itself (not through a wildcard) and stores no message on it; a subject with stored
    /// dead letters is reported as a problem instead (read or purge them first).
    pub fn move_dlq_subjects(mut self, on: bool) -> Self {
        self.move_dlq_subjects = on;
        self
    }

    /// The runtime's in-progress ack interval, for [`check`](crate::check): a durable whose
    /// `ack_wait` (or first `backoff` step) is shorter cannot keep long handlers' messages
    /// (default `ack_wait / 2` of the configuration, the consumer runtime's default; `None`:
    /// in-progress acks are off).
    pub fn progress_interval(mut self, every: Option<Duration>) -> Self {
        self.progress_interval = Some(every.filter(|d| !d.is_zero()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream_bridge_config::SubjectLayout;

    #[test]
    fn placement_names_round_trip() {
        for p in [DlqPlacement::SeparateStream, DlqPlacement::MainStream] {
            assert_eq!(p.as_str().parse::<DlqPlacement>().unwrap(), p);
        }
        assert_eq!(
            "MAIN".parse::<DlqPlacement>().unwrap(),
            DlqPlacement::MainStream
        );
        assert_eq!(
            "separate_stream".parse::<DlqPlacement>().unwrap(),
            DlqPlacement::SeparateStream
        );
        let err = "dlq".parse::<DlqPlacement>().unwrap_err();
        assert!(err.to_string().contains("separate-stream, main-stream"));
    }

    #[test]
    fn spec_follows_the_config() {
        let config = Config::builder("", "orders", "billing")
            .layout(SubjectLayout::EnvLess)
            .use_dlq(false)
            .max_ack_pending(70)
            .build()
            .unwrap();
        let spec = TopologySpec::from_config(&config);
        assert_eq!(
            spec.main_stream_subjects(),
            ["orders.sync.billing", "billing.sync.orders"]
        );
        assert_eq!(spec.dlq_subject(), None);
        assert!(!spec.uses_dlq_stream());
        assert_eq!(spec.durable_name(), Some("orders-workers"));
        let consumer = spec.consumer.as_ref().unwrap();
        assert_eq!(consumer.max_ack_pending, Some(70));
        assert_eq!(consumer.ack_wait, Duration::from_secs(30));
        assert_eq!(consumer.deliver_subject, "billing.sync.orders.worker");
        assert!(!spec.with_consumer(false).provisions_consumer());
    }
}
