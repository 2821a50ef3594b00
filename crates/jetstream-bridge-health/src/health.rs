//! [`Health`]: the rate-limited probe behind `health_check()`, readiness and liveness.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{consumer, Context};
use async_nats::Client;
use diesel::sql_types::{Array, Text};
use diesel::QueryableByName;
use futures_util::StreamExt;
use jetstream_bridge_config::{format_duration, Config, ConsumerMode};
use jetstream_bridge_consumer::ConsumerStats;
use jetstream_bridge_outbox::{Outbox, PgPool, RelayStats};
use jetstream_bridge_pg::{Component, PgError, PgErrorKind};
use jetstream_bridge_topology::{DlqPlacement, TopologySpec};
use serde::Serialize;
use tokio::sync::watch;

use crate::cache::ProbeCache;
use crate::error::{HealthError, HealthErrorKind, Result};
use crate::metrics::{Metrics, ProbeGauges};
use crate::report::{
    rfc3339, round2, ConfigReport, ConnectionReport, ConsumerReport, DatabaseReport, DlqReport,
    HealthReport, OutboxReport, PerformanceReport, RuntimeReport, SkippedReport, StreamReport,
};
use crate::shutdown::ShutdownSignal;
use crate::watch::Watched;

/// The default minimum time between two uncached probes.
pub const DEFAULT_MIN_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// The default time limit of each request a probe makes.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The default limit after which a consumer whose counters do not change counts as stalled.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(600);

/// Why restricted mode skips the JetStream checks (the gem's wording).
pub const RESTRICTED_REASON: &str = "disable_js_api=true (skip $JS.API.STREAM.INFO)";

/// The JetStream API requests a probe makes, listed in `skipped.requests` when restricted mode
/// leaves them out.
const JS_REQUESTS: [&str; 2] = ["$JS.API.STREAM.INFO", "$JS.API.CONSUMER.INFO"];

/// Which of `$1` (table names, in order) do not resolve in the connection's search path.
const MISSING_TABLES_SQL: &str =
    "SELECT t.name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i) \
     WHERE to_regclass(t.name) IS NULL ORDER BY t.i";

/// One row of [`MISSING_TABLES_SQL`].
#[derive(QueryableByName)]
struct MissingTable {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Builds a [`Health`]; see [`Health::builder`].
#[must_use]
pub struct HealthBuilder {
    config: Config,
    jetstream: Context,
    spec: Option<TopologySpec>,
    pool: Option<PgPool>,
    relay: Option<watch::Receiver<RelayStats>>,
    consumer: Option<watch::Receiver<ConsumerStats>>,
    metrics: Option<Metrics>,
    shutdown: Option<ShutdownSignal>,
    min_probe_interval: Duration,
    probe_timeout: Duration,
    max_outbox_lag: Option<Duration>,
    stall_after: Option<Duration>,
    progress_interval: Option<Duration>,
}

impl fmt::Debug for HealthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthBuilder")
            .field("config", &self.config)
            .field("pool", &self.pool.is_some())
            .field("relay", &self.relay.is_some())
            .field("consumer", &self.consumer.is_some())
            .field("min_probe_interval", &self.min_probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("max_outbox_lag", &self.max_outbox_lag)
            .field("progress_interval", &self.progress_interval)
            .finish_non_exhaustive()
    }
}

