//! [`Consumer`]: runs the fetch loop and the message jobs until the shutdown signal, then
//! drains; [`ConsumerHandle`] for a consumer on its own task.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::attempt::Apply;
use crate::dispatch::Dispatcher;
use crate::error::{ConsumerError, ConsumerErrorKind, Result};
use crate::fetch::Fetcher;
use crate::middleware::BoxFuture;
use crate::process::Processor;
use crate::stats::{ConsumerStats, ShutdownReport, Stats};

/// The consumer runtime of one durable: pull, handle, ack / retry / dead-letter, shut down
/// gracefully. Built by [`Consumer::builder`]; see the crate documentation.
#[must_use]
pub struct Consumer {
    run: Box<dyn FnOnce() -> BoxFuture<'static, ShutdownReport> + Send>,
    /// Cancelled to begin the shutdown.
    token: CancellationToken,
    stats: Stats,
    summary: Summary,
}

/// What `Debug` shows of a consumer.
#[derive(Debug)]
struct Summary {
    stream: String,
    durable: String,
    inbox: bool,
    batch: bool,
    concurrency: usize,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.summary;
        f.debug_struct("Consumer")
            .field("stream", &s.stream)
            .field("durable", &s.durable)
            .field("inbox", &s.inbox)
            .field("batch", &s.batch)
            .field("concurrency", &s.concurrency)
            .field("shutdown_timeout", &s.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Runs until `signal` completes, then shuts down gracefully (stop fetching, finish
    /// in-flight work within the shutdown timeout) and returns the report.
    ///
    /// The library installs no signal handler: pass e.g. `tokio::signal::ctrl_c()`.
    ///
    /// # Errors
    ///
    /// None today: fetch, recovery and per-message errors are logged, counted and retried,
    /// never returned. The `Result` leaves room for fatal conditions.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future abandons in-flight messages unacked (JetStream
    /// redelivers them after `ack_wait`, the inbox dedupes them). Use the signal instead.
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<ShutdownReport> {
        let watcher = {
            let token = self.token.clone();
            async move {
                tokio::select! {
                    () = signal => token.cancel(),
                    () = token.cancelled() => {}
                }
            }
        };
        let (report, ()) = tokio::join!((self.run)(), watcher);
        Ok(report)
    }

    /// Runs on a new task; the handle shuts it down and exposes its counters.
    pub fn spawn(self) -> ConsumerHandle {
        let stats = self.stats();
        let token = self.token.clone();
        let join = tokio::spawn((self.run)());
        ConsumerHandle { token, join, stats }
    }

    /// The counters, as a watch receiver.
    pub fn stats(&self) -> watch::Receiver<ConsumerStats> {
        self.stats.subscribe()
    }
}

/// A built consumer with its handler slot's type: fetcher, processor and their settings.
pub(crate) struct Runtime<A> {
    pub(crate) processor: Arc<Processor<A>>,
    pub(crate) fetcher: Fetcher,
    pub(crate) concurrency: usize,
    pub(crate) shutdown_timeout: Duration,
}

impl<A: Apply> Runtime<A> {
    /// The public, handler-agnostic consumer: the whole run is one boxed future, the message
    /// path inside it stays monomorphic.
    pub(crate) fn into_consumer(self) -> Consumer {
        let config = &self.fetcher.config;
        let summary = Summary {
            stream: config.stream_name().as_str().to_owned(),
            durable: config.durable_name().as_str().to_owned(),
            inbox: A::INBOX,
            batch: A::BATCH,
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
        };
        Consumer {
            stats: self.fetcher.stats.clone(),
            token: self.processor.shutdown.clone(),
            summary,
            run: Box::new(move || Box::pin(self.run())),
        }
    }

    async fn run(self) -> ShutdownReport {
        let token = self.processor.shutdown.clone();
        let started = Instant::now();
        let mut dispatcher = Dispatcher::new(self.processor.clone(), self.concurrency);
        let config = &self.fetcher.config;
        info!(
            stream = config.stream_name().as_str(),
            durable = config.durable_name().as_str(),
            mode = ?config.consumer_mode(),
            inbox = A::INBOX,
            batch = A::BATCH,
            concurrency = self.concurrency,
            "consumer started"
        );
        let running = dispatcher.running.clone();
        // The fetch loop first: work it started in this poll is polled right after it.
        tokio::select! {
            biased;
            () = self.fetcher.run(&mut dispatcher, &token, started) => {}
            () = running.drive() => {}
        }
        let report = self.drain(dispatcher).await;
        token.cancel();
        report
    }

    /// Shutdown: fetching has stopped; finish in-flight work within the deadline.
    async fn drain(&self, d: Dispatcher<A>) -> ShutdownReport {
        let stats = &self.fetcher.stats;
        stats.update(|s| s.shutting_down = true);
        let in_flight_at_stop = stats.get().in_flight;
        info!(
            in_flight = in_flight_at_stop,
            released = d.processor.released.load(Ordering::Relaxed),
            "consumer stopping"
        );
        let mut abandoned = 0;
        if tokio::time::timeout(self.shutdown_timeout, d.running.finish())
            .await
            .is_err()
        {
            abandoned = stats.get().in_flight;
            d.running.abandon();
        }
        // Acks and NAKs are buffered by the client: send them before reporting, so a caller
        // that exits right after the report does not lose them (they would be redelivered).
        let client = self.fetcher.js.client();
        match tokio::time::timeout(self.shutdown_timeout, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "flushing the final acks failed; unsent ones will be redelivered")
            }
            Err(_) => warn!("flushing the final acks timed out; unsent ones will be redelivered"),
        }
        let report = ShutdownReport {
            drained: in_flight_at_stop.saturating_sub(abandoned),
            abandoned,
            released: d.processor.released.load(Ordering::Relaxed),
            stats: stats.get(),
        };
        info!(?report, "consumer stopped");
        report
    }
}

/// A consumer running on its own task ([`Consumer::spawn`]).
#[must_use]
#[derive(Debug)]
pub struct ConsumerHandle {
    token: CancellationToken,
    join: tokio::task::JoinHandle<ShutdownReport>,
    stats: watch::Receiver<ConsumerStats>,
}

impl ConsumerHandle {
    /// The counters, updated as they change (what the consumer did in one wake-up of its
    /// task as one update); `wait_for` on it awaits a condition.
    pub fn stats(&self) -> watch::Receiver<ConsumerStats> {
        self.stats.clone()
    }

    /// Waits until the counters satisfy `done`, returning them.
    ///
    /// # Errors
    ///
    /// [`Runtime`](ConsumerErrorKind::Runtime) when the runtime ended first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for(
        &self,
        done: impl FnMut(&ConsumerStats) -> bool,
    ) -> Result<ConsumerStats> {
        let mut stats = self.stats.clone();
        let found = stats
            .wait_for(done)
            .await
            .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Runtime, e))?;
        Ok(*found)
    }

    /// Begins a graceful shutdown and waits for its report.
    ///
    /// # Errors
    ///
    /// [`Runtime`](ConsumerErrorKind::Runtime) when the runtime task panicked.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the shutdown continues on the runtime's task.
    pub async fn shutdown(self) -> Result<ShutdownReport> {
        self.token.cancel();
        self.join
            .await
            .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Runtime, e))
    }
}
