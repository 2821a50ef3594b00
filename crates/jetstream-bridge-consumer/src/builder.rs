//! [`ConsumerBuilder`]: the settings of a [`Consumer`], its inbox mode and its handler, all
//! checked by the types or by `build`.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::AsyncPgConnection;
use jetstream_bridge_config::Config;
use jetstream_bridge_inbox::Inbox;
use jetstream_bridge_topology::bind_pull_consumer;
use tokio_util::sync::CancellationToken;

use crate::attempt::{Apply, Direct, Transactional};
use crate::error::{ConsumerError, ConsumerErrorKind, Result};
use crate::fetch::Fetcher;
use crate::handler::{BatchHandler, Batched, Handler, InboxBatchHandler, InboxHandler};
use crate::middleware::Middleware;
use crate::outage::Outage;
use crate::process::Processor;
use crate::redelivery::Attempts;
use crate::retry::Doubling;
use crate::runtime::{Consumer, Runtime};
use crate::stats::Stats;

/// Builder state: the inbox is off (the default). The handler is a [`Handler`] or a
/// [`BatchHandler`] and gets no connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInbox;

/// Builder state: the inbox is on ([`ConsumerBuilder::with_inbox`]), with its connection
/// pool. The handler is an [`InboxHandler`] or an [`InboxBatchHandler`] and writes on the
/// inbox transaction's connection.
#[derive(Clone)]
pub struct WithInbox {
    pool: Pool<AsyncPgConnection>,
}

impl fmt::Debug for WithInbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("WithInbox")
            .field("pool_max_size", &status.max_size)
            .finish_non_exhaustive()
    }
}

/// Builder state: no handler yet ([`ConsumerBuilder::handler`],
/// [`ConsumerBuilder::batch_handler`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

/// Builds a [`Consumer`]; see [`Consumer::builder`].
///
/// Its type says whether the inbox is on (`I`: [`NoInbox`], or [`WithInbox`] after
/// [`with_inbox`](Self::with_inbox)) and which handler it holds (`H`), so a handler that needs
/// the inbox's connection cannot be given to a consumer without one, and the other way round:
///
/// | builder | [`handler`](ConsumerBuilder::handler) takes | [`batch_handler`](ConsumerBuilder::batch_handler) takes |
/// |---|---|---|
/// | `Consumer::builder(&config, js)` | [`Handler`]: `handle(&event)` | [`BatchHandler`]: `handle_batch(&events)` |
/// | `… .with_inbox(pool)` | [`InboxHandler`]: `handle(&event, conn)` | [`InboxBatchHandler`]: `handle_batch(&events, conn)` |
///
/// # Examples
///
/// ```no_run
/// use diesel_async::pooled_connection::deadpool::Pool;
/// use diesel_async::AsyncPgConnection;
/// use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
///
/// struct Apply;
///
/// impl InboxHandler for Apply {
///     async fn handle(&self, _: &Event, _: &mut AsyncPgConnection) -> Result<(), HandlerError> {
///         Ok(())
///     }
/// }
///
/// # fn f(config: jetstream_bridge_config::Config, js: async_nats::jetstream::Context,
/// #      pool: Pool<AsyncPgConnection>) -> jetstream_bridge_consumer::Result<()> {
/// let consumer = Consumer::builder(&config, js).with_inbox(pool).handler(Apply).build()?;
/// # Ok(()) }
/// ```
///
/// A handler that needs the inbox's connection given to a builder without the inbox does not
/// compile:
///
/// ```compile_fail
/// # use diesel_async::AsyncPgConnection;
/// # use jetstream_bridge_consumer::{Consumer, Event, HandlerError, InboxHandler};
/// # struct Apply;
/// # impl InboxHandler for Apply {
/// #     async fn handle(&self, _: &Event, _: &mut AsyncPgConnection) -> Result<(), HandlerError> {
/// #         Ok(())
/// #     }
/// # }
/// # fn f(config: jetstream_bridge_config::Config, js: async_nats::jetstream::Context) {
/// let consumer = Consumer::builder(&config, js).handler(Apply); // `Apply` is no `Handler`
/// # }
/// ```
#[must_use]
pub struct ConsumerBuilder<I = NoInbox, H = NoHandler> {
    settings: Settings,
    inbox: I,
    handler: H,
}