impl HealthBuilder {
    /// The topology to check (default `TopologySpec::from_config`, i.e. a separate DLQ stream);
    /// pass the one you provision with, e.g. with [`DlqPlacement::MainStream`].
    pub fn topology(mut self, spec: TopologySpec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// The database pool of the inbox and the outbox. Each probe checks that the database
    /// answers and holds the tables the configuration needs (`jetstream_inbox_events` with
    /// `use_inbox`, `jetstream_outbox_events` with `use_outbox`) and, with `use_outbox`, reads
    /// the backlog (pending count, oldest pending age, failed count). An unreachable database,
    /// a missing table or a failing query makes the report unhealthy and readiness fail.
    pub fn pool(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Watches an outbox relay (`RelayHandle::stats()`): liveness, and the
    /// published/failed counters of [`Metrics`].
    pub fn relay_stats(mut self, stats: watch::Receiver<RelayStats>) -> Self {
        self.relay = Some(stats);
        self
    }

    /// Watches a consumer runtime (`ConsumerHandle::stats()`): liveness, stall detection and
    /// readiness (not ready from the moment it begins shutting down).
    pub fn consumer_stats(mut self, stats: watch::Receiver<ConsumerStats>) -> Self {
        self.consumer = Some(stats);
        self
    }

    /// The metrics the probe refreshes (default: a new [`Metrics`]); pass the one whose
    /// [`middleware`](Metrics::middleware) the consumer uses.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The shutdown signal readiness reads (default: a new one, see
    /// [`Health::set_shutting_down`]). Pass the process's one [`Shutdown`](crate::Shutdown)
    /// (the one given to the relay's and the consumer's `run_until`, or to `Bridge`), so
    /// readiness turns false the moment it is triggered.
    pub fn shutdown_signal(mut self, signal: ShutdownSignal) -> Self {
        self.shutdown = Some(signal);
        self
    }

    /// Minimum time between two uncached probes (default 5 s); calls in between get the last
    /// report marked `cached: true`. Zero probes on every call (tests).
    pub fn min_probe_interval(mut self, interval: Duration) -> Self {
        self.min_probe_interval = interval;
        self
    }

    /// Time limit of each request a probe makes (default 2 s).
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Readiness fails while the oldest unpublished outbox row is older than this (default:
    /// no limit). Needs [`pool`](Self::pool).
    pub fn max_outbox_lag(mut self, lag: Duration) -> Self {
        self.max_outbox_lag = Some(lag);
        self
    }

    /// A watched consumer whose counters do not change for longer than this is stalled, and
    /// liveness fails (default 10 minutes; `None` disables). Its fetch loop updates them on
    /// every pull request, idle or not.
    pub fn stall_after(mut self, limit: Option<Duration>) -> Self {
        self.stall_after = limit;
        self
    }

    /// The consumer runtime's in-progress ack interval (default `ack_wait / 2`, the
    /// consumer's default; pass what you gave `ConsumerBuilder::progress_interval`). Readiness
    /// fails while the durable's `ack_wait` on the server is not longer than it: messages would
    /// be redelivered while their handler still runs. `None`: the runtime sends no in-progress
    /// acks, nothing to compare.
    pub fn progress_interval(mut self, every: Option<Duration>) -> Self {
        self.progress_interval = every.filter(|d| !d.is_zero());
        self
    }

    /// Builds the checker. Makes no request.
    pub fn build(self) -> Health {
        let mut js = self.jetstream;
        js.set_timeout(self.probe_timeout);
        let client = js.client();
        let spec = self
            .spec
            .unwrap_or_else(|| TopologySpec::from_config(&self.config));
        let stall_after = self.stall_after;
        let tables = [
            (self.config.use_inbox(), Component::Inbox),
            (self.config.use_outbox(), Component::Outbox),
        ]
        .into_iter()
        .filter_map(|(on, component)| on.then_some(component.table()))
        .collect();
        let delivery = match self.config.consumer_mode() {
            ConsumerMode::Push => Some(
                self.config
                    .subjects()
                    .delivery_subject()
                    .as_str()
                    .to_owned(),
            ),
            _ => None,
        };
        Health {
            inner: Arc::new(Inner {
                config_report: config_report(&self.config),
                restricted: self.config.disable_js_api(),
                use_outbox: self.config.use_outbox(),
                tables,
                delivery,
                progress_interval: self.progress_interval,
                durable: self.config.durable_name().as_str().to_owned(),
                config: self.config,
                client,
                js,
                spec,
                pool: self.pool,
                relay: self.relay.map(|rx| Mutex::new(Watched::new(rx, None))),
                consumer: self
                    .consumer
                    .map(|rx| Mutex::new(Watched::new(rx, stall_after))),
                metrics: self.metrics.unwrap_or_default(),
                shutdown: self.shutdown.unwrap_or_default(),
                cache: ProbeCache::new(self.min_probe_interval),
                probe_timeout: self.probe_timeout,
                max_outbox_lag: self.max_outbox_lag,
                connected_at: Mutex::new(None),
            }),
        }
    }
}

/// The health checker of one bridge: builds [`HealthReport`]s (the Ruby gem's JSON plus consumer
/// lag, outbox backlog, DLQ depth and runtime liveness), rate-limited; readiness and liveness
/// verdicts; and the [`Metrics`] it refreshes. Cheap to clone (shared state).
///
/// In restricted mode ([`Config::disable_js_api`], the default) a probe makes no `$JS.API`
/// request: it checks the connection, the RTT and the outbox, and says what it skipped.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_config::Config;
/// use jetstream_bridge_health::Health;
///
/// let config = Config::from_env()?;
/// let client = async_nats::connect(config.nats_urls().expose_urls().join(",")).await?;
/// let health = Health::builder(&config, async_nats::jetstream::new(client)).build();
/// let report = health.health_check().await;
/// println!("{}", serde_json::to_string_pretty(&report)?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    config_report: ConfigReport,
    restricted: bool,
    use_outbox: bool,
    /// The bridge tables the configuration needs.
    tables: Vec<&'static str>,
    /// The push runtime's delivery subject; `None` in pull mode.
    delivery: Option<String>,
    progress_interval: Option<Duration>,
    durable: String,
    client: Client,
    js: Context,
    spec: TopologySpec,
    pool: Option<PgPool>,
    relay: Option<Mutex<Watched<RelayStats>>>,
    consumer: Option<Mutex<Watched<ConsumerStats>>>,
    metrics: Metrics,
    shutdown: ShutdownSignal,
    cache: ProbeCache<HealthReport>,
    probe_timeout: Duration,
    max_outbox_lag: Option<Duration>,
    /// The client's connect count and when this checker first saw that connection up.
    connected_at: Mutex<Option<(u64, String)>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("config", &self.inner.config)
            .field("restricted", &self.inner.restricted)
            .field("pool", &self.inner.pool.is_some())
            .finish_non_exhaustive()
    }
}

/// The readiness verdict ([`Health::readiness`]): `GET /health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// Whether the process should receive work.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
    /// Whether the health report behind it was a cached one (`null` when no probe was needed).
    pub cached: Option<bool>,
}

