//! [`ConsumerBuilder`]: the settings of a [`Consumer`], checked by
//! [`build`](ConsumerBuilder::build).

use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::AsyncPgConnection;
use jetstream_bridge_config::Config;
use jetstream_bridge_inbox::Inbox;
use jetstream_bridge_topology::bind_pull_consumer;

use crate::error::{ConsumerError, ConsumerErrorKind, Result};
use crate::fetch::Fetcher;
use crate::handler::{BatchHandler, Batched, Handler};
use crate::middleware::Middleware;
use crate::process::Processor;
use crate::retry::Doubling;
use crate::runtime::Consumer;
use crate::stats::Stats;

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
        let stats = Stats::new();
        let processor = Processor {
            dlq_subject: self.config.subjects().dlq().as_str().to_owned(),
            backoff: self.config.backoff().to_vec(),
            use_inbox: self.config.use_inbox(),
            use_dlq: self.config.use_dlq(),
            max_deliver: AtomicU32::new(self.config.max_deliver()),
            js: self.js.clone(),
            pool: self.pool,
            inbox: Inbox::new(),
            handler: self.handler,
            middleware: self.middleware,
            batch: self.batch,
            stats: stats.clone(),
            progress_interval: self.progress_interval,
            handler_timeout: self.handler_timeout,
        };
        Ok(Consumer {
            processor: Arc::new(processor),
            fetcher: Fetcher {
                config: self.config,
                js: self.js,
                pull,
                stats,
                fetch_wait: self.fetch_wait,
                recovery: Doubling {
                    min: self.recovery_backoff.0,
                    max: self.recovery_backoff.1,
                },
                health_log_interval: self.health_log_interval,
            },
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
        })
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
