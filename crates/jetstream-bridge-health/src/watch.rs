//! Liveness of the relay and consumer runtimes, from their stats watch channels.

use std::time::Duration;

use jetstream_bridge_consumer::ConsumerStats;
use jetstream_bridge_outbox::RelayStats;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::report::{rfc3339, RuntimeLiveness};

/// What a runtime's stats say about shutting down.
pub(crate) trait RuntimeStats: Copy + Send + Sync + 'static {
    fn shutting_down(&self) -> bool;

    /// Waiting on purpose (an unavailable database): unchanged counters are not a stall.
    fn waiting(&self) -> bool {
        false
    }
}

impl RuntimeStats for RelayStats {
    fn shutting_down(&self) -> bool {
        false
    }
}

impl RuntimeStats for ConsumerStats {
    fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    fn waiting(&self) -> bool {
        self.db_outage
    }
}

/// One watched runtime: the receiver and when its counters last changed.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    rx: watch::Receiver<S>,
    /// When watching began, or the last change seen.
    last_change: Instant,
    last_change_at: Option<String>,
    /// Apply the stall limit (the consumer's fetch loop always progresses; an idle relay
    /// does not).
    stall_after: Option<Duration>,
}

impl<S: RuntimeStats> Watched<S> {
    pub(crate) fn new(rx: watch::Receiver<S>, stall_after: Option<Duration>) -> Self {
        Self {
            rx,
            last_change: Instant::now(),
            last_change_at: None,
            stall_after,
        }
    }

    /// The latest stats, without observing a change.
    pub(crate) fn latest(&self) -> S {
        *self.rx.borrow()
    }

    /// The latest stats and the liveness they imply.
    pub(crate) fn observe(&mut self) -> (S, RuntimeLiveness) {
        let running = match self.rx.has_changed() {
            Ok(true) => {
                self.last_change = Instant::now();
                self.last_change_at = Some(rfc3339(time::OffsetDateTime::now_utc()));
                self.rx.borrow_and_update();
                true
            }
            Ok(false) => true,
            Err(_) => false,
        };
        let stats = *self.rx.borrow();
        let since = self.last_change.elapsed();
        let shutting_down = stats.shutting_down();
        let stalled = running
            && !shutting_down
            && !stats.waiting()
            && self.stall_after.is_some_and(|limit| since > limit);
        (
            stats,
            RuntimeLiveness {
                running,
                shutting_down,
                last_progress_at: self.last_change_at.clone(),
                seconds_since_progress: since.as_secs(),
                stalled,
            },
        )
    }
}

impl RuntimeLiveness {
    /// Alive: running and not stalled, or ended after a shutdown began.
    pub(crate) fn is_live(&self) -> bool {
        (self.running && !self.stalled) || self.shutting_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer whose counters stop changing for longer than the limit is stalled; a change
    /// revives it; a dropped sender means not running (not live unless shutting down).
    #[tokio::test(start_paused = true)]
    async fn progress_stall_and_end() {
        let (tx, rx) = watch::channel(ConsumerStats::default());
        let mut w = Watched::new(rx, Some(Duration::from_secs(60)));
        let (_, l) = w.observe();
        assert!(l.running && !l.stalled && l.is_live() && l.last_progress_at.is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        let (_, l) = w.observe();
        assert!(l.stalled && !l.is_live(), "{l:?}");
        tx.send_modify(|s| s.iterations += 1);
        let (s, l) = w.observe();
        assert_eq!(s.iterations, 1);
        assert!(!l.stalled && l.is_live() && l.last_progress_at.is_some());
        assert_eq!(l.seconds_since_progress, 0);
        drop(tx);
        let (_, l) = w.observe();
        assert!(!l.running && !l.is_live());

        let (tx, rx) = watch::channel(ConsumerStats::default());
        let mut w = Watched::new(rx, None);
        tx.send_modify(|s| s.shutting_down = true);
        drop(tx);
        let (_, l) = w.observe();
        assert!(!l.running && l.shutting_down && l.is_live());
    }

    /// A consumer waiting for an unavailable database is not stalled, however long it waits.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_database_is_no_stall() {
        let (tx, rx) = watch::channel(ConsumerStats::default());
        let mut w = Watched::new(rx, Some(Duration::from_secs(60)));
        tx.send_modify(|s| s.db_outage = true);
        w.observe();
        tokio::time::advance(Duration::from_secs(600)).await;
        let (s, l) = w.observe();
        assert!(s.db_outage && !l.stalled && l.is_live(), "{l:?}");
        tx.send_modify(|s| s.db_outage = false);
        w.observe();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(w.observe().1.stalled);
    }

    /// The relay has no stall limit: an idle relay stays live.
    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_live() {
        let (_tx, rx) = watch::channel(RelayStats::default());
        let mut w = Watched::new(rx, None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        let (_, l) = w.observe();
        assert!(l.running && !l.stalled && l.is_live());
        assert_eq!(l.seconds_since_progress, 3600);
    }
}
