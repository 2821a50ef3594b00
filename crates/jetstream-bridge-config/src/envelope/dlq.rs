//! [`DlqReason`] and [`DlqContext`]: what a dead-lettered message carries in its `x-dlq-*` headers.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::fields::{parse_object, take, take_string, take_timestamp, take_u64, wrong_type};
use super::json::ObjectWriter;
use super::{EnvelopeError, Timestamp};

/// Why a message was dead-lettered: the value of the
/// [`x-dlq-reason`](crate::DLQ_REASON_HEADER) header and of [`DlqContext::reason`], spelled as
/// the gem spells them (its docs' `max_deliveries_exceeded` / `unrecoverable_error` are wrong).
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::DlqReason;
///
/// assert_eq!(DlqReason::MaxDeliverExceeded.as_str(), "max_deliver_exceeded");
/// assert_eq!(DlqReason::parse("malformed_json"), Some(DlqReason::MalformedJson));
/// assert_eq!(DlqReason::parse("unrecoverable_error"), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DlqReason {
    /// `malformed_json`: the body is not a JSON object envelope (any
    /// [`Envelope::from_slice`](crate::Envelope::from_slice) error); dead-lettered on the first
    /// delivery without touching the database.
    MalformedJson,
    /// `unrecoverable`: the handler said the error is permanent; retrying cannot help.
    Unrecoverable,
    /// `max_deliver_exceeded`: the last allowed delivery (`deliveries >= max_deliver`) failed.
    MaxDeliverExceeded,
}

impl DlqReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 3] = [
        Self::MalformedJson,
        Self::Unrecoverable,
        Self::MaxDeliverExceeded,
    ];

    /// The wire string.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::Unrecoverable => "unrecoverable",
            Self::MaxDeliverExceeded => "max_deliver_exceeded",
        }
    }

    /// The reason with this exact wire string, if any.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

impl fmt::Display for DlqReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON object in a dead-lettered message's [`x-dlq-context`](crate::DLQ_CONTEXT_HEADER)
/// header.
///
/// Keys, in the gem's order: `event_id`, `reason`, `error_class`, `error_message`, `deliveries`,
/// `original_subject`, `sequence`, `consumer`, `stream`, `published_at`. Absent values are
/// written as `null`, as the gem does.
///
/// `sequence` is written as the gem writes it, the pair `{"stream": N, "consumer": M}` (the
/// original's stream sequence and the consumer sequence of the failed delivery), or `null` when
/// neither is known. The reader accepts that pair and a plain integer `N` (written by earlier
/// versions of this crate). Readers also accept missing keys (`reason` `""`, `deliveries` 0, the
/// rest `None`) and ignore unknown ones.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::{DlqContext, DlqReason};
///
/// let ruby = r#"{"event_id":"e1","reason":"unrecoverable","error_class":"ArgumentError",
///   "error_message":"bad","deliveries":1,"original_subject":"orders.sync.billing",
///   "sequence":{"stream":42,"consumer":7},"consumer":"billing-workers",
///   "stream":"jetstream-bridge-stream","published_at":"2025-11-23T10:00:05Z"}"#;
/// let context = DlqContext::from_json(ruby)?;
/// assert_eq!((context.sequence, context.consumer_sequence), (Some(42), Some(7)));
/// assert_eq!(context.reason_kind(), Some(DlqReason::Unrecoverable));
/// assert!(context.to_json_string().contains(r#""sequence":{"stream":42,"consumer":7},"#));
///
/// let older = DlqContext::from_json(r#"{"reason":"unrecoverable","sequence":42}"#)?;
/// assert_eq!((older.sequence, older.consumer_sequence), (Some(42), None));
///
/// let mut ours = DlqContext::new(DlqReason::MalformedJson);
/// ours.deliveries = 1;
/// ours.sequence = Some(7);
/// ours.consumer_sequence = Some(3);
/// assert!(ours.to_json_string().starts_with(r#"{"event_id":null,"reason":"malformed_json","#));
/// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DlqContext {
    /// The dead-lettered event's id (message-id header, then body), if known.
    pub event_id: Option<String>,
    /// Why it was dead-lettered; one of [`DlqReason::as_str`] when we write it. Kept as a string
    /// so contexts written by other versions stay readable; see [`reason_kind`](Self::reason_kind).
    pub reason: String,
    /// The error's type name (the gem writes the Ruby exception class).
    pub error_class: Option<String>,
    /// The error's message.
    pub error_message: Option<String>,
    /// How many times the original was delivered (JetStream `num_delivered`).
    pub deliveries: u64,
    /// The subject the original was published on.
    pub original_subject: Option<String>,
    /// The original's stream sequence: `stream` of the `sequence` pair (see the type docs).
    pub sequence: Option<u64>,
    /// The consumer sequence of the failed delivery: `consumer` of the `sequence` pair; `None`
    /// when read from a plain integer `sequence`.
    pub consumer_sequence: Option<u64>,
    /// The durable consumer that gave up on it.
    pub consumer: Option<String>,
    /// The stream holding the original.
    pub stream: Option<String>,
    /// When the dead letter was published.
    pub published_at: Option<Timestamp>,
}

