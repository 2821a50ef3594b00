//! [`HealthReport`]: the Ruby gem's health JSON (`healthy`, `connection`, `stream`, `performance`,
//! `config`, `version`) plus the bridge's own sections.

use serde::Serialize;

/// The report of one health check ([`Health::health_check`](crate::Health::health_check)).
///
/// Serializes to the Ruby gem's JSON, key for key (`healthy`, `connection`, `stream`,
/// `performance`, `config`, `version`), followed by the bridge's additions: `cached`,
/// `checked_at`, `skipped`, `consumer`, `dlq`, `database`, `outbox` and `runtime`. Error texts are masked
/// (no URL credentials). Fields are public to read; the struct is `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The Ruby gem's verdict: connected, and (unless restricted mode skipped it) the stream exists;
    /// with a database pool, the database answered, has the tables the configuration needs,
    /// and the outbox query succeeded.
    pub healthy: bool,
    /// The NATS connection.
    pub connection: ConnectionReport,
    /// The main stream (`STREAM.INFO`).
    pub stream: StreamReport,
    /// Timings.
    pub performance: PerformanceReport,
    /// The configuration this report is about.
    pub config: ConfigReport,
    /// This crate's version.
    pub version: &'static str,
    /// `true` when this is the report of an earlier probe, served because the last uncached
    /// probe is less than the minimum probe interval old (or another caller's probe was in
    /// flight). Never an error, never a reason to be unhealthy.
    pub cached: bool,
    /// When the probe behind this report ran (RFC 3339, UTC, seconds).
    pub checked_at: String,
    /// What restricted mode (`disable_js_api`) left out, or `null` when nothing was skipped.
    pub skipped: Option<SkippedReport>,
    /// The durable consumer (`CONSUMER.INFO`).
    pub consumer: ConsumerReport,
    /// The dead letter queue of this service, or `null` when `use_dlq` is off.
    pub dlq: Option<DlqReport>,
    /// The database and the bridge's tables in it, or `null` without a database pool (or with
    /// neither `use_inbox` nor `use_outbox`).
    pub database: Option<DatabaseReport>,
    /// The outbox backlog, or `null` without a database pool.
    pub outbox: Option<OutboxReport>,
    /// Liveness of the relay and consumer runtimes this checker watches.
    pub runtime: RuntimeReport,
}

/// The `connection` section (the Ruby gem's keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConnectionReport {
    /// `connected`, `connecting` or `disconnected`.
    pub state: &'static str,
    /// Whether the client is connected.
    pub connected: bool,
    /// Since when the connection is up (RFC 3339, UTC): when this checker first saw the
    /// current connection, told apart from an earlier one by the client's connect count;
    /// `null` when not connected.
    pub connected_at: Option<String>,
}

/// The `stream` section. Connected and allowed to ask: `{exists, name, subjects, messages}`;
/// `STREAM.INFO` failed: `{exists: false, name, error}`; not connected: `{exists: false,
/// name}`; restricted mode: `{exists: null, name, skipped: true, reason}` (the gem's shapes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamReport {
    /// Whether the stream exists (`null` when the check was skipped).
    pub exists: Option<bool>,
    /// The stream's name.
    pub name: String,
    /// The stream's subjects (when it exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Vec<String>>,
    /// Messages stored (when it exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Why `STREAM.INFO` failed (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `true` when restricted mode skipped the check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
    /// Why the check was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// The `performance` section (the Ruby gem's keys).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PerformanceReport {
    /// Round trip of a PING/PONG (`flush`) in milliseconds, 2 decimals; `null` when not
    /// connected or the flush failed.
    pub nats_rtt_ms: Option<f64>,
    /// How long the probe took, in milliseconds, 2 decimals.
    pub health_check_duration_ms: f64,
}

