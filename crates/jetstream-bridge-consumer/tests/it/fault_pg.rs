//! PostgreSQL outages under a running consumer, with a private `postgres` process: an
//! unavailable database is waited out, never charged to the messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use diesel::sql_types::{Array, Text};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetstream_bridge_config::{Config, ConsumerMode, DLQ_REASON_HEADER};
use jetstream_bridge_consumer::{
    ConsumerStats, Event, HandlerError, InboxBatchHandler, InboxHandler,
};
use jetstream_bridge_testkit::{PgServer, TestNats};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};

use crate::{envelope, header, test_timings, wait, Env, N};

/// How long the database stays down: well past the sum of the NAK backoff (100 ms + 200 ms,
/// max_deliver 3) and past `ack_wait` (2 s), so a delivery spent per failed attempt, or a
/// held message without in-progress acks, would show.
const OUTAGE: Duration = Duration::from_secs(4);

/// Writes one `effects` row per event (unique event id) inside the inbox transaction, slowly
/// enough that the outage hits messages in flight; records the delivery count it saw.
#[derive(Clone, Default)]
struct Effects {
    seen: Arc<Mutex<HashMap<String, Vec<u32>>>>,
}

impl Effects {
    fn note(&self, event: &Event) {
        self.seen
            .lock()
            .unwrap()
            .entry(event.envelope.event_id.as_str().to_owned())
            .or_default()
            .push(event.metadata.deliveries);
    }

    /// The highest delivery count the handler saw.
    fn max_delivery(&self) -> u32 {
        let seen = self.seen.lock().unwrap();
        seen.values().flatten().copied().max().unwrap_or(0)
    }
}

