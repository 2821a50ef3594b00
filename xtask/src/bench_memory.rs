//! `bench memory`: process RSS while a `Relay` and a `Consumer` (inbox on) move
//! `--memory-events` events (default 1 000 000) from the outbox to the handler.
//!
//! A producer enqueues committed batches of 1000, keeping at most 20 000 events between
//! enqueue and handler, so the benchmark's own memory stays small and constant; a sampler reads
//! `VmRSS` from `/proc/self/status` every 20 ms. Reported: RSS before relay and consumer start,
//! at 10 % of the events (steady state), the peak, at the end, and the growth from 10 % to the
//! end ("flat" = less than 8 MiB). The RSS is the whole process's: relay, consumer, producer
//! and the tokio runtime. One run (no warm-up: the first 10 % serve as one).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use diesel_async::AsyncPgConnection;
use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
use jetstream_bridge_outbox::{Outbox, Relay};

use super::bench_fixture::{new_event, Fixture};
use super::{progress, Args, Check, Cmp, Counts, Measurement, Scenario, ScenarioReport};

const CHUNK: usize = 1000;
const MAX_BACKLOG: u64 = 20_000;
const MIB: f64 = 1024.0 * 1024.0;

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

/// This process's resident set size in bytes, from `/proc/self/status`.
pub(super) fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (the memory scenario needs Linux)")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no VmRSS line in /proc/self/status")?;
    Ok(kib * 1024)
}

pub(super) async fn memory(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.memory_events();
    if n == 0 {
        bail!("--memory-events must be at least 1");
    }
    fx.reset().await?;
    let counts = Counts::default();
    let start = rss_bytes()?;
    progress!(
        "  {n} events through relay and consumer; RSS before start {:.1} MiB",
        start as f64 / MIB
    );
    let peak = Arc::new(AtomicU64::new(start));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(rss) = rss_bytes() {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        }
    });
    let started = Instant::now();
    let relay = Relay::builder(&fx.producer, fx.js.clone(), fx.pool.clone())
        .build()?
        .spawn();
    let consumer = Consumer::builder(&fx.consumer, fx.js.clone())
        .with_inbox(fx.pool.clone())
        .handler(Noop)
        .concurrency(8)
        .fetch_wait(Duration::from_millis(200))
        .build()?
        .spawn();
    let driven = drive(fx, n, &consumer).await;
    let elapsed = started.elapsed();
    let end = rss_bytes()?;
    let stopped = consumer.shutdown().await;
    let relayed = relay.shutdown().await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let steady = driven?;
    let processed = stopped?.stats.processed;
    let sent = relayed?.sent;
    counts.record("memory: relayed", n, sent)?;
    counts.record("memory: handled", n, processed)?;
    counts.record(
        "memory: inbox rows",
        n,
        fx.count("jetstream_inbox_events").await?,
    )?;
    fx.quiesce().await?;
    let peak = peak.load(Ordering::Relaxed).max(end);
    let mib = |b: u64| vec![b as f64 / MIB];
    let growth = Measurement::new(
        "RSS growth from 10 % to the end",
        "MiB",
        vec![(end as f64 - steady as f64) / MIB],
    );
    let peak_m = Measurement::new("RSS peak", "MiB", mib(peak));
    let rate = n as f64 / elapsed.as_secs_f64();
    progress!(
        "  RSS start {:.1} MiB, at 10 % {:.1}, peak {:.1}, end {:.1} MiB; {rate:.0} events/s",
        start as f64 / MIB,
        steady as f64 / MIB,
        peak as f64 / MIB,
        end as f64 / MIB
    );
    Ok(ScenarioReport {
        scenario: Scenario::Memory,
        events: n,
        runs: 1,
        checks: vec![
            Check::on(&peak_m, Cmp::Below, 64.0),
            Check::on(&growth, Cmp::Below, 8.0),
        ],
        measurements: vec![
            Measurement::new(
                "RSS at start (before relay and consumer)",
                "MiB",
                mib(start),
            ),
            Measurement::new("RSS at 10 % of the events", "MiB", mib(steady)),
            peak_m,
            Measurement::new("RSS at the end", "MiB", mib(end)),
            growth,
            Measurement::new("outbox → handler throughput", "events/s", vec![rate]),
        ],
        counts: counts.into_vec(),
        notes: vec![
            "whole-process RSS (relay + consumer + producer in one process), sampled every 20 ms; \
             consumer: inbox on, concurrency 8, no effects"
                .into(),
        ],
    })
}

/// Enqueues `n` events in committed chunks, at most [`MAX_BACKLOG`] ahead of the handler;
/// returns the RSS at 10 % handled, after waiting for all `n`.
async fn drive(
    fx: &Fixture,
    n: usize,
    consumer: &jetstream_bridge_consumer::ConsumerHandle,
) -> anyhow::Result<u64> {
    let outbox = Outbox::new(&fx.producer);
    let total = u64::try_from(n)?;
    let tenth = total.div_ceil(10);
    let mut steady = None;
    let mut enqueued = 0usize;
    let mut last_report = Instant::now();
    let mut stats = consumer.stats();
    // One connection for the producer: the client keeps the capacity of its encode buffers
    // (≈ 0.5 MiB after a 1000-row insert), so producing on a different pooled connection each
    // time would grow the RSS step by step up to the pool size and blame relay and consumer.
    let mut conn = fx.pool.get().await?;
    while enqueued < n {
        let processed = stats.borrow_and_update().processed;
        if steady.is_none() && processed >= tenth {
            steady = Some(rss_bytes()?);
        }
        if u64::try_from(enqueued)?.saturating_sub(processed) >= MAX_BACKLOG {
            tokio::time::timeout(Duration::from_secs(60), stats.changed())
                .await
                .context("the consumer made no progress for 60 s")??;
            continue;
        }
        let end = (enqueued + CHUNK).min(n);
        outbox
            .enqueue_batch(&mut conn, (enqueued..end).map(new_event))
            .await?;
        enqueued = end;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            progress!(
                "  {enqueued} enqueued, {processed} handled, RSS {:.1} MiB",
                rss_bytes()? as f64 / MIB
            );
        }
    }
    drop(conn);
    let steady_at = |s: &jetstream_bridge_consumer::ConsumerStats| s.processed >= tenth;
    tokio::time::timeout(Duration::from_secs(60), consumer.wait_for(steady_at))
        .await
        .context("the consumer stalled")??;
    let steady = match steady {
        Some(s) => s,
        None => rss_bytes()?,
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        consumer.wait_for(|s| s.processed >= total),
    )
    .await
    .context("the consumer did not handle every event within 120 s of the last enqueue")??;
    Ok(steady)
}
