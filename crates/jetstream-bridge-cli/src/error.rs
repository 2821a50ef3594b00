//! [`CliError`]: the one error type of this crate.

use crate::output::Secrets;

/// Why a command failed. The message says what failed and, for an operation that stopped
/// half-way, what it did before; it never contains a credential.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    kind: CliErrorKind,
    message: String,
}

/// What kind of failure a [`CliError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CliErrorKind {
    /// The command line or the configuration is invalid.
    Config,
    /// NATS could not be reached, or a JetStream request failed.
    Nats,
    /// PostgreSQL could not be reached, or a statement failed.
    Database,
    /// A table the command needs does not exist (run `jetstream-bridge migrate`).
    MissingTable,
    /// The command ran and found problems (`check`, `health`, a drifted topology).
    Problems,
    /// The operation stopped half-way; the message says what was done.
    Partial,
    /// The command refused to act (e.g. a purge without `--yes`).
    Refused,
}

impl CliError {
    pub(crate) fn new(kind: CliErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `context: error: source: …` (the error and its sources).
    pub(crate) fn with_chain(
        kind: CliErrorKind,
        context: impl std::fmt::Display,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        Self::new(kind, format!("{context}: {}", chain(error)))
    }

    /// The error and its sources.
    pub(crate) fn from_error(
        kind: CliErrorKind,
        error: &(dyn std::error::Error + 'static),
    ) -> Self {
        Self::new(kind, chain(error))
    }

    /// What kind of failure it is.
    #[must_use]
    pub fn kind(&self) -> CliErrorKind {
        self.kind
    }

    /// The message with every known secret masked.
    pub(crate) fn scrubbed(mut self, secrets: &Secrets) -> Self {
        self.message = secrets.scrub(&self.message);
        self
    }
}

/// An error and its sources, `": "`-separated (a source already contained in the text so far
/// is left out).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !next.is_empty() && !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
