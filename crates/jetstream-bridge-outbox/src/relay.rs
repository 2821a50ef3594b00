//! [`Relay`]: publishes committed outbox rows to JetStream.
//!
//! ```text
//!            ┌──────────── NOTIFY jetstream_outbox_events (at commit) / poll_interval ─┐
//!            ▼                                                                          │
//!  claim ≤ batch_size rows ──► publish, ≤ max_in_flight acks pending ──► one UPDATE … sent
//!  (FOR UPDATE SKIP LOCKED,        (Nats-Msg-Id = event_id)               one UPDATE … back-off
//!   lease claimed_until,                                                  (attempts, failed)
//!   claim token claimed_by)                                               one UPDATE … release
//! ```
//!
//! A row is marked sent only after its PubAck. A crash between the PubAck and the mark leaves
//! the row claimed; its lease expires and a relay publishes it again, which JetStream drops as
//! a duplicate within the stream's duplicate window.
//!
//! Every claim writes a fresh token (`<relay id>#<instance nonce>-<claim number>`) into `claimed_by`, and every
//! later statement about the claimed rows (renew, mark sent, mark failed, release) is fenced by
//! `claimed_by = token AND status = 'publishing'`: a relay whose lease expired and whose rows
//! another relay took over changes nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::Context;
use diesel::sql_types::{Array, BigInt, Double, Integer, Jsonb, Text};
use diesel::QueryableByName;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use jetstream_bridge_config::{Config, Envelope};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{publish_is_outage, OutboxError, OutboxErrorKind, Result};
use crate::model::{header_pairs, nats_headers};

/// The diesel-async deadpool pool the relay takes connections from.
pub type PgPool = Pool<AsyncPgConnection>;

/// The `NOTIFY` channel the outbox trigger signals on commit.
pub const NOTIFY_CHANNEL: &str = "jetstream_outbox_events";

/// Counters of a relay since it started (see [`RelayHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rows published and marked sent by this relay (including JetStream duplicates); counted
    /// from the rows the fenced `UPDATE` changed, so rows another relay took over are not.
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
    batch_size: usize,
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

