//! [`Relay`]: publishes committed outbox rows to JetStream.
//!
//! ```text
//!            ┌──────────── NOTIFY jetstream_outbox_events (at commit) / poll_interval ─┐
//!            ▼                                                                          │
//!  claim ≤ batch_size rows ──► publish, ≤ max_in_flight acks pending ──► one UPDATE … sent
//!  (FOR UPDATE SKIP LOCKED,        (Nats-Msg-Id = event_id)               one UPDATE … back-off
//!   lease claimed_until)                                                  (attempts, failed)
//! ```
//!
//! A row is marked sent only after its PubAck. A crash between the PubAck and the mark leaves
//! the row claimed; its lease expires and a relay publishes it again, which JetStream drops as
//! a duplicate within the stream's duplicate window.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::Context;
use diesel::sql_types::{Array, BigInt, Double, Integer, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use jetstream_bridge_config::{Config, Envelope};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{OutboxError, OutboxErrorKind, Result};
use crate::model::{header_pairs, nats_headers};

/// The diesel-async deadpool pool the relay takes connections from.
pub type PgPool = Pool<AsyncPgConnection>;

/// The `NOTIFY` channel the outbox trigger signals on commit.
pub const NOTIFY_CHANNEL: &str = "jetstream_outbox_events";

/// Counters of a relay since it started (see [`RelayHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and marked sent (including JetStream duplicates).
    pub sent: u64,
    /// Publishes JetStream reported as duplicates (already stored within the window).
    pub duplicates: u64,
    /// Failed publish attempts that were counted against a row (it backs off).
    pub failed_attempts: u64,
    /// Rows quarantined as `failed`.
    pub quarantined: u64,
    /// Batches claimed.
    pub batches: u64,
    /// Times the relay backed off because the database or NATS was unavailable.
    pub outages: u64,
    /// Whether the `LISTEN` connection is up (commits wake the relay at once).
    pub listening: bool,
}

/// What [`Relay::run_until`] and [`RelayHandle::shutdown`] return: the final counters.
pub type RelayReport = RelayStats;

/// Builds a [`Relay`]; see [`Relay::builder`] for the defaults.
#[must_use = "call `.build()` to get the relay"]
pub struct RelayBuilder {
    jetstream: Context,
    pool: PgPool,
    settings: Settings,
}

#[derive(Debug, Clone)]
struct Settings {
    relay_id: String,
    batch_size: i64,
    max_in_flight: usize,
    lease: Duration,
    poll_interval: Duration,
    max_attempts: u32,
    retry: Backoff,
    outage: Backoff,
    ruby_msg_id_header: bool,
    ordered: bool,
    listen: bool,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Rows claimed per batch (default 500, at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.settings.batch_size = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// Publishes awaiting their PubAck at most (default 256, at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n.max(1);
        self
    }

    /// How long a claim lasts (default 30 s). After it, another relay may take the rows over;
    /// keep it well above the time one batch takes (NATS ack timeout included).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How often to look for rows without a notification (default 1 s): the safety net for
    /// a lost `LISTEN` connection, rows inserted by writers without the trigger, and back-offs.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Failed attempts after which a row is quarantined as `failed` (default 10, at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n.max(1);
        self
    }

    /// Back-off of a failing row: `base × 2^(attempts-1)` capped at `max`, with jitter
    /// (default 1 s, 5 min).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.retry = Backoff::new(base, max);
        self
    }

    /// Back-off of the whole relay while the database or NATS is unavailable (default 100 ms,
    /// 10 s, with jitter).
    pub fn outage_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.outage = Backoff::new(base, max);
        self
    }

    /// Also send the lowercase `nats-msg-id` header Ruby peers read (default true).
    pub fn ruby_msg_id_header(mut self, on: bool) -> Self {
        self.settings.ruby_msg_id_header = on;
        self
    }

    /// Per-key ordering (default off): events with the same ordering key are published in
    /// insertion order, even with several relays; a failing event blocks only its own key
    /// until it is sent or quarantined. Costs throughput: one event per key per batch.
    pub fn ordered(mut self, on: bool) -> Self {
        self.settings.ordered = on;
        self
    }

    /// Wake on `NOTIFY` from a dedicated connection taken out of the pool (default true);
    /// when off, the relay only polls.
    pub fn listen(mut self, on: bool) -> Self {
        self.settings.listen = on;
        self
    }

    /// The id written to `claimed_by` (default a random UUIDv7).
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.settings.relay_id = id.into();
        self
    }

    /// Builds the relay.
    pub fn build(self) -> Relay {
        Relay {
            inner: Arc::new(Inner {
                jetstream: self.jetstream,
                pool: self.pool,
                settings: self.settings,
            }),
        }
    }
}

