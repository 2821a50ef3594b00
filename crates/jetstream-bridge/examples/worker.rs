//! A service worker: the template to copy for a service that publishes through the outbox and
//! consumes with the inbox.
//!
//! ```sh
//! jetstream-bridge migrate && jetstream-bridge ensure-topology   # deploy time, admin identity
//! cargo run -p jetstream-bridge --example worker                 # the worker
//! ```
//!
//! It reads its configuration from the environment (`NATS_URLS`, `NATS_ENV`, `APP_NAME`,
//! `DESTINATION_APP`, `DATABASE_URL`, `JETSTREAM_*`; see the config crate's README), logs through
//! `tracing` (`RUST_LOG`, default `info`), then runs until SIGTERM or Ctrl-C:
//!
//! - the outbox relay, publishing what this service enqueues (see `examples/producer.rs`);
//! - the consumer with the inbox: each event's effects and its inbox row commit together;
//! - the health router on port 3000 (`HEALTH_ADDR`, default `0.0.0.0:3000`): `/health/live`,
//!   `/health/ready`, `/health/jetstream`, `/metrics`.
//!
//! On SIGTERM readiness turns false at once, the consumer finishes the messages it holds, the
//! relay publishes what they enqueued, and the process exits 0 (non-zero if the drain did not
//! finish in time or a part failed).

use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetstream_bridge::pg::pool;
use jetstream_bridge::{
    Bridge, Config, Consumer, Event, HandlerError, Health, InboxHandler, Metrics, Relay, Shutdown,
};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies the events of the peer service. Runs inside the inbox transaction: what it writes on
/// `conn` commits with the inbox row, once per event id.
struct ApplyEvents;

impl InboxHandler for ApplyEvents {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        match event.envelope.event_type.as_str() {
            "order.created" => {
                let total = event.envelope.payload["total_cents"]
                    .as_i64()
                    .ok_or_else(|| HandlerError::permanent("order without total_cents"))?; // DLQ
                diesel::sql_query(
                    "INSERT INTO invoices (order_id, total_cents) VALUES ($1, $2) \
                     ON CONFLICT (order_id) DO NOTHING",
                )
                .bind::<diesel::sql_types::Text, _>(&event.envelope.resource_id)
                .bind::<diesel::sql_types::BigInt, _>(total)
                .execute(conn)
                .await?; // retried with backoff (or waited out, if the database is away)
                tracing::info!(order = %event.envelope.resource_id, "invoice written");
                Ok(())
            }
            _ => Ok(()), // not ours: ack
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    init_logging();
    run().await
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}

/// The worker, from start to clean stop.
pub async fn run() -> Result<(), BoxError> {
    let config = Config::from_env()?;
    for warning in config.warnings() {
        tracing::warn!(%warning, "configuration");
    }
    let database_url = config
        .database_url()
        .ok_or("DATABASE_URL is not set")?
        .expose()
        .clone();
    // Relay (2 with LISTEN) + consumer (one per concurrent message) + health.
    let pool = pool(&database_url, config.handler_concurrency() + 3)?;
    // The business table of this example (a real service has its own migrations).
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS invoices (order_id text PRIMARY KEY, \
             total_cents bigint NOT NULL)",
        )
        .await?;
    let nats = jetstream_bridge::connect(&config).await?;

    let relay = Relay::builder(&config, nats.jetstream(), pool.clone())
        .build()?
        .spawn();
    let metrics = Metrics::new();
    let consumer = Consumer::builder(&config, nats.jetstream())
        .with_inbox(pool.clone())
        .handler(ApplyEvents)
        .middleware(metrics.middleware())
        .build()?
        .spawn();
    let health = Health::builder(&config, nats.jetstream())
        .pool(pool.clone())
        .relay_stats(relay.stats())
        .consumer_stats(consumer.stats())
        .metrics(metrics)
        .build();

    let addr = std::env::var("HEALTH_ADDR").unwrap_or_else(|_| "0.0.0.0:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health router listening");

    let report = Bridge::new(Shutdown::new())
        .relay(relay)
        .consumer(consumer)
        .serve_health(listener, health)
        .shutdown_timeout(Duration::from_secs(25))
        .stop_on_signals()
        .run()
        .await;
    tracing::info!(?report, "stopped");
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("the worker did not stop cleanly: {report:?}").into())
    }
}
