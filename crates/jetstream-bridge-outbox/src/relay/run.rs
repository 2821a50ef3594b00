//! The relay loop: claim, publish and record overlap across consecutive batches; outages and
//! empty claims wait (for a notification, the poll interval or a back-off).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::claim::Batch;
use super::listen::listen;
use super::publish::{BatchResult, Sorted};
use super::{Inner, RelayReport, RelayStats};
use crate::error::Result;

impl Inner {
    pub(super) async fn run(
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
        let mut unrecorded: Option<Sorted> = None;
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
                                self.release(&next, next.ids(), Duration::ZERO).await;
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
            // not take the next event of a key whose previous event was still claimed
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

    /// Publishes a claimed batch and records the outcome (the two stages the loop overlaps
    /// with other batches, in one call).
    #[cfg(test)]
    pub(super) async fn process(
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
}
