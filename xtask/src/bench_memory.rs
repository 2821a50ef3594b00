//! `bench memory`: the RSS of a `Relay` and of a `Consumer` (inbox on), each in a process of
//! its own as in a deployment, while they move `--memory-events` events (default 1 000 000)
//! from the outbox to the handler.
//!
//! This process produces: it enqueues committed batches of 1000, keeping at most 20 000
//! events between enqueue and handler, and samples `VmRSS` of both child processes
//! (`xtask bench-part relay|consumer`, the same binary) from `/proc/<pid>/status` every 20 ms.
//! Reported per process: RSS once it is ready, at 10 % of the events (steady state), the
//! peak, at the end, and the growth from 10 % to the end ("flat" = less than 8 MiB). One run
//! (no warm-up: the first 10 % serve as one).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use diesel_async::AsyncPgConnection;
use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
use jetstream_bridge_outbox::{Outbox, Relay};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::bench_fixture::{attach, new_event, Fixture};
use super::{progress, Args, Check, Cmp, Counts, Measurement, Scenario, ScenarioReport};

const CHUNK: usize = 1000;
const MAX_BACKLOG: u64 = 20_000;
const MIB: f64 = 1024.0 * 1024.0;
/// Environment of a child process: the benchmark database's URL, the NATS URL and the
/// invocation's token (not arguments, so no URL shows in the process list).
const URL_VAR: &str = "JB_BENCH_PART_DATABASE_URL";
const NATS_VAR: &str = "JB_BENCH_PART_NATS_URL";
const TOKEN_VAR: &str = "JB_BENCH_PART_TOKEN";
/// `relay` or `consumer`.
const ROLE_VAR: &str = "JB_BENCH_PART_ROLE";
/// Starts each line of a child's protocol.
const MARK: &str = "jb-bench-part: ";

/// Handler with no effects (the inbox row is the only write).
struct Noop;

