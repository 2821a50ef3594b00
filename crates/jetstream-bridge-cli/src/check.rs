//! `check`: validate the configuration, connect to NATS and PostgreSQL, and report what is
//! present, missing, or configured so that it cannot work as written.

use std::time::Duration;

use jetstream_bridge_config::{format_duration, parse_duration, Config};
use jetstream_bridge_pg::{MigrationState, Migrator};
use jetstream_bridge_topology::{Connection, EnsureOptions, StreamCheck, TopologySpec};
use serde_json::{json, Value};

use crate::connect::{self, INBOX_TABLE, OUTBOX_TABLE};
use crate::error::{chain, CliError, CliErrorKind};
use crate::output::Out;
use crate::settings::GlobalArgs;

/// Arguments of `check`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct CheckArgs {
    /// Fail on warnings too (settings that work but not as written).
    #[arg(long)]
    pub strict: bool,
    /// The consumer's in-progress ack interval, when it is not the default `ack_wait / 2`
    /// (`ConsumerBuilder::progress_interval`).
    #[arg(long, value_parser = parse_duration)]
    pub progress_interval: Option<Duration>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Info,
    Warning,
    Problem,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Problem => "PROBLEM",
        }
    }
}

struct Finding {
    area: &'static str,
    item: String,
    level: Level,
    detail: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        area: &'static str,
        item: impl Into<String>,
        level: Level,
        detail: impl Into<String>,
    ) {
        self.0.push(Finding {
            area,
            item: item.into(),
            level,
            detail: detail.into(),
        });
    }

    fn count(&self, level: Level) -> usize {
        self.0.iter().filter(|f| f.level == level).count()
    }
}

/// Settings that cannot work as written (no I/O).
fn settings(config: &Config, progress: Option<Duration>, f: &mut Findings) {
    let warnings = config.warnings();
    for w in &warnings {
        f.add("settings", w.field(), Level::Warning, w.to_string());
    }
    if !warnings.iter().any(|w| w.field() == "backoff") {
        f.add(
            "settings",
            "backoff",
            Level::Ok,
            format!(
                "[{}], max_deliver {}",
                durations(config.backoff()),
                config.max_deliver()
            ),
        );
    }
    let ack_wait = config.ack_wait();
    match progress {
        Some(p) if p >= ack_wait => f.add(
            "settings",
            "ack_wait",
            Level::Problem,
            format!(
                "the in-progress ack interval {} is not shorter than ack_wait {}: a handler \
                 running longer than ack_wait gets its message redelivered meanwhile",
                format_duration(p),
                format_duration(ack_wait)
            ),
        ),
        Some(p) => f.add(
            "settings",
            "ack_wait",
            Level::Ok,
            format!(
                "{} (in-progress acks every {})",
                format_duration(ack_wait),
                format_duration(p)
            ),
        ),
        None => f.add(
            "settings",
            "ack_wait",
            Level::Info,
            format!("{} (in-progress acks off)", format_duration(ack_wait)),
        ),
    }
}

fn durations(d: &[Duration]) -> String {
    d.iter()
        .map(|d| format_duration(*d))
        .collect::<Vec<_>>()
        .join(", ")
}

fn stream_finding(area: &'static str, what: &str, s: &StreamCheck, f: &mut Findings) {
    let item = format!("{what} {}", s.name);
    if !s.present {
        f.add(
            area,
            item,
            Level::Problem,
            "missing: run `jetstream-bridge ensure-topology`",
        );
    } else if s.missing_subjects.is_empty() {
        f.add(
            area,
            item,
            Level::Ok,
            format!("present ({})", s.subjects.join(", ")),
        );
    } else {
        f.add(
            area,
            item,
            Level::Problem,
            format!(
                "present but lacks {}: run `jetstream-bridge ensure-topology`",
                s.missing_subjects.join(", ")
            ),
        );
    }
}

/// The stream, DLQ stream and durable against what this service needs
/// (`jetstream_bridge_topology::check`: presence, missing subjects, drift, a durable that
/// cannot work, overlaps, layouts that lose data). Returns the report for `--json`.
async fn nats_checks(
    connection: &Connection,
    spec: &TopologySpec,
    progress: Option<Duration>,
    f: &mut Findings,
) -> Option<Value> {
    let options = EnsureOptions::new().progress_interval(progress);
    let check = match connection.check(spec, &options).await {
        Ok(check) => check,
        Err(e) => {
            f.add("nats", "topology", Level::Problem, chain(&e));
            return None;
        }
    };
    stream_finding("nats", "stream", &check.stream, f);
    if let Some(dlq) = &check.dlq_stream {
        stream_finding("nats", "DLQ stream", dlq, f);
    } else if let Some(subject) = spec.dlq_subject() {
        f.add(
            "nats",
            format!("DLQ subject {subject}"),
            Level::Info,
            format!("in stream {} (main-stream placement)", spec.stream_name()),
        );
    } else {
        f.add("nats", "DLQ", Level::Info, "off (use_dlq = false)");
    }
    if let Some(d) = &check.durable {
        let item = format!("durable {}", d.name);
        if !d.present {
            f.add(
                "nats",
                item.clone(),
                Level::Problem,
                "missing: run `jetstream-bridge ensure-topology`",
            );
        } else if d.drift.is_empty() {
            f.add(
                "nats",
                item.clone(),
                Level::Ok,
                format!("present on {}", d.stream),
            );
        } else {
            let fields: Vec<String> = d.drift.iter().map(ToString::to_string).collect();
            f.add(
                "nats",
                item.clone(),
                Level::Problem,
                format!(
                    "differs from the configuration: {} (`ensure-topology --update-drift`)",
                    fields.join(", ")
                ),
            );
        }
        for issue in &d.issues {
            f.add(
                "nats",
                item.clone(),
                Level::Problem,
                format!("cannot work: {issue}"),
            );
        }
    }
    for p in &check.problems {
        f.add("topology", "problem", Level::Problem, p.to_string());
    }
    for w in &check.warnings {
        f.add("topology", "warning", Level::Warning, w.to_string());
    }
    for n in &check.notes {
        f.add("topology", "note", Level::Info, n.to_string());
    }
    serde_json::to_value(&check).ok()
}

