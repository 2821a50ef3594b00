//! `bench e2e`: latency from outbox `COMMIT` to the consumer's handler (and, on the way, to
//! the message's appearance on NATS), at 1000 events/s.
//!
//! A `Relay` (woken by `NOTIFY`) and a `Consumer` with the inbox run; [`PRODUCERS`] tasks
//! commit one event each in turn (`Outbox::enqueue` in autocommit), 1000 per second in all,
//! and note when each `COMMIT` returned; the handler notes when it saw each event id, as does
//! a core-NATS subscriber on the subject. Latencies are computed afterwards, so nothing waits
//! on a shared map. The commit rate actually achieved is reported too: on a loaded machine the
//! producers fall short of 1000/s. `JB_BENCH_E2E_TRACE=FILE` writes per-event times as CSV.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use diesel_async::AsyncPgConnection;
use futures_util::StreamExt as _;
use jetstream_bridge_config::MSG_ID_HEADER;
use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
use jetstream_bridge_outbox::{Outbox, Relay};

use super::bench_fixture::{new_event, Fixture};
use super::ScenarioReport;
use super::{label, progress, repeat, Args, Check, Cmp, Counts, Measurement, Scenario};

/// Events per run (at most).
const E2E_MAX: usize = 5000;
/// Consumer concurrency: one inbox transaction per event costs a WAL flush (a few ms on an
/// fsync-on disk), so concurrency 1 cannot keep up with 1000 events/s.
const CONCURRENCY: usize = 16;
/// Concurrent producers sharing the 1000 commits/s.
const PRODUCERS: usize = 8;

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Notes when each event reached the handler.
struct Stamp(Seen);

impl InboxHandler for Stamp {
    async fn handle(
        &self,
        event: &Event,
        _conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let now = Instant::now();
        if let Ok(mut seen) = self.0.lock() {
            seen.entry(event.envelope.event_id.as_str().to_owned())
                .or_insert(now);
        }
        Ok(())
    }
}

/// One run's percentiles, milliseconds.
struct Latency {
    /// Commits per second the producers achieved (the target rate is 1000).
    rate: f64,
    handler: [f64; 3],
    publish: [f64; 3],
}

pub(super) async fn e2e(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events.min(E2E_MAX);
    let counts = Counts::default();
    let runs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let l = run(fx, if warmup { n.min(500) } else { n }, counts).await?;
            progress!(
                "  {:.0} commits/s; commit→handler{}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
                 (commit→NATS p50 {:.2}, p99 {:.2}, max {:.2})",
                l.rate,
                label(warmup),
                l.handler[0],
                l.handler[1],
                l.handler[2],
                l.publish[0],
                l.publish[1],
                l.publish[2]
            );
            Ok(l)
        }
    })
    .await?;
    let col = |f: fn(&Latency) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let p50 = Measurement::new(
        "commit→handler p50 at 1k events/s",
        "ms",
        col(|l| l.handler[0]),
    );
    let p99 = Measurement::new(
        "commit→handler p99 at 1k events/s",
        "ms",
        col(|l| l.handler[1]),
    );
    let max = Measurement::new(
        "commit→handler max at 1k events/s",
        "ms",
        col(|l| l.handler[2]),
    );
    let pub50 = Measurement::new(
        "commit→NATS p50 at 1k events/s",
        "ms",
        col(|l| l.publish[0]),
    );
    let pub99 = Measurement::new(
        "commit→NATS p99 at 1k events/s",
        "ms",
        col(|l| l.publish[1]),
    );
    let rate = Measurement::new(
        "achieved commit rate (target 1000)",
        "events/s",
        col(|l| l.rate),
    );
    Ok(ScenarioReport {
        scenario: Scenario::E2e,
        events: n,
        runs: args.repeat,
        checks: vec![
            Check::on(&p50, Cmp::Below, 5.0),
            Check::on(&p99, Cmp::Below, 15.0),
        ],
        measurements: vec![p50, p99, max, pub50, pub99, rate],
        counts: counts.into_vec(),
        notes: vec![format!(
            "at most {E2E_MAX} events per run; {PRODUCERS} producers with one autocommit enqueue \
             every {PRODUCERS} ms each; Relay and Consumer (inbox on, concurrency {CONCURRENCY}) \
             otherwise with default settings (a 200 ms fetch wait showed stalls of expires + 5 s: \
             async-nats' client-side end of a pull whose server 408 never arrived)"
        )],
    })
}

