//! [`PgError`] and the one classification of database errors every crate uses
//! ([`classify`], [`DbErrorClass`]).

/// A boxed error source: keeps diesel's error types out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`PgError`] as the default error type.
pub type Result<T, E = PgError> = std::result::Result<T, E>;

/// An error from migrating, pooling or pruning.
///
/// Branch on [`kind`](Self::kind); the underlying diesel / pool error, when there is one, is the
/// [`source`](std::error::Error::source) (its type is not part of the API).
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct PgError {
    kind: PgErrorKind,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`PgError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgErrorKind {
    /// The database could not be reached, or aborted the statement for a reason that may pass
    /// (see [`DbErrorClass::Unavailable`]). [Transient](PgError::is_transient).
    #[error("database unavailable")]
    Unavailable,
    /// The database rejected a statement (see [`DbErrorClass::Rejected`]).
    #[error("database rejected the statement")]
    Rejected,
    /// A table the operation needs does not exist: run `jetstream-bridge migrate`.
    #[error("table missing (run `jetstream-bridge migrate`)")]
    MissingTable,
    /// A migration failed to apply; its transaction was rolled back, earlier ones stay applied.
    #[error("migration {name} failed")]
    Migration {
        /// The migration's directory name.
        name: String,
    },
    /// A migration recorded as applied has different SQL now than when it was applied (the
    /// file was edited after release, or another version of this crate applied it). Nothing was
    /// applied; compare the database with the migration before going on.
    #[error("migration {name} was changed after it was applied (checksum {applied} in the database, {current} now)")]
    MigrationChanged {
        /// The migration's directory name.
        name: String,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of the embedded SQL.
        current: String,
    },
    /// The pool settings are invalid (for example an unparsable database URL or a zero size).
    #[error("invalid pool settings")]
    InvalidPool,
    /// A setting of a batched operation is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl PgError {
    pub(crate) fn new(kind: PgErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(kind: PgErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// A diesel error, classified by [`classify`]: unavailable, missing table, or rejected.
    #[must_use]
    pub fn database(source: diesel::result::Error) -> Self {
        let kind = match classify(&source) {
            DbErrorClass::Unavailable => PgErrorKind::Unavailable,
            DbErrorClass::UndefinedTable => PgErrorKind::MissingTable,
            _ => PgErrorKind::Rejected,
        };
        Self::with_source(kind, source)
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> &PgErrorKind {
        &self.kind
    }

    /// Whether retrying later may succeed (the database was unavailable).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind == PgErrorKind::Unavailable
    }
}

impl From<diesel::result::Error> for PgError {
    fn from(source: diesel::result::Error) -> Self {
        Self::database(source)
    }
}

/// What a database error says about the database, as opposed to the statement.
///
/// The outbox relay, the consumer runtime and health all branch on this one classification:
/// [`Unavailable`](Self::Unavailable) is an outage (wait and retry; never count an attempt or
/// dead-letter a message because of it), everything else belongs to the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbErrorClass {
    /// The database is unreachable or aborted the statement for a reason that passes: the
    /// connection was refused, lost or closed, the server is shutting down or starting up
    /// (57P01–57P03), too many connections (53300), a read-only standby after a fail-over
    /// (25006), a serialization failure or deadlock (40001, 40P01), a lock timeout (55P03), a
    /// connection exception (08xxx), or a transaction manager left broken by one of these.
    Unavailable,
    /// A unique index was violated; the constraint's name, when the server gave one.
    UniqueViolation {
        /// The violated constraint or index, e.g. `idx_outbox_event_id`.
        constraint: Option<String>,
    },
    /// A table the statement names does not exist (42P01): the migrations were not applied.
    UndefinedTable,
    /// The statement was rejected for a reason that will not pass by itself: another
    /// constraint, an invalid value, a syntax error, no row found.
    Rejected,
}

impl DbErrorClass {
    /// Whether retrying the same statement later may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

/// Classifies a diesel error; see [`DbErrorClass`].
///
/// diesel-async maps the SQLSTATEs it has no variant for to `Unknown` and keeps only the
/// server's message, so those are recognised by PostgreSQL's (English) message text.
#[must_use]
pub fn classify(error: &diesel::result::Error) -> DbErrorClass {
    use diesel::result::{DatabaseErrorKind, Error};
    match error {
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            DbErrorClass::UniqueViolation {
                constraint: info.constraint_name().map(str::to_owned),
            }
        }
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction,
            _,
        )
        | Error::BrokenTransactionManager => DbErrorClass::Unavailable,
        Error::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let message = info.message().to_ascii_lowercase();
            if is_unavailable_message(&message) {
                DbErrorClass::Unavailable
            } else if message.starts_with("relation ") && message.ends_with("does not exist") {
                DbErrorClass::UndefinedTable
            } else {
                DbErrorClass::Rejected
            }
        }
        _ => DbErrorClass::Rejected,
    }
}

/// Server messages (lowercased) of the transient SQLSTATEs diesel reports as `Unknown`.
fn is_unavailable_message(message: &str) -> bool {
    const PHRASES: &[&str] = &[
        "deadlock detected",
        "terminating connection",
        "the database system is",
        "too many connections",
        "remaining connection slots",
        "could not obtain lock",
        "due to lock timeout",
        "could not serialize access",
        "connection failure",
        "server closed the connection",
        "cannot execute",
        "connection refused",
        "connection reset",
        "broken pipe",
    ];
    // "cannot execute <statement> in a read-only transaction" (25006); other "cannot execute"
    // messages do not occur for DML.
    PHRASES.iter().any(|p| {
        message.contains(p) && (*p != "cannot execute" || message.contains("read-only transaction"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

    /// What the server reports, as diesel-async hands it over.
    struct Info {
        message: &'static str,
        constraint: Option<&'static str>,
    }

    impl DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.message
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            self.constraint
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn db(kind: DatabaseErrorKind, message: &'static str) -> DieselError {
        DieselError::DatabaseError(
            kind,
            Box::new(Info {
                message,
                constraint: None,
            }),
        )
    }

    #[test]
    fn unavailable_is_transient() {
        for (kind, message) in [
            (DatabaseErrorKind::ClosedConnection, "closed"),
            (DatabaseErrorKind::UnableToSendCommand, "connection closed"),
            (
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access",
            ),
            (
                DatabaseErrorKind::ReadOnlyTransaction,
                "read-only transaction",
            ),
            (DatabaseErrorKind::Unknown, "deadlock detected"),
            (
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            (
                DatabaseErrorKind::Unknown,
                "the database system is shutting down",
            ),
            (
                DatabaseErrorKind::Unknown,
                "the database system is starting up",
            ),
            (
                DatabaseErrorKind::Unknown,
                "sorry, too many clients already: too many connections",
            ),
            (
                DatabaseErrorKind::Unknown,
                "cannot execute INSERT in a read-only transaction",
            ),
        ] {
            let class = classify(&db(kind, message));
            assert_eq!(class, DbErrorClass::Unavailable, "{message}");
            assert!(class.is_transient());
            assert!(PgError::database(db(kind, message)).is_transient());
        }
        assert_eq!(
            classify(&DieselError::BrokenTransactionManager),
            DbErrorClass::Unavailable
        );
    }

    #[test]
    fn missing_table_and_rejections_are_not_transient() {
        let missing = db(
            DatabaseErrorKind::Unknown,
            "relation \"jetstream_inbox_events\" does not exist",
        );
        assert_eq!(classify(&missing), DbErrorClass::UndefinedTable);
        let err = PgError::database(missing);
        assert_eq!(err.kind(), &PgErrorKind::MissingTable);
        assert!(!err.is_transient());
        for (kind, message) in [
            (
                DatabaseErrorKind::CheckViolation,
                "violates check constraint",
            ),
            (DatabaseErrorKind::NotNullViolation, "null value in column"),
            (
                DatabaseErrorKind::ForeignKeyViolation,
                "violates foreign key",
            ),
            (
                DatabaseErrorKind::Unknown,
                "syntax error at or near \"SELEC\"",
            ),
            (
                DatabaseErrorKind::Unknown,
                "unsupported Unicode escape sequence",
            ),
            (
                DatabaseErrorKind::Unknown,
                "cannot execute this statement here",
            ),
        ] {
            let class = classify(&db(kind, message));
            assert_eq!(class, DbErrorClass::Rejected, "{message}");
            assert!(!class.is_transient());
        }
        assert_eq!(classify(&DieselError::NotFound), DbErrorClass::Rejected);
    }

    #[test]
    fn unique_violations_name_their_constraint() {
        let err = DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new(Info {
                message: "duplicate key value violates unique constraint",
                constraint: Some("idx_outbox_event_id"),
            }),
        );
        assert_eq!(
            classify(&err),
            DbErrorClass::UniqueViolation {
                constraint: Some("idx_outbox_event_id".to_owned())
            }
        );
    }

    #[test]
    fn messages_are_lowercase_and_name_the_fix() {
        assert_eq!(
            PgError::new(PgErrorKind::MissingTable).to_string(),
            "table missing (run `jetstream-bridge migrate`)"
        );
    }
}