/// Publishes committed outbox rows to JetStream (SPEC §4). Several relays may run against one
/// table; see the module docs in `docs/OUTBOX.md`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(
/// #     config: jetstream_bridge_config::Config,
/// #     jetstream: async_nats::jetstream::Context,
/// #     pool: jetstream_bridge_outbox::PgPool,
/// # ) -> Result<(), jetstream_bridge_outbox::OutboxError> {
/// use jetstream_bridge_outbox::Relay;
///
/// let relay = Relay::builder(&config, jetstream, pool).batch_size(500).build();
/// let handle = relay.spawn();
/// // ... later, on SIGTERM:
/// let report = handle.shutdown().await?;
/// println!("{} events sent", report.sent);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    jetstream: Context,
    pool: PgPool,
    settings: Settings,
}

/// A running relay (from [`Relay::spawn`]).
#[derive(Debug)]
#[must_use = "dropping the handle leaves the relay running; call `shutdown()`"]
pub struct RelayHandle {
    token: CancellationToken,
    join: JoinHandle<Result<RelayReport>>,
    stats: watch::Receiver<RelayStats>,
}

impl RelayHandle {
    /// A receiver of the relay's counters, updated after every batch; await
    /// `wait_for(|s| s.sent >= n)` to wait for progress.
    #[must_use]
    pub fn stats(&self) -> watch::Receiver<RelayStats> {
        self.stats.clone()
    }

    /// Stops the relay: it finishes the batch in flight (publish and mark), then returns.
    ///
    /// # Errors
    ///
    /// [`Database`](OutboxErrorKind::Database) if the relay task panicked or was aborted.
    ///
    /// # Cancel safety
    ///
    /// Cancelling this future leaves the relay stopping in the background.
    pub async fn shutdown(self) -> Result<RelayReport> {
        self.token.cancel();
        self.join.await.map_err(|e| {
            OutboxError::with_source(OutboxErrorKind::Database, format!("relay task ended: {e}"))
        })?
    }

    /// Aborts the relay task at once, without finishing the batch (a crash, for tests): rows
    /// it claimed are published again by another relay once their lease expires.
    pub fn abort(self) {
        self.join.abort();
    }
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Jsonb)]
    payload: Value,
    #[diesel(sql_type = Jsonb)]
    headers: Value,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = Text)]
    status: String,
}

const CLAIM_SQL: &str = "\
UPDATE jetstream_outbox_events o \
SET status = 'publishing', claimed_until = now() + make_interval(secs => $1), \
    claimed_by = $2, updated_at = now() \
FROM (SELECT id FROM jetstream_outbox_events \
      WHERE status IN ('pending', 'publishing') \
        AND (status = 'pending' OR claimed_until < now()) \
        AND next_attempt_at <= now() \
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
WHERE o.id = c.id \
RETURNING o.id, o.event_id, o.subject, o.payload, o.headers, o.attempts";