impl DlqContext {
    /// A context with `reason`, `published_at` now and every other field empty (`deliveries` 0);
    /// fill in the rest through the public fields.
    #[must_use]
    pub fn new(reason: DlqReason) -> Self {
        Self {
            event_id: None,
            reason: reason.as_str().to_owned(),
            error_class: None,
            error_message: None,
            deliveries: 0,
            original_subject: None,
            sequence: None,
            consumer_sequence: None,
            consumer: None,
            stream: None,
            published_at: Some(Timestamp::now()),
        }
    }

    /// The reason as a [`DlqReason`], if it is one we know.
    #[must_use]
    pub fn reason_kind(&self) -> Option<DlqReason> {
        DlqReason::parse(&self.reason)
    }

    /// Parses the header value.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::NotJson`] or [`EnvelopeError::NotAnObject`] if the text is not a JSON
    /// object; [`EnvelopeError::InvalidField`] if a known key has the wrong type (for example a
    /// non-integer `deliveries`, a `sequence` that is neither an integer nor an object with an
    /// integer `stream`, an unparseable `published_at`).
    pub fn from_json(text: &str) -> Result<Self, EnvelopeError> {
        Self::from_slice(text.as_bytes())
    }

    /// Parses the header value from bytes; see [`from_json`](Self::from_json).
    ///
    /// # Errors
    ///
    /// As [`from_json`](Self::from_json).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_object(parse_object(bytes)?)
    }

    fn from_object(mut map: Map<String, Value>) -> Result<Self, EnvelopeError> {
        let (sequence, consumer_sequence) = take_sequence(&mut map)?;
        Ok(Self {
            event_id: take_string(&mut map, "event_id")?,
            reason: take_string(&mut map, "reason")?.unwrap_or_default(),
            error_class: take_string(&mut map, "error_class")?,
            error_message: take_string(&mut map, "error_message")?,
            deliveries: take_u64(&mut map, "deliveries")?.unwrap_or(0),
            original_subject: take_string(&mut map, "original_subject")?,
            sequence,
            consumer_sequence,
            consumer: take_string(&mut map, "consumer")?,
            stream: take_string(&mut map, "stream")?,
            published_at: take_timestamp(&mut map, "published_at")?,
        })
    }

    /// The compact JSON header value (`sequence` as the gem's pair). Infallible: every value is
    /// a string, an integer, a [`Timestamp`] or `null`.
    #[must_use]
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(256);
        let mut obj = ObjectWriter::new(&mut out);
        obj.opt_str("event_id", self.event_id.as_deref());
        obj.str("reason", &self.reason);
        obj.opt_str("error_class", self.error_class.as_deref());
        obj.opt_str("error_message", self.error_message.as_deref());
        obj.raw("deliveries", &self.deliveries.to_string());
        obj.opt_str("original_subject", self.original_subject.as_deref());
        obj.raw("sequence", &self.sequence_json());
        obj.opt_str("consumer", self.consumer.as_deref());
        obj.opt_str("stream", self.stream.as_deref());
        let published_at = self.published_at.map(|ts| ts.to_string());
        obj.opt_str("published_at", published_at.as_deref());
        obj.finish();
        out
    }
}

