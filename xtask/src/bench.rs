//! `cargo xtask bench [scenario…]`: benchmarks measured against a raw baseline in the same run.
//!
//! Framework: every scenario runs its contenders after one warm-up run, `--repeat` times
//! (default 3), alternating contender and baseline so background load hits both alike, and
//! returns a [`ScenarioReport`]: [`Measurement`]s (median / min / max of the samples), the
//! per-pair ratios, [`Check`]s against the targets of issue #7 (PASS/FAIL), and [`Count`]s
//! proving that every event of every run was accounted for. Progress goes to stderr, the
//! results table to stdout, and `--json FILE` writes the whole [`Report`].
//!
//! Add a scenario: a [`Scenario`] variant (and in [`Scenario::ALL`], which the smoke test below
//! runs with a tiny N), a module `bench_<name>.rs` with a function returning a
//! [`ScenarioReport`], and one arm in [`run_scenario`].
//!
//! Debug builds (`cargo xtask bench ..`) are for checking that a scenario runs; figures come
//! from `cargo run --release -p xtask -- bench ..`.

use std::future::Future;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

#[path = "bench_consumer.rs"]
mod bench_consumer;
#[path = "bench_e2e.rs"]
mod bench_e2e;
#[path = "bench_fixture.rs"]
mod bench_fixture;
#[path = "bench_memory.rs"]
mod bench_memory;
#[path = "bench_publish.rs"]
mod bench_publish;
#[path = "bench_relay.rs"]
mod bench_relay;

use bench_fixture::Fixture;
pub(crate) use bench_memory::part;

/// PubAcks in flight for every pipelined contender (the `Relay` and `Publisher` default).
const WINDOW: usize = 256;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Scenarios to run (default: all, in the order listed here).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Events per measured run (the warm-up run uses at most 2000; `publish-direct`,
    /// `consumer-inbox` and `e2e` use at most 5000).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Measured runs per contender, after one warm-up run.
    #[arg(long = "repeat", visible_alias = "repeats", default_value_t = 3)]
    repeat: usize,
    /// Events pushed through relay and consumer by the `memory` scenario (one run); default
    /// 50 × `--events`, i.e. 1 000 000 with the default `--events`.
    #[arg(long)]
    memory_events: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit non-zero when a target is missed (the default only reports FAIL).
    #[arg(long)]
    strict: bool,
    /// PostgreSQL admin URL; the benchmark creates and drops its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// NATS server; the benchmark creates and deletes its own file-storage streams.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
}

impl Args {
    fn memory_events(&self) -> usize {
        self.memory_events
            .unwrap_or_else(|| self.events.saturating_mul(50))
    }

    /// Events of a warm-up run.
    fn warm_events(&self) -> usize {
        self.events.min(2000)
    }
}

/// Benchmark scenarios; each states the target its checks enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Scenario {
    /// Outbox `Relay` vs a naive relay (claim 500 `FOR UPDATE SKIP LOCKED`, pipelined raw
    /// publish with `Nats-Msg-Id`, one `UPDATE … = ANY`). Target ≥ 1.2×.
    Relay,
    /// `Publisher::publish_batch` vs raw pipelined JetStream publish, same window. Target ≥ 0.95×.
    PublishBatch,
    /// `Publisher::publish` one at a time vs raw publish awaiting each ack. Target ≥ 0.9×.
    PublishDirect,
    /// `Consumer` with the inbox (per message at concurrency 1 and 8; batch mode) vs raw pull +
    /// one transaction per message + ack, same concurrency. Target ≥ 0.7×; batch mode ≥ 0.8× a
    /// raw batch loop writing the same inbox rows, and ≥ 10k msg/s.
    #[value(alias = "consumer")]
    ConsumerInbox,
    /// `Consumer` without the inbox vs raw pull + ack, same concurrency. Target ≥ 0.9×.
    ConsumerNoInbox,
    /// Outbox commit → relay → consumer handler latency at 1k events/s. Target p50 < 5 ms,
    /// p99 < 15 ms.
    E2e,
    /// Process RSS while relay and consumer move `--memory-events` events (start / peak / end).
    /// Target per process: < 64 MiB peak, < 8 MiB growth from 10 % of the run to its end.
    Memory,
}

impl Scenario {
    const ALL: [Self; 7] = [
        Self::Relay,
        Self::PublishBatch,
        Self::PublishDirect,
        Self::ConsumerInbox,
        Self::ConsumerNoInbox,
        Self::E2e,
        Self::Memory,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::PublishBatch => "publish-batch",
            Self::PublishDirect => "publish-direct",
            Self::ConsumerInbox => "consumer-inbox",
            Self::ConsumerNoInbox => "consumer-no-inbox",
            Self::E2e => "e2e",
            Self::Memory => "memory",
        }
    }
}

