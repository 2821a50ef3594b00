//! [`OutboxError`]: the one error type of this crate (style B4, I/O-facing shape).

use jetstream_bridge_config::{EnvelopeError, EventId};

/// A boxed error source: keeps diesel and async-nats error types out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`OutboxError`] as the default error type.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// An error from enqueueing, relaying, publishing, migrating or pruning outbox events.
///
/// Branch on [`kind`](Self::kind); the underlying diesel / async-nats error, when there is one,
/// is the [`source`](std::error::Error::source) (its type is not part of the API).
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct OutboxError {
    kind: OutboxErrorKind,
    event_id: Option<EventId>,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`OutboxError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxErrorKind {
    /// The encoded envelope is larger than `max_payload_bytes`; nothing was written or sent.
    #[error("payload is {size} bytes, over the {max}-byte limit")]
    PayloadTooLarge {
        /// Encoded envelope size in bytes.
        size: usize,
        /// The configured limit ([`Config::max_payload_bytes`](jetstream_bridge_config::Config::max_payload_bytes)).
        max: usize,
    },
    /// The event cannot become an envelope (empty event type, payload not a JSON object or not
    /// serializable, invalid event id or trace id, invalid subject); the source says which.
    #[error("invalid event")]
    InvalidEvent,
    /// An event with this event id is already in the outbox (unique `event_id`, SQLSTATE 23505).
    #[error("event id already in the outbox")]
    DuplicateEventId,
    /// A database statement or connection failed.
    #[error("database unavailable")]
    Database,
    /// Applying or reading migrations failed.
    #[error("migration failed")]
    Migration,
    /// JetStream did not acknowledge the publish (after the configured retries, for a direct
    /// publish); [`is_transient`](OutboxError::is_transient) tells timeouts from rejections.
    #[error("publish not acknowledged by JetStream")]
    PublishNotAcked,
    /// No stream captures the subject (the server answered "no responders").
    #[error("no stream captures the subject")]
    NoStream,
}

impl OutboxError {
    pub(crate) fn new(kind: OutboxErrorKind) -> Self {
        Self {
            kind,
            event_id: None,
            source: None,
        }
    }

    pub(crate) fn with_source(kind: OutboxErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            event_id: None,
            source: Some(source.into()),
        }
    }

    pub(crate) fn for_event(mut self, event_id: EventId) -> Self {
        self.event_id = Some(event_id);
        self
    }

    pub(crate) fn database(source: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match source {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                Self::with_source(OutboxErrorKind::DuplicateEventId, source)
            }
            other => Self::with_source(OutboxErrorKind::Database, other),
        }
    }

    pub(crate) fn envelope(source: EnvelopeError) -> Self {
        match source {
            EnvelopeError::TooLarge { size, max } => {
                Self::new(OutboxErrorKind::PayloadTooLarge { size, max })
            }
            other => Self::with_source(OutboxErrorKind::InvalidEvent, other),
        }
    }

    pub(crate) fn publish(source: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind;
        let kind = match source.kind() {
            PublishErrorKind::StreamNotFound => OutboxErrorKind::NoStream,
            _ => OutboxErrorKind::PublishNotAcked,
        };
        let transient = matches!(
            source.kind(),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
        );
        let mut err = Self::with_source(kind, source);
        if transient {
            err.source = err.source.map(|s| Box::new(Transient(s)) as BoxError);
        }
        err
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> OutboxErrorKind {
        self.kind
    }

    /// The event the error is about, when known (direct and batch publish set it).
    #[must_use]
    pub fn event_id(&self) -> Option<&EventId> {
        self.event_id.as_ref()
    }

    /// Whether retrying the same operation later may succeed: database errors, and publishes
    /// that timed out or lost the connection (the server may not have seen them). A rejected
    /// publish, an invalid or oversized event and a duplicate event id are not transient.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self.kind {
            OutboxErrorKind::Database => true,
            OutboxErrorKind::PublishNotAcked => self
                .source
                .as_ref()
                .is_some_and(|s| s.downcast_ref::<Transient>().is_some()),
            _ => false,
        }
    }
}

/// Lets [`OutboxError`] be the error type of a diesel-async `transaction` closure that calls
/// [`Outbox::enqueue`](crate::Outbox::enqueue): a failed statement (or `BEGIN`/`COMMIT`) becomes
/// [`OutboxErrorKind::Database`] (or [`DuplicateEventId`](OutboxErrorKind::DuplicateEventId)).
impl From<diesel::result::Error> for OutboxError {
    fn from(source: diesel::result::Error) -> Self {
        Self::database(source)
    }
}

/// Marks a publish error as a timeout / lost connection, so [`OutboxError::is_transient`] can
/// tell without exposing async-nats types.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Transient(BoxError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_ours_and_lowercase() {
        let err = OutboxError::envelope(EnvelopeError::TooLarge { size: 10, max: 5 });
        assert_eq!(
            err.kind(),
            OutboxErrorKind::PayloadTooLarge { size: 10, max: 5 }
        );
        assert_eq!(
            err.to_string(),
            "payload is 10 bytes, over the 5-byte limit"
        );
        assert!(!err.is_transient());
        let db = OutboxError::database(diesel::result::Error::NotFound);
        assert_eq!(db.to_string(), "database unavailable");
        assert!(db.is_transient());
    }

    #[test]
    fn publish_errors_are_classified() {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        let timeout = OutboxError::publish(PublishError::new(PublishErrorKind::TimedOut));
        assert_eq!(timeout.kind(), OutboxErrorKind::PublishNotAcked);
        assert!(timeout.is_transient());
        let none = OutboxError::publish(PublishError::new(PublishErrorKind::StreamNotFound));
        assert_eq!(none.kind(), OutboxErrorKind::NoStream);
        assert!(!none.is_transient());
        let big = OutboxError::publish(PublishError::new(PublishErrorKind::MaxPayloadExceeded));
        assert!(!big.is_transient());
    }
}
