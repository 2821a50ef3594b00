//! [`EnvelopeError`]: everything that can go wrong building, reading or size-checking an envelope.

use std::convert::Infallible;

/// Errors from building, parsing or size-checking an [`Envelope`](crate::Envelope) (and from
/// reading a [`DlqContext`](crate::DlqContext)).
///
/// Messages never contain the message body: bodies may be huge or carry personal data, and the
/// dead-letter copy keeps the original bytes anyway.
///
/// A consumer maps every error of [`Envelope::from_slice`](crate::Envelope::from_slice) and
/// [`Envelope::from_message`](crate::Envelope::from_message) to the DLQ reason
/// [`DlqReason::MalformedJson`](crate::DlqReason::MalformedJson), on the first delivery and
/// without touching the database ([`is_malformed`](Self::is_malformed) says exactly that).
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::{Envelope, EnvelopeError};
///
/// let err = Envelope::from_slice(b"[1, 2]").unwrap_err();
/// assert_eq!(err, EnvelopeError::NotAnObject { found: "an array" });
/// assert!(err.is_malformed());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not one JSON value in UTF-8 (syntax error, trailing data, nesting deeper than
    /// 128 levels). `reason` is the parser's position-only description, never the body.
    #[error("body is not valid JSON: {reason}")]
    NotJson {
        /// What the JSON parser reported (line and column, no content).
        reason: String,
    },
    /// The body is valid JSON but not an object (`null`, a boolean, a number, a string or an
    /// array): as the gem learned, such bodies are malformed, not retryable.
    #[error("body is {found}, not a JSON object")]
    NotAnObject {
        /// The JSON kind found: `"null"`, `"a boolean"`, `"a number"`, `"a string"`, `"an array"`.
        found: &'static str,
    },
    /// A required field is absent (or `null`): `event_type`, `payload`, or `event_id` when no
    /// `Nats-Msg-Id` header supplies the id.
    #[error("missing required field `{field}`")]
    MissingField {
        /// The wire name of the field.
        field: &'static str,
    },
    /// A field is present but has the wrong JSON type or an invalid value, in a received body or
    /// in the input given to [`EnvelopeBuilder`](crate::EnvelopeBuilder).
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The wire name of the field (`"timestamp"` from [`Timestamp::parse`](crate::Timestamp::parse)).
        field: &'static str,
        /// Why it is invalid (never the whole value when that may be large).
        reason: String,
    },
    /// The encoded envelope is larger than the allowed maximum (for example the server's
    /// `max_payload`), from [`Envelope::to_vec_checked`](crate::Envelope::to_vec_checked).
    #[error("encoded envelope is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit that was exceeded.
        max: usize,
    },
}

impl EnvelopeError {
    /// Whether the error means "this is not a valid envelope" (the input is at fault and retrying
    /// cannot help): `true` for [`NotJson`](Self::NotJson), [`NotAnObject`](Self::NotAnObject),
    /// [`MissingField`](Self::MissingField) and [`InvalidField`](Self::InvalidField); `false` for
    /// [`TooLarge`](Self::TooLarge).
    ///
    /// On the consumer side every error of [`Envelope::from_slice`](crate::Envelope::from_slice)
    /// is malformed and goes to the DLQ with reason `malformed_json`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::{DlqReason, Envelope};
    ///
    /// let err = Envelope::from_slice(b"not json").unwrap_err();
    /// let reason = err.is_malformed().then_some(DlqReason::MalformedJson);
    /// assert_eq!(reason.map(DlqReason::as_str), Some("malformed_json"));
    /// ```
    #[must_use]
    pub fn is_malformed(&self) -> bool {
        match self {
            Self::NotJson { .. }
            | Self::NotAnObject { .. }
            | Self::MissingField { .. }
            | Self::InvalidField { .. } => true,
            Self::TooLarge { .. } => false,
        }
    }

    /// The wire name of the offending field, if the error is about one field.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::Envelope;
    ///
    /// let err = Envelope::from_slice(br#"{"event_id":"e1","payload":{}}"#).unwrap_err();
    /// assert_eq!(err.field(), Some("event_type"));
    /// ```
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::MissingField { field } | Self::InvalidField { field, .. } => Some(field),
            Self::NotJson { .. } | Self::NotAnObject { .. } | Self::TooLarge { .. } => None,
        }
    }

    /// Shorthand for [`InvalidField`](Self::InvalidField).
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field,
            reason: reason.into(),
        }
    }

    /// Re-labels an [`InvalidField`](Self::InvalidField) error with the field it was found in
    /// (timestamps and event ids are parsed without knowing which field they came from).
    #[must_use]
    pub(crate) fn in_field(self, field: &'static str) -> Self {
        match self {
            Self::InvalidField { reason, .. } => Self::InvalidField { field, reason },
            other => other,
        }
    }
}

/// Lets infallible conversions (`EventId` into `EventId`, `Timestamp` into `Timestamp`) satisfy
/// the builder's `T::Error: Into<EnvelopeError>` bounds.
impl From<Infallible> for EnvelopeError {
    fn from(never: Infallible) -> Self {
        match never {}
    }
}

/// A short description of a JSON value's kind for error messages (never the value itself).
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_without_period_and_name_the_field() {
        let cases = [
            EnvelopeError::NotJson {
                reason: "expected value at line 1 column 1".into(),
            },
            EnvelopeError::NotAnObject { found: "null" },
            EnvelopeError::MissingField {
                field: "event_type",
            },
            EnvelopeError::invalid("trace_id", "must not be empty"),
            EnvelopeError::TooLarge {
                size: 2_000_000,
                max: 1_048_576,
            },
        ];
        for err in cases {
            let msg = err.to_string();
            assert!(msg.chars().next().is_some_and(char::is_lowercase), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
        assert_eq!(
            EnvelopeError::MissingField { field: "payload" }.to_string(),
            "missing required field `payload`"
        );
        assert_eq!(
            EnvelopeError::TooLarge { size: 10, max: 5 }.to_string(),
            "encoded envelope is 10 bytes, over the 5-byte limit"
        );
    }

    #[test]
    fn only_too_large_is_not_malformed() {
        assert!(EnvelopeError::NotAnObject { found: "a string" }.is_malformed());
        assert!(EnvelopeError::MissingField { field: "payload" }.is_malformed());
        assert!(!EnvelopeError::TooLarge { size: 2, max: 1 }.is_malformed());
    }

    #[test]
    fn in_field_relabels_only_invalid_field() {
        let err = EnvelopeError::invalid("timestamp", "bad").in_field("occurred_at");
        assert_eq!(err.field(), Some("occurred_at"));
        let other = EnvelopeError::TooLarge { size: 2, max: 1 }.in_field("x");
        assert_eq!(other.field(), None);
    }
}
