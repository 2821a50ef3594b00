//! `cargo xtask bench consumer`: consumer runtime throughput with the inbox (one transaction
//! per event: inbox row + one business row, then ack) vs a naive raw async-nats pull +
//! diesel-async loop doing the same work, in the same run.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use diesel::sql_types::Text;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{redact_url, Config, Envelope, MSG_ID_HEADER};
use jetstream_bridge_consumer::{BatchHandler, Consumer, Event, Handler, HandlerError};
use jetstream_bridge_topology::{bind_pull_consumer, ensure_topology, EnsureOptions, TopologySpec};
use serde_json::json;

use super::{repeat, url_with_database, Args, Measurement};

type PgPool = Pool<AsyncPgConnection>;

struct Fixture {
    config: Config,
    spec: TopologySpec,
    pool: PgPool,
    js: jetstream::Context,
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
        let url = url_with_database(&args.database_url, &database)?;
        let mut conn = AsyncPgConnection::establish(&url).await?;
        jetstream_bridge_inbox::migrations::run_pending(&mut conn).await?;
        conn.batch_execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL); \
             CREATE TABLE naive_seen (event_id text PRIMARY KEY)",
        )
        .await?;
        drop(conn);
        // Fast recycling: the default (Verified) costs a `SELECT 1` per checkout, which the
        // runtime does once per message and the naive loop once per run.
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method = RecyclingMethod::Fast;
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
        let pool = Pool::builder(manager).max_size(10).build()?;
        let env = format!("benchc{token}");
        let config = Config::builder(env.as_str(), "orders", "billing")
            .nats_urls(args.nats_url.as_str())
            .stream_name(format!("jb_bench_{token}").as_str())
            .use_inbox(true)
            .batch_size(100)
            .build()?;
        println!("connecting to {}", redact_url(&args.nats_url));
        let client = async_nats::connect(args.nats_url.as_str()).await?;
        let js = jetstream::new(client);
        let spec = TopologySpec::from_config(&config);
        println!("provisioning stream {} and its durable", spec.stream_name());
        ensure_topology(&js, &spec, &EnsureOptions::new()).await?;
        Ok(Self {
            config,
            spec,
            pool,
            js,
            admin_url: args.database_url.clone(),
            database,
        })
    }

    /// Empties the tables, then publishes `n` events (pipelined PubAcks) for the durable.
    async fn load(&self, n: usize) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        conn.batch_execute("TRUNCATE jetstream_inbox_events, effects, naive_seen")
            .await?;
        let subject = self.config.subjects().destination().as_str().to_owned();
        let mut acks = FuturesUnordered::new();
        for i in 0..n {
            let envelope = Envelope::builder(
                "order.placed",
                json!({"id": i, "email": format!("customer{i}@example.com"),
                       "amount_cents": 1999 + i % 10_000, "currency": "EUR"}),
            )
            .producer("billing")
            .build()?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MSG_ID_HEADER, envelope.event_id.as_str());
            acks.push(
                self.js
                    .publish_with_headers(subject.clone(), headers, envelope.to_vec().into())
                    .await?
                    .into_future(),
            );
            if acks.len() >= 1000 {
                if let Some(ack) = acks.next().await {
                    ack?;
                }
            }
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        Ok(())
    }

    async fn effects(&self) -> anyhow::Result<i64> {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.pool.get().await?;
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM effects")
            .get_result(&mut *conn)
            .await?;
        Ok(n.n)
    }

    /// Checks that every message was acked (acks are fire-and-forget: allow them 5 s).
    async fn stream_empty(&self) -> anyhow::Result<()> {
        self.js.client().flush().await?;
        let mut stream = self.js.get_stream(self.spec.stream_name()).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = stream.info().await?.state.messages;
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{left} messages left unacked in the stream");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn teardown(self) -> anyhow::Result<()> {
        println!(
            "deleting streams {} / {} and database {}",
            self.spec.stream_name(),
            self.spec.dlq_stream_name(),
            self.database
        );
        self.js.delete_stream(self.spec.stream_name()).await?;
        let _ = self.js.delete_stream(self.spec.dlq_stream_name()).await;
        self.pool.close();
        let mut admin = AsyncPgConnection::establish(&self.admin_url).await?;
        diesel::sql_query(format!("DROP DATABASE \"{}\" WITH (FORCE)", self.database))
            .execute(&mut admin)
            .await?;
        Ok(())
    }
}

/// The benchmark handler: one business row per event, inside the inbox transaction.
struct Insert;

