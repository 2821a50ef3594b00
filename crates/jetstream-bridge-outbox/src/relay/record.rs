//! Stage 3: recording a published batch (mark sent, count failures, release), each statement
//! fenced by the batch's claim and retried while its lease lasts.

use std::future::Future;
use std::time::Duration;

use diesel::sql_types::{Array, BigInt, Double, Integer, Text};
use diesel_async::RunQueryDsl;
use jetstream_bridge_pg::prepared;
use tokio::time::Instant;

use super::claim::Batch;
use super::conn::OwnGuard;
use super::publish::Sorted;
use super::sql::{self, StatusRow};
use super::{Inner, RelayStats};
use crate::error::{OutboxError, Result};

impl Inner {
    /// Writes the outcome of a published batch (each statement fenced by its claim); the
    /// counters to add.
    pub(super) async fn record(&self, p: Sorted) -> RelayStats {
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

    /// Marks the rows sent (fenced by the claim); how many rows changed.
    pub(super) async fn mark_sent(&self, batch: &Batch, ids: Vec<i64>) -> Option<u64> {
        let changed = self
            .retry_db(batch, |mut conn| {
                let ids = ids.clone();
                async move {
                    prepared(sql::MARK_SENT)
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
    pub(super) async fn mark_failed(
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
                    prepared(sql::MARK_FAILED)
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
    pub(super) async fn release(
        &self,
        batch: &Batch,
        ids: Vec<i64>,
        delay: Duration,
    ) -> Option<u64> {
        let delay = delay.as_secs_f64();
        self.retry_db(batch, |mut conn| {
            let ids = ids.clone();
            async move {
                prepared(sql::RELEASE)
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

    /// Retries a bookkeeping statement (on the relay's bookkeeping connection) with the outage
    /// back-off while the batch's lease lasts (one attempt at least); after that another relay
    /// may hold the rows (the fenced statements could not change them anyway) and they are
    /// republished after their lease, deduplicated by JetStream. Only transient errors are
    /// retried; a failed statement closes the connection (a new one is taken next time).
    async fn retry_db<'a, T, F, Fut>(&'a self, batch: &Batch, mut f: F) -> Option<T>
    where
        F: FnMut(OwnGuard<'a>) -> Fut,
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
            let result = match self.record_conn.get(&self.pool).await {
                Ok(conn) => f(conn).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => return Some(value),
                Err(e) => {
                    self.record_conn.discard().await;
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
}
