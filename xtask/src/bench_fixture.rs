//! The benchmark's own database and streams on the shared servers, created for one `bench`
//! invocation and removed at its end (also when a scenario fails).
//!
//! One database holds the outbox and inbox tables (their crates' migrations) plus `effects`
//! (the handlers' business rows) and `naive_seen` (the raw baseline's dedupe table). One
//! work-queue, file-storage stream (with its DLQ stream and the consumer's durable) is
//! provisioned by `ensure_topology`, exactly as a deployment does. The producer side
//! (`billing`) publishes on `…billing.sync.orders`, which the consumer side (`orders`) consumes.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{redact_url, Config, Envelope, MSG_ID_HEADER};
use jetstream_bridge_outbox::{NewEvent, Outbox};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};
use serde_json::{json, Value};

use super::{progress, url_with_database, Args, Environment};

pub(super) type PgPool = Pool<AsyncPgConnection>;

/// The producing service's name (its outbox, relay and publisher).
pub(super) const PRODUCER: &str = "billing";
/// The consuming service's name.
const CONSUMER: &str = "orders";

pub(super) struct Fixture {
    /// `billing → orders`: relay and publisher configuration.
    pub(super) producer: Config,
    /// `orders ← billing`, inbox on, 100 messages per pull.
    pub(super) consumer: Config,
    /// As `consumer` with the inbox off.
    pub(super) consumer_no_inbox: Config,
    pub(super) spec: TopologySpec,
    pub(super) pool: PgPool,
    pub(super) client: async_nats::Client,
    pub(super) js: jetstream::Context,
    /// The subject everything is published on (producer's source = consumer's destination).
    pub(super) subject: String,
    /// Names every stream and database of this invocation (`jb_bench_<token>`).
    pub(super) token: String,
    /// The benchmark database's URL (for the memory scenario's child processes).
    pub(super) url: String,
    admin_url: String,
    database: String,
}

/// What a child process of the memory scenario uses: the same configurations, a pool on the
/// same database and a connection of its own ([`attach`]).
pub(super) struct Attached {
    pub(super) producer: Config,
    pub(super) consumer: Config,
    pub(super) pool: PgPool,
    pub(super) js: jetstream::Context,
}

/// The producer, consumer (inbox on) and consumer (inbox off) configurations of the
/// invocation `token`.
fn configs(nats_url: &str, token: &str) -> anyhow::Result<(Config, Config, Config)> {
    let env = format!("bench{token}");
    let stream = format!("jb_bench_{token}");
    let producer = Config::builder(env.as_str(), PRODUCER, CONSUMER)
        .nats_urls(nats_url)
        .stream_name(stream.as_str())
        .build()?;
    let consumer_config = |inbox: bool| {
        Config::builder(env.as_str(), CONSUMER, PRODUCER)
            .nats_urls(nats_url)
            .stream_name(stream.as_str())
            .use_inbox(inbox)
            .batch_size(100)
            .build()
    };
    Ok((producer, consumer_config(true)?, consumer_config(false)?))
}

/// A pool on `url` with fast recycling: the default (Verified) costs a `SELECT 1` per
/// checkout, which the consumer runtime does once per message (a deployment would choose the
/// same).
fn pool(url: &str) -> anyhow::Result<PgPool> {
    let mut manager_config = ManagerConfig::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        url.to_owned(),
        manager_config,
    );
    Ok(Pool::builder(manager).max_size(32).build()?)
}

