//! `check`: validate the configuration, connect to NATS and PostgreSQL, and report what is
//! present, missing, or configured so that it cannot work as written.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamByNameErrorKind;
use jetstream_bridge_config::{format_duration, parse_duration, Config};
use jetstream_bridge_health::Health;
use jetstream_bridge_pg::{MigrationState, Migrator};
use jetstream_bridge_topology::{Connection, EnsureOptions, TopologySpec};
use serde_json::json;

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

/// The durable on the server delivers at most `max_deliver` times (it wins over the
/// configuration): the delays of `backoff` past `max_deliver - 1` never apply.
fn server_max_deliver(backoff: &[Duration], max_deliver: u32, durable: &str, f: &mut Findings) {
    let used = usize::try_from(max_deliver.saturating_sub(1)).unwrap_or(usize::MAX);
    if let Some(unused) = backoff.get(used..).filter(|u| !u.is_empty()) {
        f.add(
            "nats",
            format!("durable {durable}"),
            Level::Warning,
            format!(
                "max_deliver is {max_deliver} on the server (it wins over the configuration):                  the backoff delays {} never apply",
                durations(unused)
            ),
        );
    }
}

/// The health probe's verdict on the durable (server-side backoff, `ack_wait` not longer than
/// the in-progress interval, push/pull mismatch), asked with the JetStream API allowed.
async fn durable_problems(
    connection: &Connection,
    probe_config: Config,
    spec: &TopologySpec,
    progress: Option<Duration>,
) -> Vec<String> {
    Health::builder(probe_config, connection.client().clone())
        .topology(spec.clone())
        .progress_interval(progress)
        .min_probe_interval(Duration::ZERO)
        .stall_after(None)
        .build()
        .health_check()
        .await
        .consumer
        .problems
}

async fn nats_checks(
    global: &GlobalArgs,
    connection: &Connection,
    config: &Config,
    spec: &TopologySpec,
    progress: Option<Duration>,
    f: &mut Findings,
) {
    let js = connection.jetstream();
    // The main stream.
    match js.get_stream(spec.stream_name()).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => {
                let missing: Vec<&str> = spec
                    .main_stream_subjects()
                    .into_iter()
                    .filter(|s| !info.config.subjects.iter().any(|have| have == s))
                    .collect();
                if missing.is_empty() {
                    f.add(
                        "nats",
                        format!("stream {}", spec.stream_name()),
                        Level::Ok,
                        format!("present, {} messages", info.state.messages),
                    );
                } else {
                    f.add(
                        "nats",
                        format!("stream {}", spec.stream_name()),
                        Level::Problem,
                        format!(
                            "present but lacks subject(s) {}: run `jetstream-bridge ensure-topology`",
                            missing.join(", ")
                        ),
                    );
                }
            }
            Err(e) => f.add(
                "nats",
                format!("stream {}", spec.stream_name()),
                Level::Problem,
                chain(&e),
            ),
        },
        Err(e) => f.add(
            "nats",
            format!("stream {}", spec.stream_name()),
            Level::Problem,
            if e.to_string().contains("not found") {
                "missing: run `jetstream-bridge ensure-topology`".to_owned()
            } else {
                chain(&e)
            },
        ),
    }
    // The DLQ stream: whichever stream holds the DLQ subject.
    if let Some(dlq) = spec.dlq_subject() {
        match js.stream_by_subject(dlq).await {
            Ok(name) => f.add("nats", format!("DLQ subject {dlq}"), Level::Ok, format!("in stream {name}")),
            Err(e) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => f.add(
                "nats",
                format!("DLQ subject {dlq}"),
                Level::Problem,
                "no stream holds it: dead letters cannot be stored; run `jetstream-bridge ensure-topology`",
            ),
            Err(e) => f.add("nats", format!("DLQ subject {dlq}"), Level::Problem, chain(&e)),
        }
    } else {
        f.add("nats", "DLQ", Level::Info, "off (use_dlq = false)");
    }
    // The durable.
    let durable = config.durable_name().as_str();
    let info = match js.get_stream_no_info(spec.stream_name()).await {
        Ok(stream) => stream.consumer_info(durable).await.map_err(|e| chain(&e)),
        Err(e) => Err(chain(&e)),
    };
    match info {
        Ok(info) => {
            let c = &info.config;
            f.add(
                "nats",
                format!("durable {durable}"),
                Level::Ok,
                format!(
                    "present, {} pending, {} ack pending",
                    info.num_pending, info.num_ack_pending
                ),
            );
            // What the consumer runtime cannot work with (the health probe's own rules).
            let probe_config = global
                .config_with(&[("JETSTREAM_DISABLE_JS_API", "false")])
                .unwrap_or_else(|_| config.clone());
            for problem in durable_problems(connection, probe_config, spec, progress).await {
                f.add(
                    "nats",
                    format!("durable {durable}"),
                    Level::Problem,
                    problem,
                );
            }
            if let Ok(max) = u32::try_from(c.max_deliver) {
                if max != config.max_deliver() {
                    server_max_deliver(config.backoff(), max, durable, f);
                }
            }
        }
        Err(e) => f.add(
            "nats",
            format!("durable {durable}"),
            Level::Problem,
            if e.contains("not found") {
                "missing: run `jetstream-bridge ensure-topology`".to_owned()
            } else {
                e
            },
        ),
    }
    // What provisioning would change or refuses (overlaps, drift, mismatches).
    match connection.plan(spec, &EnsureOptions::new()).await {
        Ok(plan) => {
            for p in plan.problems() {
                f.add("topology", "plan", Level::Problem, p.to_string());
            }
            for a in plan.actions() {
                f.add(
                    "topology",
                    "ensure-topology would",
                    Level::Problem,
                    a.to_string(),
                );
            }
            for n in plan.notes() {
                f.add("topology", "note", Level::Info, n.to_string());
            }
        }
        Err(e) => f.add("topology", "plan", Level::Problem, chain(&e)),
    }
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
                    nats_checks(global, &connection, &config, &spec, progress, &mut f).await;
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
