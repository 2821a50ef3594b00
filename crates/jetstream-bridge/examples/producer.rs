//! A producer: the template to copy for a service that only publishes. The business write and
//! its event commit in **one** transaction (the transactional outbox); a relay publishes
//! committed events to JetStream.
//!
//! ```sh
//! jetstream-bridge migrate --only outbox && jetstream-bridge ensure-topology
//! cargo run -p jetstream-bridge --example producer
//! ```
//!
//! Configuration from the environment (`NATS_URLS`, `NATS_ENV`, `APP_NAME`, `DESTINATION_APP`,
//! `DATABASE_URL`, `JETSTREAM_*`). The example writes one order and its `order.created` event,
//! then runs a relay until the event is published. A real service runs the relay for its
//! whole life (see `examples/worker.rs`) and enqueues from its request handlers.

// An example program: it reports to the terminal.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetstream_bridge::pg::{pool, Pool};
use jetstream_bridge::{Config, EventId, NewEvent, Outbox, OutboxError, Relay};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes an order and its `order.created` event in one transaction: both commit, or neither.
pub async fn place_order(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    customer: &str,
    total_cents: i64,
) -> Result<EventId, OutboxError> {
    conn.transaction::<_, OutboxError, _>(async |conn| {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let order: Id = diesel::sql_query(
            "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id",
        )
        .bind::<diesel::sql_types::Text, _>(customer)
        .bind::<diesel::sql_types::BigInt, _>(total_cents)
        .get_result(conn)
        .await?;
        outbox
            .enqueue(
                conn,
                NewEvent::new(
                    "order.created",
                    json!({"id": order.id.to_string(), "customer": customer, "total_cents": total_cents}),
                ),
            )
            .await
    })
    .await
}

/// Places one order, then relays until its event is published; returns the event id.
pub async fn run(config: &Config, pool: Pool) -> Result<EventId, BoxError> {
    let mut conn = pool.get().await?;
    // The business table of this example (a real service has its own migrations).
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer text NOT NULL, \
         total_cents bigint NOT NULL)",
    )
    .await?;
    let outbox = Outbox::new(config);
    let event_id = place_order(&mut conn, &outbox, "customer-1", 4_200).await?;
    drop(conn);
    println!("order committed with event {event_id}");

    let nats = jetstream_bridge::connect(config).await?;
    let relay = Relay::builder(config, nats.jetstream(), pool)
        .build()?
        .spawn();
    let mut stats = relay.stats();
    tokio::time::timeout(Duration::from_secs(30), stats.wait_for(|s| s.sent >= 1))
        .await
        .map_err(|_| "the relay published nothing within 30 s (is the topology provisioned?)")??;
    let report = relay.shutdown().await?;
    println!("relay published {} event(s)", report.sent);
    Ok(event_id)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let config = Config::from_env()?;
    let database_url = config
        .database_url()
        .ok_or("DATABASE_URL is not set")?
        .expose()
        .clone();
    run(&config, pool(&database_url, 3)?).await?;
    Ok(())
}