/// Everything but the inbox mode and the handler.
struct Settings {
    config: Config,
    js: jetstream::Context,
    concurrency: usize,
    shutdown_timeout: Duration,
    fetch_wait: Duration,
    progress_interval: Option<Duration>,
    handler_timeout: Option<Duration>,
    recovery_backoff: (Duration, Duration),
    outage_backoff: (Duration, Duration),
    health_log_interval: Duration,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl<I: fmt::Debug, H> fmt::Debug for ConsumerBuilder<I, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("ConsumerBuilder")
            .field("config", &s.config)
            .field("inbox", &self.inbox)
            .field("handler", &std::any::type_name::<H>())
            .field("concurrency", &s.concurrency)
            .field("shutdown_timeout", &s.shutdown_timeout)
            .field("middlewares", &s.middleware.len())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Starts a builder, inbox off. Defaults: concurrency from `handler_concurrency`, shutdown
    /// timeout 30 s, fetch wait 5 s, in-progress acks every `ack_wait / 2`, no per-message
    /// timeout, recovery backoff 100 ms..30 s, database probes 100 ms..10 s apart, health log
    /// every 10 minutes.
    pub fn builder(config: &Config, jetstream: jetstream::Context) -> ConsumerBuilder {
        let concurrency = config.handler_concurrency().max(1);
        let progress = config.ack_wait() / 2;
        ConsumerBuilder {
            settings: Settings {
                config: config.clone(),
                js: jetstream,
                concurrency,
                shutdown_timeout: Duration::from_secs(30),
                fetch_wait: Duration::from_secs(5),
                progress_interval: Some(progress).filter(|d| !d.is_zero()),
                handler_timeout: None,
                recovery_backoff: (Duration::from_millis(100), Duration::from_secs(30)),
                outage_backoff: (Duration::from_millis(100), Duration::from_secs(10)),
                health_log_interval: Duration::from_secs(600),
                middleware: Vec::new(),
            },
            inbox: NoInbox,
            handler: NoHandler,
        }
    }
}

impl ConsumerBuilder<NoInbox, NoHandler> {
    /// Turns the inbox on, with the pool of the database that holds `jetstream_inbox_events`
    /// and the handler's tables: each event's inbox row and the handler's writes commit in one
    /// transaction (effects once per event id; duplicates are acked without calling the
    /// handler), and the handler becomes an [`InboxHandler`] (or [`InboxBatchHandler`]) that
    /// receives the transaction's connection.
    ///
    /// This decides whether the inbox is on. The config's `use_inbox = true` states that it
    /// must be: [`build`](ConsumerBuilder::build) then rejects a builder without it.
    pub fn with_inbox(
        self,
        pool: Pool<AsyncPgConnection>,
    ) -> ConsumerBuilder<WithInbox, NoHandler> {
        ConsumerBuilder {
            settings: self.settings,
            inbox: WithInbox { pool },
            handler: NoHandler,
        }
    }

    /// Sets the handler (inbox off: a [`Handler`], called without a connection).
    pub fn handler<H: Handler>(self, handler: H) -> ConsumerBuilder<NoInbox, H> {
        self.with_handler(handler)
    }

    /// Sets a [`BatchHandler`] (inbox off): in pull mode each pull request's events go to it
    /// together; push mode hands it one event at a time.
    pub fn batch_handler<B: BatchHandler>(
        self,
        handler: B,
    ) -> ConsumerBuilder<NoInbox, Batched<B>> {
        self.with_handler(Batched(handler))
    }
}

impl ConsumerBuilder<WithInbox, NoHandler> {
    /// Sets the handler (inbox on: an [`InboxHandler`], called with the inbox transaction's
    /// connection).
    pub fn handler<H: InboxHandler>(self, handler: H) -> ConsumerBuilder<WithInbox, H> {
        self.with_handler(handler)
    }

    /// Sets an [`InboxBatchHandler`] (inbox on): in pull mode each pull request's events go to
    /// it together, in one inbox transaction with one multi-row inbox claim and one commit;
    /// push mode hands it one event at a time.
    pub fn batch_handler<B: InboxBatchHandler>(
        self,
        handler: B,
    ) -> ConsumerBuilder<WithInbox, Batched<B>> {
        self.with_handler(Batched(handler))
    }
}

impl<I> ConsumerBuilder<I, NoHandler> {
    fn with_handler<H>(self, handler: H) -> ConsumerBuilder<I, H> {
        ConsumerBuilder {
            settings: self.settings,
            inbox: self.inbox,
            handler,
        }
    }
}

impl<I, H> ConsumerBuilder<I, H> {
    /// Adds a middleware around the handler; the first added runs outermost.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.settings.middleware.push(Arc::new(middleware));
        self
    }

    /// How many messages are processed at once (default: the config's
    /// `handler_concurrency`; 1 = strictly sequential, in delivery order). Values below 1 mean 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.settings.concurrency = n.max(1);
        self
    }

    /// How long shutdown waits for in-flight messages (default 30 s); later work is abandoned
    /// unacked.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// How long one pull request waits for messages (default 5 s, the gem's fetch timeout).
    pub fn fetch_wait(mut self, wait: Duration) -> Self {
        self.settings.fetch_wait = wait.max(Duration::from_millis(10));
        self
    }

    /// Interval of in-progress acks while a handler runs (default `ack_wait / 2`; `None`
    /// disables them).
    pub fn progress_interval(mut self, every: Option<Duration>) -> Self {
        self.settings.progress_interval = every.filter(|d| !d.is_zero());
        self
    }

    /// Per-message time limit; a handler running longer is cancelled (its transaction rolls
    /// back) and retried with backoff, error class `Timeout` (default: none).
    pub fn handler_timeout(mut self, limit: Option<Duration>) -> Self {
        self.settings.handler_timeout = limit;
        self
    }

    /// Backoff between failed pull requests / recovery attempts: doubles from `min` to `max`
    /// (default 100 ms to 30 s).
    pub fn recovery_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.recovery_backoff = (min, max.max(min));
        self
    }

    /// Backoff between probes of an unavailable database: doubles from `min` to `max`
    /// (default 100 ms to 10 s). While the database is unavailable the consumer fetches
    /// nothing and holds the messages it has (in-progress acks); see the crate documentation.
    pub fn outage_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.outage_backoff = (min, max.max(min));
        self
    }

    /// Interval of the health log line (iterations, RSS, uptime; default 10 minutes).
    pub fn health_log_interval(mut self, every: Duration) -> Self {
        self.settings.health_log_interval = every;
        self
    }
}

