//! `bench consumer-inbox` and `bench consumer-no-inbox`: the consumer runtime vs a raw
//! async-nats pull loop doing the same work at the same concurrency, in the same run.
//!
//! Every run starts from a stream preloaded with `--events` envelopes and ends when all were
//! handled; the stream must then be empty (every message acked) and, with the inbox, the
//! `effects` table must hold exactly one row per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use diesel::sql_types::{Array, BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::TryStreamExt as _;
use jetstream_bridge_config::{Config, Envelope};
use jetstream_bridge_consumer::{
    Consumer, ConsumerHandle, Event, Handler, HandlerError, InboxBatchHandler, InboxHandler,
};
use jetstream_bridge_pg::prepared;
use jetstream_bridge_topology::bind_pull_consumer;

use super::bench_fixture::Fixture;
use super::ScenarioReport;
use super::{label, progress, repeat, Args, Check, Cmp, Counts, Measurement, Scenario};

/// Per-message concurrencies measured (each against the baseline at the same concurrency).
const CONCURRENCY: [usize; 2] = [1, 8];
/// Messages per pull request, runtime (`batch_size`) and baseline alike.
const PULL: usize = 100;
/// How long a pull request waits for messages (runtime `fetch_wait`, baseline `expires`).
const FETCH_WAIT: Duration = Duration::from_millis(200);

/// The benchmark handler: one business row per event, inside the inbox transaction.
struct Insert;

