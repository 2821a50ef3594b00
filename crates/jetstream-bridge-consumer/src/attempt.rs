//! One attempt at an event or a batch, per handler slot ([`Apply`]): without the inbox, the
//! middleware chain and the handler; with it, its transaction around them. Always under the
//! per-message time limit, with panics caught.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use async_nats::jetstream::Message;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::Either;
use futures_util::FutureExt;
use jetstream_bridge_inbox::{Inbox, InboxEntry, InboxError, Recorded};
use tracing::{error, warn};

use crate::event::{metadata, Event};
use crate::handler::{
    BatchHandler, Batched, Handler, HandlerError, InboxBatchHandler, InboxHandler,
};
use crate::middleware::{Call, CallInTx, Next, Target};
use crate::outage::is_pool_outage;
use crate::process::Processor;

/// A consumer's handler slot: how one attempt at an event runs, and how the messages of one
/// pull request are processed.
pub(crate) trait Apply: Send + Sync + Sized + 'static {
    /// Pull requests go to the handler as one batch (batch mode).
    const BATCH: bool;
    /// The inbox is on.
    const INBOX: bool;

    /// One attempt at `event`: `Ok` says whether it was new or a duplicate.
    fn attempt(
        p: &Processor<Self>,
        event: &Event,
    ) -> impl Future<Output = Result<Recorded, HandlerError>> + Send;

    /// Records a failed attempt where the slot keeps such records (the inbox).
    fn record_failure(
        &self,
        event: &Event,
        error: &HandlerError,
    ) -> impl Future<Output = ()> + Send;

    /// Whether the database answers again after an outage: `Err` with the reason while it
    /// does not. Without the inbox the runtime knows no database, so this just lets the held
    /// messages try again (the backoff between probes still applies).
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// Processes the messages of one pull request, one by one in stream order (batch slots:
    /// as one batch).
    fn process_many(p: &Processor<Self>, messages: &[Message]) -> impl Future<Output = ()> + Send {
        async move {
            for message in messages {
                p.process(message, metadata(message)).await;
            }
        }
    }
}

/// A batch handler's slot: one attempt at a whole batch.
pub(crate) trait BatchApply: Apply {
    /// One attempt at `events`; `Ok` holds, per event, whether it was new or a duplicate.
    fn attempt_batch(
        p: &Processor<Self>,
        events: &[Event],
    ) -> impl Future<Output = Result<Vec<Recorded>, HandlerError>> + Send;
}

/// The slot of a consumer without the inbox: the handler alone.
pub(crate) struct Direct<H>(pub(crate) H);

/// The slot of a consumer with the inbox: the handler inside the inbox transaction.
pub(crate) struct Transactional<H> {
    pub(crate) handler: H,
    pub(crate) pool: Pool<AsyncPgConnection>,
    pub(crate) inbox: Inbox,
}

impl<H: Handler> Apply for Direct<H> {
    const BATCH: bool = false;
    const INBOX: bool = false;

    async fn attempt(p: &Processor<Self>, event: &Event) -> Result<Recorded, HandlerError> {
        Self::attempt_one(p, event).await
    }

    async fn record_failure(&self, _event: &Event, _error: &HandlerError) {}

    async fn probe(&self) -> Result<(), String> {
        Ok(())
    }
}

impl<B: BatchHandler> Apply for Direct<Batched<B>> {
    const BATCH: bool = true;
    const INBOX: bool = false;

    async fn attempt(p: &Processor<Self>, event: &Event) -> Result<Recorded, HandlerError> {
        Self::attempt_one(p, event).await
    }

    async fn record_failure(&self, _event: &Event, _error: &HandlerError) {}

    async fn probe(&self) -> Result<(), String> {
        Ok(())
    }

    async fn process_many(p: &Processor<Self>, messages: &[Message]) {
        p.process_batch(messages).await;
    }
}

impl<B: BatchHandler> BatchApply for Direct<Batched<B>> {
    async fn attempt_batch(
        p: &Processor<Self>,
        events: &[Event],
    ) -> Result<Vec<Recorded>, HandlerError> {
        let call = p.apply.0 .0.handle_batch(events);
        p.limited("batch handler", p.catch_panic(call, "batch handler"))
            .await
            .map(|()| vec![Recorded::New; events.len()])
    }
}

impl<H: Call + 'static> Direct<H> {
    /// One attempt: the middleware chain and the handler (a single-event one, or a batch
    /// handler given a one-event batch).
    async fn attempt_one(p: &Processor<Self>, event: &Event) -> Result<Recorded, HandlerError> {
        let chain = p.chain(Target::Direct(&p.apply.0));
        p.limited("handler", p.catch_panic(chain.run(event), "handler"))
            .await
            .map(|()| Recorded::New)
    }
}

impl<H: InboxHandler> Apply for Transactional<H> {
    const BATCH: bool = false;
    const INBOX: bool = true;

