//! [`ConfigBuilder`]: consuming setters, every check in [`ConfigBuilder::build`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, ConsumerMode, DEFAULT_NATS_URL};
use crate::duration::{check_nats_range, format_duration, parse_duration};
use crate::error::{ConfigError, ConfigProblem, DurationError};
use crate::preset::Preset;
use crate::redact::{Redacted, Secret};
use crate::subject::{Subject, SubjectLayout, Subjects, SubjectsBuilder};

/// The largest `max_payload_bytes` accepted: 64 MiB, the most a NATS server allows.
const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// A duration given to a setter: a [`Duration`] or text such as `"30s"` (parsed by
/// [`parse_duration`] in [`ConfigBuilder::build`], so that bad text is collected with every
/// other problem).
///
/// ```
/// use std::time::Duration;
/// use jetstream_bridge_config::DurationInput;
///
/// assert_eq!(DurationInput::from("1m").resolve(), Ok(Duration::from_secs(60)));
/// assert_eq!(DurationInput::from(Duration::from_secs(2)).resolve(), Ok(Duration::from_secs(2)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DurationInput(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Duration(Duration),
    Text(String),
}

impl DurationInput {
    /// The duration, parsing text if needed.
    ///
    /// # Errors
    ///
    /// [`DurationError`] when the text does not parse or the duration exceeds what NATS can
    /// store.
    pub fn resolve(&self) -> Result<Duration, DurationError> {
        match &self.0 {
            Repr::Duration(d) => check_nats_range(*d).map(|()| *d),
            Repr::Text(s) => parse_duration(s),
        }
    }

    /// How the value is shown in a problem: the text as given, or the formatted duration.
    fn shown(&self) -> String {
        match &self.0 {
            Repr::Duration(d) => format_duration(*d),
            Repr::Text(s) => s.clone(),
        }
    }
}

impl fmt::Debug for DurationInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Duration(d) => write!(f, "{}", format_duration(*d)),
            Repr::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<Duration> for DurationInput {
    fn from(d: Duration) -> Self {
        Self(Repr::Duration(d))
    }
}

impl From<&str> for DurationInput {
    fn from(s: &str) -> Self {
        Self(Repr::Text(s.to_owned()))
    }
}

impl From<String> for DurationInput {
    fn from(s: String) -> Self {
        Self(Repr::Text(s))
    }
}

impl From<&String> for DurationInput {
    fn from(s: &String) -> Self {
        Self(Repr::Text(s.clone()))
    }
}

/// Builds a [`Config`]: consuming `#[must_use]` setters, and every check in
/// [`build`](Self::build), which reports all problems at once.
///
/// Start with [`Config::builder`] or [`ConfigBuilder::from_env`]. Options left alone keep the
/// gem's defaults (listed on each setter). [`preset`](Self::preset) sets a bundle of options;
/// setters called after it override them, setters called before it are overwritten.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    pub(crate) subjects: SubjectsBuilder,
    nats_urls: Redacted<String>,
    connect_retry_attempts: u32,
    connect_retry_delay: DurationInput,
    connect_timeout: DurationInput,
    connection_name: Option<String>,
    use_outbox: bool,
    use_inbox: bool,
    use_dlq: bool,
    inbox_prefix: String,
    disable_js_api: bool,
    consumer_mode: ConsumerMode,
    batch_size: usize,
    max_deliver: u32,
    ack_wait: DurationInput,
    backoff: Vec<DurationInput>,
    max_ack_pending: Option<u32>,
    handler_concurrency: usize,
    max_payload_bytes: usize,
    stream_replicas: usize,
    duplicate_window: DurationInput,
    tls_required: bool,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    creds_file: Option<PathBuf>,
    nkey_seed: Option<Secret>,
    database_url: Option<Redacted<String>>,
    preset: Option<Preset>,
    /// Problems found while reading the environment (reported by `build`).
    pub(crate) env_problems: Vec<ConfigProblem>,
    /// `(field, variable)` for values read from the environment and not overridden since.
    pub(crate) origins: Vec<(&'static str, &'static str)>,
}

impl ConfigBuilder {
    /// Same as [`Config::builder`].
    pub fn new(
        env: impl Into<String>,
        app_name: impl Into<String>,
        destination_app: impl Into<String>,
    ) -> Self {
        let secs = Duration::from_secs;
        Self {
            subjects: Subjects::builder(env, app_name, destination_app),
            nats_urls: Redacted::new(DEFAULT_NATS_URL.to_owned()),
            connect_retry_attempts: 3,
            connect_retry_delay: secs(2).into(),
            connect_timeout: secs(5).into(),
            connection_name: None,
            use_outbox: false,
            use_inbox: false,
            use_dlq: true,
            inbox_prefix: "_INBOX".to_owned(),
            disable_js_api: true,
            consumer_mode: ConsumerMode::Pull,
            batch_size: 25,
            max_deliver: 5,
            ack_wait: secs(30).into(),
            backoff: [1, 5, 15, 30, 60].map(|s| secs(s).into()).to_vec(),
            max_ack_pending: None,
            handler_concurrency: 1,
            max_payload_bytes: 1024 * 1024,
            stream_replicas: 1,
            duplicate_window: secs(120).into(),
            tls_required: false,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            creds_file: None,
            nkey_seed: None,
            database_url: None,
            preset: None,
            env_problems: Vec::new(),
            origins: Vec::new(),
        }
    }

    /// A setter was called: the value no longer comes from the environment.
    fn touch(&mut self, field: &str) {
        self.origins.retain(|(f, _)| *f != field);
    }

