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
    transient: bool,
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
    /// An event with this event id is already in the outbox (SQLSTATE 23505 on the unique
    /// `event_id` index `idx_outbox_event_id`; other unique violations are
    /// [`Database`](Self::Database)).
    #[error("event id already in the outbox")]
    DuplicateEventId,
    /// The database could not be reached or aborted the statement for a reason that may pass:
    /// no connection from the pool, connection lost or closed, serialization failure, deadlock,
    /// server shutting down. [Transient](OutboxError::is_transient).
    #[error("database unavailable")]
    DatabaseUnavailable,
    /// The database rejected the statement (a constraint or check violation, an invalid value,
    /// a missing table, a syntax error, ...): retrying the same statement will fail again.
    /// Not transient.
    #[error("database rejected the statement")]
    Database,
    /// JetStream did not acknowledge the publish (after the configured retries, for a direct
    /// publish); [`is_transient`](OutboxError::is_transient) tells timeouts from rejections.
    #[error("publish not acknowledged by JetStream")]
    PublishNotAcked,
    /// No stream captures the subject, or JetStream is not answering right now (the server
    /// answered "no responders"). [Transient](OutboxError::is_transient): the stream may not
    /// be provisioned yet, or JetStream may be restarting.
    #[error("no stream captures the subject")]
    NoStream,
    /// A [`RelayBuilder`](crate::RelayBuilder) setting is out of range (zero batch size,
    /// in-flight window, lease, attempts or poll interval; back-off base zero or above its
    /// maximum; empty relay id); the source lists every problem.
    #[error("invalid relay settings")]
    InvalidSettings,
    /// The relay task panicked or was aborted before it could report.
    #[error("relay task ended abnormally")]
    RelayTask,
}

/// The unique index on `event_id` (migration `create_jetstream_outbox_events`): only a
/// violation of this constraint means "duplicate event id".
pub(crate) const EVENT_ID_UNIQUE_INDEX: &str = "idx_outbox_event_id";

impl OutboxError {
    pub(crate) fn new(kind: OutboxErrorKind) -> Self {
        Self {
            kind,
            event_id: None,
            source: None,
            transient: kind_is_transient(kind),
        }
    }