    async fn attempt(p: &Processor<Self>, event: &Event) -> Result<Recorded, HandlerError> {
        p.limited("handler", p.apply.attempt_one(p, event)).await
    }

    async fn record_failure(&self, event: &Event, error: &HandlerError) {
        self.write_failure(event, error).await;
    }

    async fn probe(&self) -> Result<(), String> {
        self.probe_database().await
    }
}

impl<B: InboxBatchHandler> Apply for Transactional<Batched<B>> {
    const BATCH: bool = true;
    const INBOX: bool = true;

    async fn attempt(p: &Processor<Self>, event: &Event) -> Result<Recorded, HandlerError> {
        p.limited("handler", p.apply.attempt_one(p, event)).await
    }

    async fn record_failure(&self, event: &Event, error: &HandlerError) {
        self.write_failure(event, error).await;
    }

    async fn probe(&self) -> Result<(), String> {
        self.probe_database().await
    }

    async fn process_many(p: &Processor<Self>, messages: &[Message]) {
        p.process_batch(messages).await;
    }
}

impl<B: InboxBatchHandler> BatchApply for Transactional<Batched<B>> {
    async fn attempt_batch(
        p: &Processor<Self>,
        events: &[Event],
    ) -> Result<Vec<Recorded>, HandlerError> {
        let t = &p.apply;
        let attempt = async {
            // Built before the transaction opens: no lock is held during this CPU work.
            let entries: Vec<InboxEntry> = events.iter().map(inbox_entry).collect();
            let mut guard = TxConn::checkout(&t.pool).await?;
            let recorded = guard
                .conn()?
                .transaction::<Vec<Recorded>, TxError, _>(async |conn| {
                    let recorded = t.inbox.record_processed_batch(conn, &entries).await?;
                    if recorded.iter().all(|r| *r == Recorded::New) {
                        p.catch_panic(t.handler.0.handle_batch(events, conn), "batch handler")
                            .await
                            .map_err(TxError::Handler)?;
                    } else {
                        let fresh: Vec<Event> = events
                            .iter()
                            .zip(&recorded)
                            .filter(|(_, r)| **r == Recorded::New)
                            .map(|(e, _)| e.clone())
                            .collect();
                        if !fresh.is_empty() {
                            p.catch_panic(t.handler.0.handle_batch(&fresh, conn), "batch handler")
                                .await
                                .map_err(TxError::Handler)?;
                        }
                    }
                    Ok(recorded)
                })
                .await;
            guard.release();
            Ok(recorded?)
        };
        p.limited("batch handler", attempt).await
    }
}

impl<H: CallInTx> Transactional<H> {
    /// One event in its inbox transaction: the inbox row written as processed, then the
    /// middleware chain and the handler (a single-event one, or a batch handler given a
    /// one-event batch) on the same connection.
    async fn attempt_one<A: Sync>(
        &self,
        p: &Processor<A>,
        event: &Event,
    ) -> Result<Recorded, HandlerError> {
        let entry = inbox_entry(event);
        let mut guard = TxConn::checkout(&self.pool).await?;
        let recorded = guard
            .conn()?
            .transaction::<Recorded, TxError, _>(async |conn| {
                // Written as processed at once: the row commits only with the handler's
                // writes.
                if self.inbox.record_processed(conn, &entry).await? == Recorded::Duplicate {
                    return Ok(Recorded::Duplicate);
                }
                let chain = p.chain(Target::InTx(&self.handler, conn));
                p.catch_panic(chain.run(event), "handler")
                    .await
                    .map_err(TxError::Handler)?;
                Ok(Recorded::New)
            })
            .await;
        guard.release();
        Ok(recorded?)
    }
}

impl<H> Transactional<H> {
    /// A connection from the pool, and the server accepts writes (not a standby in recovery,
    /// not read-only).
    async fn probe_database(&self) -> Result<(), String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let state: ReadOnly = diesel::sql_query(
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on' \
             AS read_only",
        )
        .get_result(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        if state.read_only {
            return Err("the database accepts no writes (read-only or in recovery)".to_owned());
        }
        Ok(())
    }

    /// Records a failed attempt in the inbox, outside the rolled-back transaction.
    async fn write_failure(&self, event: &Event, error: &HandlerError) {
        let entry = inbox_entry(event);
        let result = match self.pool.get().await {
            Ok(mut conn) => self
                .inbox
                .record_failure(&mut conn, &entry, &format!("{}: {error}", error.class()))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            warn!(error = %e, "could not record the failed attempt in the inbox");
        }
    }
}

impl<A> Processor<A> {
    /// The middleware chain in front of `target`.
    pub(crate) fn chain<'a>(&'a self, target: Target<'a>) -> Next<'a> {
        Next::new(&self.middleware, target)
    }