impl DlqContext {
    /// `sequence` as written: the gem's pair, or `null` when neither number is known.
    fn sequence_json(&self) -> String {
        let number = |n: Option<u64>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
        match (self.sequence, self.consumer_sequence) {
            (None, None) => "null".to_owned(),
            (stream, consumer) => format!(
                "{{\"stream\":{},\"consumer\":{}}}",
                number(stream),
                number(consumer)
            ),
        }
    }
}

/// `sequence`: the gem's `{"stream": N, "consumer": M}` (either may be missing or `null`), or a
/// plain integer `N` (earlier versions of this crate). Returns `(N, M)`.
fn take_sequence(
    map: &mut Map<String, Value>,
) -> Result<(Option<u64>, Option<u64>), EnvelopeError> {
    const FIELD: &str = "sequence";
    let number = |value: Option<&Value>, what: &str| match value {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(FIELD, what, n)),
    };
    match take(map, FIELD) {
        None => Ok((None, None)),
        Some(Value::Object(pair)) => Ok((
            number(
                pair.get("stream"),
                "a non-negative integer `stream` sequence",
            )?,
            number(
                pair.get("consumer"),
                "a non-negative integer `consumer` sequence",
            )?,
        )),
        Some(other) => other.as_u64().map(|n| (Some(n), None)).ok_or_else(|| {
            wrong_type(
                FIELD,
                "{\"stream\": N, \"consumer\": M} or a non-negative integer",
                &other,
            )
        }),
    }
}