impl InboxHandler for Insert {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        prepared("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The batch-mode handler: the same rows, written set-based (one statement per pull, as a
/// batch handler would), in the one transaction per pull.
struct InsertBatch;

impl InboxBatchHandler for InsertBatch {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e.envelope.event_id.as_str())
            .collect();
        prepared("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
            .bind::<Array<Text>, _>(ids)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The inbox-less handler: parses nothing beyond what the runtime did, writes nothing.
struct Noop;

impl Handler for Noop {
    async fn handle(&self, _event: &Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Which runtime contender.
#[derive(Clone, Copy)]
enum Mode {
    PerMessage(usize),
    Batch,
    NoInbox(usize),
}

/// Events per run of `consumer-inbox` (at most): one fsync'd commit per message makes
/// concurrency 1 run at a few hundred messages per second.
const INBOX_MAX: usize = 5000;

pub(super) async fn with_inbox(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events.min(INBOX_MAX);
    let counts = Counts::default();
    // Per repeat, per concurrency: [base, ours, base CPU, ours CPU]; then [batch, batch CPU].
    let runs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let count = if warmup { n.min(1000) } else { n };
            let l = label(warmup);
            let mut row = Vec::new();
            for c in CONCURRENCY {
                let (base, base_cpu) = raw_run(fx, count, c, true, counts).await?;
                progress!(
                    "  raw pull + txn + ack, concurrency {c}{l}: {base:.0} msg/s, \
                     {base_cpu:.1} µs CPU/msg"
                );
                let (ours, ours_cpu) = consumer_run(fx, count, Mode::PerMessage(c), counts).await?;
                progress!(
                    "  Consumer + inbox, concurrency {c}{l}: {ours:.0} msg/s, \
                     {ours_cpu:.1} µs CPU/msg"
                );
                row.extend([base, ours, base_cpu, ours_cpu]);
            }
            let (raw_batch, raw_batch_cpu) =
                raw_batch_run(fx, count, Dedupe::Inbox, counts).await?;
            progress!(
                "  raw batch: pull + one txn per pull (inbox table) + acks{l}: \
                 {raw_batch:.0} msg/s, {raw_batch_cpu:.1} µs CPU/msg"
            );
            let (lean, lean_cpu) = raw_batch_run(fx, count, Dedupe::Lean, counts).await?;
            progress!(
                "  raw batch: pull + one txn per pull (lean table) + acks{l}: \
                 {lean:.0} msg/s, {lean_cpu:.1} µs CPU/msg"
            );
            let (batch, batch_cpu) = consumer_run(fx, count, Mode::Batch, counts).await?;
            progress!(
                "  Consumer + inbox, batch mode{l}: {batch:.0} msg/s, {batch_cpu:.1} µs CPU/msg"
            );
            row.extend([batch, batch_cpu, raw_batch, raw_batch_cpu, lean, lean_cpu]);
            Ok(row)
        }
    })
    .await?;
    let col = |i: usize| runs.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let (mut measurements, mut checks) = per_concurrency(
        &runs,
        "raw pull + txn/msg + ack",
        "Consumer + inbox",
        "",
        0.7,
    );
    let at = 4 * CONCURRENCY.len();
    let batch = Measurement::new(
        format!("Consumer + inbox, batch mode ({PULL}/pull)"),
        "msg/s",
        col(at),
    );
    let batch_cpu = Measurement::new("process CPU per message, batch mode", "µs", col(at + 1));
    let raw_batch = Measurement::new(
        format!("raw batch: pull {PULL} + one txn (multi-row inbox + business insert) + acks"),
        "msg/s",
        col(at + 2),
    );
    let raw_batch_cpu = Measurement::new("process CPU per message, raw batch", "µs", col(at + 3));
    let lean = Measurement::new(
        "raw batch, lean dedupe table instead of the inbox",
        "msg/s",
        col(at + 4),
    );
    let lean_cpu = Measurement::new(
        "process CPU per message, raw batch (lean table)",
        "µs",
        col(at + 5),
    );
    let batch_ratio =
        Measurement::ratio("batch mode / raw batch", &batch.samples, &raw_batch.samples);
    let lean_ratio = Measurement::ratio(
        "batch mode / raw batch with the lean table",
        &batch.samples,
        &lean.samples,
    );
    checks.push(Check::on(&batch_ratio, Cmp::AtLeast, 0.8));
    checks.push(Check::on(&batch, Cmp::AtLeast, 10_000.0));
    measurements.extend([
        raw_batch,
        batch,
        batch_ratio,
        lean,
        lean_ratio,
        raw_batch_cpu,
        batch_cpu,
        lean_cpu,
    ]);
    Ok(ScenarioReport {
        scenario: Scenario::ConsumerInbox,
        events: n,
        runs: args.repeat,
        measurements,
        checks,
        counts: counts.into_vec(),
        notes: vec![format!(
            "every message: inbox/dedupe row + one business row in one transaction, then ack; \
             raw: pull {PULL} (expires {FETCH_WAIT:?}), INSERT … ON CONFLICT DO NOTHING + the \
             business row per message; batch mode: concurrency 1, one transaction per pull, effects \
             written with one INSERT … unnest per pull; raw batch: the same pull, one transaction \
             with INSERT … SELECT unnest … ON CONFLICT DO NOTHING RETURNING into \
             jetstream_inbox_events (the same columns as the runtime; the lean variant: a \
             one-column dedupe table) and one INSERT … unnest of the new ids, then an ack per \
             message"
        )],
    })
}

pub(super) async fn without_inbox(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events;
    let counts = Counts::default();
    let runs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let count = if warmup { args.warm_events() } else { n };
            let l = label(warmup);
            let mut row = Vec::new();
            for c in CONCURRENCY {
                let (base, base_cpu) = raw_run(fx, count, c, false, counts).await?;
                progress!(
                    "  raw pull + ack, concurrency {c}{l}: {base:.0} msg/s, \
                     {base_cpu:.1} µs CPU/msg"
                );
                let (ours, ours_cpu) = consumer_run(fx, count, Mode::NoInbox(c), counts).await?;
                progress!(
                    "  Consumer, no inbox, concurrency {c}{l}: {ours:.0} msg/s, \
                     {ours_cpu:.1} µs CPU/msg"
                );
                row.extend([base, ours, base_cpu, ours_cpu]);
            }
            Ok(row)
        }
    })
    .await?;
    let (measurements, checks) = per_concurrency(
        &runs,
        "raw pull + ack",
        "Consumer, no inbox",
        " (no inbox)",
        0.9,
    );
    Ok(ScenarioReport {
        scenario: Scenario::ConsumerNoInbox,
        events: n,
        runs: args.repeat,
        measurements,
        checks,
        counts: counts.into_vec(),
        notes: vec![
            "handler does nothing; raw: pull, parse the envelope, ack (fire-and-forget, as the runtime)".into(),
        ],
    })
}

/// Checks that every message was acked and (with the inbox) applied exactly once.
async fn account(
    fx: &Fixture,
    who: &str,
    count: usize,
    inbox: bool,
    counts: &Counts,
) -> anyhow::Result<()> {
    let left = fx.drained().await?;
    counts.record(
        &format!("{who}: acked"),
        count,
        u64::try_from(count)?.saturating_sub(left),
    )?;
    if inbox {
        counts.record(
            &format!("{who}: effects"),
            count,
            fx.count("effects").await?,
        )?;
    }
    fx.quiesce().await
}

