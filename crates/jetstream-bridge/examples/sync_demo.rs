//! Two services kept in sync over NATS JetStream: the main job of the README.
//!
//! ```sh
//! bash .ci/services.sh && cargo run -p jetstream-bridge --example sync_demo
//! ```
//!
//! * **orders** owns a PostgreSQL database. Each order is written in a transaction together
//!   with an `order.created` event in its transactional outbox; a [`Relay`] publishes committed
//!   events to JetStream. A rolled-back transaction leaves no event behind.
//! * **billing** owns another database. Its [`Consumer`] applies each event exactly once in
//!   effect: the invoice row and the inbox row commit in one transaction. An event it cannot
//!   accept (a negative total) is dead-lettered with its headers and a JSON context.
//!
//! The two services share nothing but the stream. The demo checks the end state (one invoice per
//! committed order, no invoice for the rolled-back one, one DLQ message, a re-published event
//! deduplicated) and exits non-zero if anything is off. Everything it creates (two databases, a
//! stream, a DLQ stream) has a unique name and is removed at the end unless `--keep` is given.
//!
//! Environment: `NATS_URL` (default `nats://127.0.0.1:4222`), `DATABASE_URL` (default
//! `postgres://127.0.0.1:5432/test`; the demo creates its two databases next to it), `ORDERS`
//! (default 200).

// A demo program: it reports to the terminal.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetstream_bridge::pg::{Component, Migrator};
use jetstream_bridge::prelude::*;
use jetstream_bridge::topology::{EnsureOptions, TopologySpec};
use jetstream_bridge::{
    Config, Consumer, Event, HandlerError, NewEvent, Outbox, Publisher, Relay, SubjectLayout,
};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to run against.
#[derive(Debug, Clone)]
pub struct Options {
    /// NATS server URL.
    pub nats_url: String,
    /// A PostgreSQL URL; the demo creates its databases on the same server.
    pub database_url: String,
    /// How many orders to write.
    pub orders: u32,
    /// Keep the databases and streams afterwards.
    pub keep: bool,
}

impl Options {
    /// From the environment and the command line (`--keep`).
    pub fn from_env() -> Result<Self, BoxError> {
        let orders = match std::env::var("ORDERS") {
            Ok(n) => n
                .parse()
                .map_err(|e| format!("ORDERS must be a number: {e}"))?,
            Err(_) => 200,
        };
        Ok(Self {
            nats_url: std::env::var("NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            database_url: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://127.0.0.1:5432/test".to_owned()),
            orders,
            keep: std::env::args().any(|a| a == "--keep"),
        })
    }
}

/// What the run observed (checked by [`run`] before it returns).
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Orders committed (each with one event).
    pub orders: u64,
    /// Invoices billing wrote.
    pub invoices: u64,
    /// Events the relay published.
    pub published: u64,
    /// Messages in billing's DLQ.
    pub dead_lettered: u64,
    /// Whether re-publishing an already relayed event was deduplicated by the stream.
    pub republish_deduplicated: bool,
}

#[allow(dead_code)] // `main` is unused when the test suite includes this file as a module.
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let summary = run(Options::from_env()?).await?;
    println!(
        "sync demo: OK: {} orders → {} invoices, {} dead-lettered, re-publish deduplicated: {}",
        summary.orders, summary.invoices, summary.dead_lettered, summary.republish_deduplicated
    );
    Ok(())
}

/// Runs the demo end to end and checks its outcome.
pub async fn run(options: Options) -> Result<Summary, BoxError> {
    let token = nuid::next().to_string().to_lowercase();
    let env = format!("demo{token}");
    let stream = format!("demo-{token}");
    // Each service's configuration, as each would build it from its own environment.
    let service = |app: &str, peer: &str| {
        Config::builder(env.as_str(), app, peer)
            .layout(SubjectLayout::EnvPrefixed)
            .nats_urls(options.nats_url.as_str())
            .stream_name(stream.as_str())
            .use_outbox(app == "orders")
            .use_inbox(app == "billing")
            .disable_js_api(false)
            .max_deliver(3)
            .backoff(["200ms", "500ms"])
            .build()
    };
    let orders_config = service("orders", "billing")?;
    let billing_config = service("billing", "orders")?;

    let databases = Databases::create(&options.database_url, &token).await?;
    let result = exchange(&options, &orders_config, &billing_config, &databases).await;

    if options.keep {
        println!(
            "keeping databases {:?} and stream {stream}",
            databases.names
        );
    } else {
        databases.drop_all().await?;
        let nats = jetstream_bridge::connect(&orders_config).await?;
        for name in [
            stream.clone(),
            TopologySpec::from_config(&billing_config)
                .dlq_stream_name()
                .to_owned(),
        ] {
            // Best effort: a stream the run never created is not an error here.
            let _ = nats.jetstream().delete_stream(&name).await;
        }
    }
    result
}

