//! [`InboxError`]: the one error type of this crate (style B4, I/O-facing shape).

/// A boxed error source: keeps diesel error types out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`InboxError`] as the default error type.
pub type Result<T, E = InboxError> = std::result::Result<T, E>;

/// An error from recording, marking, pruning or migrating inbox rows.
///
/// Branch on [`kind`](Self::kind); the underlying diesel error is the
/// [`source`](std::error::Error::source) (its type is not part of the API).
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct InboxError {
    kind: InboxErrorKind,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`InboxError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InboxErrorKind {
    /// A database statement or connection failed (including a rolled-back transaction).
    #[error("database unavailable")]
    Database,
    /// Applying or reading migrations failed.
    #[error("migration failed")]
    Migration,
    /// The entry cannot be stored (e.g. a stream sequence above `i64::MAX`).
    #[error("invalid inbox entry")]
    InvalidEntry,
}

impl InboxError {
    pub(crate) fn with_source(kind: InboxErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    pub(crate) fn database(source: diesel::result::Error) -> Self {
        Self::with_source(InboxErrorKind::Database, source)
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> InboxErrorKind {
        self.kind
    }
}

impl From<diesel::result::Error> for InboxError {
    fn from(source: diesel::result::Error) -> Self {
        Self::database(source)
    }
}