    /// Applies a [`Preset`]: sets `use_outbox`, `use_inbox`, `use_dlq`, `max_deliver`,
    /// `ack_wait` and `backoff`. Later setters override these.
    pub fn preset(mut self, preset: Preset) -> Self {
        let s = preset.settings();
        for field in [
            "use_outbox",
            "use_inbox",
            "use_dlq",
            "max_deliver",
            "ack_wait",
            "backoff",
        ] {
            self.touch(field);
        }
        self.use_outbox = s.use_outbox;
        self.use_inbox = s.use_inbox;
        self.use_dlq = s.use_dlq;
        self.max_deliver = s.max_deliver;
        self.ack_wait = s.ack_wait.into();
        self.backoff = s.backoff.into_iter().map(DurationInput::from).collect();
        self.preset = Some(preset);
        self
    }

    /// The environment name (replaces the one given to [`Config::builder`] or read from
    /// `NATS_ENV`): a subject token, required by the env-prefixed layout; with
    /// [`SubjectLayout::EnvLess`] it may be empty.
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.touch("env");
        self.subjects.set_env(env.into());
        self
    }

    /// This service's name (replaces the one given to [`Config::builder`] or read from
    /// `APP_NAME`): a subject token, not `dlq`, different from `destination_app`.
    pub fn app_name(mut self, app_name: impl Into<String>) -> Self {
        self.touch("app_name");
        self.subjects.set_app_name(app_name.into());
        self
    }

    /// The peer service's name (replaces the one given to [`Config::builder`] or read from
    /// `DESTINATION_APP`): a subject token, not `dlq`.
    pub fn destination_app(mut self, destination_app: impl Into<String>) -> Self {
        self.touch("destination_app");
        self.subjects.set_destination_app(destination_app.into());
        self
    }

    /// The subject layout (default [`SubjectLayout::EnvPrefixed`]; [`SubjectLayout::EnvLess`]
    /// allows an empty env).
    pub fn layout(mut self, layout: SubjectLayout) -> Self {
        self.touch("layout");
        self.subjects.set_layout(layout);
        self
    }

    /// Comma-separated NATS server URLs (default [`DEFAULT_NATS_URL`]); see
    /// [`NatsUrls`](crate::NatsUrls) for the rules.
    pub fn nats_urls(mut self, urls: impl Into<String>) -> Self {
        self.touch("nats_urls");
        self.nats_urls = Redacted::new(urls.into());
        self
    }

    /// Connection attempts before giving up (default 3, at least 1).
    pub fn connect_retry_attempts(mut self, attempts: u32) -> Self {
        self.touch("connect_retry_attempts");
        self.connect_retry_attempts = attempts;
        self
    }

    /// Base delay between connection attempts, multiplied by the attempt number (default 2s;
    /// zero allowed).
    pub fn connect_retry_delay(mut self, delay: impl Into<DurationInput>) -> Self {
        self.touch("connect_retry_delay");
        self.connect_retry_delay = delay.into();
        self
    }

    /// Timeout of one connection attempt (default 5s, positive).
    pub fn connect_timeout(mut self, timeout: impl Into<DurationInput>) -> Self {
        self.touch("connect_timeout");
        self.connect_timeout = timeout.into();
        self
    }

    /// The client connection name shown by the server (default: none; non-empty, no control
    /// characters).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.touch("connection_name");
        self.connection_name = Some(name.into());
        self
    }

    /// Publish through the transactional outbox (default `false`).
    pub fn use_outbox(mut self, on: bool) -> Self {
        self.touch("use_outbox");
        self.use_outbox = on;
        self
    }

    /// Deduplicate consumed events through the inbox (default `false`).
    pub fn use_inbox(mut self, on: bool) -> Self {
        self.touch("use_inbox");
        self.use_inbox = on;
        self
    }

    /// Dead-letter failed events (default `true`).
    pub fn use_dlq(mut self, on: bool) -> Self {
        self.touch("use_dlq");
        self.use_dlq = on;
        self
    }

    /// Prefix for request/reply inboxes (default `_INBOX`): a literal subject, dots allowed
    /// (`_INBOX.orders`, `$RPC`).
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.touch("inbox_prefix");
        self.inbox_prefix = prefix.into();
        self
    }

    /// Overrides the stream name (default `[{env}-]jetstream-bridge-stream`).
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.touch("stream_name");
        self.subjects.set_stream_name(name.into());
        self
    }

    /// Overrides the durable consumer name (default `[{env}-]{app}-workers`).
    pub fn durable_name(mut self, name: impl Into<String>) -> Self {
        self.touch("durable_name");
        self.subjects.set_durable_name(name.into());
        self
    }

    /// Overrides the push delivery subject (default `{destination}.worker`; a literal subject).
    pub fn delivery_subject(mut self, subject: impl Into<String>) -> Self {
        self.touch("delivery_subject");
        self.subjects.set_delivery_subject(subject.into());
        self
    }

    /// Overrides the push consumer's queue group (default: the durable name; a subject token).
    pub fn push_consumer_group(mut self, group: impl Into<String>) -> Self {
        self.touch("push_consumer_group");
        self.subjects.set_push_group(group.into());
        self
    }

    /// Skip JetStream management calls at runtime (default `true`).
    pub fn disable_js_api(mut self, disable: bool) -> Self {
        self.touch("disable_js_api");
        self.disable_js_api = disable;
        self
    }

    /// Pull (default) or push.
    pub fn consumer_mode(mut self, mode: ConsumerMode) -> Self {
        self.touch("consumer_mode");
        self.consumer_mode = mode;
        self
    }

    /// Messages per fetch (default 25, at least 1, at most `max_ack_pending` when that is set).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.touch("batch_size");
        self.batch_size = size;
        self
    }

    /// Deliveries before dead-lettering (default 5, at least 1).
    pub fn max_deliver(mut self, max: u32) -> Self {
        self.touch("max_deliver");
        self.max_deliver = max;
        self
    }

    /// Server-side ack timeout (default 30s, positive).
    pub fn ack_wait(mut self, wait: impl Into<DurationInput>) -> Self {
        self.touch("ack_wait");
        self.ack_wait = wait.into();
        self
    }

    /// NAK delays per failed delivery (default `[1s, 5s, 15s, 30s, 60s]`; non-empty, each
    /// positive, at most `max_deliver` of them).
    ///
    /// After failed delivery `n` the bridge waits `backoff[n-1]` (the last entry repeating), and
    /// the last delivery goes to the DLQ, so only the first `max_deliver - 1` delays ever apply.
    /// One delay per delivery is accepted (the gem's defaults, 5 deliveries and 5 delays, do
    /// that; [`Config::warnings`] lists the delay that never applies); more is an error.
    pub fn backoff<I>(mut self, delays: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<DurationInput>,
    {
        self.touch("backoff");
        self.backoff = delays.into_iter().map(Into::into).collect();
        self
    }

    /// The consumer's `max_ack_pending` (default: the server's; at least 1).
    pub fn max_ack_pending(mut self, max: u32) -> Self {
        self.touch("max_ack_pending");
        self.max_ack_pending = Some(max);
        self
    }

    /// Messages handled at once (default 1, at least 1).
    pub fn handler_concurrency(mut self, n: usize) -> Self {
        self.touch("handler_concurrency");
        self.handler_concurrency = n;
        self
    }

    /// Largest payload published (default 1 MiB; 1 byte..=64 MiB).
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.touch("max_payload_bytes");
        self.max_payload_bytes = bytes;
        self
    }

    /// Replicas of a stream created by topology (default 1; 1..=5).
    pub fn stream_replicas(mut self, replicas: usize) -> Self {
        self.touch("stream_replicas");
        self.stream_replicas = replicas;
        self
    }

    /// The stream's duplicate window (default 2 min, positive).
    pub fn duplicate_window(mut self, window: impl Into<DurationInput>) -> Self {
        self.touch("duplicate_window");
        self.duplicate_window = window.into();
        self
    }

    /// Require TLS even for `nats://` URLs (default `false`).
    pub fn tls_required(mut self, required: bool) -> Self {
        self.touch("tls_required");
        self.tls_required = required;
        self
    }

    /// A CA certificate file (PEM) to trust. The file is not read here.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.touch("tls_ca_file");
        self.tls_ca_file = Some(path.into());
        self
    }

    /// The client certificate file (PEM); requires [`tls_client_key`](Self::tls_client_key).
    pub fn tls_client_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.touch("tls_client_cert");
        self.tls_client_cert = Some(path.into());
        self
    }

    /// The client key file (PEM); requires [`tls_client_cert`](Self::tls_client_cert).
    pub fn tls_client_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.touch("tls_client_key");
        self.tls_client_key = Some(path.into());
        self
    }

    /// A NATS `.creds` file; exclusive with [`nkey_seed`](Self::nkey_seed).
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.touch("creds_file");
        self.creds_file = Some(path.into());
        self
    }

    /// An NKey seed (`SU…`); exclusive with [`creds_file`](Self::creds_file). Never shown.
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.touch("nkey_seed");
        self.nkey_seed = Some(Secret::new(seed));
        self
    }

    /// The Postgres URL for the outbox and inbox (optional). Shown only redacted.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.touch("database_url");
        self.database_url = Some(Redacted::new(url.into()));
        self
    }

    /// Validates every option and builds the [`Config`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every problem found (unreadable environment values first, then
    /// subjects and names, URLs, and the remaining options in setter order).
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut p = self.env_problems.clone();

        let subjects = self.subjects.validate(&mut p);
        let nats_urls = crate::url::parse_into(self.nats_urls.expose(), &mut p);

        at_least(
            &mut p,
            "connect_retry_attempts",
            self.connect_retry_attempts.into(),
            1,
        );
        let connect_retry_delay = duration(
            &mut p,
            "connect_retry_delay",
            &self.connect_retry_delay,
            true,
        );
        let connect_timeout = duration(&mut p, "connect_timeout", &self.connect_timeout, false);
        if let Some(name) = &self.connection_name {
            let reason = if name.is_empty() {
                Some("must not be empty")
            } else if name.chars().any(char::is_control) {
                Some("must not contain control characters")
            } else {
                None
            };
            if let Some(reason) = reason {
                p.push(ConfigProblem::InvalidValue {
                    field: "connection_name",
                    value: name.clone(),
                    reason,
                });
            }
        }

        let inbox_prefix = match Subject::new(self.inbox_prefix.as_str()) {
            Ok(s) => Some(s),
            Err(reason) => {
                p.push(ConfigProblem::InvalidSubject {
                    field: "inbox_prefix",
                    value: self.inbox_prefix.clone(),
                    reason,
                });
                None
            }
        };

        at_least(&mut p, "batch_size", to_u64(self.batch_size), 1);
        at_least(&mut p, "max_deliver", self.max_deliver.into(), 1);
        let ack_wait = duration(&mut p, "ack_wait", &self.ack_wait, false);
        let backoff = backoff(&mut p, &self.backoff);
        if self.max_deliver >= 1 && to_u64(self.backoff.len()) > u64::from(self.max_deliver) {
            p.push(ConfigProblem::BackoffTooLong {
                delays: self.backoff.len(),
                max_deliver: self.max_deliver,
            });
        }
        if let Some(max) = self.max_ack_pending {
            at_least(&mut p, "max_ack_pending", max.into(), 1);
            if max >= 1 && to_u64(self.batch_size) > u64::from(max) {
                p.push(ConfigProblem::Conflict {
                    field: "batch_size",
                    other: "max_ack_pending",
                    reason: "a fetch cannot hold more messages than may be pending",
                });
            }
        }
        at_least(
            &mut p,
            "handler_concurrency",
            to_u64(self.handler_concurrency),
            1,
        );
        if !(1..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload_bytes) {
            p.push(ConfigProblem::OutOfRange {
                field: "max_payload_bytes",
                value: self.max_payload_bytes.to_string(),
                expected: "1..=67108864 (64 MiB)",
            });
        }
        if !(1..=5).contains(&self.stream_replicas) {
            p.push(ConfigProblem::OutOfRange {
                field: "stream_replicas",
                value: self.stream_replicas.to_string(),
                expected: "1..=5",
            });
        }
        let duplicate_window = duration(&mut p, "duplicate_window", &self.duplicate_window, false);

        for (field, path) in [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_client_cert", &self.tls_client_cert),
            ("tls_client_key", &self.tls_client_key),
            ("creds_file", &self.creds_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                p.push(ConfigProblem::InvalidValue {
                    field,
                    value: String::new(),
                    reason: "must not be empty",
                });
            }
        }
        match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(_), None) => p.push(ConfigProblem::Conflict {
                field: "tls_client_cert",
                other: "tls_client_key",
                reason: "a client certificate needs its key",
            }),
            (None, Some(_)) => p.push(ConfigProblem::Conflict {
                field: "tls_client_key",
                other: "tls_client_cert",
                reason: "a client key needs its certificate",
            }),
            _ => {}
        }
        if self.creds_file.is_some() && self.nkey_seed.is_some() {
            p.push(ConfigProblem::Conflict {
                field: "nkey_seed",
                other: "creds_file",
                reason: "use either a creds file or an NKey seed, not both",
            });
        }
        if let Some(seed) = &self.nkey_seed {
            if !looks_like_nkey_seed(seed.expose_secret()) {
                p.push(ConfigProblem::InvalidSecret {
                    field: "nkey_seed",
                    reason: "not an NKey seed (expected base32 text starting with `S`, e.g. `SU…`)",
                });
            }
        }
        if self
            .database_url
            .as_ref()
            .is_some_and(|u| u.expose().is_empty())
        {
            p.push(ConfigProblem::InvalidSecret {
                field: "database_url",
                reason: "must not be empty",
            });
        }

        let (
            true,
            Some(subjects),
            Some(nats_urls),
            Some(connect_retry_delay),
            Some(connect_timeout),
            Some(inbox_prefix),
            Some(ack_wait),
            Some(backoff),
            Some(duplicate_window),
        ) = (
            p.is_empty(),
            subjects,
            nats_urls,
            connect_retry_delay,
            connect_timeout,
            inbox_prefix,
            ack_wait,
            backoff,
            duplicate_window,
        )
        else {
            return Err(ConfigError::with_origins(p, self.origins));
        };

        Ok(Config {
            subjects,
            nats_urls,
            connect_retry_attempts: self.connect_retry_attempts,
            connect_retry_delay,
            connect_timeout,
            connection_name: self.connection_name,
            use_outbox: self.use_outbox,
            use_inbox: self.use_inbox,
            use_dlq: self.use_dlq,
            inbox_prefix,
            disable_js_api: self.disable_js_api,
            consumer_mode: self.consumer_mode,
            batch_size: self.batch_size,
            max_deliver: self.max_deliver,
            ack_wait,
            backoff,
            max_ack_pending: self.max_ack_pending,
            handler_concurrency: self.handler_concurrency,
            max_payload_bytes: self.max_payload_bytes,
            stream_replicas: self.stream_replicas,
            duplicate_window,
            tls_required: self.tls_required,
            tls_ca_file: self.tls_ca_file,
            tls_client_cert: self.tls_client_cert,
            tls_client_key: self.tls_client_key,
            creds_file: self.creds_file,
            nkey_seed: self.nkey_seed,
            database_url: self.database_url,
            preset: self.preset,
        })
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn at_least(p: &mut Vec<ConfigProblem>, field: &'static str, value: u64, min: u64) {
    if value < min {
        p.push(ConfigProblem::OutOfRange {
            field,
            value: value.to_string(),
            expected: "at least 1",
        });
    }
}

