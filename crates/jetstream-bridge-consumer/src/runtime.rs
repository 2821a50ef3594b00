//! [`Consumer`]: the fetch loop, bounded concurrency, recovery and graceful shutdown.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::AsyncPgConnection;
use futures_util::{FutureExt, StreamExt};
use jetstream_bridge_config::{Config, ConsumerMode};
use jetstream_bridge_inbox::Inbox;
use jetstream_bridge_topology::{bind_pull_consumer, EnsureOptions, TopologySpec};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::error::{ConsumerError, ConsumerErrorKind, Result};
use crate::handler::{BatchHandler, Batched, Handler};
use crate::middleware::Middleware;

/// RSS above which the periodic health log warns (1 GiB).
const HIGH_RSS_BYTES: u64 = 1 << 30;

/// Counters of a running consumer, published on a watch channel
/// ([`ConsumerHandle::stats`]) after every change.
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
    /// In-progress acks (`+WPI`) sent for long handlers.
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
}

/// What a graceful shutdown did ([`Consumer::run_until`], [`ConsumerHandle::shutdown`]).
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

/// The builder's handler slot before [`ConsumerBuilder::handler`] is called.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

/// Builds a [`Consumer`]; see [`Consumer::builder`].
#[must_use]
pub struct ConsumerBuilder<H = NoHandler> {
    config: Config,
    js: jetstream::Context,
    pool: Option<Pool<AsyncPgConnection>>,
    handler: H,
    concurrency: usize,
    shutdown_timeout: Duration,
    fetch_wait: Duration,
    progress_interval: Option<Duration>,
    handler_timeout: Option<Duration>,
    recovery_backoff: (Duration, Duration),
    health_log_interval: Duration,
    middleware: Vec<Arc<dyn Middleware>>,
    batch: bool,
}

impl<H> std::fmt::Debug for ConsumerBuilder<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("config", &self.config)
            .field("inbox_pool", &self.pool.is_some())
            .field("concurrency", &self.concurrency)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("middlewares", &self.middleware.len())
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<H> ConsumerBuilder<H> {
    /// Sets the handler.
    pub fn handler<H2: Handler>(self, handler: H2) -> ConsumerBuilder<H2> {
        ConsumerBuilder {
            config: self.config,
            js: self.js,
            pool: self.pool,
            handler,
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
            fetch_wait: self.fetch_wait,
            progress_interval: self.progress_interval,
            handler_timeout: self.handler_timeout,
            recovery_backoff: self.recovery_backoff,
            health_log_interval: self.health_log_interval,
            middleware: self.middleware,
            batch: false,
        }
    }

    /// Sets a [`BatchHandler`]: in pull mode each pull request's events go to it together, in
    /// one inbox transaction with one multi-row inbox claim and one commit (see
    /// [`BatchHandler`] for duplicates and failures). Push mode hands it one event at a time.
    pub fn batch_handler<B: BatchHandler>(self, handler: B) -> ConsumerBuilder<Batched<B>> {
        let mut builder = self.handler(Batched(handler));
        builder.batch = true;
        builder
    }

    /// Adds a middleware around the handler; the first added runs outermost.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// How many messages are processed at once (default: the config's
    /// `handler_concurrency`; 1 = strictly sequential, in delivery order). Values below 1 mean 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long shutdown waits for in-flight messages (default 30 s); later work is abandoned
    /// unacked.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long one pull request waits for messages (default 5 s, the gem's fetch timeout).
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait.max(Duration::from_millis(10));
        self
    }

    /// Interval of in-progress acks while a handler runs (default `ack_wait / 2`; `None`
    /// disables them).
    pub fn progress_interval(mut self, every: Option<Duration>) -> Self {
        self.progress_interval = every.filter(|d| !d.is_zero());
        self
    }

    /// Per-message time limit; a handler running longer is cancelled (its transaction rolls
    /// back) and retried with backoff, error class `Timeout` (default: none).
    pub fn handler_timeout(mut self, limit: Option<Duration>) -> Self {
        self.handler_timeout = limit;
        self
    }

    /// Backoff between failed pull requests / recovery attempts: doubles from `min` to `max`
    /// (default 100 ms to 30 s).
    pub fn recovery_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.recovery_backoff = (min, max.max(min));
        self
    }

    /// Interval of the health log line (iterations, RSS, uptime; default 10 minutes).
    pub fn health_log_interval(mut self, every: Duration) -> Self {
        self.health_log_interval = every;
        self
    }
}