impl Handler for Insert {
    async fn handle(
        &self,
        event: &Event,
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let conn = conn.ok_or_else(|| HandlerError::permanent("inbox off"))?;
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The batch-mode handler: the same rows, one statement per event, one transaction per pull.
struct InsertBatch;

impl BatchHandler for InsertBatch {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let conn = conn.ok_or_else(|| HandlerError::permanent("inbox off"))?;
        for event in events {
            diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
                .bind::<Text, _>(event.envelope.event_id.as_str())
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

pub(super) async fn consumer_scenario(args: &Args) -> anyhow::Result<Vec<Measurement>> {
    let fx = Fixture::new(args).await?;
    let result = measurements(args, &fx).await;
    fx.teardown().await?;
    result
}

async fn measurements(args: &Args, fx: &Fixture) -> anyhow::Result<Vec<Measurement>> {
    let n = args.events;
    let warm = n.min(1000);
    println!("{n} events per run, 1 warm-up + {} runs each", args.repeats);
    let runs = repeat(args.repeats, |warmup| async move {
        let count = if warmup { warm } else { n };
        let label = if warmup { " warm-up" } else { "" };
        let base = naive_run(fx, count).await?;
        println!("  baseline (naive loop){label}: {base:.0} events/s");
        let one = consumer_run(fx, count, 1).await?;
        println!("  Consumer, concurrency 1{label}: {one:.0} events/s");
        let eight = consumer_run(fx, count, 8).await?;
        println!("  Consumer, concurrency 8{label}: {eight:.0} events/s");
        let batch = batch_run(fx, count).await?;
        println!("  Consumer, batch mode{label}: {batch:.0} events/s");
        Ok((base, one, eight, batch))
    })
    .await?;
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let ratio = runs.iter().map(|r| r.1 / r.0).collect();
    Ok(vec![
        Measurement {
            name: "naive loop (raw async-nats + diesel-async)".into(),
            unit: "events/s",
            samples: col(|r| r.0),
        },
        Measurement {
            name: "Consumer + inbox, concurrency 1".into(),
            unit: "events/s",
            samples: col(|r| r.1),
        },
        Measurement {
            name: "Consumer + inbox, concurrency 8".into(),
            unit: "events/s",
            samples: col(|r| r.2),
        },
        Measurement {
            name: "Consumer + inbox, batch mode (100/pull)".into(),
            unit: "events/s",
            samples: col(|r| r.3),
        },
        Measurement {
            name: "Consumer c=1 / naive (same run)".into(),
            unit: "ratio",
            samples: ratio,
        },
    ])
}

/// Publishes `count` events and drains them with a `Consumer`; events per second from spawn
/// to the last ack.
async fn consumer_run(fx: &Fixture, count: usize, concurrency: usize) -> anyhow::Result<f64> {
    fx.load(count).await?;
    let started = Instant::now();
    let handle = Consumer::builder(fx.config.clone(), fx.js.clone(), Some(fx.pool.clone()))
        .handler(Insert)
        .concurrency(concurrency)
        .fetch_wait(Duration::from_millis(200))
        .build()?
        .spawn();
    handle.wait_for(|s| s.processed >= count as u64).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    if usize::try_from(fx.effects().await?)? != count {
        bail!("expected {count} effects");
    }
    fx.stream_empty().await?;
    Ok(rate)
}

/// As [`consumer_run`] with the batch handler (one transaction per pull of 100).
async fn batch_run(fx: &Fixture, count: usize) -> anyhow::Result<f64> {
    fx.load(count).await?;
    let started = Instant::now();
    let handle = Consumer::builder(fx.config.clone(), fx.js.clone(), Some(fx.pool.clone()))
        .batch_handler(InsertBatch)
        .fetch_wait(Duration::from_millis(200))
        .build()?
        .spawn();
    handle.wait_for(|s| s.processed >= count as u64).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    if usize::try_from(fx.effects().await?)? != count {
        bail!("expected {count} effects");
    }
    fx.stream_empty().await?;
    Ok(rate)
}

/// The baseline: a competent hand-written loop. Pull 100, per message one transaction with a
/// dedupe insert and the business row, then ack.
async fn naive_run(fx: &Fixture, count: usize) -> anyhow::Result<f64> {
    fx.load(count).await?;
    let consumer = bind_pull_consumer(
        &fx.js,
        fx.spec.stream_name(),
        fx.config.durable_name().as_str(),
    )?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut conn = fx.pool.get().await?;
    while done < count {
        let mut batch = consumer
            .batch()
            .max_messages(100)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            let envelope = Envelope::from_slice(&message.payload)?;
            let id = envelope.event_id.as_str().to_owned();
            conn.transaction::<(), diesel::result::Error, _>(async |conn| {
                let fresh = diesel::sql_query(
                    "INSERT INTO naive_seen (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind::<Text, _>(&id)
                .execute(conn)
                .await?;
                if fresh == 1 {
                    diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
                        .bind::<Text, _>(&id)
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
            .await?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            done += 1;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    fx.stream_empty().await?;
    Ok(rate)
}