fn duration(
    p: &mut Vec<ConfigProblem>,
    field: &'static str,
    input: &DurationInput,
    allow_zero: bool,
) -> Option<Duration> {
    match input.resolve() {
        Ok(d) if d.is_zero() && !allow_zero => {
            p.push(ConfigProblem::InvalidDuration {
                field,
                value: input.shown(),
                reason: DurationError::Zero,
            });
            None
        }
        Ok(d) => Some(d),
        Err(reason) => {
            p.push(ConfigProblem::InvalidDuration {
                field,
                value: input.shown(),
                reason,
            });
            None
        }
    }
}

fn backoff(p: &mut Vec<ConfigProblem>, inputs: &[DurationInput]) -> Option<Vec<Duration>> {
    if inputs.is_empty() {
        p.push(ConfigProblem::Missing {
            field: "backoff",
            reason: "at least one delay is required",
        });
        return None;
    }
    let before = p.len();
    let mut out = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        match input.resolve() {
            Ok(d) if d.is_zero() => p.push(ConfigProblem::InvalidBackoff {
                index,
                value: input.shown(),
                reason: DurationError::Zero,
            }),
            Ok(d) => out.push(d),
            Err(reason) => p.push(ConfigProblem::InvalidBackoff {
                index,
                value: input.shown(),
                reason,
            }),
        }
    }
    (p.len() == before).then_some(out)
}