impl<H: Handler> ConsumerBuilder<H> {
    /// Checks the settings and binds the durable by name (no JetStream API call). In push
    /// mode the runtime subscribes to the delivery subject with the push group when it runs.
    ///
    /// # Errors
    ///
    /// [`MissingPool`](ConsumerErrorKind::MissingPool) when `use_inbox` is on without a pool;
    /// [`Bind`](ConsumerErrorKind::Bind) for unusable stream/durable names.
    pub fn build(self) -> Result<Consumer<H>> {
        if self.config.use_inbox() && self.pool.is_none() {
            return Err(ConsumerError::new(ConsumerErrorKind::MissingPool));
        }
        let pull = bind_pull_consumer(
            &self.js,
            self.config.stream_name().as_str(),
            self.config.durable_name().as_str(),
        )
        .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Bind, e))?;
        let (stats, _) = watch::channel(ConsumerStats::default());
        let shared = Shared {
            dlq_subject: self.config.subjects().dlq().as_str().to_owned(),
            backoff: self.config.backoff().to_vec(),
            use_inbox: self.config.use_inbox(),
            use_dlq: self.config.use_dlq(),
            max_deliver: AtomicU32::new(self.config.max_deliver()),
            js: self.js,
            pool: self.pool,
            inbox: Inbox::new(),
            handler: self.handler,
            middleware: self.middleware,
            batch: self.batch,
            stats,
            progress_interval: self.progress_interval,
            handler_timeout: self.handler_timeout,
        };
        Ok(Consumer {
            shared: Arc::new(shared),
            config: self.config,
            pull,
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
            fetch_wait: self.fetch_wait,
            recovery_backoff: self.recovery_backoff,
            health_log_interval: self.health_log_interval,
        })
    }
}

/// State shared by the fetch loop and the message tasks.
pub(crate) struct Shared<H> {
    pub(crate) js: jetstream::Context,
    pub(crate) pool: Option<Pool<AsyncPgConnection>>,
    pub(crate) inbox: Inbox,
    pub(crate) handler: H,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) batch: bool,
    pub(crate) stats: watch::Sender<ConsumerStats>,
    pub(crate) dlq_subject: String,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) use_inbox: bool,
    pub(crate) use_dlq: bool,
    pub(crate) max_deliver: AtomicU32,
    pub(crate) progress_interval: Option<Duration>,
    pub(crate) handler_timeout: Option<Duration>,
}

/// The consumer runtime of one durable: pull, handle, ack / retry / dead-letter, shut down
/// gracefully. See the crate documentation.
#[must_use]
pub struct Consumer<H> {
    shared: Arc<Shared<H>>,
    config: Config,
    pull: PullConsumer,
    concurrency: usize,
    shutdown_timeout: Duration,
    fetch_wait: Duration,
    recovery_backoff: (Duration, Duration),
    health_log_interval: Duration,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.config.stream_name().as_str())
            .field("durable", &self.config.durable_name().as_str())
            .field("concurrency", &self.concurrency)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Consumer<NoHandler> {
    /// Starts a builder. `pool` is required when `use_inbox` is on. Defaults: concurrency from
    /// `handler_concurrency`, shutdown timeout 30 s, fetch wait 5 s, in-progress acks every
    /// `ack_wait / 2`, no per-message timeout, recovery backoff 100 ms..30 s, health log every
    /// 10 minutes.
    pub fn builder(
        config: Config,
        jetstream: jetstream::Context,
        pool: Option<Pool<AsyncPgConnection>>,
    ) -> ConsumerBuilder<NoHandler> {
        let concurrency = config.handler_concurrency().max(1);
        let progress = config.ack_wait() / 2;
        ConsumerBuilder {
            config,
            js: jetstream,
            pool,
            handler: NoHandler,
            concurrency,
            shutdown_timeout: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(5),
            progress_interval: Some(progress).filter(|d| !d.is_zero()),
            handler_timeout: None,
            recovery_backoff: (Duration::from_millis(100), Duration::from_secs(30)),
            health_log_interval: Duration::from_secs(600),
            middleware: Vec::new(),
            batch: false,
        }
    }
}