/// Only the oldest unsent row of each ordering key is claimable; the outer conditions are
/// re-checked on the locked row version, so a head another relay just claimed is skipped.
const CLAIM_ORDERED_SQL: &str = "\
UPDATE jetstream_outbox_events o \
SET status = 'publishing', claimed_until = now() + make_interval(secs => $1), \
    claimed_by = $2, updated_at = now() \
FROM (SELECT id FROM jetstream_outbox_events \
      WHERE id IN (SELECT DISTINCT ON (ordering_key) id FROM jetstream_outbox_events \
                   WHERE status IN ('pending', 'publishing') ORDER BY ordering_key, id) \
        AND status IN ('pending', 'publishing') \
        AND (status = 'pending' OR claimed_until < now()) \
        AND next_attempt_at <= now() \
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
WHERE o.id = c.id \
RETURNING o.id, o.event_id, o.subject, o.payload, o.headers, o.attempts";

const MARK_SENT_SQL: &str = "\
UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now(), updated_at = now(), \
    claimed_until = NULL, claimed_by = NULL, last_error = NULL \
WHERE id = ANY($1) AND status = 'publishing'";

const RELEASE_SQL: &str = "\
UPDATE jetstream_outbox_events SET status = 'pending', claimed_until = NULL, claimed_by = NULL, \
    updated_at = now() \
WHERE id = ANY($1) AND status = 'publishing'";

const MARK_FAILED_SQL: &str = "\
UPDATE jetstream_outbox_events o SET \
    attempts = o.attempts + 1, \
    status = CASE WHEN o.attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END, \
    next_attempt_at = now() + make_interval(secs => f.delay), \
    last_error = f.err, claimed_until = NULL, claimed_by = NULL, updated_at = now() \
FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, err, delay) \
WHERE o.id = f.id AND o.status = 'publishing' \
RETURNING o.status";

/// How one row's publish ended.
enum Outcome {
    Sent {
        duplicate: bool,
    },
    /// Counted against the row (rejected, no stream, oversized, unreadable row).
    Failed(String),
    /// Timeout or lost connection: NATS is likely down; the row goes back without a count.
    Transient,
}

impl Relay {
    /// Starts building a relay that publishes with `jetstream` the rows of the database behind
    /// `pool`. The pool needs at least 2 connections (one is taken out for `LISTEN`).
    ///
    /// Defaults: batch 500, 256 acks in flight, lease 30 s, poll 1 s, 10 attempts, row
    /// back-off 1 s..5 min, outage back-off 100 ms..10 s, lowercase msg-id header on,
    /// unordered, `LISTEN` on, relay id `<app_name>-<UUIDv7>`. Each row carries its own
    /// subject.
    pub fn builder(config: &Config, jetstream: Context, pool: PgPool) -> RelayBuilder {
        RelayBuilder {
            jetstream,
            pool,
            settings: Settings {
                relay_id: format!("{}-{}", config.app_name(), uuid::Uuid::now_v7()),
                batch_size: 500,
                max_in_flight: 256,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                max_attempts: 10,
                retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
                outage: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
                ruby_msg_id_header: true,
                ordered: false,
                listen: true,
            },
        }
    }

    /// Runs the relay in place until `signal` completes, then finishes the batch in flight
    /// and returns the counters. Database and NATS errors never end the loop; they back off.
    ///
    /// # Errors
    ///
    /// None today (the result leaves room for fatal errors).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future may stop between publish and mark; the rows are
    /// then republished after their lease (deduplicated by JetStream). Use the signal.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<RelayReport> {
        let token = CancellationToken::new();
        let (tx, _rx) = watch::channel(RelayStats::default());
        let run = self.inner.run(token.clone(), Arc::new(tx));
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => result,
            () = signal => {
                token.cancel();
                run.await
            }
        }
    }

    /// Spawns the relay on the Tokio runtime and returns a handle to watch and stop it.
    pub fn spawn(self) -> RelayHandle {
        let token = CancellationToken::new();
        let (tx, rx) = watch::channel(RelayStats::default());
        let inner = self.inner;
        let join = tokio::spawn({
            let token = token.clone();
            async move { inner.run(token, Arc::new(tx)).await }
        });
        RelayHandle {
            token,
            join,
            stats: rx,
        }
    }
}

