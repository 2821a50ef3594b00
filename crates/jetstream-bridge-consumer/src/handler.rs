//! The handler API: [`Handler`], [`BatchHandler`], and [`HandlerError`] saying what happens
//! next.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use diesel_async::AsyncPgConnection;

use crate::error::BoxError;
use crate::event::Event;

/// Applies events **without** the inbox: what a consumer built without
/// [`with_inbox`](crate::ConsumerBuilder::with_inbox) runs. Implement it on your own type
/// (it is shared by every in-flight message, so it is `Sync`; clone pools and clients into
/// it).
///
/// Nothing deduplicates events for it: a redelivery (after a lost ack, a crash, a retry) runs
/// it again, so it must be idempotent. With the inbox, implement [`InboxHandler`] instead.
///
/// A panic in `handle` is caught and treated as [`HandlerError::retry`].
///
/// # Examples
///
/// ```
/// use jetstream_bridge_consumer::{Event, Handler, HandlerError};
///
/// struct Notify;
///
/// impl Handler for Notify {
///     async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
///         if event.envelope.event_type != "user.created" {
///             return Ok(()); // not ours: ack
///         }
///         let email = event.envelope.payload["email"]
///             .as_str()
///             .ok_or_else(|| HandlerError::permanent("user without email"))?; // DLQ now
///         println!("welcome mail to {email}"); // must tolerate a second delivery
///         Ok(())
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Applies one event.
    fn handle(&self, event: &Event) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Applies events **inside the inbox transaction**: what a consumer built with
/// [`with_inbox`](crate::ConsumerBuilder::with_inbox) runs.
///
/// `conn` is a connection inside the transaction that also records the event id in the
/// inbox. Write your effects on it: they commit together with the inbox row, so they happen
/// once per event id, and returning an error rolls them back. Effects outside `conn` are not
/// protected.
///
/// A panic in `handle` is caught and treated as [`HandlerError::retry`]. A database error
/// returned with `?` is retried with backoff, unless the database is unreachable: then the
/// consumer waits for it without spending the message's deliveries (see the crate
/// documentation).
///
/// # Examples
///
/// ```
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// use jetstream_bridge_consumer::{Event, HandlerError, InboxHandler};
///
/// struct ApplyBilling;
///
/// impl InboxHandler for ApplyBilling {
///     async fn handle(
///         &self,
///         event: &Event,
///         conn: &mut AsyncPgConnection,
///     ) -> Result<(), HandlerError> {
///         if event.envelope.event_type != "invoice.paid" {
///             return Ok(()); // not ours: ack
///         }
///         diesel::sql_query("UPDATE invoices SET paid = true WHERE id = $1")
///             .bind::<diesel::sql_types::Text, _>(&event.envelope.resource_id)
///             .execute(conn)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait InboxHandler: Send + Sync + 'static {
    /// Applies one event on `conn`, inside the inbox transaction.
    fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Applies several events at once **inside the inbox transaction**: every event of one pull
