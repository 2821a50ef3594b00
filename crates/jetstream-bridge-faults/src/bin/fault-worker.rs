//! `fault-worker`: a relay and/or a consumer with the inbox, configured from `FW_*` variables
//! (see `jetstream_bridge_faults::vars`), for the fault suite to start and kill.
//!
//! The consumer writes one `effects` row per applied event inside the inbox transaction. An
//! event whose payload has `"poison": true` fails every time (retryable), and each of its
//! deliveries is recorded in `attempts` outside the transaction. SIGTERM shuts down gracefully.
//! Everything is logged at debug level to stderr, so the suite can check that no credential
//! appears in the output.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use diesel::sql_types::{Array, Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::Config;
use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxBatchHandler, InboxHandler};
use jetstream_bridge_faults::vars;
use jetstream_bridge_outbox::Relay;
use jetstream_bridge_pg::Pool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fault-worker failed");
            ExitCode::FAILURE
        }
    }
}

fn var(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn var_or<T: FromStr>(name: &str, default: T) -> Result<T, BoxError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("{name}={v:?} is invalid: {e}").into()),
        Err(_) => Ok(default),
    }
}

async fn run() -> Result<(), BoxError> {
    let role = var(vars::ROLE)?;
    let (relay_on, consumer_on) = match role.as_str() {
        "relay" => (true, false),
        "consumer" => (false, true),
        "both" => (true, true),
        other => {
            return Err(format!(
                "{} must be relay, consumer or both, not {other:?}",
                vars::ROLE
            )
            .into())
        }
    };
    let database_url = var(vars::DATABASE_URL)?;
    let base = |app: &str, peer: &str| -> Result<Config, BoxError> {
        let backoff = var_or(vars::BACKOFF, "200ms".to_owned())?;
        Ok(Config::builder(var(vars::ENV)?, app, peer)
            .nats_urls(var(vars::NATS_URLS)?)
            .database_url(database_url.as_str())
            .stream_name(var(vars::STREAM)?)
            .stream_replicas(var_or(vars::REPLICAS, 1)?)
            .use_outbox(relay_on)
            .use_inbox(true)
            .disable_js_api(false)
            .connect_retry_attempts(30)
            .connect_retry_delay("200ms")
            .max_deliver(var_or(vars::MAX_DELIVER, 10)?)
            .ack_wait(var_or(vars::ACK_WAIT, "2s".to_owned())?)
            .backoff(backoff.split(',').map(str::to_owned).collect::<Vec<_>>())
            .batch_size(var_or(vars::BATCH_SIZE, 100)?)
            .build()?)
    };
    let pool = jetstream_bridge_pg::pool(&database_url, 6)?;
    let mut shutdown = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    let relay = if relay_on {
        let config = base("orders", "billing")?;
        tracing::info!(?config, "fault-worker: starting the relay");
        let connection = jetstream_bridge_topology::connect(&config).await?;
        let relay = Relay::builder(&config, connection.jetstream(), pool.clone())
            .lease(Duration::from_millis(var_or(vars::LEASE_MS, 2000)?))
            .retry_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .outage_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .build()?;
        Some(relay.spawn())
    } else {
        None
    };
    let consumer = if consumer_on {
        let config = base("billing", "orders")?;
        tracing::info!(?config, "fault-worker: starting the consumer");
        let connection = jetstream_bridge_topology::connect(&config).await?;
        let handler = Apply {
            attempts: pool.clone(),
            batch_delay: Duration::from_millis(var_or(vars::BATCH_DELAY_MS, 0)?),
        };
        let builder = Consumer::builder(&config, connection.jetstream())
            .with_inbox(pool.clone())
            .fetch_wait(Duration::from_millis(500))
            .recovery_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .shutdown_timeout(Duration::from_secs(5));
        let consumer = if var_or(vars::BATCH, 0_u8)? == 1 {
            builder.batch_handler(handler).build()?
        } else {
            builder.handler(handler).concurrency(4).build()?
        };
        Some(consumer.spawn())
    } else {
        None
    };
    tracing::info!(role, "fault-worker: running");

    shutdown.recv().await;
    tracing::info!("fault-worker: SIGTERM, shutting down");
    if let Some(consumer) = consumer {
        let report = consumer.shutdown().await?;
        tracing::info!(?report, "fault-worker: consumer stopped");
    }
    if let Some(relay) = relay {
        let report = relay.shutdown().await?;
        tracing::info!(?report, "fault-worker: relay stopped");
    }
    Ok(())
}

/// The consumer's handler: one `effects` row per event; poison events always fail.
struct Apply {
    attempts: Pool,
    batch_delay: Duration,
}

fn is_poison(event: &Event) -> bool {
    event.envelope.payload["poison"] == serde_json::Value::Bool(true)
}

impl Apply {
    /// Records a poison delivery outside the inbox transaction, then fails it (retryable).
    async fn reject(&self, event: &Event) -> HandlerError {
        let recorded = async {
            let mut conn = self.attempts.get().await.map_err(|e| e.to_string())?;
            diesel::sql_query("INSERT INTO attempts (event_id, delivery) VALUES ($1, $2)")
                .bind::<Text, _>(event.envelope.event_id.as_str())
                .bind::<Integer, _>(i32::try_from(event.metadata.deliveries).unwrap_or(i32::MAX))
                .execute(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        match recorded.await {
            Ok(_) => HandlerError::retry("poison event"),
            Err(e) => HandlerError::retry(format!("poison event (attempt not recorded: {e})")),
        }
    }
}

impl InboxHandler for Apply {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        if is_poison(event) {
            return Err(self.reject(event).await);
        }
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl InboxBatchHandler for Apply {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        if let Some(poison) = events.iter().find(|e| is_poison(e)) {
            return Err(self.reject(poison).await);
        }
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e.envelope.event_id.as_str())
            .collect();
        diesel::sql_query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
            .bind::<Array<Text>, _>(&ids)
            .execute(conn)
            .await?;
        // Inside the transaction: a SIGKILL now leaves the batch uncommitted.
        tokio::time::sleep(self.batch_delay).await;
        Ok(())
    }
}