impl Settings {
    /// Every out-of-range setting, as `name: reason`.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_owned());
            }
        };
        check(self.batch_size >= 1, "batch_size must be at least 1");
        check(
            i64::try_from(self.batch_size).is_ok(),
            "batch_size must fit in an i64",
        );
        check(self.max_in_flight >= 1, "max_in_flight must be at least 1");
        check(!self.lease.is_zero(), "lease must be above zero");
        check(self.max_attempts >= 1, "max_attempts must be at least 1");
        check(
            !self.poll_interval.is_zero(),
            "poll_interval must be above zero",
        );
        check(
            !self.relay_id.is_empty() && !self.relay_id.contains('\0'),
            "relay_id must be non-empty and free of NUL",
        );
        // Upper bounds: PostgreSQL intervals and `Instant` arithmetic stay far from overflow.
        check(self.lease <= MAX_SETTING, "lease must be at most 1 day");
        check(
            self.poll_interval <= MAX_SETTING,
            "poll_interval must be at most 1 day",
        );
        for (name, b) in [
            ("retry_backoff", self.retry),
            ("outage_backoff", self.outage),
        ] {
            if b.base.is_zero() || b.base > b.max {
                problems.push(format!("{name} base must be above zero and at most max"));
            }
            if b.max > MAX_SETTING {
                problems.push(format!("{name} max must be at most 1 day"));
            }
        }
        problems
    }
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
    /// Rows claimed per batch (default 500; 0 is invalid).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.settings.batch_size = n;
        self
    }

    /// Publishes awaiting their PubAck at most (default 256; 0 is invalid).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n;
        self
    }

    /// How long a claim lasts (default 30 s; zero is invalid). After it, another relay may
    /// take the rows over; keep it well above the time one batch takes (NATS ack timeout
    /// included) and well below the stream's duplicate window. A batch that waited more than
    /// half its lease (claimed ahead, or behind slow bookkeeping) is renewed before publishing.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How often to look for rows without a notification (default 1 s; zero is invalid): the
    /// safety net for a lost `LISTEN` connection, rows inserted by writers without the
    /// trigger, and back-offs.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Failed attempts after which a row is quarantined as `failed` (default 10; 0 is
    /// invalid). Only failures of the message itself count, never outages.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// Back-off of a failing row: `base × 2^(attempts-1)` capped at `max`, with jitter
    /// (default 1 s, 5 min; `base` must be above zero and at most `max`).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.retry = Backoff::new(base, max);
        self
    }

    /// Back-off of the whole relay while the database or NATS is unavailable (default 100 ms,
    /// 10 s, with jitter; `base` must be above zero and at most `max`).
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
    /// `id` order, even with several relays; a failing event blocks only its own key until it
    /// is sent or quarantined. Costs throughput: one event per key per batch. `id` order is
    /// commit order per key only if the writers use [`Outbox::ordered`](crate::Outbox::ordered).
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

    /// The id written (with a claim number) to `claimed_by` (default `<app_name>-<UUIDv7>`;
    /// must be non-empty and unique among the relays of a table).
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.settings.relay_id = id.into();
        self
    }

    /// Builds the relay, refusing out-of-range settings.
    ///
    /// # Errors
    ///
    /// [`InvalidSettings`](OutboxErrorKind::InvalidSettings), listing every problem: a zero
    /// `batch_size`, `max_in_flight`, `lease`, `max_attempts` or `poll_interval`, a back-off
    /// whose base is zero or above its maximum, a lease, poll interval or back-off maximum
    /// above one day, an empty relay id.
    pub fn build(self) -> Result<Relay> {
        let problems = self.settings.problems();
        if !problems.is_empty() {
            return Err(OutboxError::with_source(
                OutboxErrorKind::InvalidSettings,
                problems.join("; "),
            ));
        }
        Ok(self.finish())
    }

    fn finish(self) -> Relay {
        Relay {
            inner: Arc::new(Inner {
                jetstream: self.jetstream,
                pool: self.pool,
                settings: self.settings,
                claims: AtomicU64::new(0),
                nonce: rand::random::<u32>(),
                muted: std::sync::Mutex::default(),
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
/// let relay = Relay::builder(&config, jetstream, pool).batch_size(500).build()?;
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
    /// Claims made so far: the claim number in the claim token.
    claims: AtomicU64,
    /// Random per relay instance, in the claim token: a fixed `relay_id` (a pod name) reused by
    /// a replacement process never repeats the tokens of a stalled predecessor.
    nonce: u32,
    /// Subjects that answered "no responders", left out of claims until their back-off ends.
    muted: std::sync::Mutex<HashMap<String, Mute>>,
}

/// At most this many subjects are muted at once (see `Inner::mute`).
const MAX_MUTED_SUBJECTS: usize = 1024;

/// Upper bound of the lease, the poll interval and back-off maxima.
const MAX_SETTING: Duration = Duration::from_secs(86_400);

/// The back-off of a subject without responders.
#[derive(Debug, Clone, Copy)]
struct Mute {
    until: Instant,
    /// Consecutive "no responders" rounds: the back-off grows with it.
    streak: u32,
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
    /// [`RelayTask`](OutboxErrorKind::RelayTask) if the relay task panicked or was aborted.
    ///
    /// # Cancel safety
    ///
    /// Cancelling this future leaves the relay stopping in the background.
    pub async fn shutdown(self) -> Result<RelayReport> {
        self.token.cancel();
        self.join
            .await
            .map_err(|e| OutboxError::with_source(OutboxErrorKind::RelayTask, e))?
    }

    /// Aborts the relay task at once, without finishing the batch (a crash, for tests): rows
    /// it claimed are published again by another relay once their lease expires. Its `LISTEN`
    /// connection is closed (a drop guard cancels the listener task).
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

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// A batch published and sorted, waiting for its bookkeeping ([`Inner::record`]).
struct Published {
    /// The claim (token and lease); its rows are not needed any more.
    batch: Batch,
    sent: Vec<i64>,
    duplicates: u64,
    failed_ids: Vec<i64>,
    failed_errs: Vec<String>,
    failed_delays: Vec<f64>,
    no_responders: Vec<i64>,
    outage: Vec<i64>,
    /// When `outage` rows may be claimed again.
    outage_delay: Duration,
}

impl RelayStats {
    /// Adds the counters of `delta` (`listening` is left alone).
    fn add(&mut self, delta: &Self) {
        self.sent += delta.sent;
        self.duplicates += delta.duplicates;
        self.failed_attempts += delta.failed_attempts;
        self.quarantined += delta.quarantined;
        self.batches += delta.batches;
        self.outages += delta.outages;
    }
}

/// Rows claimed by one claim statement.
struct Batch {
    /// `claimed_by` of these rows: `<relay id>#<instance nonce>-<claim number>`; fences every later statement.
    token: String,
    /// Taken just before the claim (or the last renewal) was sent: the lease runs out no
    /// earlier than `claimed_at + lease`.
    claimed_at: Instant,
    rows: Vec<ClaimedRow>,
}

const CLAIM_SQL: &str = "\
UPDATE jetstream_outbox_events o \
SET status = 'publishing', claimed_until = now() + make_interval(secs => $1), \
    claimed_by = $2, updated_at = now() \
FROM (SELECT id FROM jetstream_outbox_events \
      WHERE status IN ('pending', 'publishing') \
        AND (status = 'pending' OR claimed_until IS NULL OR claimed_until < now()) \
        AND next_attempt_at <= now() \
        AND subject <> ALL($4) \
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
        AND (status = 'pending' OR claimed_until IS NULL OR claimed_until < now()) \
        AND next_attempt_at <= now() \
        AND subject <> ALL($4) \
      ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
WHERE o.id = c.id \
RETURNING o.id, o.event_id, o.subject, o.payload, o.headers, o.attempts";

// Every statement below is fenced by the claim: `claimed_by = <claim token>` (a fresh token
// per claim) and `status = 'publishing'`. Rows whose lease expired and that another relay
// claimed since (new token), or that were marked by anyone meanwhile, are left alone.

/// Extends the lease of the rows still held by this claim; returns them.
const RENEW_SQL: &str = "\
UPDATE jetstream_outbox_events SET claimed_until = now() + make_interval(secs => $1), \
    updated_at = now() \
WHERE id = ANY($2) AND claimed_by = $3 AND status = 'publishing' \
RETURNING id";

/// `status = 'publishing'` implies `status <> 'sent'`: a row is never marked sent twice.
const MARK_SENT_SQL: &str = "\
UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now(), updated_at = now(), \
    claimed_until = NULL, claimed_by = NULL, last_error = NULL \
WHERE id = ANY($1) AND claimed_by = $2 AND status = 'publishing'";

/// Back to `pending` without counting an attempt, claimable again after `$3` seconds.
const RELEASE_SQL: &str = "\
UPDATE jetstream_outbox_events SET status = 'pending', claimed_until = NULL, claimed_by = NULL, \
    next_attempt_at = now() + make_interval(secs => $3), updated_at = now() \
WHERE id = ANY($1) AND claimed_by = $2 AND status = 'publishing'";

const MARK_FAILED_SQL: &str = "\
UPDATE jetstream_outbox_events o SET \
    attempts = o.attempts + 1, \
    status = CASE WHEN o.attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END, \
    next_attempt_at = now() + make_interval(secs => f.delay), \
    last_error = f.err, claimed_until = NULL, claimed_by = NULL, updated_at = now() \
FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS f(id, err, delay) \
WHERE o.id = f.id AND o.claimed_by = $5 AND o.status = 'publishing' \
RETURNING o.status";

/// How one row's publish ended.
enum Outcome {
    Sent {
        duplicate: bool,
    },
    /// JetStream (or the client) refused this message: counted against the row (too large
    /// for the stream or the server, wrong expected sequence, unreadable row, ...).
    Failed(String),
    /// NATS or JetStream unavailable (timeout, lost connection, 503): back without a count,
    /// and the relay pauses.
    Outage(String),
    /// "No responders" for the subject: no stream is bound to it yet, or JetStream is not
    /// answering. Back without a count; the subject is muted with a back-off.
    NoResponders,
}

/// How a batch went, for the loop's back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchResult {
    /// Something was published or counted, or nothing was left to do.
    Progress,
    /// Nothing got through, only because of subjects without responders, which are muted now:
    /// go on at once with the other subjects.
    Muted,
    /// Nothing got through because NATS or the database is unavailable: back off for
    /// `pause` (the rows released are deferred a little longer, so the next claim reaches
    /// other rows first).
    Outage { pause: Duration },
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
    /// then republished after their lease (deduplicated by JetStream). Use the signal. The
    /// `LISTEN` connection is closed when the future is dropped.
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
        // Cancelled on shutdown (child of `token`) and when this future is dropped (abort, or
        // a dropped `run_until`): the listener task then ends and closes its connection.
        let listener_token = token.child_token();
        let _stop_listener = listener_token.clone().drop_guard();
        let listener = self.settings.listen.then(|| {
            tokio::spawn(listen(
                self.pool.clone(),
                Arc::clone(&wake),
                listener_token.clone(),
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
        let mut prefetched: Option<Batch> = None;
        // A batch published but not recorded yet: its bookkeeping runs while the next batch
        // is published (and the one after is claimed), so the three stages overlap.
        let mut unrecorded: Option<Published> = None;
        loop {
            let claimed = match prefetched.take() {
                // Claimed rows are finished even during shutdown (they are in flight).
                Some(batch) => Ok(batch),
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
                Ok(batch) if batch.rows.is_empty() => {
                    outage_streak = 0;
                    None
                }
                Ok(batch) => {
                    current.batches += 1;
                    let prefetch =
                        batch.rows.len() >= self.settings.batch_size && !token.is_cancelled();
                    let previous = unrecorded.take();
                    let ((published, result), recorded, next) = tokio::join!(
                        self.publish_claimed(batch, outage_streak),
                        async {
                            match previous {
                                Some(p) => self.record(p).await,
                                None => RelayStats::default(),
                            }
                        },
                        async {
                            if prefetch {
                                self.claim().await.ok()
                            } else {
                                None
                            }
                        }
                    );
                    current.add(&recorded);
                    unrecorded = published;
                    publish(current);
                    match result {
                        BatchResult::Outage { pause } => {
                            if let Some(next) = next.filter(|b| !b.rows.is_empty()) {
                                let ids = next.rows.iter().map(|r| r.id).collect();
                                self.release(&next, ids, Duration::ZERO).await;
                            }
                            outage_streak += 1;
                            current.outages += 1;
                            Some(pause)
                        }
                        BatchResult::Muted => {
                            current.outages += 1;
                            prefetched = next;
                            continue;
                        }
                        BatchResult::Progress => {
                            // Full or not, look again at once: rows may have been committed
                            // meanwhile, and an empty claim then waits.
                            outage_streak = 0;
                            prefetched = next;
                            continue;
                        }
                    }
                }
            };
            // Nothing to publish now: finish the bookkeeping before waiting. If there was some,
            // claim again at once instead of waiting: in ordered mode the claim just made could
            // not take the next event of a key whose previous event was still `publishing`
            // (and no NOTIFY comes for rows committed long ago).
            if let Some(p) = unrecorded.take() {
                current.add(&self.record(p).await);
                if pause.is_none() {
                    publish(current);
                    continue;
                }
            }
            publish(current);
            let wait = pause.unwrap_or(self.settings.poll_interval);
            tokio::select! {
                biased;
                () = token.cancelled() => break,
                () = wake.notified(), if pause.is_none() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(p) = unrecorded.take() {
            current.add(&self.record(p).await);
        }
        listener_token.cancel();
        if let Some(listener) = listener {
            let _ = listener.await;
            stats.send_modify(|s| s.listening = false);
        }
        publish(current);
        Ok(*stats.borrow())
    }

    fn muted_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mute>> {
        self.muted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subjects whose "no responders" back-off has not ended yet (see [`active_mutes`]).
    fn muted_subjects(&self) -> Vec<String> {
        active_mutes(
            &mut self.muted_map(),
            Instant::now(),
            self.settings.outage.max,
        )
    }

    /// Leaves `subject` out of claims for an outage back-off (see [`add_mute`]).
    fn mute(&self, subject: &str) {
        add_mute(
            &mut self.muted_map(),
            subject,
            Instant::now(),
            &self.settings.outage,
        );
    }

    /// A publish to `subject` went through: forget its back-off.
    fn unmute(&self, subject: &str) {
        let mut muted = self.muted_map();
        if !muted.is_empty() {
            muted.remove(subject);
        }
    }

    async fn conn(&self) -> Result<Object<AsyncPgConnection>> {
        self.pool.get().await.map_err(OutboxError::pool)
    }

    /// Claims up to `batch_size` rows under a fresh claim token.
    async fn claim(&self) -> Result<Batch> {
        let number = self.claims.fetch_add(1, Ordering::Relaxed);
        let token = claim_token(&self.settings.relay_id, self.nonce, number);
        let claimed_at = Instant::now();
        let mut conn = self.conn().await?;
        let lease = self.settings.lease.as_secs_f64();
        let limit = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        let muted = self.muted_subjects();
        let mut rows: Vec<ClaimedRow> = if self.settings.ordered {
            diesel::sql_query(CLAIM_ORDERED_SQL)
                .bind::<Double, _>(lease)
                .bind::<Text, _>(&token)
                .bind::<BigInt, _>(limit)
                .bind::<Array<Text>, _>(muted)
                .load(&mut *conn)
                .await
        } else {
            // Walk `idx_outbox_claim` in id order and stop after `batch_size` rows. Without
            // `enable_sort = off` the planner, whenever its statistics predate the backlog
            // (a fresh table, or statistics taken while the outbox was empty: the normal
            // case), picks a bitmap scan of *every* unsent row plus a sort, so each claim
            // costs O(backlog) (measured: 15 ms instead of 1–3 ms at 17k unsent rows).
            // `SET LOCAL` keeps the setting inside this transaction.
            let token = &token;
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::sql_query("SET LOCAL enable_sort = off")
                    .execute(conn)
                    .await?;
                diesel::sql_query(CLAIM_SQL)
                    .bind::<Double, _>(lease)
                    .bind::<Text, _>(token)
                    .bind::<BigInt, _>(limit)
                    .bind::<Array<Text>, _>(muted)
                    .load(conn)
                    .await
            })
            .await
        }
        .map_err(OutboxError::database)?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(Batch {
            token,
            claimed_at,
            rows,
        })
    }

    /// Publishes a claimed batch and records the outcome (the two stages the loop overlaps
    /// with other batches, in one call).
    #[cfg(test)]
    async fn process(
        &self,
        batch: Batch,
        stats: &mut RelayStats,
        outage_streak: u32,
    ) -> BatchResult {
        let (published, result) = self.publish_claimed(batch, outage_streak).await;
        if let Some(published) = published {
            stats.add(&self.record(published).await);
        }
        result
    }

    /// Publishes a claimed batch and sorts the outcomes; the database is not written (see
    /// [`record`](Self::record)) except to renew a batch that waited.
    #[tracing::instrument(name = "outbox_relay_batch", skip_all, fields(rows = batch.rows.len()))]
    async fn publish_claimed(
        &self,
        mut batch: Batch,
        outage_streak: u32,
    ) -> (Option<Published>, BatchResult) {
        // The back-off if nothing gets through (jitter included).
        let pause = self.settings.outage.delay(outage_streak + 1);
        // A batch that waited (claimed ahead while the previous one was published, or behind
        // slow bookkeeping) may be close to, or past, its lease: renew it first and publish
        // only the rows still held, so no other relay publishes them concurrently.
        if batch.claimed_at.elapsed() >= self.settings.lease / 2 && !self.renew(&mut batch).await {
            return (None, BatchResult::Outage { pause });
        }
        if batch.rows.is_empty() {
            return (None, BatchResult::Progress);
        }
        let outcomes = self.publish(&mut batch.rows).await;
        let mut p = Published {
            sent: Vec::with_capacity(batch.rows.len()),
            duplicates: 0,
            failed_ids: Vec::new(),
            failed_errs: Vec::new(),
            failed_delays: Vec::new(),
            no_responders: Vec::new(),
            outage: Vec::new(),
            // The rows wait out the relay's pause and one base delay more before they can be
            // claimed again, so the claim after the pause reaches other rows first.
            outage_delay: pause.saturating_add(self.settings.outage.base),
            batch: Batch {
                token: String::new(),
                claimed_at: batch.claimed_at,
                rows: Vec::new(),
            },
        };
        let mut outage_reason = None;
        for (row, outcome) in batch.rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent { duplicate } => {
                    p.sent.push(row.id);
                    p.duplicates += u64::from(duplicate);
                    self.unmute(&row.subject);
                }
                Outcome::NoResponders => {
                    p.no_responders.push(row.id);
                    self.mute(&row.subject);
                }
                Outcome::Outage(reason) => {
                    p.outage.push(row.id);
                    outage_reason.get_or_insert(reason);
                }
                Outcome::Failed(error) => {
                    let attempt = u32::try_from(row.attempts.max(0)).unwrap_or(u32::MAX) + 1;
                    tracing::warn!(event_id = %row.event_id, attempt, %error, "outbox relay: publish failed");
                    p.failed_ids.push(row.id);
                    p.failed_errs.push(error);
                    p.failed_delays
                        .push(self.settings.retry.delay(attempt).as_secs_f64());
                }
            }
        }
        let progress = !p.sent.is_empty() || !p.failed_ids.is_empty();
        let muted = !p.no_responders.is_empty();
        if muted {
            tracing::warn!(
                rows = p.no_responders.len(),
                "outbox relay: no responders (no stream captures the subject yet, or JetStream is unavailable); released without counting an attempt, subject muted with back-off"
            );
        }
        if let Some(reason) = outage_reason {
            tracing::warn!(rows = p.outage.len(), error = %reason, "outbox relay: NATS / JetStream unavailable for these rows; released without counting an attempt");
        }
        let result = if progress {
            BatchResult::Progress
        } else if !p.outage.is_empty() {
            BatchResult::Outage { pause }
        } else if muted {
            BatchResult::Muted
        } else {
            BatchResult::Progress
        };
        // Only the token and lease are needed from here on.
        p.batch.token = batch.token;
        (Some(p), result)
    }

    /// Writes the outcome of a published batch (each statement fenced by its claim); the
    /// counters to add.
    async fn record(&self, p: Published) -> RelayStats {
        let mut stats = RelayStats {
            duplicates: p.duplicates,
            failed_attempts: p.failed_ids.len() as u64,
            ..RelayStats::default()
        };
        let batch = &p.batch;
        if !p.sent.is_empty() {
            if let Some(n) = self.mark_sent(batch, p.sent).await {
                stats.sent = n;
            }
        }
        if !p.failed_ids.is_empty() {
            if let Some(statuses) = self
                .mark_failed(batch, p.failed_ids, p.failed_errs, p.failed_delays)
                .await
            {
                stats.quarantined = statuses.iter().filter(|s| *s == "failed").count() as u64;
            }
        }
        if !p.no_responders.is_empty() {
            // Muted subjects are left out of the claims until their back-off ends.
            self.release(batch, p.no_responders, Duration::ZERO).await;
        }
        if !p.outage.is_empty() {
            self.release(batch, p.outage, p.outage_delay).await;
        }
        stats
    }

    /// Extends the batch's lease and drops the rows it no longer holds. False when the
    /// database cannot be reached (the batch is then left to its lease).
    async fn renew(&self, batch: &mut Batch) -> bool {
        let renewed_at = Instant::now();
        let ids: Vec<i64> = batch.rows.iter().map(|r| r.id).collect();
        let lease = self.settings.lease.as_secs_f64();
        let result = async {
            let mut conn = self.conn().await?;
            diesel::sql_query(RENEW_SQL)
                .bind::<Double, _>(lease)
                .bind::<Array<BigInt>, _>(ids)
                .bind::<Text, _>(&batch.token)
                .load::<IdRow>(&mut *conn)
                .await
                .map_err(OutboxError::database)
        }
        .await;
        match result {
            Ok(held) => {
                let held: std::collections::HashSet<i64> = held.into_iter().map(|r| r.id).collect();
                let before = batch.rows.len();
                batch.rows.retain(|r| held.contains(&r.id));
                if batch.rows.len() < before {
                    tracing::warn!(
                        lost = before - batch.rows.len(),
                        "outbox relay: lease expired before publishing; rows taken over by another relay are skipped"
                    );
                }
                batch.claimed_at = renewed_at;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: cannot renew the lease of a waiting batch; leaving it to lease expiry");
                false
            }
        }
    }

    /// Marks the rows sent (fenced by the claim); how many rows changed.
    async fn mark_sent(&self, batch: &Batch, ids: Vec<i64>) -> Option<u64> {
        let changed = self
            .retry_db(batch, |mut conn| {
                let ids = ids.clone();
                async move {
                    diesel::sql_query(MARK_SENT_SQL)
                        .bind::<Array<BigInt>, _>(ids)
                        .bind::<Text, _>(&batch.token)
                        .execute(&mut *conn)
                        .await
                        .map_err(OutboxError::database)
                }
            })
            .await?;
        if changed < ids.len() {
            tracing::warn!(
                published = ids.len(),
                marked = changed,
                "outbox relay: lease lost before marking; another relay holds the other rows"
            );
        }
        Some(changed as u64)
    }

    /// Counts a failed attempt against each row (fenced by the claim); the new statuses.
    async fn mark_failed(
        &self,
        batch: &Batch,
        ids: Vec<i64>,
        errs: Vec<String>,
        delays: Vec<f64>,
    ) -> Option<Vec<String>> {
        let max = i32::try_from(self.settings.max_attempts).unwrap_or(i32::MAX);
        let rows = self
            .retry_db(batch, |mut conn| {
                let (ids, errs, delays) = (ids.clone(), errs.clone(), delays.clone());
                async move {
                    diesel::sql_query(MARK_FAILED_SQL)
                        .bind::<Array<BigInt>, _>(ids)
                        .bind::<Array<Text>, _>(errs)
                        .bind::<Array<Double>, _>(delays)
                        .bind::<Integer, _>(max)
                        .bind::<Text, _>(&batch.token)
                        .load::<StatusRow>(&mut *conn)
                        .await
                        .map_err(OutboxError::database)
                }
            })
            .await?;
        Some(rows.into_iter().map(|r| r.status).collect())
    }

    /// Puts the rows back to `pending` without counting an attempt (fenced by the claim),
    /// claimable again after `delay`; how many rows changed.
    async fn release(&self, batch: &Batch, ids: Vec<i64>, delay: Duration) -> Option<u64> {
        let delay = delay.as_secs_f64();
        self.retry_db(batch, |mut conn| {
            let ids = ids.clone();
            async move {
                diesel::sql_query(RELEASE_SQL)
                    .bind::<Array<BigInt>, _>(ids)
                    .bind::<Text, _>(&batch.token)
                    .bind::<Double, _>(delay)
                    .execute(&mut *conn)
                    .await
                    .map_err(OutboxError::database)
            }
        })
        .await
        .map(|n| n as u64)
    }

    /// Retries a bookkeeping statement with the outage back-off while the batch's lease lasts
    /// (one attempt at least); after that another relay may hold the rows (the fenced
    /// statements could not change them anyway) and they are republished after their lease,
    /// deduplicated by JetStream. Only transient errors are retried.
    async fn retry_db<T, F, Fut>(&self, batch: &Batch, mut f: F) -> Option<T>
    where
        F: FnMut(Object<AsyncPgConnection>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // Settings are bounded (at most a day), but never panic on clock arithmetic: without
        // a representable deadline, one attempt is made.
        let deadline = batch
            .claimed_at
            .checked_add(self.settings.lease)
            .unwrap_or(batch.claimed_at);
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
                    let retry_at = Instant::now().checked_add(delay);
                    if !e.is_transient() || retry_at.is_none_or(|at| at >= deadline) {
                        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "outbox relay: giving up on bookkeeping; rows are republished after their lease");
                        return None;
                    }
                    tracing::warn!(error = %e, "outbox relay: bookkeeping failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Publishes every row with at most `max_in_flight` PubAcks outstanding; outcomes in row
    /// order. Once sending itself fails for an outage reason (connection gone, client send
    /// buffer stuck), the remaining rows are not sent and come back as outages.
    async fn publish(&self, rows: &mut [ClaimedRow]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = rows.iter().map(|_| None).collect();
        let mut in_flight = FuturesOrdered::new();
        let mut down: Option<String> = None;
        for (i, row) in rows.iter_mut().enumerate() {
            if let Some(reason) = &down {
                outcomes[i] = Some(Outcome::Outage(reason.clone()));
                continue;
            }
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
                Err(e) => {
                    let outcome = classify(Err(e));
                    if let Outcome::Outage(reason) = &outcome {
                        down = Some(reason.clone());
                    }
                    outcomes[i] = Some(outcome);
                }
            }
        }
        while let Some((j, outcome)) = in_flight.next().await {
            outcomes[j] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Outage("not published".to_owned())))
            .collect()
    }
}

/// `<relay id>#<instance nonce>-<claim number>`: unique across restarts of a relay with a fixed
/// id (a pod name), as each instance draws its own nonce.
fn claim_token(relay_id: &str, nonce: u32, number: u64) -> String {
    format!("{relay_id}#{nonce:08x}-{number}")
}

/// The subjects of `muted` whose back-off has not ended at `now`. Entries whose back-off ended
/// more than `forget_after` (the outage back-off maximum) ago are forgotten (their subject was
/// published elsewhere, or its rows are gone), so the map only holds subjects with a recent
/// "no responders".
fn active_mutes(
    muted: &mut HashMap<String, Mute>,
    now: Instant,
    forget_after: Duration,
) -> Vec<String> {
    muted.retain(|_, m| now.saturating_duration_since(m.until) <= forget_after);
    muted
        .iter()
        .filter(|(_, m)| m.until > now)
        .map(|(subject, _)| subject.clone())
        .collect()
}

/// Mutes `subject` for an outage back-off growing with each round of "no responders"
/// (jittered); rows already claimed in the round are not counted again. At most
/// [`MAX_MUTED_SUBJECTS`] entries: beyond it, expired entries are forgotten first, then the
/// subject whose back-off ends first.
fn add_mute(muted: &mut HashMap<String, Mute>, subject: &str, now: Instant, backoff: &Backoff) {
    if muted.len() >= MAX_MUTED_SUBJECTS && !muted.contains_key(subject) {
        muted.retain(|_, m| m.until > now);
        if muted.len() >= MAX_MUTED_SUBJECTS {
            if let Some(first) = muted
                .iter()
                .min_by_key(|(_, m)| m.until)
                .map(|(s, _)| s.clone())
            {
                muted.remove(&first);
            }
        }
    }
    let entry = muted.entry(subject.to_owned()).or_insert(Mute {
        until: now,
        streak: 0,
    });
    if entry.until <= now {
        entry.streak = entry.streak.saturating_add(1);
        entry.until = now.checked_add(backoff.delay(entry.streak)).unwrap_or(now);
    }
}

/// Sorts a publish result: acknowledged, refused for this message (counted against the row),
/// or an outage (not counted); see [`publish_is_outage`].
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
        Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Outcome::NoResponders,
        Err(e) if publish_is_outage(&e) => Outcome::Outage(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
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
/// Every wait selects on `token`, so cancelling it (shutdown, or the relay's drop guard) ends
/// the task at once and drops the connection.
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
        let conn = tokio::select! {
            () = token.cancelled() => return,
            conn = pool.get() => conn,
        };
        let conn = match conn {
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
        let listened = tokio::select! {
            () = token.cancelled() => return,
            r = diesel::sql_query(format!("LISTEN {NOTIFY_CHANNEL}")).execute(&mut conn) => r,
        };
        if let Err(e) = listened {
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
    use diesel::sql_types::BigInt as SqlBigInt;
    use jetstream_bridge_testkit::{TestDb, TestNats};
    use serde_json::json;

    use crate::{NewEvent, Outbox};

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = SqlBigInt)]
        n: i64,
    }

    /// The shared NATS namespace, a fresh database, a config on both, and `n` committed
    /// `user.created` events (ids `0..n`), for the claim-level tests below.
    async fn with_events(n: u64) -> (TestNats, TestDb, Config, AsyncPgConnection) {
        let t = TestNats::shared().await;
        let db = TestDb::new().await;
        let config = Config::builder(t.subject_prefix(), "orders", "billing")
            .build()
            .unwrap();
        let mut conn = db.conn().await;
        Outbox::new(&config)
            .enqueue_batch(
                &mut conn,
                (0..n).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
            )
            .await
            .unwrap();
        (t, db, config, conn)
    }

    /// Relay A claims, stalls past its lease, relay B reclaims the rows: every late statement
    /// of A (mark sent, mark failed, release) changes nothing, A's stale batch publishes
    /// nothing when it finally runs (renewal finds the rows gone), and B finishes normally.
    #[tokio::test(flavor = "multi_thread")]
    async fn late_statements_of_an_expired_claim_change_nothing() {
        let (t, db, config, mut conn) = with_events(3).await;
        let mut stream = t.create_stream(t.stream_config("orders")).await;
        let relay = |id: &str| {
            Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
                .relay_id(id)
                .build()
                .unwrap()
        };
        let (a, b) = (relay("relay-a"), relay("relay-b"));
        let mut batch_a = a.inner.claim().await.unwrap();
        assert_eq!(batch_a.rows.len(), 3);
        assert!(batch_a.token.starts_with("relay-a#"));
        // A stalls; its lease runs out and B takes the rows over.
        diesel::sql_query(
            "UPDATE jetstream_outbox_events SET claimed_until = now() - interval '1 second'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let batch_b = b.inner.claim().await.unwrap();
        assert_eq!(batch_b.rows.len(), 3);
        let ids: Vec<i64> = batch_a.rows.iter().map(|r| r.id).collect();

        assert_eq!(a.inner.mark_sent(&batch_a, ids.clone()).await, Some(0));
        let failed = a
            .inner
            .mark_failed(
                &batch_a,
                ids.clone(),
                vec!["late".to_owned(); 3],
                vec![0.0; 3],
            )
            .await;
        assert_eq!(failed, Some(Vec::new()));
        assert_eq!(
            a.inner.release(&batch_a, ids.clone(), Duration::ZERO).await,
            Some(0)
        );
        let held: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM jetstream_outbox_events \
             WHERE claimed_by = $1 AND status = 'publishing' AND attempts = 0 \
               AND claimed_until > now()",
        )
        .bind::<Text, _>(&batch_b.token)
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(held.n, 3, "B still holds every row, untouched");

        // A's stale batch runs at last: it is renewed first and nothing is published.
        batch_a.claimed_at = Instant::now().checked_sub(a.inner.settings.lease).unwrap();
        let mut stats_a = RelayStats::default();
        let result = a.inner.process(batch_a, &mut stats_a, 0).await;
        assert_eq!(result, BatchResult::Progress);
        assert_eq!(stats_a, RelayStats::default());
        assert_eq!(stream.info().await.unwrap().state.messages, 0);

        let mut stats_b = RelayStats::default();
        b.inner.process(batch_b, &mut stats_b, 0).await;
        assert_eq!(stats_b.sent, 3);
        assert_eq!(stats_b.duplicates, 0);
        assert_eq!(stream.info().await.unwrap().state.messages, 3);
        let sent: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM jetstream_outbox_events WHERE status = 'sent'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(sent.n, 3);
        drop(conn);
        t.teardown().await;
        db.teardown().await;
    }

    /// A renewed batch keeps its rows and gets a fresh lease.
    #[tokio::test(flavor = "multi_thread")]
    async fn renewal_extends_the_lease_of_held_rows() {
        let (t, db, config, mut conn) = with_events(1).await;
        let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
            .lease(Duration::from_secs(600))
            .build()
            .unwrap();
        let mut batch = relay.inner.claim().await.unwrap();
        diesel::sql_query(
            "UPDATE jetstream_outbox_events SET claimed_until = now() + interval '1 second'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        assert!(relay.inner.renew(&mut batch).await);
        assert_eq!(batch.rows.len(), 1);
        let renewed: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM jetstream_outbox_events \
             WHERE claimed_until > now() + interval '500 seconds'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(renewed.n, 1);
        drop(conn);
        t.teardown().await;
        db.teardown().await;
    }

    fn settings() -> Settings {
        Settings {
            relay_id: "relay".to_owned(),
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
        }
    }

    #[test]
    fn settings_have_upper_bounds() {
        assert!(settings().problems().is_empty());
        let at_most = Settings {
            lease: MAX_SETTING,
            poll_interval: MAX_SETTING,
            retry: Backoff::new(MAX_SETTING, MAX_SETTING),
            outage: Backoff::new(Duration::from_secs(1), MAX_SETTING),
            ..settings()
        };
        assert!(at_most.problems().is_empty(), "{:?}", at_most.problems());
        let huge = Duration::from_secs(u64::MAX);
        let too_big = Settings {
            lease: huge,
            poll_interval: huge,
            retry: Backoff::new(Duration::from_secs(1), huge),
            outage: Backoff::new(huge, huge),
            ..settings()
        };
        let problems = too_big.problems().join("; ");
        for what in [
            "lease must be at most 1 day",
            "poll_interval must be at most 1 day",
            "retry_backoff max must be at most 1 day",
            "outage_backoff max must be at most 1 day",
        ] {
            assert!(problems.contains(what), "{what} missing from {problems}");
        }
    }

    #[test]
    fn claim_tokens_carry_the_instance_nonce() {
        assert_eq!(claim_token("pod-0", 0xab, 7), "pod-0#000000ab-7");
        assert_ne!(claim_token("pod-0", 1, 0), claim_token("pod-0", 2, 0));
    }

    #[test]
    fn mutes_expire_are_forgotten_and_stay_bounded() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let mut muted = HashMap::new();
        let t0 = Instant::now();
        add_mute(&mut muted, "a", t0, &backoff);
        assert_eq!(
            active_mutes(&mut muted, t0, backoff.max),
            vec!["a".to_owned()]
        );
        // Muted again within its back-off: unchanged (the round is not counted twice).
        let until = muted["a"].until;
        add_mute(&mut muted, "a", t0, &backoff);
        assert_eq!((muted["a"].until, muted["a"].streak), (until, 1));
        // Back-off over: no longer muted, but remembered (the streak grows on the next round).
        let later = t0 + Duration::from_secs(2);
        assert!(active_mutes(&mut muted, later, backoff.max).is_empty());
        assert_eq!(muted.len(), 1);
        add_mute(&mut muted, "a", later, &backoff);
        assert_eq!(muted["a"].streak, 2);
        // Idle for longer than the back-off maximum: forgotten.
        let much_later = later + Duration::from_secs(30);
        assert!(active_mutes(&mut muted, much_later, backoff.max).is_empty());
        assert!(muted.is_empty());

        // Bounded: never more than MAX_MUTED_SUBJECTS entries; the newest subject is muted.
        for i in 0..MAX_MUTED_SUBJECTS + 10 {
            add_mute(&mut muted, &format!("s{i}"), t0, &backoff);
            assert!(muted.len() <= MAX_MUTED_SUBJECTS);
        }
        assert_eq!(muted.len(), MAX_MUTED_SUBJECTS);
        let last = format!("s{}", MAX_MUTED_SUBJECTS + 9);
        assert!(active_mutes(&mut muted, t0, backoff.max).contains(&last));
        // Expired entries make room before live ones are dropped.
        let mut muted: HashMap<String, Mute> = (0..MAX_MUTED_SUBJECTS)
            .map(|i| {
                let until = if i == 0 {
                    t0
                } else {
                    t0 + Duration::from_secs(5)
                };
                (format!("s{i}"), Mute { until, streak: 1 })
            })
            .collect();
        add_mute(&mut muted, "new", t0 + Duration::from_secs(1), &backoff);
        assert!(!muted.contains_key("s0"));
        assert_eq!(muted.len(), MAX_MUTED_SUBJECTS);
    }

    /// Two instances with one fixed relay id (a restarted StatefulSet pod) claim under
    /// different tokens.
    #[tokio::test(flavor = "multi_thread")]
    async fn instances_with_one_relay_id_claim_under_different_tokens() {
        let (t, db, config, mut conn) = with_events(2).await;
        let relay = || {
            Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
                .relay_id("pod-0")
                .batch_size(1)
                .build()
                .unwrap()
        };
        let (a, b) = (relay(), relay());
        let (batch_a, batch_b) = (
            a.inner.claim().await.unwrap(),
            b.inner.claim().await.unwrap(),
        );
        assert_eq!((batch_a.rows.len(), batch_b.rows.len()), (1, 1));
        assert!(batch_a.token.starts_with("pod-0#") && batch_a.token.ends_with("-0"));
        assert!(batch_b.token.starts_with("pod-0#") && batch_b.token.ends_with("-0"));
        assert_ne!(batch_a.token, batch_b.token);
        // The column keeps the whole token.
        let held: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM jetstream_outbox_events WHERE claimed_by IN ($1, $2)",
        )
        .bind::<Text, _>(&batch_a.token)
        .bind::<Text, _>(&batch_b.token)
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(held.n, 2);
        drop(conn);
        t.teardown().await;
        db.teardown().await;
    }

    /// A `publishing` row without a lease (`claimed_until` NULL, e.g. written by hand or by
    /// another tool) is claimable, in both claim queries.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_publishing_row_without_a_lease_is_reclaimed() {
        let (t, db, config, mut conn) = with_events(1).await;
        for ordered in [false, true] {
            diesel::sql_query(
                "UPDATE jetstream_outbox_events \
                 SET status = 'publishing', claimed_until = NULL, claimed_by = 'lost'",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            let relay = Relay::builder(&config, t.jetstream().clone(), db.pool().clone())
                .ordered(ordered)
                .build()
                .unwrap();
            let batch = relay.inner.claim().await.unwrap();
            assert_eq!(batch.rows.len(), 1, "ordered: {ordered}");
        }
        drop(conn);
        t.teardown().await;
        db.teardown().await;
    }

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