impl<H: Handler> Consumer<H> {
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
        let token = CancellationToken::new();
        let watcher = {
            let token = token.clone();
            async move {
                tokio::select! {
                    () = signal => token.cancel(),
                    () = token.cancelled() => {}
                }
            }
        };
        let (report, ()) = tokio::join!(self.run(token), watcher);
        Ok(report)
    }

    /// Runs on a new task; the handle shuts it down and exposes its counters.
    pub fn spawn(self) -> ConsumerHandle {
        let token = CancellationToken::new();
        let stats = self.shared.stats.subscribe();
        let join = tokio::spawn(self.run(token.clone()));
        ConsumerHandle { token, join, stats }
    }

    /// The counters, as a watch receiver.
    pub fn stats(&self) -> watch::Receiver<ConsumerStats> {
        self.shared.stats.subscribe()
    }

    async fn run(self, token: CancellationToken) -> ShutdownReport {
        let started = Instant::now();
        if !self.config.disable_js_api() {
            self.refresh_max_deliver().await;
        }
        let mut dispatcher = Dispatcher {
            shared: self.shared.clone(),
            semaphore: Arc::new(Semaphore::new(self.concurrency)),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            released: 0,
        };
        info!(
            stream = self.config.stream_name().as_str(),
            durable = self.config.durable_name().as_str(),
            mode = ?self.config.consumer_mode(),
            concurrency = self.concurrency,
            "consumer started"
        );
        match self.config.consumer_mode() {
            ConsumerMode::Push => self.push_loop(&mut dispatcher, &token, started).await,
            _ => self.pull_loop(&mut dispatcher, &token, started).await,
        }
        let report = self.drain(dispatcher).await;
        token.cancel();
        report
    }

    /// Pull mode: `batch_size` per pull request until the token is cancelled.
    async fn pull_loop(&self, d: &mut Dispatcher<H>, token: &CancellationToken, started: Instant) {
        let mut failures = 0u32;
        let mut last_health = Instant::now();
        let batch_size = self.config.batch_size().max(1);
        'fetch: loop {
            if token.is_cancelled() {
                break;
            }
            if last_health.elapsed() >= self.health_log_interval {
                last_health = Instant::now();
                self.health_log(started);
            }
            self.shared.stats.send_modify(|s| s.iterations += 1);
            let request = self
                .pull
                .batch()
                .max_messages(batch_size)
                .expires(self.fetch_wait)
                .messages();
            let fetched_at = Instant::now();
            let batch = tokio::select! {
                biased;
                () = token.cancelled() => break,
                batch = request => batch,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    failures += 1;
                    self.on_fetch_error(&e.to_string(), failures, token).await;
                    continue;
                }
            };
            let mut received = 0usize;
            let mut collected = Vec::new();
            // Batch mode: the messages collected so far are delivered already and wait for the
            // rest of the pull (up to `fetch_wait`): they get in-progress acks meanwhile.
            let mut progress = self
                .shared
                .progress_interval
                .filter(|_| self.shared.batch)
                .map(|every| {
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker
                });
            loop {
                let next = tokio::select! {
                    biased;
                    () = token.cancelled() => {
                        // Received but not started: release them for another instance.
                        for message in collected.drain(..) {
                            d.release(&message).await;
                        }
                        while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                            d.release(&message).await;
                        }
                        break 'fetch;
                    }
                    next = batch.next() => next,
                    () = tick(&mut progress), if !collected.is_empty() => {
                        let waiting: Vec<&jetstream::Message> = collected.iter().collect();
                        self.shared.progress_ack(&waiting).await;
                        continue;
                    }
                };
                match next {
                    None => break,
                    Some(Err(e)) => {
                        if !collected.is_empty()
                            && !d
                                .dispatch_batch(std::mem::take(&mut collected), token)
                                .await
                        {
                            break 'fetch;
                        }
                        failures += 1;
                        self.on_fetch_error(&e.to_string(), failures, token).await;
                        continue 'fetch;
                    }
                    Some(Ok(message)) if self.shared.batch => {
                        received += 1;
                        self.shared.stats.send_modify(|s| s.fetched += 1);
                        collected.push(message);
                    }
                    Some(Ok(message)) => {
                        // `fetched` is counted by `start`, with `in_flight`: one watch
                        // notification instead of two per message.
                        received += 1;
                        if !d.dispatch(message, token).await {
                            while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                                d.release(&message).await;
                            }
                            break 'fetch;
                        }
                    }
                }
            }
            if !collected.is_empty() && !d.dispatch_batch(collected, token).await {
                break 'fetch;
            }
            failures = 0;
            if received == 0 && fetched_at.elapsed() < Duration::from_millis(50) {
                // The server answered at once with nothing: do not spin.
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }

    /// Push mode: a core queue subscription on the delivery subject with the push group (no
    /// JetStream API call); heartbeats are skipped and flow-control requests answered.
    async fn push_loop(&self, d: &mut Dispatcher<H>, token: &CancellationToken, started: Instant) {
        let client = self.shared.js.client();
        let subject = self
            .config
            .subjects()
            .delivery_subject()
            .as_str()
            .to_owned();
        let group = self.config.subjects().push_group().as_str().to_owned();
        let mut failures = 0u32;
        let mut last_health = Instant::now();
        'subscribe: loop {
            if token.is_cancelled() {
                break;
            }
            let mut subscriber = tokio::select! {
                biased;
                () = token.cancelled() => break,
                sub = client.queue_subscribe(subject.clone(), group.clone()) => match sub {
                    Ok(sub) => sub,
                    Err(e) => {
                        failures += 1;
                        self.on_fetch_error(&e.to_string(), failures, token).await;
                        continue;
                    }
                },
            };
            loop {
                if last_health.elapsed() >= self.health_log_interval {
                    last_health = Instant::now();
                    self.health_log(started);
                }
                let health_due =
                    tokio::time::Instant::from_std(last_health) + self.health_log_interval;
                let next = tokio::select! {
                    biased;
                    () = token.cancelled() => None,
                    next = subscriber.next() => Some(next),
                    // An idle subscription still logs its health on time.
                    () = tokio::time::sleep_until(health_due) => continue,
                };
                let message = match next {
                    // Shutdown: stop the subscription, release what it already buffered.
                    None => {
                        let _ = subscriber.unsubscribe().await;
                        while let Some(Some(message)) = subscriber.next().now_or_never() {
                            if message.status.is_none() && message.reply.is_some() {
                                let message = jetstream::Message {
                                    message,
                                    context: self.shared.js.clone(),
                                };
                                d.release(&message).await;
                            }
                        }
                        break 'subscribe;
                    }
                    Some(None) => {
                        failures += 1;
                        self.on_fetch_error("push subscription closed", failures, token)
                            .await;
                        continue 'subscribe;
                    }
                    Some(Some(message)) => message,
                };
                failures = 0;
                if message.status.is_some() {
                    // Idle heartbeat (no reply) or flow-control request (reply): answer the latter.
                    if let Some(reply) = message.reply {
                        let _ = client.publish(reply, Default::default()).await;
                    }
                    continue;
                }
                if message.reply.is_none() {
                    continue;
                }
                self.shared.stats.send_modify(|s| {
                    s.iterations += 1;
                    s.fetched += 1;
                });
                let message = jetstream::Message {
                    message,
                    context: self.shared.js.clone(),
                };
                if !d.dispatch(message, token).await {
                    let _ = subscriber.unsubscribe().await;
                    while let Some(Some(message)) = subscriber.next().now_or_never() {
                        if message.status.is_none() && message.reply.is_some() {
                            let message = jetstream::Message {
                                message,
                                context: self.shared.js.clone(),
                            };
                            d.release(&message).await;
                        }
                    }
                    break 'subscribe;
                }
            }
        }
    }

    /// Shutdown: fetching has stopped; finish in-flight work within the deadline.
    async fn drain(&self, d: Dispatcher<H>) -> ShutdownReport {
        self.shared.stats.send_modify(|s| s.shutting_down = true);
        let in_flight_at_stop = self.shared.stats.borrow().in_flight;
        info!(
            in_flight = in_flight_at_stop,
            released = d.released,
            "consumer stopping"
        );
        d.tracker.close();
        let mut abandoned = 0;
        if tokio::time::timeout(self.shutdown_timeout, d.tracker.wait())
            .await
            .is_err()
        {
            abandoned = self.shared.stats.borrow().in_flight;
            d.hard_stop.cancel();
            d.tracker.wait().await;
        }
        // Acks and NAKs are buffered by the client: send them before reporting, so a caller
        // that exits right after the report does not lose them (they would be redelivered).
        let client = self.shared.js.client();
        match tokio::time::timeout(self.shutdown_timeout, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "flushing the final acks failed; unsent ones will be redelivered")
            }
            Err(_) => warn!("flushing the final acks timed out; unsent ones will be redelivered"),
        }
        let stats = *self.shared.stats.borrow();
        let report = ShutdownReport {
            drained: in_flight_at_stop.saturating_sub(abandoned),
            abandoned,
            released: d.released,
            stats,
        };
        info!(?report, "consumer stopped");
        report
    }

    /// Reads the durable's `max_deliver` from the server (JS API allowed): the server's value
    /// decides when the last delivery happens (gem lesson L-R30).
    async fn refresh_max_deliver(&self) {
        let subject = format!(
            "CONSUMER.INFO.{}.{}",
            self.config.stream_name().as_str(),
            self.config.durable_name().as_str()
        );
        let answer: std::result::Result<serde_json::Value, _> = self
            .shared
            .js
            .request(subject, &serde_json::json!({}))
            .await;
        match answer {
            Ok(info) => {
                if let Some(n) = info["config"]["max_deliver"]
                    .as_i64()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n > 0)
                {
                    self.shared.max_deliver.store(n, Ordering::Relaxed);
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the durable's max_deliver; using the config's")
            }
        }
    }

    async fn durable_missing(&self) -> bool {
        let subject = format!(
            "CONSUMER.INFO.{}.{}",
            self.config.stream_name().as_str(),
            self.config.durable_name().as_str()
        );
        let answer: std::result::Result<serde_json::Value, _> = self
            .shared
            .js
            .request(subject, &serde_json::json!({}))
            .await;
        matches!(answer, Ok(v) if v["error"]["err_code"] == 10014 || v["error"]["code"] == 404)
    }

    /// A failed pull: recover the durable when allowed, then back off (cancellable).
    async fn on_fetch_error(&self, error: &str, failures: u32, token: &CancellationToken) {
        self.shared.stats.send_modify(|s| s.fetch_errors += 1);
        warn!(error, failures, "pull request failed");
        if self.config.disable_js_api() {
            if failures >= 3 {
                let e = ConsumerError::new(ConsumerErrorKind::ConsumerNotFound);
                error!(error = %e, durable = self.config.durable_name().as_str(),
                    "pull requests keep failing; with disable_js_api the durable is not recreated (run ensure-topology)");
            }
        } else if self.durable_missing().await {
            let spec = TopologySpec::from_config(&self.config);
            match jetstream_bridge_topology::ensure_topology(
                &self.shared.js,
                &spec,
                &EnsureOptions::new(),
            )
            .await
            {
                Ok(report) => {
                    info!(%report, "durable recreated");
                    self.shared.stats.send_modify(|s| s.recoveries += 1);
                    self.refresh_max_deliver().await;
                }
                Err(e) => error!(error = %e, "recreating the durable failed; retrying"),
            }
        }
        let (min, max) = self.recovery_backoff;
        let exp = failures.saturating_sub(1).min(16);
        let delay = min.saturating_mul(1u32 << exp).min(max);
        tokio::select! {
            () = token.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn health_log(&self, started: Instant) {
        let iterations = self.shared.stats.borrow().iterations;
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
}

/// Runs messages on tasks, at most `concurrency` at once.
struct Dispatcher<H> {
    shared: Arc<Shared<H>>,
    semaphore: Arc<Semaphore>,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
    released: u64,
}

impl<H: Handler> Dispatcher<H> {
    /// NAKs a received-but-unstarted message without delay (shutdown).
    async fn release(&mut self, message: &jetstream::Message) {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        self.released += 1;
    }

    /// Starts a batch (batch mode) on one task once a slot is free; `false` (all released)
    /// when the token is cancelled while waiting.
    async fn dispatch_batch(
        &mut self,
        messages: Vec<jetstream::Message>,
        token: &CancellationToken,
    ) -> bool {
        self.start(Work::Batch(messages), token).await
    }

    /// Starts `message` on a task once a slot is free; `false` (message released) when the
    /// token is cancelled while waiting.
    async fn dispatch(&mut self, message: jetstream::Message, token: &CancellationToken) -> bool {
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
        self.shared.with_progress(&messages, acquire).await
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
            self.shared.stats.send_modify(|s| s.fetched += fetched);
            for message in work.messages() {
                self.release(message).await;
            }
            return false;
        };
        self.shared.stats.send_modify(|s| {
            s.fetched += fetched;
            s.in_flight += n;
        });
        let shared = self.shared.clone();
        let hard_stop = self.hard_stop.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let run = async {
                match &work {
                    Work::One(message) => shared.process(message).await,
                    // Boxed: the batch future (which nests a per-message future in its
                    // fallback) is several times larger, and unboxed it would size every
                    // single-message task too; one allocation per pull is noise.
                    Work::Batch(messages) => Box::pin(shared.process_batch(messages)).await,
                }
            };
            tokio::select! {
                biased;
                out = AssertUnwindSafe(run).catch_unwind() => {
                    if out.is_err() {
                        error!(messages = n, "message processing panicked; NAKing");
                        shared.stats.send_modify(|s| s.panics += 1);
                        let delay = shared.backoff.first().copied().unwrap_or(Duration::from_secs(1));
                        for message in work.messages() {
                            shared.nak(message, delay).await;
                        }
                    }
                }
                () = hard_stop.cancelled() => {
                    warn!(messages = n, "shutdown timeout: work abandoned without ack");
                }
            }
            shared.stats.send_modify(|s| s.in_flight -= n);
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

/// The next tick of `ticker`; never, without one.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Resident set size from `/proc/self/statm` (second field, pages of 4 KiB); `None` off Linux.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
    /// The counters, updated after every change; `wait_for` on it awaits a condition.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc() {
        let rss = rss_bytes().expect("Linux /proc/self/statm");
        assert!(rss > 1 << 20 && rss < HIGH_RSS_BYTES, "{rss}");
    }
}
