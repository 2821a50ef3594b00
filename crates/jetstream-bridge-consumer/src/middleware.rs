//! Composable middleware around the handler: [`Middleware`], [`Next`], and the built-ins
//! [`LoggingMiddleware`], [`MetricsMiddleware`], [`TimeoutMiddleware`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;

use crate::event::Event;
use crate::handler::{
    BatchHandler, Batched, Handler, HandlerError, InboxBatchHandler, InboxHandler,
};

/// A boxed, `Send` future (the return type of [`Middleware::call`]).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Code that runs around the handler for every event (after the envelope parsed; inside the
/// inbox transaction when the inbox is on; a batch handler's batches go to it directly, only
/// its one-by-one fallback calls pass the middleware). Middlewares run in registration order, the first
/// registered outermost; each calls [`Next::run`] to continue (or returns without calling it
/// to short-circuit). Their errors are handled like the handler's.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_consumer::{BoxFuture, Event, HandlerError, Middleware, Next};
///
/// /// Drops events of one type without calling the handler (they are acked).
/// struct SkipType(&'static str);
///
/// impl Middleware for SkipType {
///     fn call<'a>(&'a self, event: &'a Event, next: Next<'a>) -> BoxFuture<'a, Result<(), HandlerError>> {
///         Box::pin(async move {
///             if event.envelope.event_type == self.0 {
///                 return Ok(());
///             }
///             next.run(event).await
///         })
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Runs around the rest of the chain.
    fn call<'a>(
        &'a self,
        event: &'a Event,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// A handler called without a connection, behind a trait object.
pub(crate) trait Call: Send + Sync {
    fn call<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<H: Handler> Call for H {
    fn call<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.handle(event))
    }
}

/// One event as a one-event batch.
impl<B: BatchHandler> Call for Batched<B> {
    fn call<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.0.handle_batch(std::slice::from_ref(event)))
    }
}

/// A handler called with the inbox transaction's connection, behind a trait object.
pub(crate) trait CallInTx: Send + Sync {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        conn: &'a mut AsyncPgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<H: InboxHandler> CallInTx for H {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        conn: &'a mut AsyncPgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.handle(event, conn))
    }
}

/// One event as a one-event batch.
impl<B: InboxBatchHandler> CallInTx for Batched<B> {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        conn: &'a mut AsyncPgConnection,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(self.0.handle_batch(std::slice::from_ref(event), conn))
    }
}

/// The handler at the end of the chain, with its connection when the inbox is on.
pub(crate) enum Target<'a> {
    Direct(&'a dyn Call),
    InTx(&'a dyn CallInTx, &'a mut AsyncPgConnection),
}

/// The rest of the middleware chain and the handler (with its inbox connection).
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    target: Target<'a>,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("middlewares_left", &self.rest.len())
            .field("inbox_connection", &matches!(self.target, Target::InTx(..)))
            .finish()
    }
}

impl<'a> Next<'a> {
    pub(crate) fn new(chain: &'a [Arc<dyn Middleware>], target: Target<'a>) -> Self {
        Self {
            rest: chain,
            target,
        }
    }

    /// Runs the next middleware, or the handler after the last one.
    ///
    /// # Errors
    ///
    /// What the rest of the chain returns.
    ///
    /// # Cancel safety
    ///
    /// As the handler's: cancelling rolls the inbox transaction back.
    pub async fn run(self, event: &'a Event) -> Result<(), HandlerError> {
        match self.rest.split_first() {
            Some((first, rest)) => {
                first
                    .call(
                        event,
                        Next {
                            rest,
                            target: self.target,
                        },
                    )
                    .await
            }
            None => match self.target {
                Target::Direct(handler) => handler.call(event).await,
                Target::InTx(handler, conn) => handler.call(event, conn).await,
            },
        }
    }
}

/// Logs every event: debug when it starts, info when it succeeds, warn when it fails, with the
/// duration (the tracing span around it carries event_id, subject, stream_seq, deliveries).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingMiddleware;

impl Middleware for LoggingMiddleware {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let started = Instant::now();
            tracing::debug!(event_type = %event.envelope.event_type, "handling event");
            let result = next.run(event).await;
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match &result {
                Ok(()) => {
                    tracing::info!(event_type = %event.envelope.event_type, elapsed_ms, "event handled")
                }
                Err(e) => tracing::warn!(event_type = %event.envelope.event_type, elapsed_ms,
                    error = %e, class = e.class(), "event failed"),
            }
            result
        })
    }
}

/// Where [`MetricsMiddleware`] reports each event: the outcome of the chain below it and its
/// duration. Implemented for closures `Fn(&Event, Result<(), &HandlerError>, Duration)`, and
/// by the health crate's Prometheus registry (`jetstream_messages_total`,
/// `jetstream_processing_duration_seconds`).
pub trait MetricsRecorder: Send + Sync + 'static {
    /// Records one handled event.
    fn record(&self, event: &Event, outcome: Result<(), &HandlerError>, elapsed: Duration);
}

impl<F> MetricsRecorder for F
where
    F: Fn(&Event, Result<(), &HandlerError>, Duration) + Send + Sync + 'static,
{
    fn record(&self, event: &Event, outcome: Result<(), &HandlerError>, elapsed: Duration) {
        self(event, outcome, elapsed);
    }
}

/// Reports every event the handler sees to a [`MetricsRecorder`], with the outcome and the
/// duration of the rest of the chain. Register it first so the duration covers the whole
/// chain.
///
/// Messages acked without calling the handler (inbox duplicates) and malformed messages
/// (dead-lettered before the handler) do not pass through it: see
/// [`ConsumerStats`](crate::ConsumerStats).
#[derive(Clone)]
pub struct MetricsMiddleware<R> {
    recorder: R,
}

impl<R> fmt::Debug for MetricsMiddleware<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsMiddleware").finish_non_exhaustive()
    }
}

impl<R: MetricsRecorder> MetricsMiddleware<R> {
    /// A middleware reporting to `recorder` (a closure
    /// `|event, outcome, elapsed| …` or a [`MetricsRecorder`]).
    pub fn new(recorder: R) -> Self {
        Self { recorder }
    }
}

impl<R: MetricsRecorder> Middleware for MetricsMiddleware<R> {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = next.run(event).await;
            self.recorder
                .record(event, result.as_ref().map(|_| ()), started.elapsed());
            result
        })
    }
}

/// Fails an event whose rest of the chain runs longer than the limit (retryable, error class
/// `Timeout`; the inbox transaction rolls back). Same as
/// [`ConsumerBuilder::handler_timeout`](crate::ConsumerBuilder::handler_timeout), but
/// placeable in the chain.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutMiddleware {
    limit: Duration,
}

impl TimeoutMiddleware {
    /// A middleware with this time limit.
    #[must_use]
    pub const fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl Middleware for TimeoutMiddleware {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, next.run(event)).await {
                Ok(result) => result,
                Err(_) => Err(HandlerError::retry(format!(
                    "handler did not finish within {:?}",
                    self.limit
                ))
                .with_class("Timeout")),
            }
        })
    }
}
