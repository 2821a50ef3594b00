//! [`Dispatcher`]: runs received work on tracked tasks, at most `concurrency` at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::attempt::Apply;
use crate::process::Processor;

/// Runs messages on tasks, at most `concurrency` at once.
pub(crate) struct Dispatcher<A> {
    pub(crate) processor: Arc<Processor<A>>,
    semaphore: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    pub(crate) hard_stop: CancellationToken,
    /// Messages released (NAKed without delay) because shutdown began before they started.
    pub(crate) released: u64,
}

impl<A: Apply> Dispatcher<A> {
    pub(crate) fn new(processor: Arc<Processor<A>>, concurrency: usize) -> Self {
        Self {
            processor,
            semaphore: Arc::new(Semaphore::new(concurrency)),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            released: 0,
        }
    }

    /// NAKs a received-but-unstarted message without delay (shutdown), so another instance
    /// takes it at once.
    async fn release(&mut self, message: &jetstream::Message) {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        self.released += 1;
    }

    /// Releases every message of `messages` and those `buffered` already holds, without
    /// waiting for more (shutdown: received but not started).
    pub(crate) async fn release_buffered(
        &mut self,
        messages: impl IntoIterator<Item = jetstream::Message>,
        mut buffered: impl Stream<Item = jetstream::Message> + Unpin,
    ) {
        for message in messages {
            self.release(&message).await;
        }
        while let Some(Some(message)) = buffered.next().now_or_never() {
            self.release(&message).await;
        }
    }

    /// Starts a batch (batch mode) on one task once a slot is free; `false` (all released)
    /// when the token is cancelled while waiting.
    pub(crate) async fn dispatch_batch(
        &mut self,
        messages: Vec<jetstream::Message>,
        token: &CancellationToken,
    ) -> bool {
        self.start(Work::Batch(messages), token).await
    }

    /// Starts `message` on a task once a slot is free; `false` (message released) when the
    /// token is cancelled while waiting.
    pub(crate) async fn dispatch(
        &mut self,
        message: jetstream::Message,
        token: &CancellationToken,
    ) -> bool {
        self.start(Work::One(message), token).await
    }

    /// Waits for a free concurrency slot (`None` when the token is cancelled first), sending
    /// in-progress acks for `work`'s messages every `progress_interval` meanwhile: they are
    /// delivered already, and slow handlers ahead of them must not let them pass `ack_wait`
    /// and be redelivered to another instance. Only taken when no slot is free at once, so
    /// the common path allocates nothing.
    async fn wait_for_slot(
        &self,
        work: &Work,
        token: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        let messages: Vec<&jetstream::Message> = work.messages().iter().collect();
        let acquire = async {
            tokio::select! {
                biased;
                () = token.cancelled() => None,
                permit = self.semaphore.clone().acquire_owned() => permit.ok(),
            }
        };
        self.processor.with_progress(&messages, acquire).await
    }

    /// Waits for a concurrency slot, then runs `work` on a tracked task: a panic NAKs its
    /// messages, the shutdown hard stop drops it unacked (its transaction rolls back).
    async fn start(&mut self, work: Work, token: &CancellationToken) -> bool {
        let permit = if token.is_cancelled() {
            None
        } else {
            match self.semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::Closed) => None,
                Err(TryAcquireError::NoPermits) => self.wait_for_slot(&work, token).await,
            }
        };
        let n = work.messages().len() as u64;
        // Single messages are counted as fetched here (batches as they are collected).
        let fetched = if matches!(work, Work::One(_)) { n } else { 0 };
        let Some(permit) = permit else {
            self.processor.stats.update(|s| s.fetched += fetched);
            for message in work.messages() {
                self.release(message).await;
            }
            return false;
        };
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
        true
    }
}

/// What one task processes: a message, or the messages of one pull request (batch mode).
#[allow(
    clippy::large_enum_variant,
    reason = "moved once into its task; boxing would add an allocation per message"
)]
enum Work {
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