impl Inner {
    async fn run(
        self: Arc<Self>,
        token: CancellationToken,
        stats: Arc<watch::Sender<RelayStats>>,
    ) -> Result<RelayReport> {
        let wake = Arc::new(Notify::new());
        let listener = self.settings.listen.then(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                Arc::clone(&wake),
                token.child_token(),
                self.settings.outage,
                Arc::clone(&stats),
            ))
        });
        let publish = |current: RelayStats| {
            stats.send_modify(|s| {
                let listening = s.listening;
                *s = current;
                s.listening = listening;
            });
        };
        let mut current = RelayStats::default();
        let mut outage_streak = 0u32;
        // A batch claimed while the previous one was being published (only after a full
        // batch): claiming overlaps publishing, so the database round trips are hidden.
        let mut prefetched: Option<Vec<ClaimedRow>> = None;
        loop {
            let claimed = match prefetched.take() {
                // Claimed rows are finished even during shutdown (they are in flight).
                Some(rows) => Ok(rows),
                None if token.is_cancelled() => break,
                None => self.claim().await,
            };
            let pause = match claimed {
                Err(e) => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "outbox relay: claim failed; backing off");
                    outage_streak += 1;
                    current.outages += 1;
                    Some(self.settings.outage.delay(outage_streak))
                }
                Ok(rows) if rows.is_empty() => {
                    outage_streak = 0;
                    None
                }
                Ok(rows) => {
                    current.batches += 1;
                    let full =
                        i64::try_from(rows.len()).unwrap_or(i64::MAX) >= self.settings.batch_size;
                    let (transient, next) = if full && !token.is_cancelled() {
                        let (transient, next) =
                            tokio::join!(self.process(rows, &mut current), self.claim());
                        (transient, next.ok())
                    } else {
                        (self.process(rows, &mut current).await, None)
                    };
                    publish(current);
                    if transient {
                        if let Some(next) = next.filter(|rows| !rows.is_empty()) {
                            let ids = next.iter().map(|r| r.id).collect();
                            self.execute_ids(RELEASE_SQL, ids).await;
                        }
                        outage_streak += 1;
                        current.outages += 1;
                        Some(self.settings.outage.delay(outage_streak))
                    } else {
                        // Full or not, look again at once: rows may have been committed
                        // meanwhile, and an empty claim then waits.
                        outage_streak = 0;
                        prefetched = next;
                        continue;
                    }
                }
            };
            publish(current);
            let wait = pause.unwrap_or(self.settings.poll_interval);
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                () = wake.notified(), if pause.is_none() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(listener) = listener {
            let _ = listener.await;
            stats.send_modify(|s| s.listening = false);
        }
        publish(current);
        Ok(*stats.borrow())
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>> {
        self.pool
            .get()
            .await
            .map_err(|e| OutboxError::with_source(OutboxErrorKind::Database, e))
    }

    async fn claim(&self) -> Result<Vec<ClaimedRow>> {
        let mut conn = self.conn().await?;
        let sql = if self.settings.ordered {
            CLAIM_ORDERED_SQL
        } else {
            CLAIM_SQL
        };
        let mut rows: Vec<ClaimedRow> = diesel::sql_query(sql)
            .bind::<Double, _>(self.settings.lease.as_secs_f64())
            .bind::<Text, _>(&self.settings.relay_id)
            .bind::<BigInt, _>(self.settings.batch_size)
            .load(&mut *conn)
            .await
            .map_err(OutboxError::database)?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    /// Publishes a claimed batch and records the outcome; returns whether NATS looked down.
    #[tracing::instrument(name = "outbox_relay_batch", skip_all, fields(rows = rows.len()))]
    async fn process(&self, mut rows: Vec<ClaimedRow>, stats: &mut RelayStats) -> bool {
        let outcomes = self.publish(&mut rows).await;
        let mut sent = Vec::new();
        let mut released = Vec::new();
        let (mut failed_ids, mut failed_errs, mut failed_delays) =
            (Vec::new(), Vec::new(), Vec::new());
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent { duplicate } => {
                    sent.push(row.id);
                    stats.duplicates += u64::from(duplicate);
                }
                Outcome::Transient => released.push(row.id),
                Outcome::Failed(error) => {
                    let attempt = u32::try_from(row.attempts.max(0)).unwrap_or(u32::MAX) + 1;
                    tracing::warn!(event_id = %row.event_id, attempt, %error, "outbox relay: publish failed");
                    failed_ids.push(row.id);
                    failed_errs.push(error);
                    failed_delays.push(self.settings.retry.delay(attempt).as_secs_f64());
                }
            }
        }
        if !sent.is_empty() {
            let n = sent.len() as u64;
            if self.execute_ids(MARK_SENT_SQL, sent).await {
                stats.sent += n;
            }
        }
        if !failed_ids.is_empty() {
            stats.failed_attempts += failed_ids.len() as u64;
            let max = i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX);
            let result = self
                .retry_db(|mut conn| {
                    let (ids, errs, delays) = (
                        failed_ids.clone(),
                        failed_errs.clone(),
                        failed_delays.clone(),
                    );
                    async move {
                        diesel::sql_query(MARK_FAILED_SQL)
                            .bind::<Array<BigInt>, _>(ids)
                            .bind::<Array<Text>, _>(errs)
                            .bind::<Array<Double>, _>(delays)
                            .bind::<Integer, _>(max)
                            .load::<StatusRow>(&mut *conn)
                            .await
                            .map_err(OutboxError::database)
                    }
                })
                .await;
            if let Some(rows) = result {
                stats.quarantined += rows.iter().filter(|r| r.status == "failed").count() as u64;
            }
        }
        let transient = !released.is_empty();
        if transient {
            // Back without counting an attempt (NATS down, not the row's fault).
            self.execute_ids(RELEASE_SQL, released).await;
        }
        transient
    }

    /// Runs `sql` with `$1 = ids`, retrying on database errors until the lease would expire.
    async fn execute_ids(&self, sql: &'static str, ids: Vec<i64>) -> bool {
        self.retry_db(|mut conn| {
            let ids = ids.clone();
            async move {
                diesel::sql_query(sql)
                    .bind::<Array<BigInt>, _>(ids)
                    .execute(&mut *conn)
                    .await
                    .map_err(OutboxError::database)
            }
        })
        .await
        .is_some()
    }

    /// Retries a bookkeeping statement with the outage back-off for about one lease; after
    /// that the rows are left to lease expiry (and republished, deduplicated by JetStream).
    async fn retry_db<T, F, Fut>(&self, mut f: F) -> Option<T>
    where
        F: FnMut(Object<AsyncPgConnection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.lease;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.conn().await {
                Ok(conn) => f(conn).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => return Some(value),
                Err(e) => {
                    let delay = self.settings.outage.delay(attempt);
                    if tokio::time::Instant::now() + delay >= deadline {
                        tracing::error!(error = %e, "outbox relay: giving up on bookkeeping; rows are republished after their lease");
                        return None;
                    }
                    tracing::warn!(error = %e, "outbox relay: bookkeeping failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Publishes every row with at most `max_in_flight` PubAcks outstanding; outcomes in row
    /// order.
    async fn publish(&self, rows: &mut [ClaimedRow]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = rows.iter().map(|_| None).collect();
        let mut in_flight = FuturesOrdered::new();
        for (i, row) in rows.iter_mut().enumerate() {
            let body = match encode_payload(std::mem::take(&mut row.payload)) {
                Ok(body) => body,
                Err(reason) => {
                    outcomes[i] = Some(Outcome::Failed(reason));
                    continue;
                }
            };
            let extra = header_pairs(&row.headers);
            let headers = nats_headers(
                &row.event_id,
                extra.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                self.settings.ruby_msg_id_header,
            );
            while in_flight.len() >= self.settings.max_in_flight {
                if let Some((j, outcome)) = in_flight.next().await {
                    outcomes[j] = Some(outcome);
                }
            }
            match self
                .jetstream
                .publish_with_headers(row.subject.clone(), headers, body.into())
                .await
            {
                Ok(ack) => in_flight.push_back(async move { (i, classify(ack.await)) }),
                Err(e) => outcomes[i] = Some(classify(Err(e))),
            }
        }
        while let Some((j, outcome)) = in_flight.next().await {
            outcomes[j] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Transient))
            .collect()
    }
}

fn classify(
    result: std::result::Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >,
) -> Outcome {
    match result {
        Ok(ack) => Outcome::Sent {
            duplicate: ack.duplicate,
        },
        Err(e) => match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Outcome::Transient,
            _ => Outcome::Failed(e.to_string()),
        },
    }
}

/// The message body for a row's `payload`: an envelope object is re-encoded with the wire key
/// order (jsonb does not keep key order); a gem-written row holds the envelope as a JSON string,
/// which is sent as it is.
fn encode_payload(payload: Value) -> std::result::Result<Vec<u8>, String> {
    match payload {
        Value::String(text) => Ok(text.into_bytes()),
        payload @ Value::Object(_) => Envelope::from_value(payload)
            .map(|e| e.to_vec())
            .map_err(|e| format!("unreadable envelope in outbox row: {e}")),
        other => Err(format!(
            "outbox payload is not an envelope object but {}",
            match other {
                Value::Array(_) => "an array",
                Value::Null => "null",
                _ => "a scalar",
            }
        )),
    }
}

/// Keeps a `LISTEN` connection (taken out of the pool) and turns notifications into wake-ups;
/// reconnects with back-off. Wakes once after every (re)connect, for rows committed meanwhile.
async fn listen(
    pool: PgPool,
    wake: Arc<Notify>,
    token: CancellationToken,
    backoff: Backoff,
    stats: Arc<watch::Sender<RelayStats>>,
) {
    let set_listening = |on: bool| stats.send_modify(|s| s.listening = on);
    let mut attempt = 0u32;
    while !token.is_cancelled() {
        let conn = match pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "outbox relay: no connection for LISTEN; retrying");
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(backoff.delay(attempt)) => continue,
                }
            }
        };
        // Never hand a listening connection back to the pool.
        let mut conn = Object::take(conn);
        if let Err(e) = diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}"))
            .execute(&mut conn)
            .await
        {
            attempt += 1;
            tracing::warn!(error = %e, "outbox relay: LISTEN failed; retrying");
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(backoff.delay(attempt)) => continue,
            }
        }
        attempt = 0;
        set_listening(true);
        wake.notify_one();
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                item = notifications.next() => match item {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "outbox relay: LISTEN connection failed; reconnecting");
                        break;
                    }
                    None => break,
                },
            }
        }
        set_listening(false);
        attempt += 1;
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_encoding_restores_wire_order_and_passes_gem_strings() {
        let envelope = Envelope::builder("user.created", json!({"id": "u-1"}))
            .producer("orders")
            .build()
            .unwrap();
        // jsonb hands keys back in its own order.
        let shuffled: serde_json::Map<String, Value> = serde_json::to_value(&envelope)
            .unwrap()
            .as_object()
            .unwrap()
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = encode_payload(Value::Object(shuffled)).unwrap();
        assert_eq!(body, envelope.to_vec());
        let gem = envelope.to_json_string();
        assert_eq!(
            encode_payload(Value::String(gem.clone())).unwrap(),
            gem.into_bytes()
        );
        assert!(encode_payload(json!([1])).is_err());
        assert!(encode_payload(json!({"no": "envelope"})).is_err());
    }
}