/// One measured quantity with its samples (one per measured run).
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Measurement {
    fn new(name: impl Into<String>, unit: &'static str, samples: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            unit,
            samples,
        }
    }

    /// `ours[i] / base[i]` per pair of the same repeat.
    fn ratio(name: impl Into<String>, ours: &[f64], base: &[f64]) -> Self {
        let samples = ours.iter().zip(base).map(|(o, b)| o / b).collect();
        Self::new(name, "ratio", samples)
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// The median (the upper one of an even count); NaN without samples.
    fn median(&self) -> f64 {
        let s = self.sorted();
        s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name, "unit": self.unit, "samples": self.samples,
            "median": finite(self.median()), "min": finite(self.min()), "max": finite(self.max()),
        })
    }
}

/// NaN and infinities are not JSON numbers: write `null`.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

/// Direction of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    /// measured ≥ target
    AtLeast,
    /// measured < target
    Below,
}

/// A target of issue #7, checked against the median of a measurement.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    what: String,
    measured: f64,
    cmp: Cmp,
    target: f64,
    unit: &'static str,
}

impl Check {
    /// Checks the median of `m` against `target`.
    fn on(m: &Measurement, cmp: Cmp, target: f64) -> Self {
        Self {
            what: m.name.clone(),
            measured: m.median(),
            cmp,
            target,
            unit: m.unit,
        }
    }

    fn pass(&self) -> bool {
        match self.cmp {
            Cmp::AtLeast => self.measured >= self.target,
            Cmp::Below => self.measured < self.target,
        }
    }

    fn target_text(&self) -> String {
        let op = match self.cmp {
            Cmp::AtLeast => "≥",
            Cmp::Below => "<",
        };
        format!("{op} {} {}", fmt_num(self.target, self.unit), self.unit)
    }

    fn to_json(&self) -> Value {
        json!({
            "what": self.what, "unit": self.unit, "measured": finite(self.measured),
            "target": self.target_text(), "target_value": self.target, "pass": self.pass(),
        })
    }
}

/// Events one run of one contender was given and what it demonstrably handled (rows marked
/// sent, messages stored, effects written, messages acked …). Runs that disagree fail the
/// benchmark before a report exists; the counts let a reader (and the smoke test) see it.
#[derive(Debug, Clone)]
pub(crate) struct Count {
    contender: String,
    expected: u64,
    observed: u64,
}

/// Records expected/observed counts while a scenario runs.
#[derive(Debug, Default)]
pub(crate) struct Counts(std::sync::Mutex<Vec<Count>>);

impl Counts {
    /// Records one run; errors when `observed != expected`.
    fn record(&self, contender: &str, expected: usize, observed: u64) -> anyhow::Result<()> {
        let expected = u64::try_from(expected)?;
        if let Ok(mut v) = self.0.lock() {
            v.push(Count {
                contender: contender.to_owned(),
                expected,
                observed,
            });
        }
        if observed != expected {
            bail!("{contender}: expected {expected} events accounted for, found {observed}");
        }
        Ok(())
    }

    fn into_vec(self) -> Vec<Count> {
        self.0.into_inner().unwrap_or_default()
    }
}

/// What one scenario measured.
#[derive(Debug)]
pub(crate) struct ScenarioReport {
    scenario: Scenario,
    /// Events per measured run.
    events: usize,
    /// Measured runs per contender.
    runs: usize,
    measurements: Vec<Measurement>,
    checks: Vec<Check>,
    counts: Vec<Count>,
    /// Free-form notes printed under the table (what the baseline does, …).
    notes: Vec<String>,
}

/// The versions and machine a report was taken on.
#[derive(Debug, Clone)]
pub(crate) struct Environment {
    nats_server: String,
    postgres: String,
    cpus: usize,
    release: bool,
}

impl Environment {
    fn header(&self) -> String {
        format!(
            "nats-server {}, PostgreSQL {}, {} CPU{}, {} build",
            self.nats_server,
            self.postgres,
            self.cpus,
            if self.cpus == 1 { "" } else { "s" },
            if self.release { "release" } else { "debug" }
        )
    }
}

/// The whole run.
#[derive(Debug)]
pub(crate) struct Report {
    environment: Environment,
    events: usize,
    repeat: usize,
    scenarios: Vec<ScenarioReport>,
}

impl Report {
    fn checks(&self) -> impl Iterator<Item = &Check> {
        self.scenarios.iter().flat_map(|s| &s.checks)
    }