/// The liveness verdict ([`Health::liveness`]): `GET /health/live`. Makes no request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Liveness {
    /// `false` when a watched runtime ended without a shutdown, or the consumer stalled.
    pub live: bool,
    /// Why not (empty when live).
    pub reasons: Vec<String>,
    /// The watched runtimes.
    pub runtime: RuntimeReport,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn config_report(config: &Config) -> ConfigReport {
    ConfigReport {
        env: config.env().map(|e| e.as_str().to_owned()),
        app_name: config.app_name().as_str().to_owned(),
        destination_app: config.destination_app().as_str().to_owned(),
        use_outbox: config.use_outbox(),
        use_inbox: config.use_inbox(),
        use_dlq: config.use_dlq(),
    }
}

/// Runs the NATS request `fut` with the probe timeout; a timeout or an error becomes the
/// masked message.
async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_masked_string()),
        Err(_) => Err(HealthError::new(HealthErrorKind::Timeout).to_masked_string()),
    }
}

/// `error` and its causes, one after the other (a cause whose message the text already ends
/// with, as wrappers often repeat it, is left out), with URL credentials masked.
fn masked_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    crate::mask::mask_credentials(&out)
}

/// A database request of a probe that did not answer within `limit`.
fn database_timeout(limit: Duration) -> HealthError {
    HealthError::with_source(
        HealthErrorKind::Database,
        format!("no answer within {} ms", limit.as_millis()),
    )
}

