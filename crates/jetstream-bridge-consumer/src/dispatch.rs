//! [`Dispatcher`]: runs received work on tracked tasks, at most `concurrency` at once; work
//! that cannot start yet waits in order and is kept in progress (in-progress acks) meanwhile.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::attempt::Apply;
use crate::process::Processor;

/// What one task processes: a message, or the messages of one pull request (batch mode).
#[allow(
    clippy::large_enum_variant,
    reason = "moved once into its task; boxing would add an allocation per message"
)]
pub(crate) enum Work {
    One(jetstream::Message),
    Batch(Vec<jetstream::Message>),
}

impl Work {
    fn messages(&self) -> &[jetstream::Message] {
        match self {
            Self::One(message) => std::slice::from_ref(message),
            Self::Batch(messages) => messages,
        }
    }
}

/// Runs work on tasks, at most `concurrency` at once.
pub(crate) struct Dispatcher<A> {
    pub(crate) processor: Arc<Processor<A>>,
    semaphore: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    pub(crate) hard_stop: tokio_util::sync::CancellationToken,
    /// Received work that has not started, in delivery order.
    waiting: VecDeque<Work>,
}

impl<A: Apply> Dispatcher<A> {
    pub(crate) fn new(processor: Arc<Processor<A>>, concurrency: usize) -> Self {
        Self {
            processor,
            semaphore: Arc::new(Semaphore::new(concurrency)),
            tracker: TaskTracker::new(),
            hard_stop: tokio_util::sync::CancellationToken::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Starts `work` at once when a slot is free, nothing waits before it and the database is
    /// not down; else queues it (the caller keeps it in progress with
    /// [`progress_ack_waiting`](Self::progress_ack_waiting) and starts it with
    /// [`start_next`](Self::start_next)).
    pub(crate) fn offer(&mut self, work: Work) {
        for message in work.messages() {
            self.processor
                .attempts
                .received(message, &self.processor.stats);
        }
        if self.waiting.is_empty() && !self.processor.outage.is_down() {
            if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
                self.spawn(permit, work);
                return;
            }
        }
        self.waiting.push_back(work);
    }

    /// Whether received work waits for a slot (or for the database).
    pub(crate) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// A free slot, when one is. Lazy: nothing happens (not even the `Arc` clone) unless it
    /// is polled, so a `select!` branch disabled by its precondition costs nothing.
    pub(crate) fn slot(
        &self,
    ) -> impl Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + '_ {
        let semaphore = &self.semaphore;
        async move { semaphore.clone().acquire_owned().await }
    }

    /// Starts the oldest waiting work with `permit`.
    pub(crate) fn start_next(&mut self, permit: OwnedSemaphorePermit) {
        match self.waiting.pop_front() {
            Some(work) => self.spawn(permit, work),
            None => drop(permit),
        }
    }

    /// One in-progress ack per waiting message.
    pub(crate) async fn progress_ack_waiting(&self) {
        let waiting: Vec<&jetstream::Message> =
            self.waiting.iter().flat_map(Work::messages).collect();
        self.processor.progress_ack(&waiting).await;
    }

    /// Shutdown: gives back (NAK without delay) the waiting work, then `received` (a pull's
    /// collected messages), then what `buffered` already holds, without waiting for more.
    pub(crate) async fn release_buffered(
        &mut self,
        received: impl IntoIterator<Item = jetstream::Message>,
        mut buffered: impl Stream<Item = jetstream::Message> + Unpin,
    ) {
        let mut released = 0u64;
        // Single messages count as fetched when they start or are released here; a batch's
        // messages counted as they were collected.
        let mut fetched = 0u64;
        for work in std::mem::take(&mut self.waiting) {
            if matches!(work, Work::One(_)) {
                fetched += 1;
            }
            for message in work.messages() {
                release(message).await;
                released += 1;
            }
        }
        for message in received {
            release(&message).await;
            released += 1;
        }
        while let Some(Some(message)) = buffered.next().now_or_never() {
            release(&message).await;
            released += 1;
            fetched += 1;
        }
        self.processor
            .released
            .fetch_add(released, Ordering::Relaxed);
        self.processor.stats.update(|s| s.fetched += fetched);
    }

    /// Runs `work` on a tracked task: a panic NAKs its messages, the shutdown hard stop drops
    /// it unacked (its transaction rolls back).
    fn spawn(&mut self, permit: OwnedSemaphorePermit, work: Work) {
        let n = work.messages().len() as u64;
        // Single messages are counted as fetched here, with `in_flight` (one watch notification
        // per message); batches as they are collected.
        let fetched = if matches!(work, Work::One(_)) { n } else { 0 };
        self.processor.stats.update(|s| {
            s.fetched += fetched;
            s.in_flight += n;
        });
        let processor = self.processor.clone();
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let run = async {
                match &work {
                    Work::One(message) => processor.process(message).await,
                    // Boxed: the batch future (which nests a per-message future in its
                    // fallback) is several times larger, and unboxed it would size every
                    // single-message task too; one allocation per pull is noise.
                    Work::Batch(messages) => Box::pin(A::process_many(&processor, messages)).await,
                }
            };
            tokio::select! {
                biased;
                out = AssertUnwindSafe(run).catch_unwind() => {
                    if out.is_err() {
                        error!(messages = n, "message processing panicked; NAKing");
                        processor.stats.update(|s| s.panics += 1);
                        let delay = processor.backoff.first().copied().unwrap_or(Duration::from_secs(1));
                        for message in work.messages() {
                            processor.nak(message, delay).await;
                        }
                    }
                }
                () = hard_stop.cancelled() => {
                    warn!(messages = n, "shutdown timeout: work abandoned without ack");
                }
            }
            processor.stats.update(|s| s.in_flight -= n);
        });
    }
}

/// NAKs a received-but-unstarted message without delay, so another instance takes it at once.
async fn release(message: &jetstream::Message) {
    let _ = message.ack_with(AckKind::Nak(None)).await;
}