/// Joins the invocation `token` (its database at `url`, its streams on `nats_url`) without
/// creating or removing anything.
pub(super) async fn attach(url: &str, nats_url: &str, token: &str) -> anyhow::Result<Attached> {
    let (producer, consumer, _) = configs(nats_url, token)?;
    let js = jetstream_bridge_topology::connect(&consumer)
        .await
        .context("connecting to NATS")?
        .jetstream();
    Ok(Attached {
        producer,
        consumer,
        pool: pool(url)?,
        js,
    })
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl Fixture {
    pub(super) async fn new(args: &Args) -> anyhow::Result<Self> {
        let token = nuid::next().to_string().to_lowercase();
        let database = format!("jb_bench_{token}");
        progress!(
            "creating database {database} on {}",
            redact_url(&args.database_url)
        );
        let mut admin = AsyncPgConnection::establish(&args.database_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {} (start it with the services script or set \
                     DATABASE_URL)",
                    redact_url(&args.database_url)
                )
            })?;
        diesel::sql_query(format!("CREATE DATABASE \"{database}\""))
            .execute(&mut admin)
            .await
            .context("creating the benchmark database")?;
        drop(admin);
        let url = url_with_database(&args.database_url, &database)?;
        let built = Self::build(args, &token, &url, &database).await;
        match built {
            Ok(fx) => Ok(fx),
            Err(e) => {
                // Leave nothing behind.
                let _ = drop_database(&args.database_url, &database).await;
                Err(e)
            }
        }
    }

    async fn build(args: &Args, token: &str, url: &str, database: &str) -> anyhow::Result<Self> {
        let mut conn = AsyncPgConnection::establish(url).await?;
        jetstream_bridge_pg::Migrator::all().run(&mut conn).await?;
        conn.batch_execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL); \
             CREATE TABLE naive_seen (event_id text PRIMARY KEY)",
        )
        .await?;
        drop(conn);
        let pool = pool(url)?;
        let (producer, consumer, consumer_no_inbox) = configs(&args.nats_url, token)?;
        let subject = producer.subjects().source().as_str().to_owned();
        if consumer.subjects().destination().as_str() != subject {
            bail!("producer and consumer subjects differ: {subject}");
        }
        progress!("connecting to {}", redact_url(&args.nats_url));
        let client = jetstream_bridge_topology::connect(&consumer)
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {} (start it with the services script or set NATS_URL)",
                    redact_url(&args.nats_url)
                )
            })?
            .into_client();
        let js = jetstream::new(client.clone());
        let spec = TopologySpec::from_config(&consumer);
        progress!(
            "provisioning file-storage streams {} / {} and durable {}",
            spec.stream_name(),
            spec.dlq_stream_name(),
            consumer.durable_name().as_str()
        );
        ensure_topology(&js, &spec, &EnsureOptions::new()).await?;
        Ok(Self {
            producer,
            consumer,
            consumer_no_inbox,
            spec,
            pool,
            client,
            js,
            subject,
            token: token.to_owned(),
            url: url.to_owned(),
            admin_url: args.database_url.clone(),
            database: database.to_owned(),
        })
    }

    pub(super) async fn environment(&self) -> anyhow::Result<Environment> {
        #[derive(QueryableByName)]
        struct Version {
            #[diesel(sql_type = Text)]
            server_version: String,
        }
        let mut conn = self.pool.get().await?;
        let v: Version = diesel::sql_query("SHOW server_version")
            .get_result(&mut *conn)
            .await?;
        Ok(Environment {
            nats_server: self.client.server_info().version,
            postgres: v.server_version,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            release: !cfg!(debug_assertions),
        })
    }

    /// Empties every table and the stream; waits until no pull request of an earlier run is
    /// left on the durable (a stale one would swallow the next run's first messages).
    pub(super) async fn reset(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.get().await?;
        conn.batch_execute(
            "TRUNCATE jetstream_outbox_events, jetstream_inbox_events, effects, naive_seen",
        )
        .await?;
        drop(conn);
        self.js
            .get_stream(self.spec.stream_name())
            .await?
            .purge()
            .await?;
        self.quiesce().await
    }

    /// Waits (up to 6 s: longer than the default fetch wait) until the durable has no pending pull request and nothing unacked.
    pub(super) async fn quiesce(&self) -> anyhow::Result<()> {
        let stream = self.js.get_stream(self.spec.stream_name()).await?;
        let durable = self.consumer.durable_name().as_str();
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let info = stream.consumer_info(durable).await?;
            if info.num_waiting == 0 && info.num_ack_pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                progress!(
                    "  warning: durable still has {} pull request(s), {} unacked",
                    info.num_waiting,
                    info.num_ack_pending
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resets, then enqueues `n` events into the outbox (committed) and analyzes the table.
    pub(super) async fn enqueue(&self, n: usize) -> anyhow::Result<()> {
        self.reset().await?;
        let mut conn = self.pool.get().await?;
        let outbox = Outbox::new(&self.producer);
        let mut i = 0;
        while i < n {
            let end = (i + 5000).min(n);
            outbox
                .enqueue_batch(&mut conn, (i..end).map(new_event))
                .await?;
            i = end;
        }
        conn.batch_execute("VACUUM ANALYZE jetstream_outbox_events")
            .await?;
        Ok(())
    }

    /// Resets, then publishes `n` envelopes for the consumer (raw, pipelined) and checks that
    /// the stream holds them.
    pub(super) async fn preload(&self, n: usize) -> anyhow::Result<()> {
        self.reset().await?;
        let mut acks = FuturesUnordered::new();
        for i in 0..n {
            let (id, body) = envelope(i)?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MSG_ID_HEADER, id.as_str());
            let ack = self
                .js
                .publish_with_headers(self.subject.clone(), headers, body.into())
                .await?;
            acks.push(ack.into_future());
            if acks.len() >= 1000 {
                if let Some(ack) = acks.next().await {
                    ack?;
                }
            }
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        let stored = self.stream_messages().await?;
        if stored != u64::try_from(n)? {
            bail!("preloading: the stream holds {stored} messages, expected {n}");
        }
        Ok(())
    }

    /// Messages in the stream now.
    pub(super) async fn stream_messages(&self) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(self.spec.stream_name()).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Waits (up to 5 s: acks are fire-and-forget) for the stream to be empty; returns how many
    /// messages are left.
    pub(super) async fn drained(&self) -> anyhow::Result<u64> {
        self.client.flush().await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.stream_messages().await?;
            if left == 0 || Instant::now() > deadline {
                return Ok(left);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `SELECT count(*) FROM <from>`.
    pub(super) async fn count(&self, from: &str) -> anyhow::Result<u64> {
        let mut conn = self.pool.get().await?;
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {from}"))
            .get_result(&mut *conn)
            .await?;
        Ok(u64::try_from(n.n)?)
    }

    pub(super) async fn teardown(self) -> anyhow::Result<()> {
        progress!(
            "deleting streams {} / {} and database {}",
            self.spec.stream_name(),
            self.spec.dlq_stream_name(),
            self.database
        );
        let main = self.js.delete_stream(self.spec.stream_name()).await;
        let _ = self.js.delete_stream(self.spec.dlq_stream_name()).await;
        self.pool.close();
        drop_database(&self.admin_url, &self.database).await?;
        main.context("deleting the benchmark stream")?;
        Ok(())
    }
}

async fn drop_database(admin_url: &str, database: &str) -> anyhow::Result<()> {
    let mut admin = AsyncPgConnection::establish(admin_url).await?;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await
    .with_context(|| format!("dropping database {database}"))?;
    Ok(())
}

/// The payload of event `i`: an order with id, email, amount and currency.
pub(super) fn payload(i: usize) -> Value {
    json!({
        "id": i,
        "email": format!("customer{i}@example.com"),
        "amount_cents": 1999 + i % 10_000,
        "currency": "EUR",
    })
}

/// Event `i` for the outbox / publisher.
pub(super) fn new_event(i: usize) -> NewEvent {
    NewEvent::new("order.placed", payload(i))
}

/// Event `i` as a wire envelope built by hand (what a raw client would publish): event id and
/// body bytes.
pub(super) fn envelope(i: usize) -> anyhow::Result<(String, Vec<u8>)> {
    let envelope = Envelope::builder("order.placed", payload(i))
        .producer(PRODUCER)
        .build()?;
    Ok((envelope.event_id.as_str().to_owned(), envelope.to_vec()))
}