async fn database_checks(global: &GlobalArgs, config: &Config, out: &Out, f: &mut Findings) {
    let needed = [
        (OUTBOX_TABLE, config.use_outbox(), "use_outbox"),
        (INBOX_TABLE, config.use_inbox(), "use_inbox"),
    ];
    let Ok(url) = global.database_url() else {
        if config.use_outbox() || config.use_inbox() {
            f.add(
                "database",
                "DATABASE_URL",
                Level::Problem,
                "not set, but use_outbox or use_inbox is on",
            );
        } else {
            f.add(
                "database",
                "DATABASE_URL",
                Level::Info,
                "not set (no outbox, no inbox)",
            );
        }
        return;
    };
    let mut conn = match connect::database(&url, out).await {
        Ok(conn) => conn,
        Err(e) => {
            f.add("database", "connection", Level::Problem, e.to_string());
            return;
        }
    };
    f.add("database", "connection", Level::Ok, "connected");
    for (table, required, flag) in needed {
        match connect::table_exists(&mut conn, table).await {
            Ok(true) => f.add("database", format!("table {table}"), Level::Ok, "present"),
            Ok(false) if required => f.add(
                "database",
                format!("table {table}"),
                Level::Problem,
                format!("missing ({flag} is on): run `jetstream-bridge migrate`"),
            ),
            Ok(false) => f.add(
                "database",
                format!("table {table}"),
                Level::Info,
                format!("missing ({flag} is off)"),
            ),
            Err(e) => f.add(
                "database",
                format!("table {table}"),
                Level::Problem,
                e.to_string(),
            ),
        }
    }
    match Migrator::all().status(&mut conn).await {
        Ok(status) => {
            let pending: Vec<&str> = status
                .iter()
                .filter(|s| s.state == MigrationState::Pending)
                .map(|s| s.name)
                .collect();
            let changed: Vec<&str> = status
                .iter()
                .filter(|s| matches!(s.state, MigrationState::Changed { .. }))
                .map(|s| s.name)
                .collect();
            if !changed.is_empty() {
                f.add(
                    "database",
                    "migrations",
                    Level::Problem,
                    format!(
                        "applied with different SQL than this version ships: {}",
                        changed.join(", ")
                    ),
                );
            }
            if pending.is_empty() {
                if changed.is_empty() {
                    f.add("database", "migrations", Level::Ok, "up to date");
                }
            } else {
                f.add(
                    "database",
                    "migrations",
                    Level::Warning,
                    format!(
                        "pending: {} (run `jetstream-bridge migrate`)",
                        pending.join(", ")
                    ),
                );
            }
        }
        Err(e) => f.add("database", "migrations", Level::Problem, chain(&e)),
    }
}

pub(crate) async fn run(args: CheckArgs, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let mut f = Findings::default();
    let mut topology = None;
    match global.config() {
        Ok(config) => {
            f.add(
                "config",
                "configuration",
                Level::Ok,
                format!(
                    "{} layout, {} -> {}, stream {}, durable {}",
                    config.layout(),
                    config.app_name(),
                    config.destination_app(),
                    config.stream_name(),
                    config.durable_name(),
                ),
            );
            let progress = args
                .progress_interval
                .or_else(|| Some(config.ack_wait() / 2))
                .filter(|d| !d.is_zero());
            settings(&config, progress, &mut f);
            let spec = global.spec(&config);
            match connect::nats(&config, out).await {
                Ok(connection) => {
                    f.add(
                        "nats",
                        "connection",
                        Level::Ok,
                        format!("connected to {}", config.nats_urls()),
                    );
                    topology = nats_checks(&connection, &spec, progress, &mut f).await;
                }
                Err(e) => f.add("nats", "connection", Level::Problem, e.to_string()),
            }
            database_checks(global, &config, out, &mut f).await;
        }
        Err(e) => f.add("config", "configuration", Level::Problem, e.to_string()),
    }
    let problems = f.count(Level::Problem);
    let warnings = f.count(Level::Warning);
    let failed = problems > 0 || (args.strict && warnings > 0);
    if out.json() {
        out.value(&json!({
            "ok": !failed,
            "problems": problems,
            "warnings": warnings,
            "topology": topology,
            "findings": f.0.iter().map(|x| json!({
                "area": x.area,
                "item": x.item,
                "level": x.level.as_str().to_ascii_lowercase(),
                "detail": x.detail,
            })).collect::<Vec<_>>(),
        }));
    } else {
        let rows: Vec<Vec<String>> =
            f.0.iter()
                .map(|x| {
                    vec![
                        x.area.to_owned(),
                        x.item.clone(),
                        x.level.as_str().to_owned(),
                        x.detail.clone(),
                    ]
                })
                .collect();
        out.table(&["AREA", "ITEM", "STATUS", "DETAIL"], &rows);
    }
    if failed {
        Err(CliError::new(
            CliErrorKind::Problems,
            format!("check found {problems} problem(s) and {warnings} warning(s)"),
        ))
    } else {
        out.note(format!("check: OK ({warnings} warning(s))"));
        Ok(())
    }
}
