//! [`HealthError`]: the one error type of this crate (style B4, I/O-facing shape).
//!
//! A health check never fails: what went wrong while probing is written into the report (masked),
//! so this type covers the few calls that can fail as a whole, such as encoding the metrics.

/// A boxed error source: keeps async-nats, diesel and fmt error types out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`HealthError`] as the default error type.
pub type Result<T, E = HealthError> = std::result::Result<T, E>;

/// An error from this crate; [`kind`](Self::kind) says what failed, `source()` why.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct HealthError {
    kind: HealthErrorKind,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`HealthError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HealthErrorKind {
    /// The metrics registry could not be encoded in the text exposition format.
    #[error("cannot encode the metrics")]
    MetricsEncoding,
    /// A NATS request made by a probe failed.
    #[error("NATS request failed")]
    Nats,
    /// A NATS request made by a probe did not answer in time.
    #[error("NATS request timed out")]
    Timeout,
    /// The database query of a probe failed.
    #[error("database unavailable")]
    Database,
}

impl HealthError {
    pub(crate) fn new(kind: HealthErrorKind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(kind: HealthErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> HealthErrorKind {
        self.kind
    }

    /// The message and its causes, one after the other, with URL credentials masked: what the
    /// report shows.
    #[must_use]
    pub fn to_masked_string(&self) -> String {
        let mut out = self.kind.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        crate::mask::mask_credentials(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_string_lists_causes_without_credentials() {
        let e = HealthError::with_source(
            HealthErrorKind::Nats,
            "cannot reach nats://alice:secret@db:4222 now",
        );
        assert_eq!(e.to_string(), "NATS request failed");
        assert_eq!(
            e.to_masked_string(),
            "NATS request failed: cannot reach nats://alice:***@db:4222 now"
        );
        assert_eq!(
            HealthError::new(HealthErrorKind::Timeout).to_masked_string(),
            "NATS request timed out"
        );
    }
}