impl Serialize for DlqContext {
    /// The same JSON as [`DlqContext::to_json_string`].
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pair {
            stream: Option<u64>,
            consumer: Option<u64>,
        }
        let sequence = match (self.sequence, self.consumer_sequence) {
            (None, None) => None,
            (stream, consumer) => Some(Pair { stream, consumer }),
        };
        let mut s = serializer.serialize_struct("DlqContext", 10)?;
        s.serialize_field("event_id", &self.event_id)?;
        s.serialize_field("reason", &self.reason)?;
        s.serialize_field("error_class", &self.error_class)?;
        s.serialize_field("error_message", &self.error_message)?;
        s.serialize_field("deliveries", &self.deliveries)?;
        s.serialize_field("original_subject", &self.original_subject)?;
        s.serialize_field("sequence", &sequence)?;
        s.serialize_field("consumer", &self.consumer)?;
        s.serialize_field("stream", &self.stream)?;
        s.serialize_field("published_at", &self.published_at)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for DlqContext {
    /// Accepts both `sequence` forms, like [`DlqContext::from_json`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Self::from_object(map).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEM: &str = r#"{"event_id":"4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b","reason":"max_deliver_exceeded","error_class":"RuntimeError","error_message":"boom","deliveries":5,"original_subject":"orders.sync.billing","sequence":{"stream":42,"consumer":7},"consumer":"billing-workers","stream":"jetstream-bridge-stream","published_at":"2025-11-23T10:00:05Z"}"#;

    #[test]
    fn reads_and_writes_the_gem_form() {
        let context = DlqContext::from_json(GEM).unwrap();
        assert_eq!(context.sequence, Some(42));
        assert_eq!(context.consumer_sequence, Some(7));
        assert_eq!(context.deliveries, 5);
        assert_eq!(context.reason_kind(), Some(DlqReason::MaxDeliverExceeded));
        assert_eq!(context.to_json_string(), GEM);
    }

    #[test]
    fn reads_the_integer_form_of_earlier_versions() {
        let integer = GEM.replace(r#"{"stream":42,"consumer":7}"#, "42");
        let context = DlqContext::from_json(&integer).unwrap();
        assert_eq!(
            (context.sequence, context.consumer_sequence),
            (Some(42), None)
        );
        assert_eq!(
            context.to_json_string(),
            GEM.replace(r#""consumer":7}"#, r#""consumer":null}"#)
        );
    }

    #[test]
    fn sequence_pair_is_written_when_either_number_is_known() {
        let mut context = DlqContext::new(DlqReason::Unrecoverable);
        let shown = |c: &DlqContext| {
            let v: Value = serde_json::from_str(&c.to_json_string()).unwrap();
            v["sequence"].to_string()
        };
        assert_eq!(shown(&context), "null");
        context.consumer_sequence = Some(3);
        assert_eq!(shown(&context), r#"{"stream":null,"consumer":3}"#);
        context.sequence = Some(u64::MAX);
        assert_eq!(
            shown(&context),
            format!(r#"{{"stream":{},"consumer":3}}"#, u64::MAX)
        );
        assert_eq!(
            DlqContext::from_json(&context.to_json_string()).unwrap(),
            context
        );
    }

    #[test]
    fn serde_matches_the_hand_writer_and_reads_both_forms() {
        let context = DlqContext::from_json(GEM).unwrap();
        assert_eq!(
            serde_json::to_string(&context).unwrap(),
            context.to_json_string()
        );
        let back: DlqContext = serde_json::from_str(GEM).unwrap();
        assert_eq!(back, context);
        let empty = DlqContext::new(DlqReason::Unrecoverable);
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            empty.to_json_string()
        );
    }

    #[test]
    fn missing_and_null_keys_get_defaults_unknown_keys_ignored() {
        let context = DlqContext::from_json(r#"{"sequence":null,"extra":[1]}"#).unwrap();
        assert_eq!(context.reason, "");
        assert_eq!(context.deliveries, 0);
        assert_eq!(context.sequence, None);
        assert_eq!(context.published_at, None);
        assert_eq!(context.reason_kind(), None);
        let pair_without_stream = DlqContext::from_json(r#"{"sequence":{"consumer":3}}"#).unwrap();
        assert_eq!(pair_without_stream.sequence, None);
        assert_eq!(pair_without_stream.consumer_sequence, Some(3));
        let empty_pair = DlqContext::from_json(r#"{"sequence":{}}"#).unwrap();
        assert_eq!(
            (empty_pair.sequence, empty_pair.consumer_sequence),
            (None, None)
        );
    }

    #[test]
    fn rejects_wrong_types() {
        for (text, field) in [
            (r#"{"deliveries":"5"}"#, "deliveries"),
            (r#"{"deliveries":-1}"#, "deliveries"),
            (r#"{"sequence":"42"}"#, "sequence"),
            (r#"{"sequence":{"stream":"42"}}"#, "sequence"),
            (r#"{"sequence":{"stream":1,"consumer":-1}}"#, "sequence"),
            (r#"{"sequence":[1,2]}"#, "sequence"),
            (r#"{"published_at":"later"}"#, "published_at"),
            (r#"{"reason":1}"#, "reason"),
        ] {
            assert_eq!(
                DlqContext::from_json(text).unwrap_err().field(),
                Some(field),
                "{text}"
            );
        }
        assert_eq!(
            DlqContext::from_json("[]").unwrap_err(),
            EnvelopeError::NotAnObject { found: "an array" }
        );
        assert!(matches!(
            DlqContext::from_json("{").unwrap_err(),
            EnvelopeError::NotJson { .. }
        ));
    }

    #[test]
    fn reason_strings() {
        for reason in DlqReason::ALL {
            assert_eq!(DlqReason::parse(reason.as_str()), Some(reason));
            assert_eq!(reason.to_string(), reason.as_str());
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{reason}\"")
            );
        }
        assert_eq!(
            DlqReason::ALL.map(DlqReason::as_str),
            ["malformed_json", "unrecoverable", "max_deliver_exceeded"]
        );
    }
}