/// NKey seeds are base32 (`A-Z2-7`) and start with `S` (`SU…` for users).
fn looks_like_nkey_seed(seed: &str) -> bool {
    seed.len() >= 2
        && seed.starts_with('S')
        && seed
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{NatsUrlError, SubjectError};

    fn base() -> ConfigBuilder {
        Config::builder("production", "orders", "billing")
    }

    fn problems(b: ConfigBuilder) -> Vec<ConfigProblem> {
        b.build().unwrap_err().into_problems()
    }

    fn single(b: ConfigBuilder) -> ConfigProblem {
        let mut p = problems(b);
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = base().build().unwrap();
        assert_eq!(c.nats_urls().expose_urls(), [DEFAULT_NATS_URL]);
        assert_eq!(c.connect_retry_attempts(), 3);
        assert_eq!(c.connect_retry_delay(), Duration::from_secs(2));
        assert_eq!(c.connect_timeout(), Duration::from_secs(5));
        assert_eq!(c.connection_name(), None);
        assert!(!c.use_outbox());
        assert!(!c.use_inbox());
        assert!(c.use_dlq());
        assert_eq!(c.inbox_prefix(), "_INBOX");
        assert!(c.disable_js_api());
        assert_eq!(c.consumer_mode(), ConsumerMode::Pull);
        assert_eq!(c.batch_size(), 25);
        assert_eq!(c.max_deliver(), 5);
        assert_eq!(c.ack_wait(), Duration::from_secs(30));
        assert_eq!(
            c.backoff(),
            [1, 5, 15, 30, 60].map(Duration::from_secs).as_slice()
        );
        assert_eq!(c.max_ack_pending(), None);
        assert_eq!(c.handler_concurrency(), 1);
        assert_eq!(c.max_payload_bytes(), 1024 * 1024);
        assert_eq!(c.stream_replicas(), 1);
        assert_eq!(c.duplicate_window(), Duration::from_secs(120));
        assert!(!c.tls_required());
        assert_eq!(c.tls_ca_file(), None);
        assert_eq!(c.tls_client_cert(), None);
        assert_eq!(c.tls_client_key(), None);
        assert_eq!(c.creds_file(), None);
        assert!(c.nkey_seed().is_none());
        assert!(c.database_url().is_none());
        assert_eq!(c.preset(), None);
        assert_eq!(c.layout(), SubjectLayout::EnvPrefixed);
        assert_eq!(c.env().unwrap(), "production");
        assert_eq!(c.app_name(), "orders");
        assert_eq!(c.destination_app(), "billing");
        assert_eq!(c.stream_name(), "production-jetstream-bridge-stream");
        assert_eq!(c.durable_name(), "production-orders-workers");
    }

    #[test]
    fn setters_are_applied() {
        let c = base()
            .nats_urls("tls://a:1,nats://b")
            .connect_retry_attempts(5)
            .connect_retry_delay(Duration::ZERO)
            .connect_timeout("1500ms")
            .connection_name("orders-svc")
            .use_outbox(true)
            .use_inbox(true)
            .use_dlq(false)
            .inbox_prefix("_INBOX.orders")
            .stream_name("my-stream")
            .durable_name("my-durable")
            .delivery_subject("deliver.orders")
            .push_consumer_group("grp")
            .disable_js_api(false)
            .consumer_mode(ConsumerMode::Push)
            .batch_size(10)
            .max_deliver(3)
            .ack_wait(Duration::from_secs(45))
            .backoff(vec![Duration::from_millis(100)])
            .max_ack_pending(10)
            .handler_concurrency(4)
            .max_payload_bytes(MAX_PAYLOAD_LIMIT)
            .stream_replicas(5)
            .duplicate_window("1m")
            .tls_required(true)
            .tls_ca_file("/ca.pem")
            .tls_client_cert("/c.pem")
            .tls_client_key("/k.pem")
            .creds_file("/x.creds")
            .database_url("postgres://u:p@db/app")
            .build()
            .unwrap();
        assert_eq!(c.nats_urls().len(), 2);
        assert!(c.nats_urls().any_tls());
        assert_eq!(c.connect_retry_attempts(), 5);
        assert_eq!(c.connect_retry_delay(), Duration::ZERO);
        assert_eq!(c.connect_timeout(), Duration::from_millis(1500));
        assert_eq!(c.connection_name(), Some("orders-svc"));
        assert!(c.use_outbox() && c.use_inbox() && !c.use_dlq());
        assert_eq!(c.inbox_prefix(), "_INBOX.orders");
        assert_eq!(c.stream_name(), "my-stream");
        assert_eq!(c.durable_name(), "my-durable");
        assert_eq!(c.subjects().delivery_subject(), "deliver.orders");
        assert_eq!(c.subjects().push_group(), "grp");
        assert!(!c.disable_js_api());
        assert_eq!(c.consumer_mode(), ConsumerMode::Push);
        assert_eq!(c.batch_size(), 10);
        assert_eq!(c.max_deliver(), 3);
        assert_eq!(c.ack_wait(), Duration::from_secs(45));
        assert_eq!(c.backoff(), [Duration::from_millis(100)]);
        assert_eq!(c.max_ack_pending(), Some(10));
        assert_eq!(c.handler_concurrency(), 4);
        assert_eq!(c.max_payload_bytes(), MAX_PAYLOAD_LIMIT);
        assert_eq!(c.stream_replicas(), 5);
        assert_eq!(c.duplicate_window(), Duration::from_secs(60));
        assert!(c.tls_required());
        assert!(c.tls_ca_file().is_some() && c.tls_client_cert().is_some());
        assert!(c.tls_client_key().is_some() && c.creds_file().is_some());
        assert_eq!(c.database_url().unwrap().expose(), "postgres://u:p@db/app");
    }

    #[test]
    fn backoff_accepts_strings_durations_and_owned_strings() {
        let c = base().backoff(["250ms", "1.5s"]).build().unwrap();
        assert_eq!(
            c.backoff(),
            [Duration::from_millis(250), Duration::from_millis(1500)]
        );
        let owned = vec![String::from("2s")];
        let c = base().backoff(&owned).build().unwrap();
        assert_eq!(c.backoff(), [Duration::from_secs(2)]);
        let c = base().backoff(owned).build().unwrap();
        assert_eq!(c.backoff(), [Duration::from_secs(2)]);
    }

    #[test]
    fn numeric_ranges_are_checked() {
        for (b, field) in [
            (base().connect_retry_attempts(0), "connect_retry_attempts"),
            (base().batch_size(0), "batch_size"),
            (base().max_deliver(0), "max_deliver"),
            (base().handler_concurrency(0), "handler_concurrency"),
            (base().max_payload_bytes(0), "max_payload_bytes"),
            (
                base().max_payload_bytes(MAX_PAYLOAD_LIMIT + 1),
                "max_payload_bytes",
            ),
            (base().stream_replicas(0), "stream_replicas"),
            (base().stream_replicas(6), "stream_replicas"),
            (base().max_ack_pending(0), "max_ack_pending"),
        ] {
            match single(b) {
                ConfigProblem::OutOfRange { field: f, .. } => assert_eq!(f, field),
                other => panic!("{field}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn replicas_bounds_are_inclusive() {
        assert!(base().stream_replicas(1).build().is_ok());
        assert!(base().stream_replicas(5).build().is_ok());
        assert!(base().max_payload_bytes(1).build().is_ok());
    }

    #[test]
    fn durations_must_be_positive_except_the_retry_delay() {
        for (b, field, value) in [
            (base().ack_wait("0s"), "ack_wait", "0s"),
            (base().ack_wait(Duration::ZERO), "ack_wait", "0s"),
            (base().connect_timeout("0ms"), "connect_timeout", "0ms"),
            (
                base().duplicate_window(Duration::ZERO),
                "duplicate_window",
                "0s",
            ),
        ] {
            assert_eq!(
                single(b),
                ConfigProblem::InvalidDuration {
                    field,
                    value: value.into(),
                    reason: DurationError::Zero
                }
            );
        }
        assert!(base().connect_retry_delay("0s").build().is_ok());
    }

    #[test]
    fn unparsable_durations_are_collected() {
        let p = problems(
            base()
                .ack_wait("30")
                .connect_timeout("-1s")
                .duplicate_window("2 fortnights"),
        );
        assert_eq!(
            p,
            [
                ConfigProblem::InvalidDuration {
                    field: "connect_timeout",
                    value: "-1s".into(),
                    reason: DurationError::Negative
                },
                ConfigProblem::InvalidDuration {
                    field: "ack_wait",
                    value: "30".into(),
                    reason: DurationError::MissingUnit
                },
                ConfigProblem::InvalidDuration {
                    field: "duplicate_window",
                    value: "2 fortnights".into(),
                    reason: DurationError::UnknownUnit {
                        unit: "fortnights".into()
                    }
                },
            ]
        );
    }

    #[test]
    fn durations_beyond_what_nats_stores_are_rejected() {
        assert_eq!(
            single(base().ack_wait(Duration::MAX)),
            ConfigProblem::InvalidDuration {
                field: "ack_wait",
                value: format_duration(Duration::MAX),
                reason: DurationError::OutOfRange
            }
        );
    }

    #[test]
    fn backoff_rules() {
        assert_eq!(
            single(base().backoff(Vec::<&str>::new())),
            ConfigProblem::Missing {
                field: "backoff",
                reason: "at least one delay is required"
            }
        );
        assert_eq!(
            problems(base().backoff(["1s", "0s", "x", "5s"])),
            [
                ConfigProblem::InvalidBackoff {
                    index: 1,
                    value: "0s".into(),
                    reason: DurationError::Zero
                },
                ConfigProblem::InvalidBackoff {
                    index: 2,
                    value: "x".into(),
                    reason: DurationError::NumberExpected { offset: 0 }
                },
            ]
        );
    }

    #[test]
    fn backoff_may_list_one_delay_per_delivery_and_no_more() {
        // The defaults (5 deliveries, 5 delays) and every preset build.
        assert!(base().build().is_ok());
        for preset in Preset::ALL {
            assert!(base().preset(preset).build().is_ok(), "{preset}");
        }
        assert!(base()
            .max_deliver(3)
            .backoff(["1s", "2s", "3s"])
            .build()
            .is_ok());
        let p = single(base().max_deliver(3));
        assert_eq!(
            p,
            ConfigProblem::BackoffTooLong {
                delays: 5,
                max_deliver: 3
            }
        );
        assert_eq!(p.field(), Some("backoff"));
        assert_eq!(
            p.to_string(),
            "`backoff` lists 5 delays but `max_deliver` 3 lets at most 2 apply (after failed \
             delivery n the bridge waits backoff[n-1]; the last delivery goes to the DLQ): list \
             at most 3, or raise `max_deliver`"
        );
        assert_eq!(
            single(base().max_deliver(1).backoff(["1s", "2s"])),
            ConfigProblem::BackoffTooLong {
                delays: 2,
                max_deliver: 1
            }
        );
        // A preset sets both; a later max_deliver below its delays is reported.
        assert!(matches!(
            single(base().preset(Preset::MaximumReliability).max_deliver(5)),
            ConfigProblem::BackoffTooLong {
                delays: 10,
                max_deliver: 5
            }
        ));
        // `max_deliver` 0 is reported once, as out of range.
        assert!(matches!(
            single(base().max_deliver(0)),
            ConfigProblem::OutOfRange {
                field: "max_deliver",
                ..
            }
        ));
    }

    #[test]
    fn env_app_and_destination_setters_replace_the_constructor_values() {
        let c = Config::builder("x", "y", "z")
            .env("staging")
            .app_name("orders")
            .destination_app("billing")
            .build()
            .unwrap();
        assert_eq!(c.env().unwrap(), "staging");
        assert_eq!(c.app_name(), "orders");
        assert_eq!(c.destination_app(), "billing");
        assert_eq!(c.subjects().source(), "staging.orders.sync.billing");
        assert_eq!(c.durable_name(), "staging-orders-workers");
        // Validated like the constructor's values.
        let p = problems(base().env("a.b").app_name("").destination_app("dlq"));
        let fields: Vec<_> = p.iter().filter_map(ConfigProblem::field).collect();
        assert_eq!(fields, ["env", "app_name", "destination_app"], "{p:?}");
        // An empty env with the env-less layout.
        let c = base()
            .env("")
            .layout(SubjectLayout::EnvLess)
            .build()
            .unwrap();
        assert_eq!(c.env(), None);
    }

    #[test]
    fn test_preset_keeps_sub_second_backoff() {
        let c = base().preset(Preset::Test).build().unwrap();
        assert_eq!(
            c.backoff(),
            [Duration::from_millis(100), Duration::from_millis(500)]
        );
        assert_eq!(c.max_deliver(), 2);
        assert_eq!(c.ack_wait(), Duration::from_secs(5));
        assert!(!c.use_dlq());
    }

    #[test]
    fn later_setters_override_a_preset_and_a_preset_overrides_earlier_ones() {
        let c = base()
            .max_deliver(9)
            .preset(Preset::MaximumReliability)
            .use_inbox(false)
            .build()
            .unwrap();
        assert_eq!(c.preset(), Some(Preset::MaximumReliability));
        assert_eq!(c.max_deliver(), 10, "preset overrides an earlier setter");
        assert!(!c.use_inbox(), "a later setter overrides the preset");
        assert!(c.use_outbox());
        assert_eq!(c.backoff().len(), 10);
        assert_eq!(c.ack_wait(), Duration::from_secs(60));
    }

    #[test]
    fn batch_size_cannot_exceed_max_ack_pending() {
        assert_eq!(
            single(base().batch_size(50).max_ack_pending(10)),
            ConfigProblem::Conflict {
                field: "batch_size",
                other: "max_ack_pending",
                reason: "a fetch cannot hold more messages than may be pending"
            }
        );
        assert!(base().batch_size(10).max_ack_pending(10).build().is_ok());
    }

    #[test]
    fn tls_client_cert_and_key_go_together() {
        assert!(matches!(
            single(base().tls_client_cert("/c.pem")),
            ConfigProblem::Conflict {
                field: "tls_client_cert",
                other: "tls_client_key",
                ..
            }
        ));
        assert!(matches!(
            single(base().tls_client_key("/k.pem")),
            ConfigProblem::Conflict {
                field: "tls_client_key",
                other: "tls_client_cert",
                ..
            }
        ));
        assert!(base()
            .tls_client_cert("/c.pem")
            .tls_client_key("/k.pem")
            .build()
            .is_ok());
    }

    #[test]
    fn empty_paths_are_rejected() {
        let p = problems(base().tls_ca_file("").creds_file(""));
        let fields: Vec<_> = p.iter().filter_map(ConfigProblem::field).collect();
        assert_eq!(fields, ["tls_ca_file", "creds_file"]);
    }

    #[test]
    fn creds_file_and_nkey_seed_are_exclusive() {
        assert!(matches!(
            single(base().creds_file("/x.creds").nkey_seed("SUABC")),
            ConfigProblem::Conflict {
                field: "nkey_seed",
                other: "creds_file",
                ..
            }
        ));
    }

    #[test]
    fn nkey_seed_is_checked_without_showing_it() {
        let e = base().nkey_seed("hunter2-not-a-seed").build().unwrap_err();
        assert_eq!(
            e.problems(),
            [ConfigProblem::InvalidSecret {
                field: "nkey_seed",
                reason: "not an NKey seed (expected base32 text starting with `S`, e.g. `SU…`)"
            }]
        );
        assert!(!format!("{e} {e:?}").contains("hunter2"));
        for bad in ["", "S", "su", "SUA 1", "AUABC", "SUAB1"] {
            assert!(base().nkey_seed(bad).build().is_err(), "{bad:?}");
        }
        assert!(base()
            .nkey_seed("SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY")
            .build()
            .is_ok());
    }

    #[test]
    fn empty_database_url_is_rejected() {
        assert!(matches!(
            single(base().database_url("")),
            ConfigProblem::InvalidSecret {
                field: "database_url",
                ..
            }
        ));
    }

    #[test]
    fn connection_name_rules() {
        assert!(matches!(
            single(base().connection_name("")),
            ConfigProblem::InvalidValue {
                field: "connection_name",
                ..
            }
        ));
        assert!(matches!(
            single(base().connection_name("a\nb")),
            ConfigProblem::InvalidValue {
                field: "connection_name",
                ..
            }
        ));
        assert!(base().connection_name("orders 1 (eu)").build().is_ok());
    }

    #[test]
    fn inbox_prefix_rules() {
        for ok in ["_INBOX", "_INBOX.app", "$RPC", "a.b.c"] {
            assert!(base().inbox_prefix(ok).build().is_ok(), "{ok}");
        }
        for (bad, reason) in [
            ("", SubjectError::Empty),
            ("_INBOX.>", SubjectError::WildcardNotAllowed { index: 1 }),
            ("_INBOX.*", SubjectError::WildcardNotAllowed { index: 1 }),
            ("a..b", SubjectError::EmptyToken { index: 1 }),
            (".a", SubjectError::EmptyToken { index: 0 }),
            (
                "_INBOX ",
                SubjectError::ForbiddenChar {
                    ch: ' ',
                    position: 6,
                },
            ),
            (
                "a\u{7f}",
                SubjectError::ForbiddenChar {
                    ch: '\u{7f}',
                    position: 1,
                },
            ),
        ] {
            assert_eq!(
                single(base().inbox_prefix(bad)),
                ConfigProblem::InvalidSubject {
                    field: "inbox_prefix",
                    value: bad.into(),
                    reason
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nats_url_problems_are_collected_masked() {
        let e = base()
            .nats_urls("nats://u:hunter2@h:0,ftp://x")
            .build()
            .unwrap_err();
        assert_eq!(e.problems().len(), 2);
        assert!(matches!(
            e.problems()[0],
            ConfigProblem::InvalidNatsUrl {
                index: 0,
                reason: NatsUrlError::InvalidPort,
                ..
            }
        ));
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }

    #[test]
    fn many_problems_are_reported_at_once_in_a_stable_order() {
        let e = Config::builder("", "orders", "orders")
            .nats_urls("")
            .batch_size(0)
            .max_deliver(0)
            .ack_wait("soon")
            .backoff(Vec::<Duration>::new())
            .stream_replicas(9)
            .tls_client_key("/k")
            .build()
            .unwrap_err();
        let fields: Vec<_> = e
            .problems()
            .iter()
            .filter_map(ConfigProblem::field)
            .collect();
        assert_eq!(
            fields,
            [
                "env",
                "destination_app",
                "nats_urls",
                "batch_size",
                "max_deliver",
                "ack_wait",
                "backoff",
                "stream_replicas",
                "tls_client_key",
            ]
        );
        let s = e.to_string();
        assert!(
            s.starts_with("invalid configuration: missing value for `env`"),
            "{s}"
        );
        assert_eq!(s.matches("; ").count(), 8, "{s}");
    }

    #[test]
    fn debug_of_builder_and_config_never_leaks() {
        let b = base()
            .nats_urls("nats://user:hunter2@h:4222")
            .nkey_seed("SUHUNTERTWO")
            .database_url("postgres://app:hunter2@db/app");
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("HUNTER"), "{dbg}");
        let c = b.build().unwrap();
        for shown in [
            format!("{c:?}"),
            format!("{c:#?}"),
            serde_json::to_string(&c).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("HUNTER"), "{shown}");
        }
        assert!(format!("{c:?}").contains("nats://user:***@h:4222"));
    }

    #[test]
    fn config_serializes_for_the_health_report() {
        let c = base()
            .nats_urls("nats://u:p@h")
            .use_outbox(true)
            .nkey_seed("SUABC")
            .tls_ca_file("/ca.pem")
            .database_url("postgres://u:p@db/app")
            .preset(Preset::Staging)
            .build()
            .unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["env"], "production");
        assert_eq!(v["app_name"], "orders");
        assert_eq!(v["destination_app"], "billing");
        assert_eq!(v["use_outbox"], true);
        assert_eq!(v["use_inbox"], true);
        assert_eq!(v["use_dlq"], true);
        assert_eq!(v["stream_name"], "production-jetstream-bridge-stream");
        assert_eq!(v["source_subject"], "production.orders.sync.billing");
        assert_eq!(v["nats_urls"], serde_json::json!(["nats://u:***@h:4222"]));
        assert_eq!(v["ack_wait"], "15s");
        assert_eq!(v["backoff"], serde_json::json!(["1s", "5s", "15s"]));
        assert_eq!(v["duplicate_window"], "2m");
        assert_eq!(v["consumer_mode"], "pull");
        assert_eq!(v["preset"], "staging");
        assert_eq!(v["tls_ca_file"], "/ca.pem");
        assert_eq!(v["tls_client_cert"], serde_json::Value::Null);
        assert_eq!(v["database_url"], "postgres://u:***@db/app");
        assert!(v.get("nkey_seed").is_none(), "secrets are never serialized");
    }

    #[test]
    fn duration_input_debug_and_resolve() {
        assert_eq!(format!("{:?}", DurationInput::from("1m")), "\"1m\"");
        assert_eq!(
            format!("{:?}", DurationInput::from(Duration::from_secs(90))),
            "1m 30s"
        );
        assert_eq!(
            DurationInput::from(&String::from("2s")).resolve(),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            DurationInput::from("nope").resolve(),
            Err(DurationError::NumberExpected { offset: 0 })
        );
    }

    #[test]
    fn consumer_mode_parsing() {
        assert_eq!("PULL".parse(), Ok(ConsumerMode::Pull));
        assert_eq!("push".parse(), Ok(ConsumerMode::Push));
        assert!("poll".parse::<ConsumerMode>().is_err());
        assert_eq!(ConsumerMode::Push.to_string(), "push");
    }
}