/// request (up to `batch_size`) that is not a duplicate, in stream order, in **one** inbox
/// transaction with one commit and then one ack per message. Register it with
/// [`ConsumerBuilder::batch_handler`](crate::ConsumerBuilder::batch_handler) after
/// [`with_inbox`](crate::ConsumerBuilder::with_inbox).
///
/// Per pull request the runtime runs: `BEGIN`; one multi-row inbox claim
/// ([`Inbox::record_processed_batch`](jetstream_bridge_inbox::Inbox::record_processed_batch))
/// that tells new events from duplicates (already processed, or a second copy in the same
/// pull); `handle_batch` with the new ones; `COMMIT`; then every message of the batch is
/// acked (duplicates too). Write the effects with as few statements as possible (one
/// multi-row `INSERT … SELECT FROM unnest($1)` rather than one per event): the round trips
/// of the handler are what limits the throughput.
///
/// When a batch fails (any error, a panic, the `handler_timeout`, a database error), its
/// transaction rolls back **as a whole** and its events are processed again **one by one**
/// (each as a one-event batch, in its own transaction, through the middleware), so one poison
/// event is retried or dead-lettered alone and its batch mates commit and are acked. The
/// handler therefore sees an event at most twice per delivery (in the batch, then alone) and
/// must not have effects outside `conn`. Middleware wraps only these one-by-one calls.
///
/// While the batch and then its fallback run, every one of its messages gets in-progress
/// acks (`progress_interval`), so a fallback longer than `ack_wait` does not get the events
/// still waiting for their turn redelivered elsewhere. Push mode hands it one event at a
/// time.
///
/// # Examples
///
/// ```
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// use jetstream_bridge_consumer::{Event, HandlerError, InboxBatchHandler};
///
/// struct CountEvents;
///
/// impl InboxBatchHandler for CountEvents {
///     async fn handle_batch(
///         &self,
///         events: &[Event],
///         conn: &mut AsyncPgConnection,
///     ) -> Result<(), HandlerError> {
///         diesel::sql_query("UPDATE counters SET n = n + $1")
///             .bind::<diesel::sql_types::BigInt, _>(events.len() as i64)
///             .execute(conn)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait InboxBatchHandler: Send + Sync + 'static {
    /// Applies `events` (never empty) on `conn`, inside the inbox transaction.
    fn handle_batch(
        &self,
        events: &[Event],
        conn: &mut AsyncPgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Applies several events at once **without** the inbox: the events of one pull request (up
/// to `batch_size`), in stream order, then one ack per message. Register it with
/// [`ConsumerBuilder::batch_handler`](crate::ConsumerBuilder::batch_handler) on a builder
/// without the inbox.
///
/// Nothing rolls back and nothing filters duplicates: when a batch fails (an error, a panic,
/// the `handler_timeout` cancelling it mid-way), the effects already applied for some of its
/// events stay, and the runtime calls the handler again for **every** event of the batch, one
/// by one (each as a one-event batch, through the middleware), those whose effects already
/// happened included; a retried event then runs again on each redelivery. So it must be
/// idempotent per event (the general rule without the inbox, which redeliveries after a lost
/// ack or a crash require anyway); batch failures make such re-runs routine rather than
/// rare. In-progress acks and push mode as for [`InboxBatchHandler`].
///
/// # Examples
///
/// ```
/// use jetstream_bridge_consumer::{BatchHandler, Event, HandlerError};
///
/// struct LogEvents;
///
/// impl BatchHandler for LogEvents {
///     async fn handle_batch(&self, events: &[Event]) -> Result<(), HandlerError> {
///         for event in events {
///             println!("{} {}", event.envelope.event_type, event.envelope.event_id);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies `events` (never empty).
    fn handle_batch(
        &self,
        events: &[Event],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A batch handler ([`BatchHandler`] or [`InboxBatchHandler`]) in a builder's handler slot:
/// what [`ConsumerBuilder::batch_handler`](crate::ConsumerBuilder::batch_handler) installs.
#[derive(Debug, Clone)]
pub struct Batched<B>(pub B);

/// What the runtime does with a failed message, see [`HandlerError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerAction {
    /// NAK with the delay for this delivery (`backoff[n-1]`, the last entry repeating); on the
    /// `max_deliver`-th delivery, dead-letter with reason `max_deliver_exceeded`.
    Retry,
    /// NAK with this delay (still dead-lettered on the `max_deliver`-th delivery).
    RetryAfter(Duration),
    /// Dead-letter now with reason `unrecoverable`.
    Permanent,
}

/// A handler failure that says what happens next (retry with backoff, retry after a delay, or
/// dead-letter now). `Display` is the cause's message.
pub struct HandlerError {
    action: HandlerAction,
    class: Cow<'static, str>,
    source: BoxError,
    /// The database was unavailable (an outage, not this message's failure).
    unavailable: bool,
}

impl HandlerError {
    /// Retry with the configured backoff (NAK with `backoff[deliveries-1]`).
    pub fn retry(error: impl Into<BoxError>) -> Self {
        Self::new(HandlerAction::Retry, error)
    }

    /// Retry after `delay` instead of the configured backoff.
    pub fn retry_after(error: impl Into<BoxError>, delay: Duration) -> Self {
        Self::new(HandlerAction::RetryAfter(delay), error)
    }

    /// The database (or another service every message needs) is unavailable: an outage, not a
    /// failure of this message. The consumer holds the message and pauses fetching until the
    /// database answers again, without spending a delivery, recording a failed attempt or
    /// dead-lettering; then it runs the message again. Database errors returned with `?` are
    /// classified so already (a lost or refused connection, a server shutting down or
    /// starting up, too many connections, a read-only standby).
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        let mut e = Self::new(HandlerAction::Retry, error).with_class("DatabaseUnavailable");
        e.unavailable = true;
        e
    }

    /// Dead-letter now (reason `unrecoverable`); the original is acked once the DLQ publish is
    /// acknowledged.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::new(HandlerAction::Permanent, error)
    }

    fn new(action: HandlerAction, error: impl Into<BoxError>) -> Self {
        Self {
            action,
            class: Cow::Borrowed("HandlerError"),
            source: error.into(),
            unavailable: false,
        }
    }

    /// Sets the `error_class` written to the DLQ context (default `HandlerError`).
    #[must_use]
    pub fn with_class(mut self, class: impl Into<Cow<'static, str>>) -> Self {
        self.class = class.into();
        self
    }

    /// What happens next.
    #[must_use]
    pub fn action(&self) -> HandlerAction {
        self.action
    }

    /// The `error_class` of the DLQ context.
    #[must_use]
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The cause.
    #[must_use]
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Whether this is an outage rather than a failure of the message: made by
    /// [`unavailable`](Self::unavailable), or a retryable error caused by an unavailable
    /// database (anywhere in its source chain). A [`permanent`](Self::permanent) error is
    /// never one: the handler decided.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        self.action != HandlerAction::Permanent
            && (self.unavailable || crate::outage::is_unavailable(&*self.source))
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("action", &self.action)
            .field("class", &self.class)
            .field("source", &self.source)
            .field("unavailable", &self.unavailable)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// A database error (`?` on diesel calls in a handler) is retryable; an unavailable database
/// is an [outage](HandlerError::unavailable).
impl From<diesel::result::Error> for HandlerError {
    fn from(error: diesel::result::Error) -> Self {
        if crate::outage::is_unavailable(&error) {
            Self::unavailable(error)
        } else {
            Self::retry(error).with_class("DatabaseError")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_actions() {
        assert_eq!(HandlerError::retry("x").action(), HandlerAction::Retry);
        let d = Duration::from_secs(3);
        assert_eq!(
            HandlerError::retry_after("x", d).action(),
            HandlerAction::RetryAfter(d)
        );
        let p = HandlerError::permanent("bad input").with_class("Validation");
        assert_eq!(p.action(), HandlerAction::Permanent);
        assert_eq!(
            (p.class(), p.to_string().as_str()),
            ("Validation", "bad input")
        );
        let db = HandlerError::from(diesel::result::Error::NotFound);
        assert_eq!(
            (db.action(), db.class(), db.is_unavailable()),
            (HandlerAction::Retry, "DatabaseError", false)
        );
        let lost = HandlerError::from(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ClosedConnection,
            Box::new("connection closed".to_owned()),
        ));
        assert_eq!(
            (lost.action(), lost.class(), lost.is_unavailable()),
            (HandlerAction::Retry, "DatabaseUnavailable", true)
        );
        assert!(HandlerError::unavailable("pool timed out").is_unavailable());
        assert!(
            !HandlerError::permanent(diesel::result::Error::BrokenTransactionManager)
                .is_unavailable()
        );
    }
}