    /// `work` under the per-message time limit (`handler_timeout`): a timeout is a
    /// retryable error of class `Timeout` (dropping `work` rolls its transaction back).
    ///
    /// This and [`catch_panic`](Self::catch_panic) wrap futures with combinators rather than
    /// being `async fn`s: an `async fn` would hold its argument and the wrapped copy side by
    /// side, doubling the size of every message's job at each layer.
    fn limited<'a, T: 'a>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T, HandlerError>> + 'a,
    ) -> impl Future<Output = Result<T, HandlerError>> + 'a {
        match self.handler_timeout {
            Some(limit) => Either::Left(tokio::time::timeout(limit, work).map(move |out| {
                out.unwrap_or_else(|_| {
                    Err(
                        HandlerError::retry(format!("{what} did not finish within {limit:?}"))
                            .with_class("Timeout"),
                    )
                })
            })),
            None => Either::Right(work),
        }
    }

    /// Awaits `call`, turning a panic into a retryable error of class `Panic` (counted).
    fn catch_panic<'a>(
        &'a self,
        call: impl Future<Output = Result<(), HandlerError>> + 'a,
        what: &'static str,
    ) -> impl Future<Output = Result<(), HandlerError>> + 'a {
        AssertUnwindSafe(call)
            .catch_unwind()
            .map(move |out| out.unwrap_or_else(|panic| Err(self.panicked(&*panic, what))))
    }

    /// Counts and logs a caught panic of `what`; the retryable error it becomes.
    fn panicked(&self, panic: &(dyn std::any::Any + Send), what: &str) -> HandlerError {
        self.stats.update(|s| s.panics += 1);
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| format!("{what} panicked"));
        error!(panic = %text, "{what} panicked");
        HandlerError::retry(format!("{what} panicked: {text}")).with_class("Panic")
    }
}

/// The answer of the probe's query.
#[derive(diesel::QueryableByName)]
struct ReadOnly {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    read_only: bool,
}

/// Errors of the inbox transaction.
enum TxError {
    Handler(HandlerError),
    Inbox(InboxError),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Database(e)
    }
}

impl From<InboxError> for TxError {
    fn from(e: InboxError) -> Self {
        Self::Inbox(e)
    }
}

impl From<TxError> for HandlerError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Handler(e) => e,
            TxError::Inbox(e) if e.is_transient() => Self::unavailable(e),
            TxError::Inbox(e) => Self::retry(e).with_class("InboxError"),
            TxError::Database(e) => Self::from(e),
        }
    }
}

/// A pooled connection for one inbox transaction. Dropped before [`release`](Self::release)
/// (the attempt was cancelled mid-transaction: handler timeout, shutdown hard stop), it is
/// taken out of the pool and closed, so PostgreSQL rolls the transaction back at once instead
/// of an idle-in-transaction connection keeping the inbox rows locked in the pool until its
/// next checkout.
struct TxConn(Option<Object<AsyncPgConnection>>);

impl TxConn {
    /// A connection from `pool`; a pool error is retryable (class `PoolError`).
    async fn checkout(pool: &Pool<AsyncPgConnection>) -> Result<Self, HandlerError> {
        pool.get().await.map(|conn| Self(Some(conn))).map_err(|e| {
            if is_pool_outage(&e) {
                HandlerError::unavailable(e)
            } else {
                HandlerError::retry(e).with_class("PoolError")
            }
        })
    }

    fn conn(&mut self) -> Result<&mut AsyncPgConnection, HandlerError> {
        match &mut self.0 {
            Some(conn) => Ok(conn),
            None => Err(HandlerError::retry("connection already released").with_class("PoolError")),
        }
    }

    /// The transaction has ended (committed or rolled back): back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

pub(crate) fn inbox_entry(event: &Event) -> InboxEntry {
    let meta = &event.metadata;
    InboxEntry::from_body(&event.envelope, event.body.clone())
        .with_message(
            meta.subject.as_str(),
            meta.stream.as_str(),
            meta.stream_sequence,
            meta.deliveries,
        )
        .with_headers(meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::tests::{event, metadata_for};

    /// Without message info the inbox entry has no stream position (`NULL`, not `("", 0)`),
    /// so two such events in one batch statement cannot collide on the unique
    /// `(stream, stream_seq)` index.
    #[test]
    fn inbox_entry_without_message_info_has_no_stream_position() {
        let meta = metadata_for("a.sync.b");
        let entry = inbox_entry(&event(meta));
        assert_eq!((entry.stream.as_deref(), entry.stream_seq), (None, None));
        assert_eq!(entry.subject.as_deref(), Some("a.sync.b"));
        assert_eq!(entry.deliveries, Some(1));

        let mut known = metadata_for("a.sync.b");
        known.stream = "s".to_owned();
        known.stream_sequence = 9;
        let entry = inbox_entry(&event(known));
        assert_eq!(
            (entry.stream.as_deref(), entry.stream_seq),
            (Some("s"), Some(9))
        );
    }
}
