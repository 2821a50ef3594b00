//! [`Attempts`]: the messages whose attempt is running, to notice a durable that redelivers a
//! message while its handler still runs — one with an `ack_wait` shorter than the in-progress
//! ack interval or a server-side `backoff`, as the Ruby gem creates them. Where the JS API is
//! allowed the durable's configuration says so before anything runs (health, `check`); in
//! restricted mode only the deliveries can tell.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use async_nats::Client;
use tracing::error;

use crate::event::AckInfo;
use crate::stats::Stats;

/// The running attempts, by stream sequence.
pub(crate) struct Attempts {
    /// A redelivery sooner than this after the attempt began cannot come from a usable
    /// durable (see [`Attempts::new`]); `None`: no in-progress acks, nothing to tell by.
    threshold: Option<Duration>,
    /// Its `connects` counter tells a reconnect (in-progress acks may have been lost: a
    /// redelivery then proves nothing) from a durable that redelivers early.
    client: Client,
    durable: String,
    running: Mutex<HashMap<u64, Running, BuildHasherDefault<Sequence>>>,
    /// Numbers the attempts, so a guard removes only its own entry.
    attempts: AtomicU64,
    said: AtomicBool,
}

/// Hashes a stream sequence as itself: the keys are distinct numbers from the server, not
/// attacker-chosen strings, so SipHash's cost buys nothing here.
#[derive(Default)]
struct Sequence(u64);

impl Hasher for Sequence {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Spread consecutive sequences over hashbrown's control bits (the top 7).
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Clone, Copy)]
struct Running {
    id: u64,
    since: Instant,
    connects: u64,
}

/// Removes its attempt from the running ones when dropped (unless a later attempt of the same
/// message replaced it).
pub(crate) struct Started<'a> {
    attempts: &'a Attempts,
    seq: u64,
    id: u64,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if self.seq != 0 {
            let mut running = self.attempts.lock();
            if running.get(&self.seq).is_some_and(|r| r.id == self.id) {
                running.remove(&self.seq);
            }
        }
    }
}

impl Attempts {
    /// `progress_interval`: the runtime's in-progress ack interval (`None`: it sends none, and
    /// a redelivery during a long attempt is expected). A usable durable redelivers a message no
    /// sooner than its `ack_wait` after the message's last in-progress ack, which came at most
    /// one interval before its attempt began (waiting messages get them too): so at least
    /// `ack_wait - interval` into the attempt. Half of that, and of the interval, is the
    /// threshold.
    pub(crate) fn new(
        progress_interval: Option<Duration>,
        ack_wait: Duration,
        client: Client,
        durable: String,
    ) -> Self {
        let threshold = progress_interval
            .map(|every| every.min(ack_wait.saturating_sub(every)) / 2)
            .filter(|t| !t.is_zero());
        Self {
            threshold,
            client,
            durable,
            running: Mutex::new(HashMap::default()),
            attempts: AtomicU64::new(0),
            said: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Running, BuildHasherDefault<Sequence>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// Marks the attempt of the message at stream sequence `seq` as running until the guard
    /// is dropped (sequence 0, a message without position, is not tracked).
    pub(crate) fn start(&self, seq: u64) -> Started<'_> {
        let id = self.attempts.fetch_add(1, Ordering::Relaxed);
        let seq = if self.threshold.is_some() { seq } else { 0 };
        if seq != 0 {
            let running = Running {
                id,
                since: Instant::now(),
                connects: self.connects(),
            };
            self.lock().insert(seq, running);
        }
        Started {
            attempts: self,
            seq,
            id,
        }
    }

    /// Looks at a received message, the `deliveries`-th delivery of stream sequence `seq`: a
    /// redelivery of a message whose attempt began less than the threshold ago, on the same
    /// connection, counts in `early_redeliveries`; the first one is logged with the fix.
    pub(crate) fn received(&self, seq: u64, deliveries: u32, stats: &Stats) {
        let Some(threshold) = self.threshold else {
            return;
        };
        if deliveries <= 1 || seq == 0 {
            return;
        }
        let Some(running) = self.lock().get(&seq).copied() else {
            return;
        };
        let after = running.since.elapsed();
        if after >= threshold || running.connects != self.connects() {
            return;
        }
        stats.update(|s| s.early_redeliveries += 1);
        if !self.said.swap(true, Ordering::Relaxed) {
            error!(
                durable = %self.durable,
                stream_seq = seq,
                deliveries,
                after = ?after,
                "{}",
                problem(&self.durable)
            );
        }
    }

    /// [`received`](Self::received) for a message whose metadata was not read.
    pub(crate) fn received_message(&self, message: &Message, stats: &Stats) {
        if self.threshold.is_none() {
            return;
        }
        if let Some(info) = message.reply.as_deref().and_then(AckInfo::parse) {
            let deliveries = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
            self.received(info.stream_sequence, deliveries, stats);
        }
    }
}

/// What an early redelivery means and how to fix it (the log line; health says the same).
fn problem(durable: &str) -> String {
    format!(
        "the durable {durable} redelivers messages while their handler still runs: its \
         ack_wait is shorter than the in-progress ack interval or it has a server-side backoff \
         (as durables created by the Ruby gem have), so NAK delays are ignored and failing \
         events run out of deliveries at once; have an admin run `jetstream-bridge \
         ensure-topology --update-drift`, then restart the consumers"
    )
}
