//! `bench publish-batch` and `bench publish-direct`: the outbox-less `Publisher` vs raw
//! async-nats JetStream publishes of the same envelopes.
//!
//! Both contenders start from the events' payloads and build the envelope inside the timed
//! region (the `Publisher` from a `NewEvent`, the baseline with `Envelope::builder`), so both
//! pay for serialization.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{Envelope, MSG_ID_HEADER};
use jetstream_bridge_outbox::{NewEvent, Publisher};
use serde_json::Value;

use super::bench_fixture::{payload, Fixture, PRODUCER};
use super::{label, progress, repeat, Args, Check, Cmp, Counts, Measurement, Scenario};
use super::{ScenarioReport, WINDOW};

/// Events per run of the one-at-a-time scenario (at most).
const DIRECT_MAX: usize = 5000;

pub(super) async fn batch(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events;
    let counts = Counts::default();
    let pairs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let count = if warmup { args.warm_events() } else { n };
            let base = raw_pipelined(fx, count, counts).await?;
            progress!(
                "  raw pipelined publish{}: {:.0} events/s, {}",
                label(warmup),
                base.rate,
                base.cpu_text()
            );
            let ours = publish_batch(fx, count, counts).await?;
            progress!(
                "  Publisher::publish_batch{}: {:.0} events/s, {}",
                label(warmup),
                ours.rate,
                ours.cpu_text()
            );
            Ok((base, ours))
        }
    })
    .await?;
    let base = Measurement::new(
        format!("raw async-nats pipelined ({WINDOW} in flight)"),
        "events/s",
        pairs.iter().map(|p| p.0.rate).collect(),
    );
    let ours = Measurement::new(
        "Publisher::publish_batch",
        "events/s",
        pairs.iter().map(|p| p.1.rate).collect(),
    );
    let ratio = Measurement::ratio("publish_batch / raw", &ours.samples, &base.samples);
    let checks = vec![Check::on(&ratio, Cmp::AtLeast, 0.95)];
    let mut measurements = vec![base, ours, ratio];
    // CPU time of this process per event: what each contender costs whatever else runs on the
    // machine (throughput under load follows it).
    let cpu: Option<Vec<(f64, f64)>> = pairs
        .iter()
        .map(|(b, o)| Some((b.cpu_us?, o.cpu_us?)))
        .collect();
    if let Some(cpu) = cpu {
        let base = Measurement::new(
            "raw: process CPU per event",
            "µs",
            cpu.iter().map(|c| c.0).collect(),
        );
        let ours = Measurement::new(
            "publish_batch: process CPU per event",
            "µs",
            cpu.iter().map(|c| c.1).collect(),
        );
        let ratio = Measurement::ratio("CPU publish_batch / raw", &ours.samples, &base.samples);
        measurements.extend([base, ours, ratio]);
    }
    Ok(ScenarioReport {
        scenario: Scenario::PublishBatch,
        events: n,
        runs: args.repeat,
        checks,
        measurements,
        counts: counts.into_vec(),
        notes: vec![format!(
            "one publish_batch call over all events vs one raw loop; both {WINDOW} PubAcks in \
             flight; Publisher defaults (both msg-id headers)"
        )],
    })
}

pub(super) async fn direct(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events.min(DIRECT_MAX);
    let counts = Counts::default();
    let pairs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let count = if warmup { n.min(500) } else { n };
            let base = raw_one_by_one(fx, count, counts).await?;
            progress!(
                "  raw publish, awaiting each ack{}: {base:.0} events/s",
                label(warmup)
            );
            let ours = publish_one_by_one(fx, count, counts).await?;
            progress!("  Publisher::publish{}: {ours:.0} events/s", label(warmup));
            Ok((base, ours))
        }
    })
    .await?;
    let base = Measurement::new(
        "raw async-nats publish, awaiting each ack",
        "events/s",
        pairs.iter().map(|p| p.0).collect(),
    );
    let ours = Measurement::new(
        "Publisher::publish, one at a time",
        "events/s",
        pairs.iter().map(|p| p.1).collect(),
    );
    let ratio = Measurement::ratio("publish / raw", &ours.samples, &base.samples);
    Ok(ScenarioReport {
        scenario: Scenario::PublishDirect,
        events: n,
        runs: args.repeat,
        checks: vec![Check::on(&ratio, Cmp::AtLeast, 0.9)],
        measurements: vec![base, ours, ratio],
        counts: counts.into_vec(),
        notes: vec![format!(
            "at most {DIRECT_MAX} events per run (one round trip each)"
        )],
    })
}