impl InboxHandler for Noop {
    async fn handle(
        &self,
        _event: &Event,
        _conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The resident set size of process `pid` (`self` for this one) in bytes, from
/// `/proc/<pid>/status`.
pub(super) fn rss_of(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/<pid>/status (the memory scenario needs Linux)")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no VmRSS line in /proc/<pid>/status")?;
    Ok(kib * 1024)
}

/// A child process: builds its part, prints `ready`, then a relay runs until its stdin closes
/// and prints `sent N`; a consumer prints `processed N` every 50 ms until its stdin closes
/// (the parent closes it once N reached the events it produced, or when it gives up), then
/// `done N`. Its part and the rest of its settings come from the environment the parent
/// sets.
pub(crate) async fn part() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let a = attach(&var(URL_VAR)?, &var(NATS_VAR)?, &var(TOKEN_VAR)?).await?;
    match var(ROLE_VAR)?.as_str() {
        "relay" => {
            let relay = Relay::builder(&a.producer, a.js.clone(), a.pool.clone())
                .build()?
                .spawn();
            println!("{MARK}ready");
            stdin_closed().await;
            let report = relay.shutdown().await?;
            println!("{MARK}sent {}", report.sent);
        }
        "consumer" => {
            let consumer = Consumer::builder(&a.consumer, a.js.clone())
                .with_inbox(a.pool.clone())
                .handler(Noop)
                .concurrency(8)
                .fetch_wait(Duration::from_millis(200))
                .build()?
                .spawn();
            println!("{MARK}ready");
            let stats = consumer.stats();
            let mut closed = std::pin::pin!(stdin_closed());
            loop {
                println!("{MARK}processed {}", stats.borrow().processed);
                tokio::select! {
                    () = &mut closed => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            let report = consumer.shutdown().await?;
            println!("{MARK}done {}", report.stats.processed);
        }
        other => bail!("unknown part {other:?}"),
    }
    Ok(())
}

/// Completes when this process's stdin reaches its end (or cannot be read).
async fn stdin_closed() {
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
}

/// Waits up to 30 s for a child to exit, then kills it.
async fn reap(child: &mut Child) {
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Sets its flag when dropped: the samplers stop whichever way the scenario ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A child's RSS, sampled every 20 ms until `stop`.
struct Sampled {
    pid: String,
    ready: u64,
    peak: Arc<AtomicU64>,
}

impl Sampled {
    fn start(pid: u32, stop: &Arc<AtomicBool>) -> anyhow::Result<Self> {
        let pid = pid.to_string();
        let ready = rss_of(&pid)?;
        let peak = Arc::new(AtomicU64::new(ready));
        tokio::spawn({
            let (pid, peak, stop) = (pid.clone(), Arc::clone(&peak), Arc::clone(stop));
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Ok(rss) = rss_of(&pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Self { pid, ready, peak })
    }

    fn now(&self) -> anyhow::Result<u64> {
        let rss = rss_of(&self.pid)?;
        self.peak.fetch_max(rss, Ordering::Relaxed);
        Ok(rss)
    }
}

/// What one process's figures were.
struct Figures {
    ready: u64,
    steady: u64,
    peak: u64,
    end: u64,
}

/// This binary, and the arguments that make it play a part: `bench-part`, or, in the test
/// harness (the smoke test of every scenario), the ignored test that does the same.
fn part_command() -> anyhow::Result<tokio::process::Command> {
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    if cfg!(test) {
        command.args([
            "--ignored",
            "--exact",
            "bench::bench_memory::tests::part_child",
            "--nocapture",
            "--test-threads=1",
        ]);
    } else {
        command.arg("bench-part");
    }
    Ok(command)
}

fn spawn_part(fx: &Fixture, args: &Args, role: &str) -> anyhow::Result<Child> {
    part_command()?
        .env(ROLE_VAR, role)
        .env(URL_VAR, &fx.url)
        .env(NATS_VAR, &args.nats_url)
        .env(TOKEN_VAR, &fx.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the {role} process"))
}

/// What a child says after [`MARK`] (`ready`, `processed N`, `done N`, `sent N`), if `line`
/// is one of its protocol lines (the test harness writes its own text around them).
fn said(line: &str) -> Option<&str> {
    line.split_once(MARK).map(|(_, said)| said)
}

/// The next protocol line of a child, bounded by `limit`.
async fn line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    limit: Duration,
) -> anyhow::Result<String> {
    tokio::time::timeout(limit, async {
        loop {
            let line = lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow!("a benchmark process ended early"))?;
            if let Some(said) = said(&line) {
                return anyhow::Ok(said.to_owned());
            }
        }
    })
    .await
    .context("a benchmark process said nothing in time")?
}

fn stdout_lines(child: &mut Child) -> anyhow::Result<Lines<BufReader<ChildStdout>>> {
    let out = child.stdout.take().context("no stdout")?;
    Ok(BufReader::new(out).lines())
}

pub(super) async fn memory(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.memory_events();
    if n == 0 {
        bail!("--memory-events must be at least 1");
    }
    fx.reset().await?;
    let counts = Counts::default();
    let mut relay = spawn_part(fx, args, "relay")?;
    let mut consumer = spawn_part(fx, args, "consumer")?;
    let mut relay_out = stdout_lines(&mut relay)?;
    let mut consumer_out = stdout_lines(&mut consumer)?;
    let ready = Duration::from_secs(30);
    for out in [&mut relay_out, &mut consumer_out] {
        let said = line(out, ready).await?;
        if said != "ready" {
            bail!("a benchmark process said {said:?} instead of ready");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_samplers = StopOnDrop(Arc::clone(&stop));
    let pid = |c: &Child| c.id().context("a benchmark process already ended");
    let relay_rss = Sampled::start(pid(&relay)?, &stop)?;
    let consumer_rss = Sampled::start(pid(&consumer)?, &stop)?;
    progress!(
        "  {n} events through a relay process and a consumer process; RSS when ready: relay \
         {:.1} MiB, consumer {:.1} MiB",
        relay_rss.ready as f64 / MIB,
        consumer_rss.ready as f64 / MIB
    );
    // The consumer's progress, from its `processed N` lines.
    let processed = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let processed = Arc::clone(&processed);
        async move {
            while let Ok(Some(line)) = consumer_out.next_line().await {
                let Some(said) = said(&line) else { continue };
                let value = said
                    .strip_prefix("processed ")
                    .or_else(|| said.strip_prefix("done "))
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(v) = value {
                    processed.store(v, Ordering::Relaxed);
                }
                if said.starts_with("done ") {
                    return value;
                }
            }
            None
        }
    });
    let started = Instant::now();
    let driven = drive(fx, n, &processed, [&relay_rss, &consumer_rss]).await;
    let elapsed = started.elapsed();
    let end = [relay_rss.now(), consumer_rss.now()];
    // Stop both (their stdin closes), then collect their reports.
    drop(relay.stdin.take());
    drop(consumer.stdin.take());
    let sent = async {
        loop {
            let said = line(&mut relay_out, Duration::from_secs(60)).await?;
            if let Some(v) = said.strip_prefix("sent ") {
                return anyhow::Ok(v.parse::<u64>()?);
            }
        }
    }
    .await;
    let handled = tokio::time::timeout(Duration::from_secs(60), reader).await;
    stop.store(true, Ordering::Relaxed);
    reap(&mut relay).await;
    reap(&mut consumer).await;
    let steady = driven?;
    let [relay_end, consumer_end] = end;
    let (relay_end, consumer_end) = (relay_end?, consumer_end?);
    let handled = handled
        .context("the consumer process did not stop")??
        .context("the consumer process ended without its report")?;
    counts.record("memory: relayed", n, sent?)?;
    counts.record("memory: handled", n, handled)?;
    counts.record(
        "memory: inbox rows",
        n,
        fx.count("jetstream_inbox_events").await?,
    )?;
    fx.quiesce().await?;
    let rate = n as f64 / elapsed.as_secs_f64();
    let figures = [
        (
            "relay",
            Figures {
                ready: relay_rss.ready,
                steady: steady[0],
                peak: relay_rss.peak.load(Ordering::Relaxed).max(relay_end),
                end: relay_end,
            },
        ),
        (
            "consumer",
            Figures {
                ready: consumer_rss.ready,
                steady: steady[1],
                peak: consumer_rss.peak.load(Ordering::Relaxed).max(consumer_end),
                end: consumer_end,
            },
        ),
    ];
    let mib = |b: u64| vec![b as f64 / MIB];
    let mut measurements = Vec::new();
    let mut checks = Vec::new();
    for (who, f) in &figures {
        progress!(
            "  {who}: RSS ready {:.1} MiB, at 10 % {:.1}, peak {:.1}, end {:.1} MiB",
            f.ready as f64 / MIB,
            f.steady as f64 / MIB,
            f.peak as f64 / MIB,
            f.end as f64 / MIB
        );
        let peak = Measurement::new(format!("{who} process: RSS peak"), "MiB", mib(f.peak));
        let growth = Measurement::new(
            format!("{who} process: RSS growth from 10 % to the end"),
            "MiB",
            vec![(f.end as f64 - f.steady as f64) / MIB],
        );
        checks.push(Check::on(&peak, Cmp::Below, 64.0));
        checks.push(Check::on(&growth, Cmp::Below, 8.0));
        measurements.extend([
            Measurement::new(
                format!("{who} process: RSS when ready"),
                "MiB",
                mib(f.ready),
            ),
            Measurement::new(
                format!("{who} process: RSS at 10 % of the events"),
                "MiB",
                mib(f.steady),
            ),
            peak,
            Measurement::new(format!("{who} process: RSS at the end"), "MiB", mib(f.end)),
            growth,
        ]);
    }
    measurements.push(Measurement::new(
        "outbox → handler throughput",
        "events/s",
        vec![rate],
    ));
    Ok(ScenarioReport {
        scenario: Scenario::Memory,
        events: n,
        runs: 1,
        checks,
        measurements,
        counts: counts.into_vec(),
        notes: vec![
            "relay and consumer each in a process of their own (this binary's `bench-part`), \
             RSS sampled every 20 ms; consumer: inbox on, concurrency 8, no effects; this \
             process produces"
                .into(),
        ],
    })
}

/// Enqueues `n` events in committed chunks, at most [`MAX_BACKLOG`] ahead of the handler;
/// returns the RSS of both processes at 10 % handled, after waiting for all `n`.
async fn drive(
    fx: &Fixture,
    n: usize,
    processed: &AtomicU64,
    rss: [&Sampled; 2],
) -> anyhow::Result<[u64; 2]> {
    let outbox = Outbox::new(&fx.producer);
    let total = u64::try_from(n)?;
    let tenth = total.div_ceil(10);
    let mut steady = None;
    let mut enqueued = 0usize;
    let mut last_report = Instant::now();
    let mut last_progress = (0, Instant::now());
    let take_steady = |steady: &mut Option<[u64; 2]>, done: u64| -> anyhow::Result<()> {
        if steady.is_none() && done >= tenth {
            *steady = Some([rss[0].now()?, rss[1].now()?]);
        }
        Ok(())
    };
    // One connection for the producer: the client keeps the capacity of its encode buffers
    // (≈ 0.5 MiB after a 1000-row insert), so producing on a different pooled connection each
    // time would grow this process's memory step by step (not measured, but wasteful).
    let mut conn = fx.pool.get().await?;
    loop {
        let done = processed.load(Ordering::Relaxed);
        take_steady(&mut steady, done)?;
        if done >= total {
            break;
        }
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(120) {
            bail!("the consumer made no progress for 120 s ({done} of {n} handled)");
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            progress!(
                "  {enqueued} enqueued, {done} handled, RSS relay {:.1} MiB, consumer {:.1} MiB",
                rss[0].now()? as f64 / MIB,
                rss[1].now()? as f64 / MIB
            );
        }
        if enqueued >= n || u64::try_from(enqueued)?.saturating_sub(done) >= MAX_BACKLOG {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let end = (enqueued + CHUNK).min(n);
        outbox
            .enqueue_batch(&mut conn, (enqueued..end).map(new_event))
            .await?;
        enqueued = end;
    }
    steady.context("no steady-state sample")
}

#[cfg(test)]
mod tests {
    /// Not a test: the smoke test's memory scenario runs this harness with `--ignored --exact`
    /// on it to start a relay or consumer process (see `part_command`).
    #[test]
    #[ignore = "started by the memory scenario as a child process"]
    fn part_child() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(super::part()).expect("part");
    }
}
