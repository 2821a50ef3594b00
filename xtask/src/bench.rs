//! `cargo xtask bench <scenario>`: benchmarks measured against a raw baseline in the same run.
//!
//! Framework: a scenario produces [`Measurement`]s; each is taken after a warm-up run, repeated
//! `--repeats` times (default 3) and reported as median / min / max, printed and optionally
//! written to `--json FILE`. Add a scenario by adding a [`Scenario`] variant and a function
//! returning `Vec<Measurement>`; use [`repeat`] for the warm-up and repeats.
//!
//! Debug builds (`cargo xtask bench ..`) are for checking that a scenario runs; figures come
//! from `cargo run --release -p xtask -- bench ..`.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{redact_url, Config, MSG_ID_HEADER};
use jetstream_bridge_outbox::{migrations, NewEvent, Outbox, PgPool, Relay};
use serde_json::json;

#[path = "bench_consumer.rs"]
mod bench_consumer;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Events per measured run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Measured runs per contender (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// PostgreSQL admin URL; the benchmark creates and drops its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// NATS server; the benchmark creates and deletes its own file-storage stream.
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
}

/// Benchmark scenarios.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Scenario {
    /// Outbox relay throughput vs a naive raw diesel-async + async-nats relay, and
    /// commit→publish latency at 1k events/s.
    Relay,
    /// Consumer runtime throughput with the inbox (concurrency 1 and 8) vs a naive raw
    /// async-nats pull + diesel-async loop doing the same work.
    Consumer,
}