/// Preloads `count` events and drains them with a `Consumer`; messages per second from spawn
/// to the last one processed.
async fn consumer_run(
    fx: &Fixture,
    count: usize,
    mode: Mode,
    counts: &Counts,
) -> anyhow::Result<(f64, f64)> {
    fx.preload(count).await?;
    let builder = |config: &Config| Consumer::builder(config, fx.js.clone());
    let cpu = cpu_seconds()?;
    let started = Instant::now();
    let handle = match mode {
        Mode::PerMessage(c) => builder(&fx.consumer)
            .with_inbox(fx.pool.clone())
            .handler(Insert)
            .fetch_wait(FETCH_WAIT)
            .concurrency(c)
            .build()?
            .spawn(),
        Mode::Batch => builder(&fx.consumer)
            .with_inbox(fx.pool.clone())
            .batch_handler(InsertBatch)
            .fetch_wait(FETCH_WAIT)
            .concurrency(1)
            .build()?
            .spawn(),
        Mode::NoInbox(c) => builder(&fx.consumer_no_inbox)
            .handler(Noop)
            .fetch_wait(FETCH_WAIT)
            .concurrency(c)
            .build()?
            .spawn(),
    };
    let waited = until_processed(&handle, count).await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds()? - cpu) * 1e6 / count as f64;
    let report = handle.shutdown().await?;
    waited?;
    let (who, inbox) = match mode {
        Mode::PerMessage(c) => (format!("Consumer + inbox c={c}"), true),
        Mode::Batch => ("Consumer + inbox, batch".to_owned(), true),
        Mode::NoInbox(c) => (format!("Consumer, no inbox c={c}"), false),
    };
    counts.record(&format!("{who}: processed"), count, report.stats.processed)?;
    account(fx, &who, count, inbox, counts).await?;
    Ok((rate, cpu))
}

/// CPU time (user + system) this process used so far, in seconds, from `/proc/self/stat`
/// (clock ticks of 1/100 s, Linux's fixed `USER_HZ`). It covers every thread: the NATS and
/// PostgreSQL client tasks too, alike for both contenders.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| anyhow!("reading /proc/self/stat (Linux only): {e}"))?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/self/stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v = fields
            .get(i)
            .ok_or_else(|| anyhow!("unexpected /proc/self/stat format"))?;
        Ok(v.parse::<u64>()? as f64 / 100.0)
    };
    // `rest` starts at field 3 (state), so field n is at index n - 3.
    Ok(tick(14 - 3)? + tick(15 - 3)?)
}

