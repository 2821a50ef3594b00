//! [`Dispatcher`]: runs received work, at most `concurrency` at once, on the consumer's own
//! task ([`Running`]); work that cannot start yet waits in order and is kept in progress
//! (in-progress acks) meanwhile.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::future::Either;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::Notify;
use tracing::{error, warn};

use crate::attempt::Apply;
use crate::event::{metadata, Metadata};
use crate::process::Processor;
use crate::slots::{Jobs, Slots};

/// What one job processes: a message, or the messages of one pull request (batch mode).
#[allow(
    clippy::large_enum_variant,
    reason = "moved once into its job; boxing would add an allocation per message"
)]
pub(crate) enum Work {
    /// A message with its metadata, read once when it arrived.
    One(jetstream::Message, Metadata),
    Batch(Vec<jetstream::Message>),
}

impl Work {
    /// A message to process on its own.
    pub(crate) fn one(message: jetstream::Message) -> Self {
        let meta = metadata(&message);
        Self::One(message, meta)
    }

    fn messages(&self) -> &[jetstream::Message] {
        match self {
            Self::One(message, _) => std::slice::from_ref(message),
            Self::Batch(messages) => messages,
        }
    }
}

/// The received work, running and waiting, polled on the consumer's own task beside the fetch
/// loop ([`Running::drive`]): no task spawn, wake-up of another worker thread or hop between
/// threads per message, as in a hand-written pull loop. When a job ends the driver starts the
/// next waiting work in the same poll. Only that task touches it, so its lock is never
/// contended.
pub(crate) struct Running<A> {
    shared: Arc<Mutex<RunningSet>>,
    processor: Arc<Processor<A>>,
    /// Told when the driver started the last waiting work (the fetch loop waits for that
    /// before its next pull request).
    started: Arc<Notify>,
}

impl<A> Clone for Running<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            processor: self.processor.clone(),
            started: self.started.clone(),
        }
    }
}

struct RunningSet {
    /// The running jobs, in places reused from one message to the next.
    jobs: Box<dyn Jobs<Work>>,
    /// Received work that has not started, in delivery order.
    waiting: VecDeque<Work>,
    concurrency: usize,
    /// Shutdown has begun: nothing more starts.
    closed: bool,
}

impl<A: Apply> Running<A> {
    fn lock(&self) -> MutexGuard<'_, RunningSet> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting work while a slot is free, the database is not down and shutdown has not
    /// been seen (then the fetch loop gives the waiting work back). The shutdown token is read
    /// once per poll of the driver ([`closed`](RunningSet::closed)), not per message: reading
    /// it takes a lock.
    fn fill(&self, set: &mut RunningSet) -> bool {
        let mut started = false;
        while set.jobs.len() < set.concurrency && !set.closed && !self.processor.outage.is_down() {
            let Some(work) = set.waiting.pop_front() else {
                break;
            };
            let n = work.messages().len() as u64;
            // Single messages are counted as fetched here, with `in_flight`; batches as they
            // are collected.
            let fetched = if matches!(work, Work::One(..)) { n } else { 0 };
            self.processor.stats.record(|s| {
                s.fetched += fetched;
                s.in_flight += n;
            });
            set.jobs.start(work);
            started = true;
        }
        started
    }

    /// Polls the running work whenever the consumer's task is woken, starting waiting work
    /// as slots free up. Never completes; await it beside the fetch loop.
    pub(crate) async fn drive(&self) {
        poll_fn(|cx| {
            let mut set = self.lock();
            set.closed = set.closed || self.processor.shutdown.is_cancelled();
            while let Poll::Ready(Some(())) = set.jobs.poll_next(cx) {
                // The fetch loop only waits for the last waiting work to start.
                if self.fill(&mut set) && set.waiting.is_empty() {
                    self.started.notify_one();
                }
            }
            // What the jobs (and the fetch loop, polled just before) recorded.
            self.processor.stats.publish();
            Poll::<()>::Pending
        })
        .await;
    }

    /// Completes when no work is running (polling it meanwhile; nothing waiting starts).
    pub(crate) async fn finish(&self) {
        poll_fn(|cx| {
            let mut set = self.lock();
            let done = loop {
                match set.jobs.poll_next(cx) {
                    Poll::Ready(Some(())) => {}
                    Poll::Ready(None) => break Poll::Ready(()),
                    Poll::Pending => break Poll::Pending,
                }
            };
            self.processor.stats.publish();
            done
        })
        .await;
    }

    /// The shutdown hard stop: drops the running work unacked (its transactions roll back, the
    /// server redelivers it after `ack_wait`).
    pub(crate) fn abandon(&self) {
        let jobs = self.lock().jobs.abandon();
        if jobs > 0 {
            warn!(jobs, "shutdown timeout: work abandoned without ack");
        }
        self.processor.stats.update(|s| s.in_flight = 0);
    }
}

