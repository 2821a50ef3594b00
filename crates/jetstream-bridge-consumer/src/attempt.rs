//! One attempt at a message or a batch: with the inbox, its transaction around the middleware
//! chain and the handler; without, the chain alone; under the per-message time limit, with
//! panics caught.

use std::panic::AssertUnwindSafe;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::FutureExt;
use jetstream_bridge_inbox::{InboxEntry, InboxError, Recorded};
use tracing::error;

use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use crate::middleware::Next;
use crate::process::Processor;

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
            TxError::Inbox(e) => Self::retry(e).with_class("InboxError"),
            TxError::Database(e) => Self::from(e),
        }
    }
}

impl<H: Handler> Processor<H> {
    /// One attempt: with the inbox, its transaction around the handler; without, the handler.
    pub(crate) async fn attempt(&self, event: &Event) -> Result<Recorded, HandlerError> {
        self.limited("handler", async {
            let Some(pool) = self.inbox_pool() else {
                return self.call_handler(event, None).await.map(|()| Recorded::New);
            };
            let entry = inbox_entry(event);
            let mut guard = TxConn::checkout(pool).await?;
            let recorded = guard
                .conn()?
                .transaction::<Recorded, TxError, _>(async |conn| {
                    // Written as processed at once: the row commits only with the handler's
                    // writes.
                    if self.inbox.record_processed(conn, &entry).await? == Recorded::Duplicate {
                        return Ok(Recorded::Duplicate);
                    }
                    self.call_handler(event, Some(conn))
                        .await
                        .map_err(TxError::Handler)?;
                    Ok(Recorded::New)
                })
                .await;
            guard.release();
            Ok(recorded?)
        })
        .await
    }

    /// One batch attempt; `Ok` holds, per event, whether it was new or a duplicate.
    pub(crate) async fn attempt_batch(
        &self,
        events: &[Event],
    ) -> Result<Vec<Recorded>, HandlerError> {
        self.limited("batch handler", async {
            let Some(pool) = self.inbox_pool() else {
                self.call_batch(events, None).await?;
                return Ok(vec![Recorded::New; events.len()]);
            };
            // Built before the transaction opens: no lock is held during this CPU work.
            let entries: Vec<InboxEntry> = events.iter().map(inbox_entry).collect();
            let mut guard = TxConn::checkout(pool).await?;
            let recorded = guard
                .conn()?
                .transaction::<Vec<Recorded>, TxError, _>(async |conn| {
                    let recorded = self.inbox.record_processed_batch(conn, &entries).await?;
                    if recorded.iter().all(|r| *r == Recorded::New) {
                        self.call_batch(events, Some(conn))
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
                            self.call_batch(&fresh, Some(conn))
                                .await
                                .map_err(TxError::Handler)?;
                        }
                    }
                    Ok(recorded)
                })
                .await;
            guard.release();
            Ok(recorded?)
        })
        .await
    }

    /// The middleware chain and the handler, with a panic turned into a retryable error.
    async fn call_handler(
        &self,
        event: &Event,
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let chain = Next::new(&self.middleware, conn, &self.handler);
        self.catch_panic(chain.run(event), "handler").await
    }

    /// The batch handler, with a panic turned into a retryable error.
    async fn call_batch(
        &self,
        events: &[Event],
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let Some(call) = self.handler.__handle_batch(events, conn) else {
            return Err(HandlerError::permanent("not a batch handler"));
        };
        self.catch_panic(call, "batch handler").await
    }

    /// `work` under the per-message time limit (`handler_timeout`): a timeout is a
    /// retryable error of class `Timeout` (dropping `work` rolls its transaction back).
    async fn limited<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        match self.handler_timeout {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(out) => out,
                Err(_) => Err(HandlerError::retry(format!(
                    "{what} did not finish within {limit:?}"
                ))
                .with_class("Timeout")),
            },
            None => work.await,
        }
    }

    /// Awaits `call`, turning a panic into a retryable error of class `Panic` (counted).
    async fn catch_panic(
        &self,
        call: impl std::future::Future<Output = Result<(), HandlerError>>,
        what: &str,
    ) -> Result<(), HandlerError> {
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                self.stats.update(|s| s.panics += 1);
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| format!("{what} panicked"));
                error!(panic = %text, "{what} panicked");
                Err(HandlerError::retry(format!("{what} panicked: {text}")).with_class("Panic"))
            }
        }
    }

    /// The pool when the inbox is on.
    pub(crate) fn inbox_pool(&self) -> Option<&Pool<AsyncPgConnection>> {
        self.pool.as_ref().filter(|_| self.use_inbox)
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
        pool.get()
            .await
            .map(|conn| Self(Some(conn)))
            .map_err(|e| HandlerError::retry(e.to_string()).with_class("PoolError"))
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
    InboxEntry::from_envelope(&event.envelope)
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
