//! [`ConsumerError`]: the one error type of this crate (style B4, I/O-facing shape).

/// A boxed error source: keeps async-nats and diesel error types out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`ConsumerError`] as the default error type.
pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;

/// An error from building or running a [`Consumer`](crate::Consumer).
///
/// The runtime never ends on a per-message, fetch or recovery error (those are logged, counted in
/// [`ConsumerStats`](crate::ConsumerStats) and retried); this type is what `build()` rejects
/// and what a runtime that could not be joined reports.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct ConsumerError {
    kind: ConsumerErrorKind,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`ConsumerError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerErrorKind {
    /// `use_inbox` is on but no database pool was given.
    #[error("use_inbox is on but no database pool was given")]
    MissingPool,
    /// The stream or durable name cannot be bound.
    #[error("cannot bind the durable consumer")]
    Bind,
    /// The durable does not answer pull requests (deleted, or never provisioned) and the
    /// runtime may not recreate it (`disable_js_api`); it keeps retrying with backoff.
    #[error("durable consumer not found")]
    ConsumerNotFound,
    /// The runtime task panicked or was aborted.
    #[error("consumer runtime task failed")]
    Runtime,
}

impl ConsumerError {
    pub(crate) fn new(kind: ConsumerErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(kind: ConsumerErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> ConsumerErrorKind {
        self.kind
    }
}