/// `work` as a job: a panic NAKs its messages. (The shutdown hard stop drops the job
/// unacked, its transaction rolled back: [`Running::abandon`].) Two futures, each as small
/// as its own path needs, in one type: the job's place is as large as the larger one.
fn job<A: Apply>(
    processor: &Arc<Processor<A>>,
    work: Work,
) -> impl Future<Output = ()> + Send + 'static {
    let processor = processor.clone();
    match work {
        Work::One(message, meta) => Either::Left(async move {
            let messages = std::slice::from_ref(&message);
            // `process` does its first steps (span, envelope) before returning the future:
            // a panic there is caught here, as one in the future is by `guarded`. Pinned where
            // it is made: a binding moved into `pin!` would be stored twice in this job.
            let mut run = std::pin::pin!(std::panic::catch_unwind(AssertUnwindSafe(|| {
                processor.process(&message, meta)
            }))
            .ok());
            match run.as_mut().as_pin_mut() {
                Some(run) => guarded(&processor, messages, run).await,
                None => {
                    Box::pin(panicked(&processor, messages)).await;
                    processor.stats.record(|s| s.in_flight -= 1);
                }
            }
        }),
        Work::Batch(messages) => Either::Right(async move {
            let run = std::pin::pin!(A::process_many(&processor, &messages));
            guarded(&processor, &messages, run).await;
        }),
    }
}

/// Runs `run`, the processing of `messages`: a panic NAKs them. `run` is pinned by the
/// caller, so this future does not hold a second copy of it.
async fn guarded<A: Apply>(
    processor: &Processor<A>,
    messages: &[jetstream::Message],
    run: Pin<&mut impl Future<Output = ()>>,
) {
    if AssertUnwindSafe(run).catch_unwind().await.is_err() {
        // Boxed: rare, and inline it would size every job.
        Box::pin(panicked(processor, messages)).await;
    }
    processor
        .stats
        .record(|s| s.in_flight -= messages.len() as u64);
}

/// After a panic while processing `messages`: count it, NAK them with the first backoff delay.
async fn panicked<A: Apply>(processor: &Processor<A>, messages: &[jetstream::Message]) {
    error!(
        messages = messages.len(),
        "message processing panicked; NAKing"
    );
    processor.stats.update(|s| s.panics += 1);
    let delay = processor
        .backoff
        .first()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    for message in messages {
        processor.nak(message, delay).await;
    }
}

/// Runs work, at most `concurrency` at once.
pub(crate) struct Dispatcher<A> {
    pub(crate) processor: Arc<Processor<A>>,
    pub(crate) running: Running<A>,
}

impl<A: Apply> Dispatcher<A> {
    pub(crate) fn new(processor: Arc<Processor<A>>, concurrency: usize) -> Self {
        let running = Running {
            shared: Arc::new(Mutex::new(RunningSet {
                jobs: Box::new(Slots::new({
                    let processor = processor.clone();
                    move |work| job(&processor, work)
                })),
                waiting: VecDeque::new(),
                concurrency: concurrency.max(1),
                closed: false,
            })),
            processor: processor.clone(),
            started: Arc::new(Notify::new()),
        };
        Self { processor, running }
    }

    /// Starts `work` at once when a slot is free, nothing waits before it and the database is
    /// not down; else queues it (the caller keeps it in progress with
    /// [`progress_ack_waiting`](Self::progress_ack_waiting); the driver starts it when a slot
    /// frees up, the caller with [`start_waiting`](Self::start_waiting) once the database is
    /// back).
    pub(crate) fn offer(&mut self, work: Work) {
        let attempts = &self.processor.attempts;
        match &work {
            Work::One(_, meta) => {
                attempts.received(meta.stream_sequence, meta.deliveries, &self.processor.stats);
            }
            Work::Batch(messages) => {
                for message in messages {
                    attempts.received_message(message, &self.processor.stats);
                }
            }
        }
        let mut set = self.running.lock();
        set.waiting.push_back(work);
        self.running.fill(&mut set);
    }

    /// Whether received work waits for a slot (or for the database).
    pub(crate) fn has_waiting(&self) -> bool {
        !self.running.lock().waiting.is_empty()
    }

    /// Completes when the driver started the last waiting work (check
    /// [`has_waiting`](Self::has_waiting) again).
    pub(crate) fn started(&self) -> impl Future<Output = ()> + '_ {
        self.running.started.notified()
    }

    /// Starts waiting work while slots are free (after a database outage).
    pub(crate) fn start_waiting(&mut self) {
        let mut set = self.running.lock();
        self.running.fill(&mut set);
    }

    /// One in-progress ack per waiting message.
    pub(crate) async fn progress_ack_waiting(&self) {
        let waiting: Vec<jetstream::Message> = self
            .running
            .lock()
            .waiting
            .iter()
            .flat_map(Work::messages)
            .cloned()
            .collect();
        let waiting: Vec<&jetstream::Message> = waiting.iter().collect();
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
        let waiting = {
            let mut set = self.running.lock();
            set.closed = true;
            std::mem::take(&mut set.waiting)
        };
        for work in waiting {
            if matches!(work, Work::One(..)) {
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
}

/// NAKs a received-but-unstarted message without delay, so another instance takes it at once.
async fn release(message: &jetstream::Message) {
    let _ = message.ack_with(AckKind::Nak(None)).await;
}
