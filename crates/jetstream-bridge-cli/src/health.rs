//! `health`: one `Health::health_check()` report; exit 0 only when healthy.

use std::time::Duration;

use jetstream_bridge_config::parse_duration;
use jetstream_bridge_health::{Health, HealthReport};
use serde_json::json;

use crate::connect;
use crate::error::{CliError, CliErrorKind};
use crate::output::Out;
use crate::settings::GlobalArgs;

/// Arguments of `health`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct HealthArgs {
    /// Time limit of each request the probe makes (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
}

impl Default for HealthArgs {
    fn default() -> Self {
        Self {
            probe_timeout: Duration::from_secs(2),
        }
    }
}

fn yes_no(v: Option<bool>) -> String {
    match v {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "not checked".into(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_report(report: &HealthReport, out: &Out) {
    let mut fields = vec![
        (
            "healthy",
            if report.healthy { "yes" } else { "NO" }.to_owned(),
        ),
        (
            "connection",
            format!(
                "{} (rtt {} ms)",
                report.connection.state,
                opt(report.performance.nats_rtt_ms)
            ),
        ),
        (
            "stream",
            format!(
                "{}: exists {}, {} messages{}",
                report.stream.name,
                yes_no(report.stream.exists),
                opt(report.stream.messages),
                report
                    .stream
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ),
        (
            "consumer",
            format!(
                "{}: exists {}, pending {}, ack pending {}{}",
                report.consumer.name,
                yes_no(report.consumer.exists),
                opt(report.consumer.pending),
                opt(report.consumer.ack_pending),
                report
                    .consumer
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ),
    ];
    for problem in &report.consumer.problems {
        fields.push(("consumer problem", problem.clone()));
    }
    if let Some(db) = &report.database {
        fields.push((
            "database",
            match &db.error {
                Some(e) => format!("error: {e}"),
                None if !db.missing_tables.is_empty() => {
                    format!("missing tables: {}", db.missing_tables.join(", "))
                }
                None => format!("reachable, tables present: {}", db.tables.join(", ")),
            },
        ));
    }
    if let Some(dlq) = &report.dlq {
        fields.push((
            "dlq",
            format!(
                "{} in {}: depth {}",
                dlq.subject,
                dlq.stream,
                opt(dlq.depth)
            ),
        ));
    }
    if let Some(outbox) = &report.outbox {
        fields.push((
            "outbox",
            match &outbox.error {
                Some(e) => format!("error: {e}"),
                None => format!(
                    "pending {}, failed {}, oldest pending {}",
                    opt(outbox.pending),
                    opt(outbox.failed),
                    crate::output::opt_age(
                        outbox
                            .oldest_pending_age_seconds
                            .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    )
                ),
            },
        ));
    }
    if let Some(skipped) = &report.skipped {
        fields.push(("skipped", skipped.reason.to_owned()));
    }
    fields.push(("checked at", report.checked_at.clone()));
    out.fields(&fields);
}

pub(crate) async fn run(args: HealthArgs, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let config = global.config()?;
    let spec = global.spec(&config);
    let connection = match connect::nats(&config, out).await {
        Ok(c) => c,
        Err(e) => {
            if out.json() {
                out.value(&json!({"healthy": false, "error": e.to_string()}));
            }
            return Err(e);
        }
    };
    let mut builder = Health::builder(&config, connection.jetstream())
        .topology(spec)
        .min_probe_interval(Duration::ZERO)
        .probe_timeout(args.probe_timeout)
        .stall_after(None);
    if config.use_outbox() || config.use_inbox() {
        if let Ok(url) = global.database_url() {
            builder = builder.pool(connect::pool(&url, 2)?);
        }
    }
    let report = builder.build().health_check().await;
    if out.json() {
        let value = serde_json::to_value(&report)
            .map_err(|e| CliError::with_chain(CliErrorKind::Problems, "encoding the report", &e))?;
        out.value(&value);
    } else {
        print_report(&report, out);
    }
    if report.healthy {
        Ok(())
    } else {
        Err(CliError::new(CliErrorKind::Problems, "unhealthy"))
    }
}