async fn exchange(
    options: &Options,
    orders_config: &Config,
    billing_config: &Config,
    databases: &Databases,
) -> Result<Summary, BoxError> {
    // --- deploy time: provision topology and migrate each service's database -----------------
    let orders_nats = jetstream_bridge::connect(orders_config).await?;
    let billing_nats = jetstream_bridge::connect(billing_config).await?;
    for (nats, config) in [
        (&orders_nats, orders_config),
        (&billing_nats, billing_config),
    ] {
        let spec = TopologySpec::from_config(config);
        let report = nats.ensure_topology(&spec, &EnsureOptions::new()).await?;
        println!(
            "[{}] topology: stream {} ({} change(s))",
            config.app_name(),
            spec.stream_name(),
            report.applied().len()
        );
    }
    let orders_pool = pool(&databases.url_of("orders")?)?;
    let billing_pool = pool(&databases.url_of("billing")?)?;
    {
        let mut conn = orders_pool.get().await?;
        let applied = Migrator::only(Component::Outbox).run(&mut conn).await?;
        conn.batch_execute(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, \
             total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        println!("[orders] migrated: {applied:?}");
    }
    {
        let mut conn = billing_pool.get().await?;
        let applied = Migrator::only(Component::Inbox).run(&mut conn).await?;
        conn.batch_execute(
            "CREATE TABLE invoices (order_id text PRIMARY KEY, total_cents bigint NOT NULL, \
             event_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        println!("[billing] migrated: {applied:?}");
    }

    // --- both services start their workers ---------------------------------------------------
    let relay = Relay::builder(orders_config, orders_nats.jetstream(), orders_pool.clone())
        .build()?
        .spawn();
    let consumer = Consumer::builder(billing_config, billing_nats.jetstream())
        .with_inbox(billing_pool.clone())
        .handler(Billing)
        .concurrency(4)
        .fetch_wait(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
        .build()?
        .spawn();

    // --- orders writes orders; each transaction carries its event --------------------------
    let outbox = Outbox::new(orders_config);
    let started = Instant::now();
    let mut conn = orders_pool.get().await?;
    for n in 0..options.orders {
        let total_cents = i64::from(n % 50 + 1) * 199;
        place_order(&mut conn, &outbox, &format!("customer-{n}"), total_cents).await?;
    }
    // A transaction that fails after enqueueing: neither the order nor its event exist.
    let rolled_back = conn
        .transaction::<(), BoxError, _>(async |conn| {
            insert_order_and_event(conn, &outbox, "customer-rollback", 999).await?;
            Err("payment provider said no".into())
        })
        .await;
    if rolled_back.is_ok() {
        return Err("the failing transaction committed".into());
    }
    // An order billing will refuse: it goes to the DLQ, the others are not held up.
    place_order(&mut conn, &outbox, "customer-poison", -1).await?;
    let committed = u64::from(options.orders) + 1;
    println!(
        "[orders] committed {committed} orders with their events in {:?} (1 more rolled back)",
        started.elapsed()
    );

    // --- billing catches up ----------------------------------------------------------------
    let applied = consumer
        .wait_for(|s| s.processed + s.dead_lettered >= committed)
        .await?;
    println!(
        "[billing] applied {} events, dead-lettered {} in {:?}",
        applied.processed,
        applied.dead_lettered,
        started.elapsed()
    );

    // A service that publishes an event a second time (e.g. a retried direct publish) is
    // deduplicated by JetStream within the duplicate window: same event id, same message.
    let first_order: Vec<OrderRow> = diesel::sql_query(
        "SELECT payload::text AS payload FROM jetstream_outbox_events ORDER BY id LIMIT 1",
    )
    .load(&mut conn)
    .await?;
    let envelope = jetstream_bridge::Envelope::from_slice(
        first_order
            .into_iter()
            .next()
            .ok_or("the outbox is empty")?
            .payload
            .as_bytes(),
    )?;
    let published = Publisher::new(orders_config, orders_nats.jetstream())
        .publish(envelope)
        .await?;
    println!(
        "[orders] re-published {}: stream {} seq {}, duplicate = {}",
        published.event_id, published.stream, published.sequence, published.duplicate
    );

    let consumer_report = consumer.shutdown().await?;
    let relay_report = relay.shutdown().await?;
    println!(
        "[billing] consumer stopped: {} processed, {} duplicates skipped, {} retried, {} dead-lettered, {} abandoned at shutdown",
        consumer_report.stats.processed,
        consumer_report.stats.duplicates,
        consumer_report.stats.retried,
        consumer_report.stats.dead_lettered,
        consumer_report.abandoned,
    );
    println!(
        "[orders] relay stopped: {} published in {} batches, {} failed attempts",
        relay_report.sent, relay_report.batches, relay_report.failed_attempts
    );

    // --- check the end state in both databases and the DLQ ---------------------------------
    let mut billing_conn = billing_pool.get().await?;
    let invoices = count(&mut billing_conn, "SELECT count(*) AS n FROM invoices").await?;
    let processed = count(
        &mut billing_conn,
        "SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed'",
    )
    .await?;
    let pending = count(
        &mut conn,
        "SELECT count(*) AS n FROM jetstream_outbox_events WHERE status <> 'sent'",
    )
    .await?;
    let dlq = billing_nats
        .jetstream()
        .get_stream(TopologySpec::from_config(billing_config).dlq_stream_name())
        .await?
        .info()
        .await?
        .state
        .messages;
    let summary = Summary {
        orders: committed,
        invoices,
        published: relay_report.sent,
        dead_lettered: dlq,
        republish_deduplicated: published.duplicate,
    };
    println!(
        "result: {committed} orders committed → {} relayed → {invoices} invoices \
         ({processed} inbox rows processed), {dlq} in the DLQ, {pending} outbox rows not sent",
        relay_report.sent
    );
    let expected_invoices = committed - 1;
    if invoices != expected_invoices
        || processed != expected_invoices
        || dlq != 1
        || pending != 0
        || relay_report.sent != committed
        || !published.duplicate
    {
        return Err(format!("the services are out of sync: {summary:?}").into());
    }
    Ok(summary)
}

/// One business transaction of the orders service: the order and its event commit together.
async fn place_order(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    customer: &str,
    total_cents: i64,
) -> Result<(), BoxError> {
    conn.transaction::<(), BoxError, _>(async |conn| {
        insert_order_and_event(conn, outbox, customer, total_cents).await
    })
    .await
}

async fn insert_order_and_event(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    customer: &str,
    total_cents: i64,
) -> Result<(), BoxError> {
    let ids: Vec<IdRow> = diesel::sql_query(
        "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
    )
    .bind::<Text, _>(customer)
    .bind::<BigInt, _>(total_cents)
    .load(conn)
    .await?;
    let id = ids.into_iter().next().ok_or("INSERT returned no id")?.id;
    outbox
        .enqueue(
            conn,
            NewEvent::new(
                "order.created",
                json!({"order_id": id, "customer": customer, "total_cents": total_cents}),
            )
            .envelope_with(|b| b.resource_type("order").resource_id(id.to_string())),
        )
        .await?;
    Ok(())
}

/// The billing service's handler: one invoice per order, in the inbox transaction.
struct Billing;

impl InboxHandler for Billing {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        if event.envelope.event_type != "order.created" {
            return Ok(()); // not ours
        }
        let total = event.envelope.payload["total_cents"]
            .as_i64()
            .ok_or_else(|| HandlerError::permanent("order.created without total_cents"))?;
        if total < 0 {
            // Retrying cannot help: dead-letter it now, with the reason in the DLQ context.
            return Err(HandlerError::permanent(format!("negative total {total}"))
                .with_class("invalid_order"));
        }
        diesel::sql_query(
            "INSERT INTO invoices (order_id, total_cents, event_id) VALUES ($1, $2, $3)",
        )
        .bind::<Text, _>(&event.envelope.resource_id)
        .bind::<BigInt, _>(total)
        .bind::<Text, _>(event.envelope.event_id.as_str())
        .execute(conn)
        .await?; // a database error rolls back the inbox row too and is retried with backoff
        Ok(())
    }
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    payload: String,
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> Result<u64, BoxError> {
    let rows: Vec<CountRow> = diesel::sql_query(sql).load(conn).await?;
    Ok(u64::try_from(rows.into_iter().next().map_or(0, |r| r.n))?)
}

fn pool(url: &str) -> Result<Pool<AsyncPgConnection>, BoxError> {
    Ok(
        Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
            .max_size(8)
            .build()?,
    )
}

/// The two services' databases, created on the server of `DATABASE_URL`.
struct Databases {
    admin_url: String,
    names: Vec<String>,
    token: String,
}

impl Databases {
    async fn create(admin_url: &str, token: &str) -> Result<Self, BoxError> {
        let mut admin = AsyncPgConnection::establish(admin_url).await.map_err(|e| {
            format!("connecting to PostgreSQL (is it running? `bash .ci/services.sh`): {e}")
        })?;
        let mut names = Vec::new();
        for service in ["orders", "billing"] {
            let name = format!("jb_demo_{token}_{service}");
            admin
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await?;
            println!("[{service}] database {name}");
            names.push(name);
        }
        Ok(Self {
            admin_url: admin_url.to_owned(),
            names,
            token: token.to_owned(),
        })
    }

    /// `DATABASE_URL` with the database name replaced (user, host and options kept).
    fn url_of(&self, service: &str) -> Result<String, BoxError> {
        let mut url = url::Url::parse(&self.admin_url)?;
        url.set_path(&format!("jb_demo_{}_{service}", self.token));
        Ok(url.into())
    }

    async fn drop_all(&self) -> Result<(), BoxError> {
        let mut admin = AsyncPgConnection::establish(&self.admin_url).await?;
        for name in &self.names {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
        }
        Ok(())
    }
}