fn payloads(count: usize) -> Vec<Value> {
    (0..count).map(payload).collect()
}

fn raw_envelope(payload: Value) -> anyhow::Result<(String, Vec<u8>)> {
    let envelope = Envelope::builder("order.placed", payload)
        .producer(PRODUCER)
        .build()?;
    Ok((envelope.event_id.as_str().to_owned(), envelope.to_vec()))
}

async fn account(fx: &Fixture, who: &str, count: usize, counts: &Counts) -> anyhow::Result<()> {
    let stored = fx.stream_messages().await?;
    counts.record(&format!("{who}: messages stored"), count, stored)
}

/// One timed run: events per second and, where the platform tells, this process's CPU time
/// per event.
#[derive(Debug, Clone, Copy)]
struct Run {
    rate: f64,
    cpu_us: Option<f64>,
}

impl Run {
    /// Ends a run of `count` events started at `started` with `cpu` process CPU time.
    fn finish(count: usize, started: Instant, cpu: Option<Duration>) -> Self {
        let cpu_us = cpu.zip(process_cpu()).map(|(before, after)| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / count.max(1) as f64
        });
        Self {
            rate: count as f64 / started.elapsed().as_secs_f64(),
            cpu_us,
        }
    }

    fn cpu_text(&self) -> String {
        self.cpu_us
            .map_or_else(String::new, |us| format!("{us:.1} µs CPU/event"))
    }
}

/// CPU time of this process so far, all threads (Linux `/proc/self/task/*/schedstat`, in
/// nanoseconds); `None` elsewhere. Threads that ended are not counted (the runtime's workers
/// live for the whole benchmark).
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

async fn raw_pipelined(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<Run> {
    fx.reset().await?;
    let payloads = payloads(count);
    let cpu = process_cpu();
    let started = Instant::now();
    let mut acked = 0u64;
    let mut in_flight = FuturesUnordered::new();
    for p in payloads {
        while in_flight.len() >= WINDOW {
            if let Some(ack) = in_flight.next().await {
                let _: async_nats::jetstream::publish::PublishAck = ack?;
                acked += 1;
            }
        }
        let (id, body) = raw_envelope(p)?;
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, id.as_str());
        let ack = fx
            .js
            .publish_with_headers(fx.subject.clone(), headers, body.into())
            .await?;
        in_flight.push(ack.into_future());
    }
    while let Some(ack) = in_flight.next().await {
        ack?;
        acked += 1;
    }
    let run = Run::finish(count, started, cpu);
    counts.record("raw pipelined: acked", count, acked)?;
    account(fx, "raw pipelined", count, counts).await?;
    Ok(run)
}

async fn publish_batch(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<Run> {
    fx.reset().await?;
    let publisher = Publisher::new(&fx.producer, fx.js.clone()).max_in_flight(WINDOW);
    let payloads = payloads(count);
    let cpu = process_cpu();
    let started = Instant::now();
    // From the same payloads as the baseline, inside the timed region (as the baseline builds
    // its envelopes): `publish_batch` takes the events as its window pulls them.
    let events = payloads
        .into_iter()
        .map(|p| NewEvent::new("order.placed", p));
    let results = publisher.publish_batch(events).await;
    let run = Run::finish(count, started, cpu);
    let mut acked = 0u64;
    for r in results {
        if !r?.duplicate {
            acked += 1;
        }
    }
    counts.record("publish_batch: acked", count, acked)?;
    account(fx, "publish_batch", count, counts).await?;
    Ok(run)
}

async fn raw_one_by_one(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<f64> {
    fx.reset().await?;
    let payloads = payloads(count);
    let started = Instant::now();
    let mut acked = 0u64;
    for p in payloads {
        let (id, body) = raw_envelope(p)?;
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, id.as_str());
        let ack = fx
            .js
            .publish_with_headers(fx.subject.clone(), headers, body.into())
            .await?
            .await?;
        if !ack.duplicate {
            acked += 1;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    counts.record("raw one by one: acked", count, acked)?;
    account(fx, "raw one by one", count, counts).await?;
    Ok(rate)
}

async fn publish_one_by_one(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<f64> {
    fx.reset().await?;
    let publisher = Publisher::new(&fx.producer, fx.js.clone());
    let payloads = payloads(count);
    let started = Instant::now();
    let mut acked = 0u64;
    for p in payloads {
        if !publisher
            .publish(NewEvent::new("order.placed", p))
            .await?
            .duplicate
        {
            acked += 1;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    counts.record("Publisher::publish: acked", count, acked)?;
    account(fx, "Publisher::publish", count, counts).await?;
    Ok(rate)
}