async fn run(fx: &Fixture, n: usize, counts: &Counts) -> anyhow::Result<Latency> {
    fx.reset().await?;
    let relay = Relay::builder(&fx.producer, fx.js.clone(), fx.pool.clone())
        .build()?
        .spawn();
    let handled: Seen = Arc::default();
    // Default fetch wait (5 s): see the note in the report.
    let consumer = Consumer::builder(&fx.consumer, fx.js.clone())
        .with_inbox(fx.pool.clone())
        .handler(Stamp(Arc::clone(&handled)))
        .concurrency(CONCURRENCY)
        .build()?
        .spawn();
    let result = drive(fx, n, &relay, &consumer).await;
    let stopped = consumer.shutdown().await;
    relay.shutdown().await?;
    let (committed, published, rate) = result?;
    let stats = stopped?.stats;
    if stats.fetch_errors + stats.retried + stats.recoveries > 0 {
        progress!(
            "  consumer: {} fetch errors, {} retried, {} recoveries, {} pulls",
            stats.fetch_errors,
            stats.retried,
            stats.recoveries,
            stats.iterations
        );
    }
    counts.record("e2e: handled", n, stats.processed)?;
    let handled = std::mem::take(&mut *handled.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let matched = committed
        .keys()
        .filter(|id| handled.contains_key(*id))
        .count();
    counts.record("e2e: committed and handled", n, u64::try_from(matched)?)?;
    counts.record("e2e: seen on NATS", n, u64::try_from(published.len())?)?;
    fx.quiesce().await?;
    if let Some(path) = std::env::var_os("JB_BENCH_E2E_TRACE") {
        trace(&path, &committed, &published, &handled)?;
    }
    Ok(Latency {
        rate,
        handler: percentiles(&committed, &handled),
        publish: percentiles(&committed, &published),
    })
}

/// Produces `n` events at 1000/s and waits until the handler saw all of them; returns the
/// commit times and the times the subscriber saw each event.
async fn drive(
    fx: &Fixture,
    n: usize,
    relay: &jetstream_bridge_outbox::RelayHandle,
    consumer: &jetstream_bridge_consumer::ConsumerHandle,
) -> anyhow::Result<(HashMap<String, Instant>, HashMap<String, Instant>, f64)> {
    relay
        .stats()
        .wait_for(|s| s.listening)
        .await
        .context("relay never listened")?;
    let mut sub = fx.client.subscribe(fx.subject.clone()).await?;
    fx.client.flush().await?;
    let subscriber = tokio::spawn(async move {
        let mut seen = HashMap::with_capacity(n);
        while seen.len() < n {
            let Some(msg) = sub.next().await else { break };
            let now = Instant::now();
            if let Some(id) = msg.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER)) {
                seen.entry(id.as_str().to_owned()).or_insert(now);
            }
        }
        seen
    });
    // PRODUCERS tasks, each on its own connection, commit in turn every PRODUCERS ms: 1000
    // commits/s in all, concurrent like a service's request handlers (one connection could not
    // sustain 1000 fsync'd commits/s on a busy disk).
    let started = Instant::now();
    let producers = (0..PRODUCERS).map(|k| async move {
        let outbox = Outbox::new(&fx.producer);
        let mut conn = fx.pool.get().await?;
        let mut committed = Vec::with_capacity(n / PRODUCERS + 1);
        let period = Duration::from_millis(u64::try_from(PRODUCERS)?);
        let first = tokio::time::Instant::now() + Duration::from_millis(u64::try_from(k)?);
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in (k..n).step_by(PRODUCERS) {
            ticker.tick().await;
            let id = outbox.enqueue(&mut conn, new_event(i)).await?;
            committed.push((id.as_str().to_owned(), Instant::now()));
        }
        anyhow::Ok(committed)
    });
    let committed: HashMap<String, Instant> = futures_util::future::try_join_all(producers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let deadline = Duration::from_secs(60);
    tokio::time::timeout(deadline, consumer.wait_for(|s| s.processed >= n as u64))
        .await
        .context("the consumer did not handle every event within 60 s")??;
    let published = tokio::time::timeout(Duration::from_secs(10), subscriber)
        .await
        .context("the subscriber did not see every event within 10 s")??;
    if committed.len() != n {
        bail!("{} distinct event ids for {n} events", committed.len());
    }
    Ok((committed, published, rate))
}

/// Writes `commit_ms,nats_ms,handler_ms` per event in commit order (times since the first
/// commit) to the file named by `JB_BENCH_E2E_TRACE`, for looking at stalls.
fn trace(
    path: &std::ffi::OsStr,
    committed: &HashMap<String, Instant>,
    published: &HashMap<String, Instant>,
    handled: &HashMap<String, Instant>,
) -> anyhow::Result<()> {
    let mut rows: Vec<(&String, &Instant)> = committed.iter().collect();
    rows.sort_by_key(|r| *r.1);
    let Some(first) = rows.first().map(|r| *r.1) else {
        return Ok(());
    };
    let ms = |t: Option<&Instant>| {
        t.map_or(f64::NAN, |t| {
            t.saturating_duration_since(first).as_secs_f64() * 1000.0
        })
    };
    let mut out = String::from("commit_ms,nats_ms,handler_ms\n");
    for (id, at) in rows {
        out.push_str(&format!(
            "{:.3},{:.3},{:.3}\n",
            ms(Some(at)),
            ms(published.get(id)),
            ms(handled.get(id))
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.to_string_lossy()))
}

/// p50, p99 and max of `seen − committed` over the events in both, milliseconds (nearest
/// rank). An event seen before its `COMMIT` returned to the producer counts as 0.
fn percentiles(committed: &HashMap<String, Instant>, seen: &HashMap<String, Instant>) -> [f64; 3] {
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |per_mille: usize| {
        let rank = ms.len().saturating_mul(per_mille).div_ceil(1000);
        ms.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    [pct(500), pct(990), pct(1000)]
}
