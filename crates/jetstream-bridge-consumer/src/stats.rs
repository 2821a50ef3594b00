//! [`ConsumerStats`], the counters a running consumer publishes, the [`ShutdownReport`], and
//! the periodic health log line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

/// RSS above which the periodic health log warns (1 GiB).
const HIGH_RSS_BYTES: u64 = 1 << 30;

/// Counters of a running consumer, published on a watch channel
/// ([`ConsumerHandle::stats`](crate::ConsumerHandle::stats)) as they change: what the
/// consumer did in one wake-up of its task is published at once, as one update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages received from the server.
    pub fetched: u64,
    /// Messages whose handler succeeded (and, with the inbox, committed) and were acked.
    pub processed: u64,
    /// Messages acked without calling the handler: the inbox had the event as processed.
    pub duplicates: u64,
    /// Failed attempts NAKed with a delay for redelivery.
    pub retried: u64,
    /// Messages published to the DLQ and then acked.
    pub dead_lettered: u64,
    /// Messages terminated (`+TERM`) because `use_dlq` is off.
    pub terminated: u64,
    /// DLQ publishes that failed (the original was NAKed, not acked).
    pub dlq_publish_failures: u64,
    /// Handler panics caught (each became a retryable failure).
    pub panics: u64,
    /// In-progress acks (`+WPI`) sent: for long handlers, and for received messages waiting
    /// for a slot or for the database.
    pub progress_acks: u64,
    /// Failed pull requests (server gone, durable missing, …); the loop backs off and retries.
    pub fetch_errors: u64,
    /// Durables recreated after they went missing (JS API allowed).
    pub recoveries: u64,
    /// Fetch loop iterations (pull requests sent).
    pub iterations: u64,
    /// Messages being processed right now.
    pub in_flight: u64,
    /// True once shutdown has begun (report not-ready from here on).
    pub shutting_down: bool,
    /// True while the database is unavailable: fetching is paused and the messages already
    /// received are held (with in-progress acks) until it answers (report not-ready).
    pub db_outage: bool,
    /// Database outages so far (each counted once, however many messages ran into it).
    pub db_outages: u64,
    /// Time spent in database outages so far (updated while one lasts, at every probe).
    pub db_outage_time: Duration,
    /// Redeliveries that arrived while an attempt of the same message was still running,
    /// sooner than a usable durable could redeliver it (after the attempt began: half of the
    /// in-progress ack interval or of `ack_wait` minus that interval, whichever is smaller; on
    /// the same connection; never counted without in-progress acks). Not zero means the durable's
    /// `ack_wait` is shorter than the in-progress ack interval or it has a server-side
    /// `backoff` (as durables created by the Ruby gem have): NAK delays are then ignored. The
    /// first one is logged with the fix; health's readiness fails on it. This is how the
    /// runtime notices such a durable in restricted mode, where it cannot read its
    /// configuration.
    pub early_redeliveries: u64,
}

/// What a graceful shutdown did ([`Consumer::run_until`](crate::Consumer::run_until),
/// [`ConsumerHandle::shutdown`](crate::ConsumerHandle::shutdown)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Messages in flight when shutdown began that finished (acked, NAKed or dead-lettered)
    /// within the shutdown timeout.
    pub drained: u64,
    /// Messages still in flight at the timeout: dropped without an ack (their transaction
    /// rolled back), so JetStream redelivers them after `ack_wait`.
    pub abandoned: u64,
    /// Messages received but not started when shutdown began: NAKed without delay so another
    /// instance takes them at once.
    pub released: u64,
    /// The counters at the end.
    pub stats: ConsumerStats,
}

/// The sending side of the counters, shared by the fetch loop and the message jobs.
#[derive(Debug, Clone)]
pub(crate) struct Stats(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    tx: watch::Sender<ConsumerStats>,
    /// Changed by [`Stats::record`] since the watchers were last notified.
    unpublished: AtomicBool,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Shared {
            tx: watch::channel(ConsumerStats::default()).0,
            unpublished: AtomicBool::new(false),
        }))
    }

    /// Changes the counters and notifies the watchers once.
    pub(crate) fn update(&self, change: impl FnOnce(&mut ConsumerStats)) {
        self.0.tx.send_modify(change);
    }

    /// Changes the counters without notifying the watchers yet: for the message jobs, polled
    /// by the consumer's task, which [`publish`](Self::publish)es once per wake-up whatever
    /// its jobs changed. Notifying every watcher costs more than the change (a lock per
    /// notifier): once per message it was a measurable part of a message's cost.
    pub(crate) fn record(&self, change: impl FnOnce(&mut ConsumerStats)) {
        self.0.tx.send_if_modified(|s| {
            change(s);
            false
        });
        self.0.unpublished.store(true, Ordering::Relaxed);
    }

    /// Notifies the watchers of what [`record`](Self::record) changed since the last
    /// notification, if anything.
    pub(crate) fn publish(&self) {
        if self.0.unpublished.swap(false, Ordering::Relaxed) {
            self.0.tx.send_modify(|_| {});
        }
    }

    /// The counters now.
    pub(crate) fn get(&self) -> ConsumerStats {
        *self.0.tx.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConsumerStats> {
        self.0.tx.subscribe()
    }
}

/// The info line every `health_log_interval`: iterations, RSS and uptime; a warning above
/// 1 GiB RSS.
pub(crate) fn health_log(stats: &Stats, started: Instant) {
    let iterations = stats.get().iterations;
    let uptime = started.elapsed().as_secs();
    match rss_bytes() {
        Some(rss) if rss > HIGH_RSS_BYTES => {
            warn!(
                iterations,
                rss_mb = rss >> 20,
                uptime_s = uptime,
                "consumer health: high memory usage"
            );
        }
        Some(rss) => info!(
            iterations,
            rss_mb = rss >> 20,
            uptime_s = uptime,
            "consumer health"
        ),
        None => info!(iterations, uptime_s = uptime, "consumer health"),
    }
}

/// Resident set size from `/proc/self/statm` (second field, pages of 4 KiB); `None` off Linux.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc() {
        let rss = rss_bytes().expect("Linux /proc/self/statm");
        assert!(rss > 1 << 20 && rss < HIGH_RSS_BYTES, "{rss}");
    }
}
