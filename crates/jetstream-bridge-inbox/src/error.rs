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
    /// The database could not be reached or aborted the statement for a reason that passes
    /// (connection refused or lost, shutdown, too many connections, read-only standby,
    /// serialization failure, deadlock). [Transient](InboxError::is_transient): an outage, not
    /// the message's fault.
    #[error("database unavailable")]
    DatabaseUnavailable,
    /// `jetstream_inbox_events` does not exist: run `jetstream-bridge migrate`.
    #[error("inbox table missing (run `jetstream-bridge migrate`)")]
    MissingTable,
    /// The database rejected the statement (a constraint, an invalid value, ...).
    #[error("database rejected the statement")]
    Database,
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

    /// A diesel error, classified by [`jetstream_bridge_pg::classify`].
    pub(crate) fn database(source: diesel::result::Error) -> Self {
        use jetstream_bridge_pg::DbErrorClass;
        let kind = match jetstream_bridge_pg::classify(&source) {
            DbErrorClass::Unavailable => InboxErrorKind::DatabaseUnavailable,
            DbErrorClass::UndefinedTable => InboxErrorKind::MissingTable,
            _ => InboxErrorKind::Database,
        };
        Self::with_source(kind, source)
    }

    /// An error of the shared PostgreSQL plumbing, mapped like [`database`](Self::database).
    pub(crate) fn pg(source: jetstream_bridge_pg::PgError) -> Self {
        use jetstream_bridge_pg::PgErrorKind;
        let kind = match source.kind() {
            PgErrorKind::Unavailable => InboxErrorKind::DatabaseUnavailable,
            PgErrorKind::MissingTable => InboxErrorKind::MissingTable,
            _ => InboxErrorKind::Database,
        };
        Self::with_source(kind, source)
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> InboxErrorKind {
        self.kind
    }

    /// Whether the database was unavailable ([`DatabaseUnavailable`](InboxErrorKind::DatabaseUnavailable)):
    /// retrying later may succeed, and the message is not at fault.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind == InboxErrorKind::DatabaseUnavailable
    }
}

impl From<diesel::result::Error> for InboxError {
    fn from(source: diesel::result::Error) -> Self {
        Self::database(source)
    }
}