/// One measured quantity with its samples.
#[derive(Debug, Clone)]
struct Measurement {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Measurement {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }
    fn median(&self) -> f64 {
        let s = self.sorted();
        if s.is_empty() {
            return f64::NAN;
        }
        s[s.len() / 2]
    }
    fn min(&self) -> f64 {
        self.sorted()
            .as_slice()
            .first()
            .copied()
            .unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.sorted().as_slice().last().copied().unwrap_or(f64::NAN)
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

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        println!("note: debug build; use `cargo run --release -p xtask -- bench ..` for figures");
    }
    let measurements = match args.scenario {
        Scenario::Relay => relay_scenario(&args).await?,
        Scenario::Consumer => bench_consumer::consumer_scenario(&args).await?,
    };
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12}  unit",
        "measurement", "median", "min", "max"
    );
    for m in &measurements {
        let precision = if m.unit == "ratio" { 2 } else { 1 };
        println!(
            "{:<44} {:>12.precision$} {:>12.precision$} {:>12.precision$}  {}",
            m.name,
            m.median(),
            m.min(),
            m.max(),
            m.unit
        );
    }
    if let Some(path) = &args.json {
        let value = json!({
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "events": args.events,
            "repeats": args.repeats,
            "release": !cfg!(debug_assertions),
            "measurements": measurements.iter().map(|m| json!({
                "name": m.name, "unit": m.unit, "samples": m.samples,
                "median": m.median(), "min": m.min(), "max": m.max(),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

// ---- relay scenario -------------------------------------------------------------------------

struct Fixture {
    config: Config,
    pool: PgPool,
    js: jetstream::Context,
    client: async_nats::Client,
    stream: String,
    admin_url: String,
    database: String,
}

impl Fixture {
    async fn new(args: &Args) -> anyhow::Result<Self> {
        let token = nuid::next().to_string().to_lowercase();
        let database = format!("jb_bench_{token}");
        println!(
            "creating database {database} on {}",
            redact_url(&args.database_url)
        );
        let mut admin = AsyncPgConnection::establish(&args.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        diesel::sql_query(format!("CREATE DATABASE \"{database}\""))
            .execute(&mut admin)
            .await?;
        let mut url = url_with_database(&args.database_url, &database)?;
        let mut conn = AsyncPgConnection::establish(&url).await?;
        migrations::run_pending(&mut conn).await?;
        drop(conn);
        let pool = Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
            std::mem::take(&mut url),
        ))
        .max_size(8)
        .build()?;

        let env = format!("bench{token}");
        let config = Config::builder(env.as_str(), "orders", "billing").build()?;
        println!("connecting to {}", redact_url(&args.nats_url));
        let client = async_nats::connect(args.nats_url.as_str()).await?;
        let js = jetstream::new(client.clone());
        let stream = format!("jb_bench_{token}");
        println!("creating file-storage stream {stream}");
        js.create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![config.subjects().source().as_str().to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        Ok(Self {
            config,
            pool,
            js,
            client,
            stream,
            admin_url: args.database_url.clone(),
            database,
        })
    }

    /// Empties table and stream, then enqueues `n` events (committed).
    async fn load(&self, n: usize) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        diesel::sql_query("TRUNCATE jetstream_outbox_events")
            .execute(&mut *conn)
            .await?;
        self.js.get_stream(&self.stream).await?.purge().await?;
        let outbox = Outbox::new(&self.config);
        let mut i = 0;
        while i < n {
            let end = (i + 5000).min(n);
            outbox.enqueue_batch(&mut conn, (i..end).map(event)).await?;
            i = end;
        }
        diesel::sql_query("VACUUM ANALYZE jetstream_outbox_events")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn check_all_published(&self, n: usize) -> anyhow::Result<()> {
        let info = self
            .js
            .get_stream(&self.stream)
            .await?
            .info()
            .await?
            .clone();
        if usize::try_from(info.state.messages)? != n {
            bail!(
                "stream holds {} messages, expected {n}",
                info.state.messages
            );
        }
        Ok(())
    }

    async fn teardown(self) -> anyhow::Result<()> {
        println!(
            "deleting stream {} and database {}",
            self.stream, self.database
        );
        self.js.delete_stream(&self.stream).await?;
        self.pool.close();
        let mut admin = AsyncPgConnection::establish(&self.admin_url).await?;
        diesel::sql_query(format!("DROP DATABASE \"{}\" WITH (FORCE)", self.database))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

fn url_with_database(admin: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let Some(slash) = base
        .rfind('/')
        .filter(|&i| i > base.find("//").map_or(0, |j| j + 1))
    else {
        bail!("DATABASE_URL has no database path");
    };
    let mut url = format!("{}/{database}", &base[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

/// A ~300-byte envelope's payload.
fn event(i: usize) -> NewEvent {
    NewEvent::new(
        "order.placed",
        json!({
            "id": i,
            "email": format!("customer{i}@example.com"),
            "amount_cents": 1999 + i % 10_000,
            "currency": "EUR",
        }),
    )
}

async fn relay_scenario(args: &Args) -> anyhow::Result<Vec<Measurement>> {
    let fx = Fixture::new(args).await?;
    let result = relay_measurements(args, &fx).await;
    fx.teardown().await?;
    result
}

async fn relay_measurements(args: &Args, fx: &Fixture) -> anyhow::Result<Vec<Measurement>> {
    let n = args.events;
    let size = {
        let js_body = jetstream_bridge_config::Envelope::builder(
            "order.placed",
            json!({"id": 12345, "email": "customer12345@example.com", "amount_cents": 4344,
                   "currency": "EUR"}),
        )
        .producer("orders")
        .build()?
        .to_vec();
        js_body.len()
    };
    println!(
        "envelope size ≈ {size} bytes; {n} events per run, 1 warm-up + {} runs each",
        args.repeats
    );

    // The contenders alternate (warm-up pair, then baseline/ours per repeat), so load from
    // other processes on the machine hits both alike.
    let warm = n.min(2000);
    let pairs = repeat(args.repeats, |warmup| async move {
        let count = if warmup { warm } else { n };
        let label = if warmup { " warm-up" } else { "" };
        let base = baseline_run(fx, count).await?;
        println!("  baseline (naive relay){label}: {base:.0} events/s");
        let ours = relay_run(fx, count).await?;
        println!("  jetstream-bridge Relay{label}: {ours:.0} events/s");
        Ok((base, ours))
    })
    .await?;
    let baseline: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let ours: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let ratio: Vec<f64> = ours.iter().zip(&baseline).map(|(o, b)| o / b).collect();

    // Latency: commit → message seen by a core subscriber, at 1k events/s.
    let latency_events = n.min(5000);
    let extra: Mutex<(Vec<f64>, Vec<f64>)> = Mutex::default();
    let p99 = repeat(args.repeats, |warmup| {
        let extra = &extra;
        async move {
            let (p50, p99, max) =
                latency_run(fx, if warmup { 500 } else { latency_events }).await?;
            println!(
                "  commit→publish at 1k/s{}: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
                if warmup { " warm-up" } else { "" }
            );
            if !warmup {
                if let Ok(mut e) = extra.lock() {
                    e.0.push(p50);
                    e.1.push(max);
                }
            }
            Ok(p99)
        }
    })
    .await?;
    let (p50, pmax) = extra.into_inner().unwrap_or_default();

    Ok(vec![
        Measurement {
            name: "naive relay (raw diesel-async + async-nats)".into(),
            unit: "events/s",
            samples: baseline,
        },
        Measurement {
            name: "jetstream-bridge Relay".into(),
            unit: "events/s",
            samples: ours,
        },
        Measurement {
            name: "Relay / naive (same run)".into(),
            unit: "ratio",
            samples: ratio,
        },
        Measurement {
            name: "commit→publish p50 at 1k events/s".into(),
            unit: "ms",
            samples: p50,
        },
        Measurement {
            name: "commit→publish p99 at 1k events/s".into(),
            unit: "ms",
            samples: p99,
        },
        Measurement {
            name: "commit→publish max at 1k events/s".into(),
            unit: "ms",
            samples: pmax,
        },
    ])
}

/// Loads `count` rows and drains them with the naive relay; events per second.
async fn baseline_run(fx: &Fixture, count: usize) -> anyhow::Result<f64> {
    fx.load(count).await?;
    let started = Instant::now();
    naive_relay(&fx.pool, &fx.js).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    fx.check_all_published(count).await?;
    Ok(rate)
}

/// Loads `count` rows and drains them with one `Relay` (default settings); events per second,
/// from spawn to the last row marked sent.
async fn relay_run(fx: &Fixture, count: usize) -> anyhow::Result<f64> {
    fx.load(count).await?;
    let started = Instant::now();
    let handle = Relay::builder(&fx.config, fx.js.clone(), fx.pool.clone())
        .build()
        .spawn();
    let mut stats = handle.stats();
    stats.wait_for(|s| s.sent >= count as u64).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    fx.check_all_published(count).await?;
    Ok(rate)
}

/// Enqueues `n` events at 1000/s, one committed transaction each, while a relay runs; returns
/// p50, p99 and max of commit → delivery to a core-NATS subscriber, in milliseconds.
async fn latency_run(fx: &Fixture, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    fx.load(0).await?;
    let handle = Relay::builder(&fx.config, fx.js.clone(), fx.pool.clone())
        .build()
        .spawn();
    let mut stats = handle.stats();
    stats.wait_for(|s| s.listening).await?;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut sub = fx
        .client
        .subscribe(fx.config.subjects().source().as_str().to_owned())
        .await?;
    fx.client.flush().await?;
    let receiver = tokio::spawn({
        let committed = Arc::clone(&committed);
        async move {
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let Some(msg) = sub.next().await else { break };
                let now = Instant::now();
                let Some(id) = msg.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER)) else {
                    continue;
                };
                // The producer records the commit time right after COMMIT returns; a message
                // can arrive first, so wait briefly for the entry.
                let mut at = None;
                for _ in 0..1000 {
                    if let Some(t) = committed
                        .lock()
                        .ok()
                        .and_then(|m| m.get(id.as_str()).copied())
                    {
                        at = Some(t);
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let at = at.unwrap_or(now);
                latencies.push(now.saturating_duration_since(at).as_secs_f64() * 1000.0);
            }
            latencies
        }
    });
    let outbox = Outbox::new(&fx.config);
    let mut conn = fx.pool.get().await?;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..n {
        ticker.tick().await;
        let id = outbox.enqueue(&mut conn, event(i)).await?;
        let at = Instant::now();
        if let Ok(mut m) = committed.lock() {
            m.insert(id.to_string(), at);
        }
    }
    drop(conn);
    let mut latencies = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .context("latency receiver timed out")??;
    handle.shutdown().await?;
    latencies.sort_by(f64::total_cmp);
    let pct = |per_mille: usize| {
        // Nearest rank: the smallest sample with at least p of the samples at or below it.
        let rank = latencies.len().saturating_mul(per_mille).div_ceil(1000);
        latencies
            .get(rank.saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((pct(500), pct(990), pct(1000)))
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Text)]
    payload: String,
}

/// The baseline: what a competent hand-written relay does with the raw clients. Claim 500
/// rows with `FOR UPDATE SKIP LOCKED`, publish them with a sliding window of 256 PubAcks in
/// flight and `Nats-Msg-Id`, mark them sent with one `UPDATE … = ANY`; until nothing is left.
async fn naive_relay(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<()> {
    const WINDOW: usize = 256;
    let mut conn = pool.get().await?;
    loop {
        let rows: Vec<Row> = diesel::sql_query(
            "UPDATE jetstream_outbox_events o SET status = 'publishing', \
               claimed_until = now() + interval '30 seconds', updated_at = now() \
             FROM (SELECT id FROM jetstream_outbox_events WHERE status = 'pending' \
                   ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED) c \
             WHERE o.id = c.id \
             RETURNING o.id, o.event_id, o.subject, o.payload::text AS payload",
        )
        .load(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut in_flight = FuturesUnordered::new();
        for row in &rows {
            while in_flight.len() >= WINDOW {
                if let Some(ack) = in_flight.next().await {
                    let _: async_nats::jetstream::publish::PublishAck = ack?;
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, row.event_id.as_str());
            let ack = js
                .publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
                .await?;
            in_flight.push(ack.into_future());
        }
        while let Some(ack) = in_flight.next().await {
            ack?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        diesel::sql_query(
            "UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now(), \
               updated_at = now(), claimed_until = NULL WHERE id = ANY($1)",
        )
        .bind::<Array<BigInt>, _>(ids)
        .execute(&mut *conn)
        .await?;
    }
}