/// The `config` section (the Ruby gem's keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConfigReport {
    /// The environment (`null` in the env-less layout without one).
    pub env: Option<String>,
    /// This service.
    pub app_name: String,
    /// The service it talks to.
    pub destination_app: String,
    /// Whether the outbox is on.
    pub use_outbox: bool,
    /// Whether the inbox is on.
    pub use_inbox: bool,
    /// Whether the DLQ is on.
    pub use_dlq: bool,
}

/// What restricted mode left out (`skipped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SkippedReport {
    /// Why (`disable_js_api=true …`).
    pub reason: &'static str,
    /// The JetStream API requests not made, e.g. `$JS.API.STREAM.INFO`.
    pub requests: Vec<&'static str>,
}

/// The durable consumer (`consumer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConsumerReport {
    /// The durable's name.
    pub name: String,
    /// Whether the durable exists (`null` when not checked).
    pub exists: Option<bool>,
    /// Messages matching the filter not yet delivered (the consumer lag).
    pub pending: Option<u64>,
    /// Messages delivered and not acked yet.
    pub ack_pending: Option<u64>,
    /// Messages delivered more than once and not acked yet.
    pub redelivered: Option<u64>,
    /// Why `CONSUMER.INFO` failed (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `true` when the check was skipped (restricted mode, or not connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
    /// Why the consumer runtime cannot work with the durable as the server holds it: a
    /// server-side `backoff`, an `ack_wait` not longer than the in-progress ack interval, or a
    /// push durable for a pull runtime (and the reverse). Omitted when there is none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The dead letter queue (`dlq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DlqReport {
    /// The stream holding this service's DLQ subject.
    pub stream: String,
    /// This service's DLQ subject.
    pub subject: String,
    /// Dead letters stored on the subject (`null` when not checked).
    pub depth: Option<u64>,
    /// Why the request failed (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `true` when the check was skipped (restricted mode, or not connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
}

/// The database the bridge's inbox and outbox live in (`database`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DatabaseReport {
    /// Whether the database answered (`false` while it is unreachable or timed out).
    pub reachable: bool,
    /// The tables this configuration needs: `jetstream_inbox_events` with `use_inbox`,
    /// `jetstream_outbox_events` with `use_outbox`.
    pub tables: Vec<&'static str>,
    /// Those of them that do not exist (run `jetstream-bridge migrate`); empty when not
    /// reachable.
    pub missing_tables: Vec<&'static str>,
    /// Why the check failed (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outbox backlog (`outbox`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct OutboxReport {
    /// Rows not published yet (`pending` or `publishing`).
    pub pending: Option<u64>,
    /// Age of the oldest unpublished row in seconds (`null` when none; the outbox lag).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Rows quarantined as `failed`.
    pub failed: Option<u64>,
    /// Why the query failed (masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The runtimes this checker watches (`runtime`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RuntimeReport {
    /// The outbox relay, or `null` when none is watched.
    pub relay: Option<RuntimeLiveness>,
    /// The consumer runtime, or `null` when none is watched.
    pub consumer: Option<RuntimeLiveness>,
}

/// Liveness of one runtime, from its stats watch channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RuntimeLiveness {
    /// Whether the runtime still runs (its stats sender is alive).
    pub running: bool,
    /// Whether it has begun shutting down.
    pub shutting_down: bool,
    /// When its counters last changed, as seen by this checker (RFC 3339, UTC); `null` before
    /// the first change.
    pub last_progress_at: Option<String>,
    /// Seconds since then (or since the checker started watching).
    pub seconds_since_progress: u64,
    /// Whether it made no progress for longer than the stall limit (the consumer's fetch loop
    /// counts every pull request, so an idle consumer still progresses).
    pub stalled: bool,
}

/// Rounds to 2 decimals, as the gem does.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `2025-11-23T10:00:00Z`.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_rounding() {
        let t = time::macros::datetime!(2025-11-23 10:00:00.75 +01:00);
        assert_eq!(rfc3339(t), "2025-11-23T09:00:00Z");
        assert!((round2(45.234_9) - 45.23).abs() < 1e-9);
        assert!((round2(2.5) - 2.5).abs() < 1e-9);
    }
}
