//! Stage 1: claiming rows under a lease and a fresh claim token, and renewing a lease.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use diesel::sql_types::{Array, BigInt, Double, Text};
use diesel_async::RunQueryDsl;
use jetstream_bridge_pg::prepared;
use tokio::time::Instant;

use super::sql::{self, ClaimedRow, IdRow};
use super::Inner;
use crate::error::{OutboxError, Result};

/// Rows claimed by one claim statement.
pub(super) struct Batch {
    /// `claimed_by` of these rows: `<relay id>#<instance nonce>-<claim number>`; fences every
    /// later statement.
    pub(super) token: String,
    /// Taken just before the claim (or the last renewal) was sent: the lease runs out no
    /// earlier than `claimed_at + lease`.
    pub(super) claimed_at: Instant,
    pub(super) rows: Vec<ClaimedRow>,
}

impl Batch {
    pub(super) fn ids(&self) -> Vec<i64> {
        self.rows.iter().map(|r| r.id).collect()
    }
}

impl Inner {
    /// Claims up to `batch_size` rows under a fresh claim token, on the relay's claim
    /// connection: one autocommit statement, one round trip.
    pub(super) async fn claim(&self) -> Result<Batch> {
        let number = self.claims.fetch_add(1, Ordering::Relaxed);
        let token = claim_token(&self.settings.relay_id, self.nonce, number);
        let claimed_at = Instant::now();
        let lease = self.settings.lease.as_secs_f64();
        let limit = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        let muted = self.muted_subjects();
        // The unordered claim's connection has `enable_sort = off`: PostgreSQL then walks
        // `idx_outbox_claim` in id order and stops after `batch_size` rows. Without it the
        // planner, whenever its statistics predate the backlog (a fresh table, or statistics
        // taken while the outbox was empty: the normal case), picks a bitmap scan of *every*
        // unsent row plus a sort, so each claim costs O(backlog) (measured: 15 ms instead of
        // 1–3 ms at 17k unsent rows).
        let statement = if self.settings.ordered {
            sql::CLAIM_ORDERED
        } else {
            sql::CLAIM
        };
        let claimed = {
            let mut conn = self.claim_conn.get(&self.pool).await?;
            prepared(statement)
                .bind::<Double, _>(lease)
                .bind::<Text, _>(&token)
                .bind::<BigInt, _>(limit)
                .bind::<Array<Text>, _>(muted)
                .load::<ClaimedRow>(&mut *conn)
                .await
        };
        let mut rows = match claimed {
            Ok(rows) => rows,
            Err(e) => {
                self.claim_conn.discard().await;
                return Err(OutboxError::database(e));
            }
        };
        rows.sort_unstable_by_key(|r| r.id);
        Ok(Batch {
            token,
            claimed_at,
            rows,
        })
    }

    /// Extends the batch's lease and drops the rows it no longer holds. False when the
    /// database cannot be reached (the batch is then left to its lease).
    pub(super) async fn renew(&self, batch: &mut Batch) -> bool {
        let renewed_at = Instant::now();
        let lease = self.settings.lease.as_secs_f64();
        let result = async {
            let mut conn = self.conn().await?;
            prepared(sql::RENEW)
                .bind::<Double, _>(lease)
                .bind::<Array<BigInt>, _>(batch.ids())
                .bind::<Text, _>(&batch.token)
                .load::<IdRow>(&mut *conn)
                .await
                .map_err(OutboxError::database)
        }
        .await;
        match result {
            Ok(held) => {
                let held: HashSet<i64> = held.into_iter().map(|r| r.id).collect();
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
}

/// `<relay id>#<instance nonce>-<claim number>`: unique across restarts of a relay with a fixed
/// id (a pod name), as each instance draws its own nonce.
fn claim_token(relay_id: &str, nonce: u32, number: u64) -> String {
    format!("{relay_id}#{nonce:08x}-{number}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_tokens_carry_the_instance_nonce() {
        assert_eq!(claim_token("pod-0", 0xab, 7), "pod-0#000000ab-7");
        assert_ne!(claim_token("pod-0", 1, 0), claim_token("pod-0", 2, 0));
    }
}