    fn to_json(&self) -> Value {
        json!({
            "environment": {
                "nats_server": self.environment.nats_server,
                "postgres": self.environment.postgres,
                "cpus": self.environment.cpus,
                "release": self.environment.release,
            },
            "events": self.events,
            "repeat": self.repeat,
            "pass": self.checks().all(Check::pass),
            "scenarios": self.scenarios.iter().map(|s| json!({
                "scenario": s.scenario.name(),
                "events": s.events,
                "runs": s.runs,
                "measurements": s.measurements.iter().map(Measurement::to_json).collect::<Vec<_>>(),
                "checks": s.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
                "counts": s.counts.iter().map(|c| json!({
                    "contender": c.contender, "expected": c.expected, "observed": c.observed,
                })).collect::<Vec<_>>(),
                "notes": s.notes,
            })).collect::<Vec<_>>(),
        })
    }

    fn print_table(&self) {
        println!();
        println!("jetstream-bridge bench: {}", self.environment.header());
        println!(
            "{} events per run, 1 warm-up + {} measured runs per contender",
            self.events, self.repeat
        );
        for s in &self.scenarios {
            println!();
            println!(
                "== {} ({} events per run, {} run{})",
                s.scenario.name(),
                s.events,
                s.runs,
                if s.runs == 1 { "" } else { "s" }
            );
            println!(
                "{:<48} {:>11} {:>11} {:>11}  unit",
                "measurement", "median", "min", "max"
            );
            for m in &s.measurements {
                println!(
                    "{:<48} {:>11} {:>11} {:>11}  {}",
                    m.name,
                    fmt_num(m.median(), m.unit),
                    fmt_num(m.min(), m.unit),
                    fmt_num(m.max(), m.unit),
                    m.unit
                );
            }
            for c in &s.checks {
                println!(
                    "  {} {:<44} {} {}, target {}",
                    if c.pass() { "PASS" } else { "FAIL" },
                    c.what,
                    fmt_num(c.measured, c.unit),
                    c.unit,
                    c.target_text()
                );
            }
            for note in &s.notes {
                println!("  note: {note}");
            }
        }
        let total = self.checks().count();
        let passed = self.checks().filter(|c| c.pass()).count();
        println!();
        println!("targets met: {passed} of {total}");
    }
}

fn fmt_num(x: f64, unit: &str) -> String {
    match unit {
        "ratio" => format!("{x:.2}"),
        "ms" => format!("{x:.2}"),
        "MiB" | "µs" => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}

/// Runs `run(true)` once as a warm-up (result discarded), then `run(false)` `repeats` times.
async fn repeat<T, F, Fut>(repeats: usize, mut run: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    run(true).await?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        samples.push(run(false).await?);
    }
    Ok(samples)
}

/// `" warm-up"` or `""`, for progress lines.
fn label(warmup: bool) -> &'static str {
    if warmup {
        " warm-up"
    } else {
        ""
    }
}

/// Progress line on stderr.
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!($($arg)*) };
}
pub(crate) use progress;

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        progress!("note: debug build; use `cargo run --release -p xtask -- bench ..` for figures");
    }
    let report = execute(&args).await?;
    report.print_table();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        progress!("wrote {}", path.display());
    }
    if args.strict && !report.checks().all(Check::pass) {
        bail!("some targets were missed (--strict)");
    }
    Ok(())
}

/// Runs the selected scenarios on one fixture (database + streams), always tearing it down.
async fn execute(args: &Args) -> anyhow::Result<Report> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let mut selected: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    selected.sort();
    selected.dedup();
    let fx = Fixture::new(args).await?;
    let result = execute_on(args, &fx, &selected).await;
    let teardown = fx.teardown().await;
    let report = result?;
    teardown?;
    Ok(report)
}

async fn execute_on(args: &Args, fx: &Fixture, selected: &[Scenario]) -> anyhow::Result<Report> {
    let environment = fx.environment().await?;
    progress!("{}", environment.header());
    // Memory first: the process RSS it reports should not carry what earlier scenarios
    // allocated (the allocator keeps freed memory).
    let order = selected
        .iter()
        .filter(|s| **s == Scenario::Memory)
        .chain(selected.iter().filter(|s| **s != Scenario::Memory));
    let mut scenarios = Vec::new();
    for &scenario in order {
        progress!("--- {}", scenario.name());
        let report = run_scenario(args, fx, scenario)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        scenarios.push(report);
    }
    scenarios.sort_by_key(|s| s.scenario);
    Ok(Report {
        environment,
        events: args.events,
        repeat: args.repeat,
        scenarios,
    })
}