/// Waits until the runtime processed `count` messages, checking its counters every
/// millisecond rather than awaiting every change: `wait_for` would wake this task on each of
/// the several counter updates per message and slow the runtime it measures.
async fn until_processed(handle: &ConsumerHandle, count: usize) -> anyhow::Result<()> {
    let count = u64::try_from(count)?;
    let stats = handle.stats();
    let mut last = (0, Instant::now());
    loop {
        let processed = stats.borrow().processed;
        if processed >= count {
            return Ok(());
        }
        if processed != last.0 {
            last = (processed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            bail!("the consumer stalled at {processed} of {count} messages for 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The baseline: a competent hand-written loop (its statements prepared once per connection,
/// as the runtime's are). Pull up to [`PULL`] messages, handle them with
/// up to `concurrency` at once — with the inbox: a pooled connection, one transaction with
/// `INSERT … ON CONFLICT DO NOTHING` into a dedupe table and (when new) the business row —
/// ack each, pull again.
async fn raw_run(
    fx: &Fixture,
    count: usize,
    concurrency: usize,
    inbox: bool,
    counts: &Counts,
) -> anyhow::Result<(f64, f64)> {
    let consumer = preloaded(fx, count).await?;
    let done = AtomicU64::new(0);
    let cpu = cpu_seconds()?;
    let started = Instant::now();
    let mut remaining = count;
    let mut progress_at = Instant::now();
    while remaining > 0 {
        let batch = consumer
            .batch()
            .max_messages(remaining.min(PULL))
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow!("pull request: {e}"))?;
        let before = AtomicU64::load(&done, Ordering::Relaxed);
        batch
            .map_err(|e| anyhow!("pull: {e}"))
            .try_for_each_concurrent(concurrency, |message| {
                let done = &done;
                async move {
                    let envelope = Envelope::from_slice(&message.payload)?;
                    if inbox {
                        let id = envelope.event_id.as_str();
                        let mut conn = fx.pool.get().await?;
                        conn.transaction::<(), diesel::result::Error, _>(async |conn| {
                            let fresh = prepared(
                                "INSERT INTO naive_seen (event_id) VALUES ($1) \
                                 ON CONFLICT DO NOTHING",
                            )
                            .bind::<Text, _>(id)
                            .execute(conn)
                            .await?;
                            if fresh == 1 {
                                prepared("INSERT INTO effects (event_id) VALUES ($1)")
                                    .bind::<Text, _>(id)
                                    .execute(conn)
                                    .await?;
                            }
                            Ok(())
                        })
                        .await?;
                    }
                    message.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                    done.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?;
        let got = usize::try_from(AtomicU64::load(&done, Ordering::Relaxed) - before)?;
        remaining = remaining.saturating_sub(got);
        if got > 0 {
            progress_at = Instant::now();
        } else if progress_at.elapsed() > Duration::from_secs(30) {
            bail!("the raw loop received nothing for 30 s with {remaining} messages to go");
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds()? - cpu) * 1e6 / count as f64;
    let who = if inbox {
        format!("raw + txn c={concurrency}")
    } else {
        format!("raw c={concurrency}")
    };
    counts.record(&format!("{who}: processed"), count, done.into_inner())?;
    account(fx, &who, count, inbox, counts).await?;
    Ok((rate, cpu))
}

/// Preloads `count` events and binds the raw loops' pull consumer to the durable.
async fn preloaded(
    fx: &Fixture,
    count: usize,
) -> anyhow::Result<async_nats::jetstream::consumer::PullConsumer> {
    fx.preload(count).await?;
    Ok(bind_pull_consumer(
        &fx.js,
        fx.spec.stream_name(),
        fx.consumer.durable_name().as_str(),
    )?)
}

/// Where the batch-mode baseline records the events it has seen.
#[derive(Clone, Copy)]
enum Dedupe {
    /// `jetstream_inbox_events`, the inbox the runtime writes: the same columns (envelope
    /// fields, body as `jsonb`, headers, stream position, delivery count, `processed`).
    Inbox,
    /// `naive_seen`: one primary-key column, what a loop that keeps no inbox record writes.
    Lean,
}

/// The batch-mode baseline: a competent hand-written loop doing what batch mode does. Pull up
/// to [`PULL`] messages, parse them all, then one transaction: a multi-row insert into the
/// dedupe table (`INSERT … SELECT unnest … ON CONFLICT DO NOTHING RETURNING event_id`) and
/// one multi-row business insert of the new ids; commit, ack each, pull again.
async fn raw_batch_run(
    fx: &Fixture,
    count: usize,
    dedupe: Dedupe,
    counts: &Counts,
) -> anyhow::Result<(f64, f64)> {
    #[derive(diesel::QueryableByName)]
    struct Fresh {
        #[diesel(sql_type = Text)]
        event_id: String,
    }
    /// The inbox columns of one message, as a hand-written loop would bind them.
    #[derive(Default)]
    struct Columns {
        ids: Vec<String>,
        types: Vec<String>,
        resource_types: Vec<String>,
        resource_ids: Vec<String>,
        bodies: Vec<String>,
        subjects: Vec<String>,
        headers: Vec<String>,
        stream_seqs: Vec<i64>,
        deliveries: Vec<i32>,
    }
    let consumer = preloaded(fx, count).await?;
    let stream = fx.spec.stream_name().to_owned();
    let mut done = 0usize;
    let cpu = cpu_seconds()?;
    let started = Instant::now();
    let mut progress_at = Instant::now();
    while done < count {
        let messages: Vec<async_nats::jetstream::Message> = consumer
            .batch()
            .max_messages((count - done).min(PULL))
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow!("pull request: {e}"))?
            .try_collect()
            .await
            .map_err(|e| anyhow!("pull: {e}"))?;
        if messages.is_empty() {
            if progress_at.elapsed() > Duration::from_secs(30) {
                bail!("the raw batch loop received nothing for 30 s");
            }
            continue;
        }
        progress_at = Instant::now();
        let mut c = Columns::default();
        for m in &messages {
            let envelope = Envelope::from_slice(&m.payload)?;
            c.ids.push(envelope.event_id.as_str().to_owned());
            if let Dedupe::Inbox = dedupe {
                let info = m.info().map_err(|e| anyhow!("message info: {e}"))?;
                c.types.push(envelope.event_type);
                c.resource_types.push(envelope.resource_type);
                c.resource_ids.push(envelope.resource_id);
                c.bodies.push(String::from_utf8(m.payload.to_vec())?);
                c.subjects.push(m.subject.to_string());
                let headers: serde_json::Map<String, serde_json::Value> = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .filter_map(|(name, values)| {
                        let value = <[_]>::first(values)?.as_str().to_owned();
                        Some((name.to_string(), value.into()))
                    })
                    .collect();
                c.headers
                    .push(serde_json::Value::Object(headers).to_string());
                c.stream_seqs.push(i64::try_from(info.stream_sequence)?);
                c.deliveries.push(i32::try_from(info.delivered)?);
            }
        }
        let mut conn = fx.pool.get().await?;
        conn.transaction::<(), diesel::result::Error, _>(async |conn| {
            let fresh: Vec<Fresh> = match dedupe {
                Dedupe::Lean => {
                    prepared(
                        "INSERT INTO naive_seen (event_id) SELECT unnest($1::text[]) \
                         ON CONFLICT DO NOTHING RETURNING event_id",
                    )
                    .bind::<Array<Text>, _>(&c.ids)
                    .load(conn)
                    .await?
                }
                Dedupe::Inbox => {
                    prepared(
                        "INSERT INTO jetstream_inbox_events \
                           (event_id, event_type, resource_type, resource_id, payload, subject, \
                            headers, stream, stream_seq, deliveries, status, \
                            processing_attempts, processed_at) \
                         SELECT u.id, u.type, u.rtype, u.rid, u.body::jsonb, u.subject, \
                           u.headers::jsonb, $8, u.seq, u.deliveries, 'processed', 1, now() \
                         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                     $5::text[], $6::text[], $7::text[], $9::bigint[], \
                                     $10::integer[]) \
                           AS u(id, type, rtype, rid, body, subject, headers, seq, deliveries) \
                         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    )
                    .bind::<Array<Text>, _>(&c.ids)
                    .bind::<Array<Text>, _>(&c.types)
                    .bind::<Array<Text>, _>(&c.resource_types)
                    .bind::<Array<Text>, _>(&c.resource_ids)
                    .bind::<Array<Text>, _>(&c.bodies)
                    .bind::<Array<Text>, _>(&c.subjects)
                    .bind::<Array<Text>, _>(&c.headers)
                    .bind::<Text, _>(&stream)
                    .bind::<Array<BigInt>, _>(&c.stream_seqs)
                    .bind::<Array<Integer>, _>(&c.deliveries)
                    .load(conn)
                    .await?
                }
            };
            let fresh: Vec<&str> = fresh.iter().map(|f| f.event_id.as_str()).collect();
            prepared("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
                .bind::<Array<Text>, _>(fresh)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await?;
        for message in &messages {
            message.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
        }
        done += messages.len();
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds()? - cpu) * 1e6 / count as f64;
    let who = match dedupe {
        Dedupe::Inbox => "raw batch (inbox table)",
        Dedupe::Lean => "raw batch (lean table)",
    };
    counts.record(&format!("{who}: processed"), count, u64::try_from(done)?)?;
    account(fx, who, count, true, counts).await?;
    Ok((rate, cpu))
}

/// The per-concurrency measurements and ratio checks of a consumer scenario: columns
/// `4k .. 4k+4` of every run hold raw msg/s, ours msg/s, raw CPU µs/msg and ours CPU µs/msg at
/// `CONCURRENCY[k]`.
fn per_concurrency(
    runs: &[Vec<f64>],
    raw: &str,
    ours: &str,
    ratio_suffix: &str,
    target: f64,
) -> (Vec<Measurement>, Vec<Check>) {
    let col = |i: usize| runs.iter().map(|r| r[i]).collect::<Vec<f64>>();
    let mut measurements = Vec::new();
    let mut checks = Vec::new();
    for (k, c) in CONCURRENCY.into_iter().enumerate() {
        let base = Measurement::new(format!("{raw}, concurrency {c}"), "msg/s", col(4 * k));
        let mine = Measurement::new(format!("{ours}, concurrency {c}"), "msg/s", col(4 * k + 1));
        let ratio = Measurement::ratio(
            format!("Consumer c={c} / raw c={c}{ratio_suffix}"),
            &mine.samples,
            &base.samples,
        );
        checks.push(Check::on(&ratio, Cmp::AtLeast, target));
        let base_cpu = Measurement::new(
            format!("process CPU per message, raw c={c}"),
            "µs",
            col(4 * k + 2),
        );
        let ours_cpu = Measurement::new(
            format!("process CPU per message, Consumer c={c}"),
            "µs",
            col(4 * k + 3),
        );
        measurements.extend([base, mine, ratio, base_cpu, ours_cpu]);
    }
    (measurements, checks)
}
