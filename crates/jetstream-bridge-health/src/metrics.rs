//! [`Metrics`]: the Prometheus registry with the Ruby gem's metric names; as a consumer
//! [`MetricsRecorder`] it feeds the per-message ones through the consumer's
//! [`MetricsMiddleware`].

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetstream_bridge_consumer::{
    ConsumerStats, Event, HandlerAction, HandlerError, MetricsMiddleware, MetricsRecorder,
};
use jetstream_bridge_outbox::RelayStats;
use prometheus_client::encoding::{EncodeGaugeValue, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::error::{HealthError, HealthErrorKind, Result};

/// How many distinct `event_type` label values [`Metrics::new`] admits before mapping new ones
/// to [`OTHER_EVENT_TYPE`].
pub const DEFAULT_MAX_EVENT_TYPES: usize = 100;

/// The `event_type` label value of event types past the cap (and of empty or over-long ones).
pub const OTHER_EVENT_TYPE: &str = "other";

/// Longest `event_type` label value kept as is (longer ones count as [`OTHER_EVENT_TYPE`]).
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `status` label of `jetstream_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageStatus {
    /// The handler succeeded (the message is acked).
    Success,
    /// The handler failed with a retryable error (NAKed with backoff; dead-lettered on the
    /// last delivery).
    Retry,
    /// The handler failed permanently (dead-lettered now).
    Permanent,
}

impl MessageStatus {
    /// `success`, `retry` or `permanent`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Retry => "retry",
            Self::Permanent => "permanent",
        }
    }

    fn of(outcome: Result<(), &HandlerError>) -> Self {
        match outcome {
            Ok(()) => Self::Success,
            Err(e) => match e.action() {
                HandlerAction::Permanent => Self::Permanent,
                _ => Self::Retry,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MessageLabels {
    status: &'static str,
    event_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventTypeLabels {
    event_type: String,
}

type DurationFamily = Family<EventTypeLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms .. ~32 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A gauge the probe measures. Until it is set, and again once a probe could not read it
/// (restricted mode, a failed request), it is exported without a sample (only its `# HELP` and
/// `# TYPE` lines), instead of a misleading 0 or a stale value.
#[derive(Debug, Default)]
struct ProbeGauge<N = i64, A = AtomicI64> {
    gauge: Gauge<N, A>,
    measured: Arc<AtomicBool>,
}

impl<N, A> Clone for ProbeGauge<N, A> {
    fn clone(&self) -> Self {
        Self {
            gauge: self.gauge.clone(),
            measured: self.measured.clone(),
        }
    }
}

impl ProbeGauge {
    fn set(&self, value: Option<u64>) {
        self.set_with(value.map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
    }
}

impl<N, A: Atomic<N>> ProbeGauge<N, A> {
    /// `Some`: the sample, `None`: no sample.
    fn set_with(&self, value: Option<N>) {
        let measured = value.is_some();
        if let Some(v) = value {
            self.gauge.set(v);
        }
        self.measured.store(measured, Ordering::Release);
    }
}

impl<N, A> EncodeMetric for ProbeGauge<N, A>
where
    N: EncodeGaugeValue,
    A: Atomic<N>,
{
    fn encode(&self, encoder: MetricEncoder<'_>) -> std::result::Result<(), fmt::Error> {
        if self.measured.load(Ordering::Acquire) {
            self.gauge.encode(encoder)
        } else {
            Ok(())
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The registry and every metric of the bridge. Cheap to clone (shared state).
///
/// | metric | type | labels | fed by |
/// |---|---|---|---|
/// | `jetstream_messages_total` | counter | `status`, `event_type` | [`Metrics::middleware`] |
/// | `jetstream_processing_duration_seconds` | histogram | `event_type` | [`Metrics::middleware`] |
/// | `jetstream_dlq_size` | gauge | | the probe (DLQ subject depth) |
/// | `jetstream_consumer_pending` | gauge | | the probe (`CONSUMER.INFO` `num_pending`) |
/// | `jetstream_consumer_ack_pending` | gauge | | the probe (`num_ack_pending`) |
/// | `jetstream_stream_messages` | gauge | | the probe (`STREAM.INFO`) |
/// | `jetstream_outbox_pending` | gauge | | the probe (unsent rows) |
/// | `jetstream_outbox_oldest_pending_age_seconds` | gauge | | the probe (outbox lag) |
/// | `jetstream_outbox_failed` | gauge | | the probe (quarantined rows) |
/// | `jetstream_outbox_published_total` | counter | | the relay's stats |
/// | `jetstream_outbox_publish_failures_total` | counter | | the relay's stats |
/// | `jetstream_health_up` | gauge | | the probe (1 healthy, 0 not) |
/// | `jetstream_consumer_db_outage` | gauge | | the consumer's stats (1 while it waits for an unavailable database) |
/// | `jetstream_consumer_db_outage_seconds` | gauge | | the consumer's stats (time spent waiting for the database, cumulative) |
/// | `jetstream_consumer_early_redeliveries` | gauge | | the consumer's stats (redeliveries while the handler still ran: a durable it cannot work with, cumulative) |
///
/// A probe gauge the last probe could not read (restricted mode makes no `$JS.API` request;
/// a request failed; no database pool) has no sample (its `# TYPE` line stays), rather than a
/// stale or zero value.
///
/// `event_type` values are capped ([`DEFAULT_MAX_EVENT_TYPES`]): once that many distinct
/// types were seen, new ones are counted as [`OTHER_EVENT_TYPE`], so a producer cannot blow
/// up the series count.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    durations: DurationFamily,
    dlq_size: ProbeGauge,
    consumer_pending: ProbeGauge,
    consumer_ack_pending: ProbeGauge,
    stream_messages: ProbeGauge,
    outbox_pending: ProbeGauge,
    outbox_oldest_age: ProbeGauge<f64, AtomicU64>,
    outbox_failed: ProbeGauge,
    outbox_published: Counter,
    outbox_publish_failures: Counter,
    up: Gauge,
    consumer_db_outage: Gauge,
    consumer_db_outage_seconds: Gauge<f64, AtomicU64>,
    consumer_early_redeliveries: Gauge,
    event_types: Mutex<HashSet<String>>,
    max_event_types: usize,
    relay_seen: Mutex<RelayStats>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("max_event_types", &self.inner.max_event_types)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered, event types capped at
    /// [`DEFAULT_MAX_EVENT_TYPES`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_max_event_types(DEFAULT_MAX_EVENT_TYPES)
    }

    /// Like [`new`](Self::new) with another cap on distinct `event_type` values (at least 1).
    #[must_use]
    pub fn with_max_event_types(max: usize) -> Self {
        let mut registry = Registry::default();
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "jetstream_messages",
            "Total messages processed",
            messages.clone(),
        );
        let durations: DurationFamily =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "jetstream_processing_duration_seconds",
            "Message processing duration",
            durations.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = ProbeGauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let dlq_size = gauge(&mut registry, "jetstream_dlq_size", "Messages in DLQ");
        let consumer_pending = gauge(
            &mut registry,
            "jetstream_consumer_pending",
            "Messages matching the durable's filter not yet delivered (consumer lag)",
        );
        let consumer_ack_pending = gauge(
            &mut registry,
            "jetstream_consumer_ack_pending",
            "Messages delivered to the durable and not acked yet",
        );
        let stream_messages = gauge(
            &mut registry,
            "jetstream_stream_messages",
            "Messages stored in the main stream",
        );
        let outbox_pending = gauge(
            &mut registry,
            "jetstream_outbox_pending",
            "Outbox rows not published yet",
        );
        let outbox_oldest_age = ProbeGauge::<f64, AtomicU64>::default();
        registry.register(
            "jetstream_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            outbox_oldest_age.clone(),
        );
        let outbox_failed = gauge(
            &mut registry,
            "jetstream_outbox_failed",
            "Outbox rows quarantined as failed",
        );
        let outbox_published = Counter::default();
        registry.register(
            "jetstream_outbox_published",
            "Outbox rows published by the relay",
            outbox_published.clone(),
        );
        let outbox_publish_failures = Counter::default();
        registry.register(
            "jetstream_outbox_publish_failures",
            "Failed relay publish attempts",
            outbox_publish_failures.clone(),
        );
        let up = Gauge::default();
        registry.register(
            "jetstream_health_up",
            "1 when the last health probe was healthy, else 0",
            up.clone(),
        );
        let consumer_db_outage = Gauge::default();
        registry.register(
            "jetstream_consumer_db_outage",
            "1 while the consumer waits for an unavailable database (fetching paused), else 0",
            consumer_db_outage.clone(),
        );
        let consumer_db_outage_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "jetstream_consumer_db_outage_seconds",
            "Time the consumer spent waiting for an unavailable database (cumulative)",
            consumer_db_outage_seconds.clone(),
        );
        let consumer_early_redeliveries = Gauge::default();
        registry.register(
            "jetstream_consumer_early_redeliveries",
            "Redeliveries the consumer received while the handler still ran (cumulative; not \
             zero: the durable's ack_wait or server-side backoff is wrong)",
            consumer_early_redeliveries.clone(),
        );
        Self {
            inner: Arc::new(MetricsInner {
                registry,
                messages,
                durations,
                dlq_size,
                consumer_pending,
                consumer_ack_pending,
                stream_messages,
                outbox_pending,
                outbox_oldest_age,
                outbox_failed,
                outbox_published,
                outbox_publish_failures,
                up,
                consumer_db_outage,
                consumer_db_outage_seconds,
                consumer_early_redeliveries,
                event_types: Mutex::new(HashSet::new()),
                max_event_types: max.max(1),
                relay_seen: Mutex::new(RelayStats::default()),
            }),
        }
    }

    /// The consumer middleware recording every event the handler sees into these metrics
    /// (`jetstream_messages_total{status,event_type}`,
    /// `jetstream_processing_duration_seconds{event_type}`). Register it first so the duration
    /// covers the whole chain. Inbox duplicates and malformed messages never reach the handler
    /// and are not counted here (see the consumer's `ConsumerStats`).
    #[must_use]
    pub fn middleware(&self) -> MetricsMiddleware<Self> {
        MetricsMiddleware::new(self.clone())
    }

    /// Records one handled message (what the [`middleware`](Self::middleware) calls).
    pub fn record_message(&self, event_type: &str, status: MessageStatus, elapsed: Duration) {
        let event_type = self.event_type_label(event_type);
        self.inner
            .messages
            .get_or_create(&MessageLabels {
                status: status.as_str(),
                event_type: event_type.clone(),
            })
            .inc();
        self.inner
            .durations
            .get_or_create(&EventTypeLabels { event_type })
            .observe(elapsed.as_secs_f64());
    }

    /// The label value for `event_type`: itself while under the cap (or already admitted), else
    /// [`OTHER_EVENT_TYPE`].
    fn event_type_label(&self, event_type: &str) -> String {
        if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN {
            return OTHER_EVENT_TYPE.to_owned();
        }
        let mut seen = self
            .inner
            .event_types
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(event_type) {
            return event_type.to_owned();
        }
        if seen.len() < self.inner.max_event_types {
            seen.insert(event_type.to_owned());
            return event_type.to_owned();
        }
        OTHER_EVENT_TYPE.to_owned()
    }

    /// Adds the relay's progress since the last call to the published/failed counters (a
    /// counter going backwards means a new relay: its value is taken as the increment).
    pub fn observe_relay(&self, stats: &RelayStats) {
        let mut seen = self
            .inner
            .relay_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let delta = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        self.inner
            .outbox_published
            .inc_by(delta(stats.sent, seen.sent));
        self.inner
            .outbox_publish_failures
            .inc_by(delta(stats.failed_attempts, seen.failed_attempts));
        *seen = *stats;
    }

    /// Sets the consumer's database-outage gauges from its stats.
    pub fn observe_consumer(&self, stats: &ConsumerStats) {
        self.inner
            .consumer_db_outage
            .set(i64::from(stats.db_outage));
        self.inner
            .consumer_db_outage_seconds
            .set(stats.db_outage_time.as_secs_f64());
        self.inner
            .consumer_early_redeliveries
            .set(i64::try_from(stats.early_redeliveries).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_probe(&self, probe: &ProbeGauges) {
        let m = &self.inner;
        m.dlq_size.set(probe.dlq_size);
        m.consumer_pending.set(probe.consumer_pending);
        m.consumer_ack_pending.set(probe.consumer_ack_pending);
        m.stream_messages.set(probe.stream_messages);
        m.outbox_pending.set(probe.outbox_pending);
        m.outbox_failed.set(probe.outbox_failed);
        m.outbox_oldest_age.set_with(
            probe
                .outbox_pending
                .map(|_| probe.outbox_oldest_age.unwrap_or(0.0)),
        );
        m.up.set(i64::from(probe.healthy));
    }

    /// The registry in the OpenMetrics text format ([`METRICS_CONTENT_TYPE`]), ending with
    /// `# EOF`.
    ///
    /// # Errors
    ///
    /// [`MetricsEncoding`](HealthErrorKind::MetricsEncoding) if the encoder fails.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .map_err(|e| HealthError::with_source(HealthErrorKind::MetricsEncoding, e))?;
        Ok(out)
    }
}

/// Gauge values from one probe (`None`: not measured, no sample).
#[derive(Debug, Default)]
pub(crate) struct ProbeGauges {
    pub(crate) healthy: bool,
    pub(crate) dlq_size: Option<u64>,
    pub(crate) consumer_pending: Option<u64>,
    pub(crate) consumer_ack_pending: Option<u64>,
    pub(crate) stream_messages: Option<u64>,
    pub(crate) outbox_pending: Option<u64>,
    pub(crate) outbox_oldest_age: Option<f64>,
    pub(crate) outbox_failed: Option<u64>,
}

impl MetricsRecorder for Metrics {
    fn record(&self, event: &Event, outcome: Result<(), &HandlerError>, elapsed: Duration) {
        self.record_message(
            &event.envelope.event_type,
            MessageStatus::of(outcome),
            elapsed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn event_types_past_the_cap_count_as_other() {
        let m = Metrics::with_max_event_types(2);
        let ms = Duration::from_millis(3);
        m.record_message("a", MessageStatus::Success, ms);
        m.record_message("b", MessageStatus::Success, ms);
        m.record_message("c", MessageStatus::Retry, ms);
        m.record_message("d", MessageStatus::Success, ms);
        m.record_message("a", MessageStatus::Permanent, ms);
        m.record_message(
            &"x".repeat(MAX_EVENT_TYPE_LEN + 1),
            MessageStatus::Success,
            ms,
        );
        let text = m.encode().unwrap();
        let get = |s: &str| sample(&text, s).map(str::to_owned);
        assert_eq!(
            get(r#"jetstream_messages_total{status="success",event_type="a"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            get(r#"jetstream_messages_total{status="permanent",event_type="a"}"#).as_deref(),
            Some("1")
        );
        assert_eq!(
            get(r#"jetstream_messages_total{status="success",event_type="other"}"#).as_deref(),
            Some("2")
        );
        assert_eq!(
            get(r#"jetstream_messages_total{status="retry",event_type="other"}"#).as_deref(),
            Some("1")
        );
        assert!(!text.contains(r#"event_type="c""#), "{text}");
        assert_eq!(
            get(r#"jetstream_processing_duration_seconds_count{event_type="other"}"#).as_deref(),
            Some("3")
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn relay_counters_follow_the_stats_and_survive_a_new_relay() {
        let m = Metrics::new();
        let stats = |sent, failed_attempts| {
            let mut s = RelayStats::default();
            s.sent = sent;
            s.failed_attempts = failed_attempts;
            s
        };
        m.observe_relay(&stats(5, 1));
        m.observe_relay(&stats(7, 1));
        m.observe_relay(&stats(2, 0)); // a new relay started from zero
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "jetstream_outbox_published_total"), Some("9"));
        assert_eq!(
            sample(&text, "jetstream_outbox_publish_failures_total"),
            Some("1")
        );
    }

    #[test]
    fn consumer_gauges_follow_the_stats() {
        let m = Metrics::new();
        let mut stats = ConsumerStats::default();
        stats.db_outage = true;
        stats.db_outage_time = Duration::from_millis(2500);
        stats.early_redeliveries = 3;
        m.observe_consumer(&stats);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "jetstream_consumer_db_outage"), Some("1"));
        assert_eq!(
            sample(&text, "jetstream_consumer_early_redeliveries"),
            Some("3")
        );
        assert_eq!(
            sample(&text, "jetstream_consumer_db_outage_seconds"),
            Some("2.5")
        );
    }

    /// Measured gauges have their sample; one the next probe cannot read has none (never a
    /// stale value, never a made-up 0) while its `# TYPE` line stays; `jetstream_health_up`
    /// always has one.
    #[test]
    fn unmeasured_probe_gauges_have_no_sample() {
        let m = Metrics::new();
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "jetstream_dlq_size"), None, "{text}");
        assert_eq!(sample(&text, "jetstream_health_up"), Some("0"));
        m.set_probe(&ProbeGauges {
            healthy: true,
            dlq_size: Some(4),
            consumer_pending: Some(0),
            outbox_pending: Some(2),
            outbox_oldest_age: Some(1.5),
            ..ProbeGauges::default()
        });
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, "jetstream_dlq_size"), Some("4"));
        assert_eq!(sample(&text, "jetstream_consumer_pending"), Some("0"));
        assert_eq!(sample(&text, "jetstream_outbox_pending"), Some("2"));
        assert_eq!(
            sample(&text, "jetstream_outbox_oldest_pending_age_seconds"),
            Some("1.5")
        );
        assert_eq!(sample(&text, "jetstream_stream_messages"), None);
        m.set_probe(&ProbeGauges::default());
        let text = m.encode().unwrap();
        for gauge in [
            "jetstream_dlq_size",
            "jetstream_consumer_pending",
            "jetstream_outbox_pending",
            "jetstream_outbox_oldest_pending_age_seconds",
        ] {
            assert_eq!(sample(&text, gauge), None, "{gauge}: {text}");
            assert!(text.contains(&format!("# TYPE {gauge} gauge")), "{text}");
        }
        assert_eq!(sample(&text, "jetstream_health_up"), Some("0"));
    }
}