async fn run_scenario(
    args: &Args,
    fx: &Fixture,
    scenario: Scenario,
) -> anyhow::Result<ScenarioReport> {
    match scenario {
        Scenario::Relay => bench_relay::relay(args, fx).await,
        Scenario::PublishBatch => bench_publish::batch(args, fx).await,
        Scenario::PublishDirect => bench_publish::direct(args, fx).await,
        Scenario::ConsumerInbox => bench_consumer::with_inbox(args, fx).await,
        Scenario::ConsumerNoInbox => bench_consumer::without_inbox(args, fx).await,
        Scenario::E2e => bench_e2e::e2e(args, fx).await,
        Scenario::Memory => bench_memory::memory(args, fx).await,
    }
}

/// `admin` with its database path replaced by `database` (query kept).
fn url_with_database(admin: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let Some(slash) = base
        .rfind('/')
        .filter(|&i| i > base.find("//").map_or(0, |j| j + 1))
    else {
        bail!("DATABASE_URL has no database path (expected postgres://user@host:port/db)");
    };
    let mut url = format!("{}/{database}", &base[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn cli_defaults_and_options() {
        let a = parse(&[]);
        assert!(a.scenarios.is_empty());
        assert_eq!((a.events, a.repeat), (20_000, 3));
        assert_eq!(a.memory_events(), 1_000_000);
        let a = parse(&["relay", "e2e", "--events", "10", "--repeat", "1"]);
        assert_eq!(a.scenarios, [Scenario::Relay, Scenario::E2e]);
        assert_eq!((a.events, a.repeat, a.memory_events()), (10, 1, 500));
        assert_eq!(parse(&["--repeats", "2"]).repeat, 2);
        assert_eq!(parse(&["consumer"]).scenarios, [Scenario::ConsumerInbox]);
        assert!(Cli::try_parse_from(["bench", "nope"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--events", "x"]).is_err());
    }

    #[test]
    fn statistics_and_checks() {
        let m = Measurement::new("x", "events/s", vec![3.0, 1.0, 2.0]);
        assert_eq!((m.median(), m.min(), m.max()), (2.0, 1.0, 3.0));
        assert!(Measurement::new("e", "ms", vec![]).median().is_nan());
        let r = Measurement::ratio("r", &[2.0, 3.0], &[4.0, 3.0]);
        assert_eq!(r.samples, [0.5, 1.0]);
        assert!(Check::on(&m, Cmp::AtLeast, 2.0).pass());
        assert!(!Check::on(&m, Cmp::Below, 2.0).pass());
        assert_eq!(
            Check::on(&r, Cmp::AtLeast, 0.8).target_text(),
            "≥ 0.80 ratio"
        );
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert!(url_with_database("postgres://h:5432", "b").is_err());
    }

    /// Every scenario with a tiny N against the services (`.ci/services.sh`; NATS_URL /
    /// DATABASE_URL override): the report must be well-formed and every event accounted for.
    /// Timing is not asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_every_scenario_with_tiny_n() {
        let mut args = parse(&["--events", "40", "--repeat", "1", "--memory-events", "300"]);
        args.scenarios = Scenario::ALL.to_vec();
        let report = execute(&args).await.expect("bench smoke run");
        assert_eq!(report.scenarios.len(), Scenario::ALL.len());
        assert!(!report.environment.nats_server.is_empty());
        assert!(!report.environment.postgres.is_empty());
        assert!(report.environment.cpus >= 1);
        for s in &report.scenarios {
            let name = s.scenario.name();
            assert!(!s.measurements.is_empty(), "{name}: no measurements");
            assert!(!s.checks.is_empty(), "{name}: no targets");
            for m in &s.measurements {
                assert_eq!(m.samples.len(), s.runs, "{name}/{}: samples", m.name);
                // Finite; a growth may be negative, everything else not.
                assert!(
                    m.samples
                        .iter()
                        .all(|x| x.is_finite() && (*x >= 0.0 || m.name.contains("growth"))),
                    "{name}/{}: {:?}",
                    m.name,
                    m.samples
                );
            }
            assert!(!s.counts.is_empty(), "{name}: no counts");
            for c in &s.counts {
                assert_eq!(c.expected, c.observed, "{name}/{}", c.contender);
                assert!(c.expected > 0, "{name}/{}", c.contender);
            }
        }
        let json = report.to_json();
        let text = serde_json::to_string(&json).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["scenarios"].as_array().unwrap().len(), 7);
        assert!(back["environment"]["nats_server"].is_string());
        assert!(back["pass"].is_boolean());
        for s in back["scenarios"].as_array().unwrap() {
            for c in s["checks"].as_array().unwrap() {
                assert!(c["pass"].is_boolean() && c["target"].is_string(), "{c}");
            }
        }
    }
}