impl InboxHandler for Effects {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        self.note(event);
        tokio::time::sleep(Duration::from_millis(20)).await;
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl InboxBatchHandler for Effects {
    async fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        for event in events {
            self.note(event);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e.envelope.event_id.as_str())
            .collect();
        diesel::sql_query("INSERT INTO effects (event_id) SELECT unnest($1::text[])")
            .bind::<Array<Text>, _>(ids)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    PerMessage,
    Batch,
    Push,
}

/// A private PostgreSQL (inbox migrated, `effects` with a unique event id) and the consumer's
/// topology on the shared NATS.
struct PgEnv {
    t: TestNats,
    pg: PgServer,
    pool: Pool<AsyncPgConnection>,
    config: Config,
    spec: TopologySpec,
}

impl PgEnv {
    async fn new(mode: ConsumerMode) -> Self {
        let pg = PgServer::spawn().await;
        let mut conn = pg.connect().await;
        jetstream_bridge_pg::Migrator::all()
            .run(&mut conn)
            .await
            .unwrap();
        conn.batch_execute("CREATE TABLE effects (event_id text PRIMARY KEY)")
            .await
            .unwrap();
        drop(conn);
        let pool = Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
            pg.url(),
        ))
        .max_size(8)
        .build()
        .unwrap();
        let t = TestNats::shared().await;
        let stream = t.name("stream");
        t.track_stream(stream.clone());
        t.track_stream(format!("{stream}-dlq"));
        let config = Config::builder(t.name("env"), "orders", "billing")
            .nats_urls(t.url())
            .stream_name(stream.as_str())
            .consumer_mode(mode)
            .use_inbox(true)
            .disable_js_api(false)
            .batch_size(10)
            .max_deliver(3)
            .ack_wait("2s")
            .backoff(["100ms", "200ms"])
            .build()
            .unwrap();
        let spec = TopologySpec::from_config(&config);
        ensure_topology(t.jetstream(), &spec, &EnsureOptions::new())
            .await
            .unwrap();
        Self {
            t,
            pg,
            pool,
            config,
            spec,
        }
    }

    async fn publish(&self, n: u64) {
        let e = envelope(n);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.event_id.as_str());
        self.t
            .jetstream()
            .publish_with_headers(
                self.config.subjects().destination().as_str().to_owned(),
                headers,
                e.to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.pg.connect().await;
        let n: N = diesel::sql_query(sql).get_result(&mut conn).await.unwrap();
        n.n
    }

    /// Deliveries the durable made so far (redeliveries included).
    async fn delivered(&self) -> u64 {
        self.t
            .jetstream()
            .get_stream(self.spec.stream_name())
            .await
            .unwrap()
            .consumer_info(self.config.durable_name().as_str())
            .await
            .unwrap()
            .delivered
            .consumer_sequence
    }

    async fn dlq_len(&self) -> u64 {
        let mut stream = self
            .t
            .jetstream()
            .get_stream(self.spec.dlq_stream_name())
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// PostgreSQL stopped (fast shutdown: sessions terminated with 57P01, then connections
/// refused) for 4 s while the consumer runs, with max_deliver 3, backoff 100 ms / 200 ms and
/// ack_wait 2 s; events keep arriving meanwhile; then PostgreSQL restarts on the same port.
/// The same consumer (no restart) processes every event exactly once, nothing is
/// dead-lettered, retried or redelivered (every event was delivered once), the outage is
/// counted once and reported while it lasts.
async fn outage_is_waited_out(mode: Mode) {
    let consumer_mode = match mode {
        Mode::Push => ConsumerMode::Push,
        _ => ConsumerMode::Pull,
    };
    let env = PgEnv::new(consumer_mode).await;
    let handler = Effects::default();
    let builder = test_timings(
        jetstream_bridge_consumer::Consumer::builder(&env.config, env.t.jetstream().clone())
            .with_inbox(env.pool.clone()),
    );
    let builder = builder
        .concurrency(4)
        .progress_interval(Some(Duration::from_millis(300)))
        .outage_backoff(Duration::from_millis(50), Duration::from_millis(500));
    let handle = match mode {
        Mode::Batch => builder.batch_handler(handler.clone()).build(),
        _ => builder.handler(handler.clone()).build(),
    }
    .unwrap()
    .spawn();

    let total = 60u64;
    for n in 0..30 {
        env.publish(n).await;
    }
    wait(&handle, |s| s.processed >= 5).await;
    env.pg.stop().await;
    let down_at = Instant::now();
    for n in 30..total {
        env.publish(n).await;
    }
    let during = wait(&handle, |s| s.db_outage).await;
    assert_eq!(during.db_outages, 1, "{during:?}");
    let remaining = OUTAGE.saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    let still = *handle.stats().borrow();
    assert!(
        still.db_outage,
        "the outage is reported while it lasts: {still:?}"
    );
    env.pg.restart().await;

    let stats = wait(&handle, |s: &ConsumerStats| {
        s.processed + s.duplicates >= total
    })
    .await;
    let report = handle.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.processed,
            stats.retried,
            stats.dead_lettered,
            stats.terminated,
            stats.db_outages,
        ),
        (total, 0, 0, 0, 1),
        "{mode:?}: {stats:?}"
    );
    assert!(!report.stats.db_outage);
    assert!(
        report.stats.db_outage_time >= Duration::from_secs(2),
        "{:?}",
        report.stats.db_outage_time
    );
    // Effects exactly once, every event.
    assert_eq!(
        env.count("SELECT count(*) AS n FROM effects").await,
        total as i64
    );
    assert_eq!(
        env.count(
            "SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed' \
             AND error_message IS NULL AND failed_at IS NULL"
        )
        .await,
        total as i64,
        "no failed attempt recorded"
    );
    // No delivery spent: the server delivered each event once.
    assert_eq!(
        env.delivered().await,
        total,
        "{mode:?}: redeliveries happened"
    );
    assert_eq!(handler.max_delivery(), 1);
    assert_eq!(env.dlq_len().await, 0);
    env.t.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_per_message_spends_no_delivery() {
    outage_is_waited_out(Mode::PerMessage).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_batch_mode_spends_no_delivery() {
    outage_is_waited_out(Mode::Batch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_push_mode_spends_no_delivery() {
    outage_is_waited_out(Mode::Push).await;
}

/// Inserts the event's payload id into `taken` (unique): an id already there is a unique
/// violation of this event's own insert.
struct Claim;

impl InboxHandler for Claim {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        diesel::sql_query("INSERT INTO taken (id) VALUES ($1)")
            .bind::<diesel::sql_types::BigInt, _>(event.envelope.payload["id"].as_i64().unwrap())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// A database error that belongs to one message (a unique violation in the handler's own
/// insert) is that message's failure, not an outage: retried with backoff and dead-lettered
/// on max_deliver, while the other events are processed and no outage is reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_messages_own_database_error_is_a_handler_failure() {
    let env = Env::new(|c| c).await;
    env.db
        .conn()
        .await
        .batch_execute("CREATE TABLE taken (id bigint PRIMARY KEY); INSERT INTO taken VALUES (1)")
        .await
        .unwrap();
    for n in 0..4 {
        env.publish_gem(&envelope(n)).await;
    }
    let handle = env.consumer().handler(Claim).build().unwrap().spawn();
    let stats = wait(&handle, |s| s.processed >= 3 && s.dead_lettered >= 1).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.processed,
            stats.retried,
            stats.dead_lettered,
            stats.db_outages
        ),
        (3, 2, 1, 0),
        "{stats:?}"
    );
    assert!(!stats.db_outage);
    let dlq = env.dlq_messages(1).await;
    assert_eq!(
        header(&dlq[0], DLQ_REASON_HEADER),
        Some("max_deliver_exceeded")
    );
    let context = jetstream_bridge_config::DlqContext::from_json(
        header(&dlq[0], jetstream_bridge_config::DLQ_CONTEXT_HEADER).unwrap(),
    )
    .unwrap();
    assert_eq!(context.error_class.as_deref(), Some("DatabaseError"));
    env.teardown().await;
}

/// Shutdown while the database is down: the held messages are given back at once (released,
/// not abandoned at the shutdown timeout), nothing is dead-lettered; after the restart a new
/// consumer applies every event once.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_during_an_outage_releases_the_held_messages() {
    let env = PgEnv::new(ConsumerMode::Pull).await;
    let consumer = || {
        test_timings(
            jetstream_bridge_consumer::Consumer::builder(&env.config, env.t.jetstream().clone())
                .with_inbox(env.pool.clone()),
        )
        .concurrency(2)
        .outage_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .handler(Effects::default())
        .build()
        .unwrap()
    };
    let handle = consumer().spawn();
    env.publish(0).await;
    wait(&handle, |s| s.processed >= 1).await;
    env.pg.stop().await;
    for n in 1..6 {
        env.publish(n).await;
    }
    wait(&handle, |s| s.db_outage && s.fetched >= 2).await;
    let started = Instant::now();
    let report = handle.shutdown().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited for the database: {:?}",
        started.elapsed()
    );
    assert_eq!(report.abandoned, 0, "{report:?}");
    assert!(report.released >= 1, "{report:?}");
    assert_eq!(
        (report.stats.retried, report.stats.dead_lettered),
        (0, 0),
        "{report:?}"
    );
    env.pg.restart().await;
    let again = consumer().spawn();
    // Released messages may reach the next consumer more than once (a release is redelivered
    // at once, possibly into a pull request still open); the inbox makes that a duplicate.
    jetstream_bridge_testkit::eventually(crate::WAIT, || async {
        match env.count("SELECT count(*) AS n FROM effects").await {
            6 => Ok(()),
            n => Err(format!("{n} of 6 events applied")),
        }
    })
    .await;
    let second = again.shutdown().await.unwrap();
    assert_eq!(
        (second.stats.retried, second.stats.dead_lettered),
        (0, 0),
        "{second:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) AS n FROM jetstream_inbox_events WHERE status = 'processed'")
            .await,
        6
    );
    assert_eq!(env.dlq_len().await, 0);
    env.t.teardown().await;
}