    pub(crate) fn with_source(kind: OutboxErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(kind)
        }
    }

    pub(crate) fn for_event(mut self, event_id: EventId) -> Self {
        self.event_id = Some(event_id);
        self
    }

    /// A diesel error, classified: the `event_id` unique violation is
    /// [`DuplicateEventId`](OutboxErrorKind::DuplicateEventId); lost connections, serialization
    /// failures, deadlocks and server shutdowns are
    /// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable); everything else (other
    /// constraints, checks, invalid input, SQL errors) is [`Database`](OutboxErrorKind::Database).
    pub(crate) fn database(source: diesel::result::Error) -> Self {
        let kind = classify_diesel(&source);
        Self::with_source(kind, source)
    }

    /// An error of the shared PostgreSQL plumbing: transient ones are
    /// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable), the rest
    /// [`Database`](OutboxErrorKind::Database).
    pub(crate) fn pg(source: jetstream_bridge_pg::PgError) -> Self {
        let kind = if source.is_transient() {
            OutboxErrorKind::DatabaseUnavailable
        } else {
            OutboxErrorKind::Database
        };
        Self::with_source(kind, source)
    }

    /// A connection pool error (no connection could be had): always transient.
    pub(crate) fn pool(source: impl Into<BoxError>) -> Self {
        Self::with_source(OutboxErrorKind::DatabaseUnavailable, source)
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
        let transient = publish_is_outage(&source);
        let mut err = Self::with_source(kind, source);
        err.transient = transient;
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

    /// Whether retrying the same operation later may succeed:
    /// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable),
    /// [`NoStream`](OutboxErrorKind::NoStream), and publishes that timed out, lost the
    /// connection or got a "temporarily unavailable" (HTTP-like 503) answer from JetStream.
    /// A publish JetStream rejected for this message (too large, wrong expected sequence, ...),
    /// a statement the database rejected, an invalid or oversized event and a duplicate event
    /// id are not transient.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

fn kind_is_transient(kind: OutboxErrorKind) -> bool {
    matches!(
        kind,
        OutboxErrorKind::DatabaseUnavailable | OutboxErrorKind::NoStream
    )
}

/// Whether a diesel error is a duplicate event id, a passing unavailability, or a rejection
/// (the workspace's one classification, [`jetstream_bridge_pg::classify`]).
fn classify_diesel(error: &diesel::result::Error) -> OutboxErrorKind {
    use jetstream_bridge_pg::DbErrorClass;
    match jetstream_bridge_pg::classify(error) {
        DbErrorClass::UniqueViolation { constraint }
            if constraint.as_deref() == Some(EVENT_ID_UNIQUE_INDEX) =>
        {
            OutboxErrorKind::DuplicateEventId
        }
        DbErrorClass::Unavailable => OutboxErrorKind::DatabaseUnavailable,
        _ => OutboxErrorKind::Database,
    }
}

/// Whether a publish failed because NATS / JetStream is unavailable (not this message's
/// fault): a timeout, a lost connection, "no responders" (no stream bound to the subject yet,
/// or JetStream not answering), a full in-flight window, the client's connection task gone,
/// or a JetStream error with the HTTP-like status 503 ("temporarily unavailable",
/// "insufficient resources"). Everything else the server returns for the message itself
/// (10054 message size exceeds maximum, wrong last sequence / msg id, ...) and client-side
/// rejections of the message (over the server's `max_payload`, invalid subject) are not.
pub(crate) fn publish_is_outage(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    match error.kind() {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending => true,
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::MaxPayloadExceeded => false,
        PublishErrorKind::Other => {
            let source = std::error::Error::source(error);
            match source {
                Some(s) => {
                    if let Some(api) = s.downcast_ref::<async_nats::jetstream::Error>() {
                        api.code() == 503
                    } else {
                        // A subject the client refuses, or an ack it cannot parse, belongs to
                        // this message; anything else (the command channel closed: the client
                        // is shutting down) is the connection's.
                        s.downcast_ref::<async_nats::subject::SubjectError>()
                            .is_none()
                            && s.downcast_ref::<serde_json::Error>().is_none()
                    }
                }
                None => true,
            }
        }
    }
}

/// Lets [`OutboxError`] be the error type of a diesel-async `transaction` closure that calls
/// [`Outbox::enqueue`](crate::Outbox::enqueue): a failed statement (or `BEGIN`/`COMMIT`) becomes
/// [`DatabaseUnavailable`](OutboxErrorKind::DatabaseUnavailable),
/// [`Database`](OutboxErrorKind::Database) or
/// [`DuplicateEventId`](OutboxErrorKind::DuplicateEventId), as classified above.
impl From<diesel::result::Error> for OutboxError {
    fn from(source: diesel::result::Error) -> Self {
        Self::database(source)
    }
}

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
    }

    fn api_error(json: &str) -> async_nats::jetstream::Error {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn publish_errors_are_classified() {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        let timeout = OutboxError::publish(PublishError::new(PublishErrorKind::TimedOut));
        assert_eq!(timeout.kind(), OutboxErrorKind::PublishNotAcked);
        assert!(timeout.is_transient());
        let broken = OutboxError::publish(PublishError::new(PublishErrorKind::BrokenPipe));
        assert!(broken.is_transient());
        let none = OutboxError::publish(PublishError::new(PublishErrorKind::StreamNotFound));
        assert_eq!(none.kind(), OutboxErrorKind::NoStream);
        assert!(none.is_transient());
        let big = OutboxError::publish(PublishError::new(PublishErrorKind::MaxPayloadExceeded));
        assert!(!big.is_transient());
        let seq = OutboxError::publish(PublishError::new(PublishErrorKind::WrongLastSequence));
        assert!(!seq.is_transient());
        let too_big_for_stream = PublishError::with_source(
            PublishErrorKind::Other,
            api_error(
                r#"{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}"#,
            ),
        );
        assert!(!publish_is_outage(&too_big_for_stream));
        assert!(!OutboxError::publish(too_big_for_stream).is_transient());
        let unavailable = PublishError::with_source(
            PublishErrorKind::Other,
            api_error(
                r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#,
            ),
        );
        assert!(publish_is_outage(&unavailable));
        let bad_subject = PublishError::with_source(
            PublishErrorKind::Other,
            async_nats::subject::SubjectError::InvalidFormat,
        );
        assert!(!publish_is_outage(&bad_subject));
    }
}