/// Why a probe's report says the process cannot do its work (empty: it can, as far as the
/// report goes). The outbox lag and the shutdown are [`Health::readiness`]'s own.
fn not_ready_reasons(report: &HealthReport) -> Vec<String> {
    let mut reasons = Vec::new();
    let consumer = &report.consumer;
    if !report.connection.connected {
        reasons.push(format!("NATS {}", report.connection.state));
    } else if report.stream.exists == Some(false) {
        let why = report.stream.error.as_deref().unwrap_or("not found");
        reasons.push(format!("stream {}: {why}", report.stream.name));
    } else if consumer.exists == Some(false) {
        let why = consumer.error.as_deref().unwrap_or("not found");
        reasons.push(format!("durable {}: {why}", consumer.name));
    }
    for problem in &consumer.problems {
        reasons.push(format!("durable {}: {problem}", consumer.name));
    }
    let mut database_down = false;
    if let Some(db) = &report.database {
        if let Some(e) = &db.error {
            database_down = true;
            reasons.push(e.clone());
        }
        for table in &db.missing_tables {
            reasons.push(missing_table(table));
        }
    }
    if let Some(e) = report.outbox.as_ref().and_then(|o| o.error.as_ref()) {
        // The database's own line already says why when it is down or the table is missing.
        let table = Component::Outbox.table();
        let said = database_down
            || report
                .database
                .as_ref()
                .is_some_and(|d| d.missing_tables.contains(&table));
        if !said {
            reasons.push(format!("outbox: {e}"));
        }
    }
    if reasons.is_empty() && !report.healthy {
        reasons.push("unhealthy".to_owned());
    }
    reasons
}

fn missing_table(table: &str) -> String {
    format!("table {table} missing (run `jetstream-bridge migrate`)")
}

fn nats(e: impl std::error::Error + Send + Sync + 'static) -> HealthError {
    HealthError::with_source(HealthErrorKind::Nats, e)
}