impl<H: Handler> ConsumerBuilder<NoInbox, H> {
    /// Checks the settings and binds the durable by name (no JetStream API call). In push
    /// mode the runtime subscribes to the delivery subject with the push group when it runs.
    ///
    /// # Errors
    ///
    /// [`MissingPool`](ConsumerErrorKind::MissingPool) when the config's `use_inbox` is on
    /// (use [`with_inbox`](ConsumerBuilder::with_inbox)); [`Bind`](ConsumerErrorKind::Bind)
    /// for unusable stream/durable names.
    pub fn build(self) -> Result<Consumer> {
        self.settings.require_no_inbox()?;
        self.settings.build(Direct(self.handler))
    }
}

impl<B: BatchHandler> ConsumerBuilder<NoInbox, Batched<B>> {
    /// As [`build`](ConsumerBuilder::build) for a single-event handler.
    ///
    /// # Errors
    ///
    /// As [`build`](ConsumerBuilder::build) for a single-event handler.
    pub fn build(self) -> Result<Consumer> {
        self.settings.require_no_inbox()?;
        self.settings.build(Direct(self.handler))
    }
}

impl<H: InboxHandler> ConsumerBuilder<WithInbox, H> {
    /// Checks the settings and binds the durable by name (no JetStream API call).
    ///
    /// # Errors
    ///
    /// [`Bind`](ConsumerErrorKind::Bind) for unusable stream/durable names.
    pub fn build(self) -> Result<Consumer> {
        let apply = Transactional {
            handler: self.handler,
            pool: self.inbox.pool,
            inbox: Inbox::new(),
        };
        self.settings.build(apply)
    }
}

impl<B: InboxBatchHandler> ConsumerBuilder<WithInbox, Batched<B>> {
    /// As [`build`](ConsumerBuilder::build) for a single-event handler with the inbox.
    ///
    /// # Errors
    ///
    /// [`Bind`](ConsumerErrorKind::Bind) for unusable stream/durable names.
    pub fn build(self) -> Result<Consumer> {
        let apply = Transactional {
            handler: self.handler,
            pool: self.inbox.pool,
            inbox: Inbox::new(),
        };
        self.settings.build(apply)
    }
}

impl Settings {
    /// A builder without the inbox is wrong when the config says the inbox is on.
    fn require_no_inbox(&self) -> Result<()> {
        if self.config.use_inbox() {
            return Err(ConsumerError::new(ConsumerErrorKind::MissingPool));
        }
        Ok(())
    }

    fn build<A: Apply>(self, apply: A) -> Result<Consumer> {
        let pull = bind_pull_consumer(
            &self.js,
            self.config.stream_name().as_str(),
            self.config.durable_name().as_str(),
        )
        .map_err(|e| ConsumerError::with_source(ConsumerErrorKind::Bind, e))?;
        let stats = Stats::new();
        let recovery = Doubling {
            min: self.recovery_backoff.0,
            max: self.recovery_backoff.1,
        };
        let processor = Processor {
            apply,
            dlq_subject: self.config.subjects().dlq().as_str().to_owned(),
            backoff: self.config.backoff().to_vec(),
            use_dlq: self.config.use_dlq(),
            max_deliver: AtomicU32::new(self.config.max_deliver()),
            js: self.js.clone(),
            middleware: self.middleware,
            stats: stats.clone(),
            progress_interval: self.progress_interval,
            handler_timeout: self.handler_timeout,
            outage: Outage::new(
                Doubling {
                    min: self.outage_backoff.0,
                    max: self.outage_backoff.1,
                },
                stats.clone(),
            ),
            shutdown: CancellationToken::new(),
            released: AtomicU64::new(0),
            attempts: Attempts::new(
                self.progress_interval,
                self.config.ack_wait(),
                self.js.client(),
                self.config.durable_name().as_str().to_owned(),
            ),
        };
        let runtime = Runtime {
            processor: Arc::new(processor),
            fetcher: Fetcher {
                config: self.config,
                js: self.js,
                pull,
                stats,
                fetch_wait: self.fetch_wait,
                recovery,
                health_log_interval: self.health_log_interval,
            },
            concurrency: self.concurrency,
            shutdown_timeout: self.shutdown_timeout,
        };
        Ok(runtime.into_consumer())
    }
}