fn database(e: impl std::error::Error + Send + Sync + 'static) -> HealthError {
    HealthError::with_source(HealthErrorKind::Database, e)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Health {
    /// Starts a builder for `config`'s bridge on `jetstream`, the application's JetStream
    /// context (e.g. `jetstream_bridge_topology::connect(&config).await?.jetstream()`; for a
    /// JetStream domain or API prefix, a context made with it). Its requests are bounded by
    /// the probe timeout; the connection checks use its client.
    pub fn builder(config: &Config, jetstream: Context) -> HealthBuilder {
        let config_ack_wait = config.ack_wait();
        HealthBuilder {
            config: config.clone(),
            jetstream,
            spec: None,
            pool: None,
            relay: None,
            consumer: None,
            metrics: None,
            shutdown: None,
            min_probe_interval: DEFAULT_MIN_PROBE_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            max_outbox_lag: None,
            stall_after: Some(DEFAULT_STALL_AFTER),
            progress_interval: Some(config_ack_wait / 2).filter(|d| !d.is_zero()),
        }
    }

    /// The health report. At most one uncached probe runs per minimum probe interval (default
    /// 5 s) in this process; other calls, including those arriving while a probe is in flight,
    /// get the latest report with `cached: true`. Never fails: what went wrong is in the
    /// report.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled probe is dropped and the next caller probes.
    pub async fn health_check(&self) -> HealthReport {
        let (mut report, cached) = self.inner.cache.get(|| self.probe()).await;
        report.cached = cached;
        report
    }

    /// The readiness verdict: `false` while the process cannot do its work, each cause a line
    /// of [`Readiness::reasons`]:
    ///
    /// - shutting down ([`set_shutting_down`](Self::set_shutting_down), or the watched
    ///   consumer began its shutdown): answered at once, without a probe or the cache;
    /// - the watched consumer waiting for an unavailable database (its stats'
    ///   `db_outage`): answered at once too;
    /// - NATS not connected;
    /// - the stream or the durable missing, or the durable unusable as the server holds it
    ///   (see [`ConsumerReport::problems`](crate::ConsumerReport::problems)); not checked in
    ///   restricted mode;
    /// - with a [`pool`](HealthBuilder::pool): the database unreachable, a table the
    ///   configuration needs missing, the outbox query failing;
    /// - the outbox lag over [`max_outbox_lag`](HealthBuilder::max_outbox_lag).
    ///
    /// Everything but the shutdown comes from the (possibly cached) health report.
    ///
    /// # Cancel safety
    ///
    /// As [`health_check`](Self::health_check).
    pub async fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.inner.shutdown.is_triggered() {
            reasons.push("shutting down".to_owned());
        }
        if let Some(consumer) = &self.inner.consumer {
            let (stats, liveness) = lock(consumer).observe();
            if liveness.shutting_down {
                reasons.push("consumer runtime shutting down".to_owned());
            } else if stats.db_outage {
                reasons.push("consumer waiting for the database".to_owned());
            }
        }
        if !reasons.is_empty() {
            return Readiness {
                ready: false,
                reasons,
                cached: None,
            };
        }
        let report = self.health_check().await;
        reasons.extend(not_ready_reasons(&report));
        if let (Some(limit), Some(age)) = (
            self.inner.max_outbox_lag,
            report
                .outbox
                .as_ref()
                .and_then(|o| o.oldest_pending_age_seconds),
        ) {
            if age > limit.as_secs_f64() {
                reasons.push(format!(
                    "outbox lag {age:.1}s exceeds {:.1}s",
                    limit.as_secs_f64()
                ));
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            cached: Some(report.cached),
        }
    }

    /// The liveness verdict, from the watched runtimes only (no request): not live when one
    /// ended without a shutdown having begun, or the consumer stalled.
    pub fn liveness(&self) -> Liveness {
        let runtime = self.observe_runtimes();
        let shutting_down = self.inner.shutdown.is_triggered();
        let mut reasons = Vec::new();
        for (name, l) in [("relay", &runtime.relay), ("consumer", &runtime.consumer)] {
            let Some(l) = l else { continue };
            if shutting_down || l.is_live() {
                continue;
            }
            if l.running {
                reasons.push(format!(
                    "{name} made no progress for {}s",
                    l.seconds_since_progress
                ));
            } else {
                reasons.push(format!("{name} runtime ended"));
            }
        }
        Liveness {
            live: reasons.is_empty(),
            reasons,
            runtime,
        }
    }

    /// The shutdown flag readiness reads.
    #[must_use]
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.inner.shutdown
    }

    /// Marks the process as shutting down: readiness fails from now on.
    pub fn set_shutting_down(&self) {
        self.inner.shutdown.trigger();
    }

    /// The metrics this checker refreshes.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The metrics in the text exposition format, refreshed first: the relay counters from its
    /// stats, the gauges from a (rate-limited, possibly cached) probe.
    ///
    /// # Errors
    ///
    /// [`MetricsEncoding`](HealthErrorKind::MetricsEncoding) if the encoder fails.
    ///
    /// # Cancel safety
    ///
    /// As [`health_check`](Self::health_check).
    pub async fn encode_metrics(&self) -> Result<String> {
        self.health_check().await;
        self.observe_runtimes();
        self.inner.metrics.encode()
    }

    fn observe_runtimes(&self) -> RuntimeReport {
        let relay = self.inner.relay.as_ref().map(|w| {
            let (stats, liveness) = lock(w).observe();
            self.inner.metrics.observe_relay(&stats);
            liveness
        });
        let consumer = self.inner.consumer.as_ref().map(|w| {
            let (stats, liveness) = lock(w).observe();
            self.inner.metrics.observe_consumer(&stats);
            liveness
        });
        RuntimeReport { relay, consumer }
    }

    fn connection(&self) -> ConnectionReport {
        let state = self.inner.client.connection_state();
        let connected = state == State::Connected;
        // The client counts every (re)connect: a change means the connection was re-established
        // since the last probe, even if no probe saw it down.
        let connects = self
            .inner
            .client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut since = lock(&self.inner.connected_at);
        match (&*since, connected) {
            (_, false) => *since = None,
            (Some((seen, _)), true) if *seen == connects => {}
            (_, true) => *since = Some((connects, rfc3339(time::OffsetDateTime::now_utc()))),
        }
        ConnectionReport {
            state: match state {
                State::Connected => "connected",
                State::Pending => "connecting",
                State::Disconnected => "disconnected",
            },
            connected,
            connected_at: since.as_ref().map(|(_, at)| at.clone()),
        }
    }

    async fn rtt_ms(&self) -> Option<f64> {
        let started = Instant::now();
        let flushed = bounded(self.inner.probe_timeout, async {
            self.inner.client.flush().await.map_err(nats)
        })
        .await;
        flushed
            .ok()
            .map(|()| round2(started.elapsed().as_secs_f64() * 1000.0))
    }

    async fn stream(&self) -> StreamReport {
        let name = self.inner.spec.stream_name().to_owned();
        match bounded(self.inner.probe_timeout, async {
            self.inner.js.get_stream(&name).await.map_err(nats)
        })
        .await
        {
            Ok(stream) => {
                let info = stream.cached_info();
                StreamReport {
                    exists: Some(true),
                    name,
                    subjects: Some(info.config.subjects.clone()),
                    messages: Some(info.state.messages),
                    error: None,
                    skipped: None,
                    reason: None,
                }
            }
            Err(error) => StreamReport {
                exists: Some(false),
                name,
                subjects: None,
                messages: None,
                error: Some(error),
                skipped: None,
                reason: None,
            },
        }
    }

    async fn consumer(&self) -> ConsumerReport {
        let name = self.inner.durable.clone();
        let info = async {
            let stream = self
                .inner
                .js
                .get_stream_no_info(self.inner.spec.stream_name())
                .await
                .map_err(nats)?;
            stream.consumer_info(&name).await.map_err(nats)
        };
        match bounded(self.inner.probe_timeout, info).await {
            Ok(info) => ConsumerReport {
                name,
                exists: Some(true),
                pending: Some(info.num_pending),
                ack_pending: Some(to_u64(info.num_ack_pending)),
                redelivered: Some(to_u64(info.num_redelivered)),
                error: None,
                skipped: None,
                problems: self.durable_problems(&info.config),
            },
            Err(error) => ConsumerReport {
                name,
                exists: Some(false),
                pending: None,
                ack_pending: None,
                redelivered: None,
                error: Some(error),
                skipped: None,
                problems: Vec::new(),
            },
        }
    }

    /// What the watched consumer saw of the durable: redeliveries while a handler still ran
    /// (how a durable the runtime cannot work with shows in restricted mode).
    fn redelivery_problem(&self) -> Option<String> {
        let stats = lock(self.inner.consumer.as_ref()?).latest();
        (stats.early_redeliveries > 0).then(|| {
            format!(
                "redelivers messages while their handler still runs ({} early redeliveries \
                 seen by the runtime): its ack_wait is shorter than the in-progress ack \
                 interval or it has a server-side backoff (a durable created by the Ruby gem?); \
                 have an admin run `jetstream-bridge ensure-topology --update-drift`, then \
                 restart the consumers",
                stats.early_redeliveries
            )
        })
    }

    /// Why the consumer runtime cannot work with the durable `config` the server holds.
    fn durable_problems(&self, config: &consumer::Config) -> Vec<String> {
        let mut problems = Vec::new();
        if !config.backoff.is_empty() {
            let list: Vec<String> = config.backoff.iter().map(|d| format_duration(*d)).collect();
            problems.push(format!(
                "server-side backoff [{}] replaces ack_wait per delivery (the runtime applies \
                 the configured backoff as NAK delays); provision the durable without it",
                list.join(", ")
            ));
        }
        if let Some(every) = self.inner.progress_interval {
            if config.ack_wait <= every {
                problems.push(format!(
                    "ack_wait {} is not longer than the in-progress ack interval {}: messages \
                     are redelivered while their handler runs",
                    format_duration(config.ack_wait),
                    format_duration(every)
                ));
            }
        }
        let delivers_to = config.deliver_subject.as_deref().filter(|s| !s.is_empty());
        match (&self.inner.delivery, delivers_to) {
            (None, Some(subject)) => problems.push(format!(
                "a push durable (delivering to {subject}) cannot be pulled; the runtime is in \
                 pull mode"
            )),
            (Some(expected), None) => problems.push(format!(
                "a pull durable delivers nothing to {expected}, where the push runtime listens"
            )),
            (Some(expected), Some(subject)) if expected != subject => problems.push(format!(
                "delivers to {subject}, the push runtime listens on {expected}"
            )),
            _ => {}
        }
        problems
    }

    /// The DLQ section when the config uses one (`probe`: ask the server).
    async fn dlq(&self, probe: bool) -> Option<DlqReport> {
        let subject = self.inner.spec.dlq_subject()?.to_owned();
        let stream = match self.inner.spec.dlq_placement() {
            DlqPlacement::MainStream => self.inner.spec.stream_name(),
            _ => self.inner.spec.dlq_stream_name(),
        }
        .to_owned();
        let mut report = DlqReport {
            stream,
            subject,
            depth: None,
            error: None,
            skipped: None,
        };
        if !probe {
            report.skipped = Some(true);
            return Some(report);
        }
        let depth = async {
            let s = self
                .inner
                .js
                .get_stream_no_info(&report.stream)
                .await
                .map_err(nats)?;
            let mut subjects = s.info_with_subjects(&report.subject).await.map_err(nats)?;
            let mut depth = 0_u64;
            while let Some(entry) = subjects.next().await {
                let (subject, count) = entry.map_err(nats)?;
                if subject == report.subject {
                    depth += to_u64(count);
                }
            }
            Ok::<_, HealthError>(depth)
        };
        match bounded(self.inner.probe_timeout, depth).await {
            Ok(d) => report.depth = Some(d),
            Err(e) => report.error = Some(e),
        }
        Some(report)
    }

    /// Whether the database answers and which of the needed tables are missing.
    async fn database(&self) -> Option<DatabaseReport> {
        let pool = self.inner.pool.as_ref()?;
        let tables = self.inner.tables.clone();
        if tables.is_empty() {
            return None;
        }
        let check = async {
            let mut conn = pool.get().await.map_err(jetstream_bridge_pg::pool_error)?;
            let query = diesel::sql_query(MISSING_TABLES_SQL).bind::<Array<Text>, _>(&tables);
            let missing: Vec<MissingTable> = diesel_async::RunQueryDsl::load(query, &mut conn)
                .await
                .map_err(PgError::database)?;
            Ok::<_, PgError>(missing)
        };
        let (reachable, missing, error) =
            match tokio::time::timeout(self.inner.probe_timeout, check).await {
                Ok(Ok(missing)) => (true, missing, None),
                Ok(Err(e)) => {
                    // Only a statement the database answered with an error counts as reachable.
                    let answered = matches!(e.kind(), PgErrorKind::Rejected);
                    (answered, Vec::new(), Some(masked_chain(&e)))
                }
                Err(_) => (
                    false,
                    Vec::new(),
                    Some(database_timeout(self.inner.probe_timeout).to_masked_string()),
                ),
            };
        let missing_tables = tables
            .iter()
            .copied()
            .filter(|t| missing.iter().any(|m| m.name == *t))
            .collect();
        Some(DatabaseReport {
            reachable,
            tables,
            missing_tables,
            error,
        })
    }

    /// The outbox backlog; not asked when `database` already says the database is down or the
    /// outbox table is missing.
    async fn outbox(&self, db: Option<&DatabaseReport>) -> Option<OutboxReport> {
        let pool = self.inner.pool.as_ref().filter(|_| self.inner.use_outbox)?;
        let known = db.and_then(|d| {
            let table = Component::Outbox.table();
            d.error.clone().or_else(|| {
                d.missing_tables
                    .contains(&table)
                    .then(|| missing_table(table))
            })
        });
        if let Some(error) = known {
            return Some(OutboxReport {
                pending: None,
                oldest_pending_age_seconds: None,
                failed: None,
                error: Some(error),
            });
        }
        let backlog = async {
            let mut conn = pool.get().await.map_err(database)?;
            Outbox::backlog(&mut conn).await.map_err(database)
        };
        let backlog = tokio::time::timeout(self.inner.probe_timeout, backlog)
            .await
            .unwrap_or_else(|_| Err(database_timeout(self.inner.probe_timeout)))
            .map_err(|e| e.to_masked_string());
        Some(match backlog {
            Ok(b) => OutboxReport {
                pending: Some(b.unsent),
                oldest_pending_age_seconds: b.oldest_unsent_age.map(|d| round2(d.as_secs_f64())),
                failed: Some(b.failed),
                error: None,
            },
            Err(e) => OutboxReport {
                pending: None,
                oldest_pending_age_seconds: None,
                failed: None,
                error: Some(e),
            },
        })
    }

    /// One uncached probe.
    async fn probe(&self) -> HealthReport {
        let started = Instant::now();
        let checked_at = rfc3339(time::OffsetDateTime::now_utc());
        let connection = self.connection();
        let connected = connection.connected;
        let restricted = self.inner.restricted;
        let ask_js = connected && !restricted;
        let name = self.inner.spec.stream_name().to_owned();

        let rtt = async {
            if connected {
                self.rtt_ms().await
            } else {
                None
            }
        };
        let stream = async {
            if ask_js {
                self.stream().await
            } else {
                StreamReport {
                    exists: if restricted { None } else { Some(false) },
                    name,
                    subjects: None,
                    messages: None,
                    error: None,
                    skipped: restricted.then_some(true),
                    reason: restricted.then_some(RESTRICTED_REASON),
                }
            }
        };
        let consumer = async {
            if ask_js {
                self.consumer().await
            } else {
                ConsumerReport {
                    name: self.inner.durable.clone(),
                    exists: None,
                    pending: None,
                    ack_pending: None,
                    redelivered: None,
                    error: None,
                    skipped: Some(true),
                    problems: Vec::new(),
                }
            }
        };
        let database_and_outbox = async {
            let database = self.database().await;
            let outbox = self.outbox(database.as_ref()).await;
            (database, outbox)
        };
        let (nats_rtt_ms, stream, mut consumer, dlq, (database, outbox)) =
            futures_util::join!(rtt, stream, consumer, self.dlq(ask_js), database_and_outbox);
        let runtime = self.observe_runtimes();
        // Where the durable could be read, its configuration is the better witness.
        if restricted {
            consumer.problems.extend(self.redelivery_problem());
        }

        let healthy = connected
            && (restricted || stream.exists == Some(true))
            && database
                .as_ref()
                .is_none_or(|d| d.error.is_none() && d.missing_tables.is_empty())
            && outbox.as_ref().is_none_or(|o| o.error.is_none());
        self.inner.metrics.set_probe(&ProbeGauges {
            healthy,
            dlq_size: dlq.as_ref().and_then(|d| d.depth),
            consumer_pending: consumer.pending,
            consumer_ack_pending: consumer.ack_pending,
            stream_messages: stream.messages,
            outbox_pending: outbox.as_ref().and_then(|o| o.pending),
            outbox_oldest_age: outbox.as_ref().and_then(|o| o.oldest_pending_age_seconds),
            outbox_failed: outbox.as_ref().and_then(|o| o.failed),
        });
        if !healthy {
            tracing::warn!(state = connection.state, stream_exists = ?stream.exists,
                "jetstream-bridge health check unhealthy");
        }
        HealthReport {
            healthy,
            connection,
            stream,
            performance: PerformanceReport {
                nats_rtt_ms,
                health_check_duration_ms: round2(started.elapsed().as_secs_f64() * 1000.0),
            },
            config: self.inner.config_report.clone(),
            version: env!("CARGO_PKG_VERSION"),
            cached: false,
            checked_at,
            skipped: restricted.then(|| SkippedReport {
                reason: RESTRICTED_REASON,
                requests: JS_REQUESTS.to_vec(),
            }),
            consumer,
            dlq,
            database,
            outbox,
            runtime,
        }
    }
}
