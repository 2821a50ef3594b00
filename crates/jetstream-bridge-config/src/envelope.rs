//! The wire envelope (schema version 1), byte-compatible with what the Ruby gem emits, and the
//! wire constants around it (message-id and DLQ headers, DLQ reasons and context).
//!
//! Wire format: one compact JSON object with the keys
//! `event_id, schema_version, event_type, producer, resource_id, occurred_at, trace_id,
//! resource_type, payload` in this order; `resource_id` always a string (`""` when the payload has
//! no id); `occurred_at` in UTC at whole seconds with `Z`; non-ASCII and `/ < > &` unescaped.

mod dlq;
mod error;
mod event_id;
mod fields;
mod headers;
mod json;
mod timestamp;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use self::error::json_kind;
use self::fields::{parse_object, take, take_string, take_timestamp, take_u64, wrong_type};
use self::json::{Counter, ObjectWriter, Sink};

pub use self::dlq::{DlqContext, DlqReason};
pub use self::error::EnvelopeError;
pub use self::event_id::EventId;
pub use self::headers::{
    event_id_from_headers, resolve_event_id, DEAD_LETTER_HEADER, DEAD_LETTER_HEADER_VALUE,
    DELIVERIES_HEADER, DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER, REPLAY_OF_HEADER,
    RUBY_MSG_ID_HEADER, TRACEPARENT_HEADER,
};
pub use self::timestamp::Timestamp;

/// One event on the wire (schema version 1).
///
/// Build one with [`Envelope::builder`], which fills the defaults the gem fills; read one with
/// [`Envelope::from_message`] (or [`Envelope::from_slice`] for a body alone); write it with
/// [`Envelope::to_vec`] or, before enqueueing, [`Envelope::to_vec_checked`].
///
/// # Reading
///
/// Parsing is strict about the shape and lenient about what Ruby peers legitimately omit:
///
/// | field | required | when absent or `null` | accepted types |
/// |---|---|---|---|
/// | `event_id` | yes, unless a `Nats-Msg-Id` header gives it ([`from_message`](Self::from_message)) | error | string, valid [`EventId`] |
/// | `schema_version` | no | `1` | integer in `u32` (any version is accepted; the consumer decides) |
/// | `event_type` | yes | error | non-empty string |
/// | `producer` | no | `""` | string |
/// | `resource_id` | no | `""` | string, or a number (gem form-C peers may pass `42`; read as `"42"`) |
/// | `occurred_at` | no | `None` | string in a form [`Timestamp::parse`] accepts (normalized to UTC seconds) |
/// | `trace_id` | no | `""` | any string (peers may send other trace id formats) |
/// | `resource_type` | no | inferred from `event_type` like the builder does | string |
/// | `payload` | yes | error | any JSON value except `null` |
///
/// Unknown keys are ignored. The body must be a JSON object; anything else is an error that
/// [`EnvelopeError::is_malformed`] maps to the DLQ reason `malformed_json`.
///
/// **Payload rule.** The builder requires `payload` to be a JSON object (the gem's documented
/// contract, and what `resource_id` is derived from). The reader accepts any non-null JSON value,
/// because the gem publishes whatever it is given and dead-lettering a Ruby peer's array payload
/// would break interoperability; handlers that need an object check it
/// (`envelope.payload.as_object()`).
///
/// # Writing
///
/// [`to_vec`](Self::to_vec) writes the keys in wire order; `occurred_at` is omitted when `None`
/// (only possible for an envelope read without one), every other key is always written. Reading
/// what was written gives an equal envelope; a gem-written body re-serializes to the same bytes,
/// except for floats that Ruby writes in exponent form (`1.0e+20`, which we write `1e20`) and
/// values normalized on read (a numeric `resource_id`, a non-canonical `occurred_at`).
///
/// The fields are public (a wire struct, like async-nats `stream::Config`); the type is
/// `#[non_exhaustive]`, so construct it through the builder or a parser.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::Envelope;
/// use serde_json::json;
///
/// let envelope = Envelope::builder("user.created", json!({"id": 42, "email": "ada@example.com"}))
///     .producer("accounts")
///     .build()?;
/// assert_eq!(envelope.resource_id, "42");
/// assert_eq!(envelope.resource_type, "user");
///
/// let bytes = envelope.to_vec();
/// assert!(bytes.starts_with(br#"{"event_id":""#));
/// assert_eq!(Envelope::from_slice(&bytes)?, envelope);
/// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique id of the event; also sent as the `Nats-Msg-Id` header, and the inbox dedupe key.
    /// UUIDv7 when we generate it (the gem: UUIDv4).
    pub event_id: EventId,
    /// Envelope schema version, [`Envelope::SCHEMA_VERSION`] (1) for everything we write.
    pub schema_version: u32,
    /// What happened, conventionally `<resource>.<verb>` (`user.created`). Never empty.
    pub event_type: String,
    /// The publishing service's `app_name`.
    pub producer: String,
    /// Id of the resource the event is about; `""` when unknown. Always a string on the wire.
    pub resource_id: String,
    /// When the event happened, UTC at whole seconds. `None` only for an envelope read without
    /// one; not written then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<Timestamp>,
    /// Correlation id: 16 lowercase hex characters when we generate it (the gem's
    /// `SecureRandom.hex(8)`); any header-safe text when given to the builder (the gem accepts
    /// any string, e.g. `"trace-abc-123"`); any string when read.
    pub trace_id: String,
    /// Kind of resource (`user`): the `event_type` prefix by default, `"event"` when there is none.
    pub resource_type: String,
    /// The event data: a JSON object when built here; any non-null JSON value when read.
    pub payload: Value,
}

impl Envelope {
    /// The schema version this crate writes.
    pub const SCHEMA_VERSION: u32 = 1;

    /// The longest `trace_id` the builder accepts, in bytes.
    pub const MAX_TRACE_ID_BYTES: usize = 128;

    /// Starts building an envelope for `event_type` carrying `payload` (anything serializable
    /// to a JSON object: a `serde_json::Value`, a `#[derive(Serialize)]` struct, a map).
    ///
    /// See [`EnvelopeBuilder`] for the defaults and checks.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::{Envelope, EventId};
    ///
    /// #[derive(serde::Serialize)]
    /// struct UserCreated<'a> { id: &'a str, email: &'a str }
    ///
    /// let envelope = Envelope::builder("user.created", UserCreated { id: "u-1", email: "a@b.c" })
    ///     .producer("accounts")
    ///     .event_id(EventId::generate())
    ///     .trace_id("0123456789abcdef")
    ///     .occurred_at("2025-11-23T10:00:00Z")
    ///     .build()?;
    /// assert_eq!(envelope.resource_id, "u-1");
    /// assert_eq!(envelope.occurred_at.unwrap().to_string(), "2025-11-23T10:00:00Z");
    /// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
    /// ```
    pub fn builder(event_type: impl Into<String>, payload: impl Serialize) -> EnvelopeBuilder {
        EnvelopeBuilder {
            event_type: event_type.into(),
            payload: serde_json::to_value(payload).map_err(|err| err.to_string()),
            producer: None,
            event_id: None,
            resource_type: None,
            resource_id: None,
            occurred_at: None,
            trace_id: None,
        }
    }

    /// Parses a message body alone. The body must carry `event_id`; use
    /// [`from_message`](Self::from_message) for received messages, where the id may come from
    /// the headers.
    ///
    /// # Errors
    ///
    /// - [`EnvelopeError::NotJson`]: not one JSON value (bad syntax, invalid UTF-8, trailing data,
    ///   nesting deeper than 128);
    /// - [`EnvelopeError::NotAnObject`]: `null`, a boolean, a number, a string or an array;
    /// - [`EnvelopeError::MissingField`]: no `event_id`, `event_type` or `payload` (or `null`);
    /// - [`EnvelopeError::InvalidField`]: a field of the wrong type or value (see the table on
    ///   [`Envelope`]).
    ///
    /// All of them are [malformed](EnvelopeError::is_malformed).
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::{Envelope, EnvelopeError};
    ///
    /// let body = br#"{"event_id":"e1","event_type":"ping","payload":{"n":1},"extra":true}"#;
    /// let envelope = Envelope::from_slice(body)?;
    /// assert_eq!(envelope.resource_type, "event");
    /// assert_eq!(envelope.schema_version, 1);
    ///
    /// assert_eq!(
    ///     Envelope::from_slice(b"null").unwrap_err(),
    ///     EnvelopeError::NotAnObject { found: "null" }
    /// );
    /// # Ok::<(), EnvelopeError>(())
    /// ```
    pub fn from_slice(body: &[u8]) -> Result<Self, EnvelopeError> {
        Self::from_object(parse_object(body)?, None)
    }

    /// Parses a received message: the event id comes from the `Nats-Msg-Id` header (any case,
    /// see [`event_id_from_headers`]) and, only when no valid header is present, from the body's
    /// `event_id` (the gem's inbox rule). The header id then also becomes
    /// [`event_id`](Self::event_id), so the id a handler sees is the id the inbox dedupes on.
    ///
    /// # Errors
    ///
    /// As [`from_slice`](Self::from_slice), except that a missing or invalid body `event_id` is
    /// not an error when a header supplies the id.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::Envelope;
    ///
    /// let body = br#"{"event_type":"user.created","payload":{"id":"u-1"}}"#;
    /// let envelope = Envelope::from_message([("nats-msg-id", "evt-9")], body)?;
    /// assert_eq!(envelope.event_id, "evt-9");
    /// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
    /// ```
    pub fn from_message<I, K, V>(headers: I, body: &[u8]) -> Result<Self, EnvelopeError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let object = parse_object(body)?;
        Self::from_object(object, event_id_from_headers(headers))
    }

    /// Reads an envelope from an already-parsed JSON value (an outbox row's jsonb column, for
    /// example), with the rules of [`from_slice`](Self::from_slice).
    ///
    /// # Errors
    ///
    /// As [`from_slice`](Self::from_slice), minus [`EnvelopeError::NotJson`].
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        match value {
            Value::Object(object) => Self::from_object(object, None),
            other => Err(EnvelopeError::NotAnObject {
                found: json_kind(&other),
            }),
        }
    }

    fn from_object(
        mut object: Map<String, Value>,
        header_id: Option<EventId>,
    ) -> Result<Self, EnvelopeError> {
        let event_id = match header_id {
            Some(id) => id,
            None => match take_string(&mut object, "event_id")? {
                Some(id) => EventId::new(id)?,
                None => return Err(EnvelopeError::MissingField { field: "event_id" }),
            },
        };
        let schema_version = match take_u64(&mut object, "schema_version")? {
            None => Self::SCHEMA_VERSION,
            Some(version) => u32::try_from(version).map_err(|_| {
                EnvelopeError::invalid("schema_version", format!("{version} is out of range"))
            })?,
        };
        let event_type =
            take_string(&mut object, "event_type")?.ok_or(EnvelopeError::MissingField {
                field: "event_type",
            })?;
        if event_type.is_empty() {
            return Err(EnvelopeError::invalid("event_type", "must not be empty"));
        }
        let producer = take_string(&mut object, "producer")?.unwrap_or_default();
        let resource_id = match take(&mut object, "resource_id") {
            None => String::new(),
            Some(Value::String(id)) => id,
            Some(Value::Number(id)) => id.to_string(),
            Some(other) => return Err(wrong_type("resource_id", "a string", &other)),
        };
        let occurred_at = take_timestamp(&mut object, "occurred_at")?;
        let trace_id = take_string(&mut object, "trace_id")?.unwrap_or_default();
        let resource_type = take_string(&mut object, "resource_type")?
            .unwrap_or_else(|| infer_resource_type(&event_type).to_owned());
        let payload =
            take(&mut object, "payload").ok_or(EnvelopeError::MissingField { field: "payload" })?;
        Ok(Self {
            event_id,
            schema_version,
            event_type,
            producer,
            resource_id,
            occurred_at,
            trace_id,
            resource_type,
            payload,
        })
    }

    /// The compact JSON body, keys in wire order.
    ///
    /// Infallible: every field is a string, an integer, a [`Timestamp`] (always formattable) or a
    /// `serde_json::Value` (string keys, finite numbers), written by a small encoder whose output
    /// is byte-identical to `serde_json::to_vec` (tested). To enforce a size limit use
    /// [`to_vec_checked`](Self::to_vec_checked).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        self.to_json_string().into_bytes()
    }

    /// The compact JSON body as a `String`; see [`to_vec`](Self::to_vec).
    #[must_use]
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(320);
        self.write(&mut out);
        out
    }

    /// The size of [`to_vec`](Self::to_vec)'s output in bytes, computed without building it.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let mut counter = Counter::default();
        self.write(&mut counter);
        counter.0
    }

    /// [`to_vec`](Self::to_vec), refusing bodies over `max_bytes` (for example the server's
    /// `max_payload`, 1 MiB by default, minus room for headers), so the outbox can reject an
    /// oversized event at enqueue instead of failing at publish.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::TooLarge`] if the encoded body is longer than `max_bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::{Envelope, EnvelopeError};
    /// use serde_json::json;
    ///
    /// let envelope = Envelope::builder("blob.stored", json!({"data": "x".repeat(2048)}))
    ///     .producer("storage")
    ///     .build()?;
    /// let err = envelope.to_vec_checked(1024).unwrap_err();
    /// assert!(matches!(err, EnvelopeError::TooLarge { max: 1024, .. }));
    /// assert!(envelope.to_vec_checked(1024 * 1024).is_ok());
    /// # Ok::<(), EnvelopeError>(())
    /// ```
    pub fn to_vec_checked(&self, max_bytes: usize) -> Result<Vec<u8>, EnvelopeError> {
        let body = self.to_vec();
        if body.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: body.len(),
                max: max_bytes,
            });
        }
        Ok(body)
    }

    /// Deserializes the payload into `T` without cloning it.
    ///
    /// # Errors
    ///
    /// The `serde_json` error if the payload does not match `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use jetstream_bridge_config::Envelope;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct UserCreated { email: String }
    ///
    /// let body = br#"{"event_id":"e1","event_type":"user.created","payload":{"email":"a@b.c"}}"#;
    /// let event: UserCreated = Envelope::from_slice(body)?.payload_as()?;
    /// assert_eq!(event.email, "a@b.c");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn payload_as<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    fn write<S: Sink>(&self, out: &mut S) {
        let mut obj = ObjectWriter::new(out);
        obj.str("event_id", self.event_id.as_str());
        obj.raw("schema_version", &self.schema_version.to_string());
        obj.str("event_type", &self.event_type);
        obj.str("producer", &self.producer);
        obj.str("resource_id", &self.resource_id);
        if let Some(occurred_at) = self.occurred_at {
            obj.str("occurred_at", &occurred_at.to_string());
        }
        obj.str("trace_id", &self.trace_id);
        obj.str("resource_type", &self.resource_type);
        json::write_value(obj.key("payload"), &self.payload);
        obj.finish();
    }
}

impl<'de> Deserialize<'de> for Envelope {
    /// Applies the rules of [`Envelope::from_slice`] to any serde input holding a map.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Map::<String, Value>::deserialize(deserializer)?;
        Self::from_object(object, None).map_err(serde::de::Error::custom)
    }
}

/// The gem's `resource_type` default: the text before the first `.` when `event_type` has at least
/// two dot-separated parts (Ruby `split('.')`, which drops trailing empty parts), else `"event"`.
/// `user.created` → `user`; `heartbeat`, `user.`, `...` → `event`; `.x` → `""`.
fn infer_resource_type(event_type: &str) -> &str {
    match event_type.split_once('.') {
        Some((prefix, rest)) if rest.chars().any(|c| c != '.') => prefix,
        _ => "event",
    }
}

/// The gem's `resource_id` default: `payload.id` (a string as is, a number as its decimal text),
/// else `payload.resource_id` (same rule), else `""`.
fn infer_resource_id(payload: &Map<String, Value>) -> String {
    let as_id = |value: Option<&Value>| match value {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Number(id)) => Some(id.to_string()),
        _ => None,
    };
    as_id(payload.get("id"))
        .or_else(|| as_id(payload.get("resource_id")))
        .unwrap_or_default()
}

/// Checks a trace id given to the builder. The gem accepts any string (`"trace-abc-123"`), so we
/// do too, as long as it is safe wherever a peer may copy it (a log line, a message header):
/// non-empty, at most [`Envelope::MAX_TRACE_ID_BYTES`], no control character (CR, LF, NUL, C1)
/// and no whitespace other than inner spaces.
fn check_trace_id(trace_id: &str) -> Result<(), EnvelopeError> {
    let invalid = |reason: String| Err(EnvelopeError::invalid("trace_id", reason));
    if trace_id.is_empty() {
        return invalid("must not be empty".to_owned());
    }
    if trace_id.len() > Envelope::MAX_TRACE_ID_BYTES {
        return invalid(format!(
            "is {} bytes, at most {} allowed",
            trace_id.len(),
            Envelope::MAX_TRACE_ID_BYTES
        ));
    }
    if let Some(ch) = trace_id
        .chars()
        .find(|&c| c.is_control() || (c.is_whitespace() && c != ' '))
    {
        return invalid(format!(
            "must not contain control characters or line breaks (found {ch:?})"
        ));
    }
    if trace_id.starts_with(' ') || trace_id.ends_with(' ') {
        return invalid("must not start or end with a space".to_owned());
    }
    Ok(())
}

/// Whether `trace_id` has the form we generate: 16 lowercase hex characters.
#[cfg(test)]
fn is_generated_trace_id(trace_id: &str) -> bool {
    trace_id.len() == 16
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Builds an [`Envelope`], filling the defaults the gem fills. Created by [`Envelope::builder`];
/// setters are consuming and every check runs in [`build`](Self::build).
///
/// | field | default |
/// |---|---|
/// | `event_id` | a new UUIDv7 ([`EventId::generate`]) |
/// | `schema_version` | 1 |
/// | `producer` | none: required (the service's `app_name`) |
/// | `resource_id` | `payload.id` (string as is, number as decimal text), else `payload.resource_id`, else `""` |
/// | `occurred_at` | now, UTC, whole seconds |
/// | `trace_id` | 16 random lowercase hex characters |
/// | `resource_type` | `event_type` before the first `.`, or `"event"` without a dot |
#[derive(Debug, Clone)]
#[must_use = "call `.build()` to get the envelope"]
pub struct EnvelopeBuilder {
    event_type: String,
    payload: Result<Value, String>,
    producer: Option<String>,
    event_id: Option<Result<EventId, EnvelopeError>>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    occurred_at: Option<Result<Timestamp, EnvelopeError>>,
    trace_id: Option<String>,
}

impl EnvelopeBuilder {
    /// The publishing service's name (`app_name`). Required, non-empty.
    pub fn producer(mut self, producer: impl Into<String>) -> Self {
        self.producer = Some(producer.into());
        self
    }

    /// Uses this event id instead of a new UUIDv7: an [`EventId`], a `uuid::Uuid`, or a string
    /// (checked in [`build`](Self::build)). Reuse the id when re-publishing the same event, so
    /// JetStream and the inbox deduplicate it.
    pub fn event_id<T>(mut self, event_id: T) -> Self
    where
        T: TryInto<EventId>,
        T::Error: Into<EnvelopeError>,
    {
        self.event_id = Some(event_id.try_into().map_err(Into::into));
        self
    }

    /// Overrides the `resource_type` inferred from `event_type`.
    pub fn resource_type(mut self, resource_type: impl Into<String>) -> Self {
        self.resource_type = Some(resource_type.into());
        self
    }

    /// Overrides the `resource_id` taken from the payload.
    pub fn resource_id(mut self, resource_id: impl Into<String>) -> Self {
        self.resource_id = Some(resource_id.into());
        self
    }

    /// When the event happened, instead of now: a [`Timestamp`], a `time::OffsetDateTime`, a
    /// `std::time::SystemTime`, or a string in a form [`Timestamp::parse`] accepts (as the gem's
    /// hash form allows). Normalized to UTC and truncated to whole seconds; checked
    /// in [`build`](Self::build).
    pub fn occurred_at<T>(mut self, occurred_at: T) -> Self
    where
        T: TryInto<Timestamp>,
        T::Error: Into<EnvelopeError>,
    {
        self.occurred_at = Some(occurred_at.try_into().map_err(Into::into));
        self
    }

    /// Uses this trace id instead of a random one. Any text the gem accepts works
    /// (`"trace-abc-123"`, a UUID, 16 hex characters), as long as it is header-safe: non-empty,
    /// at most [`Envelope::MAX_TRACE_ID_BYTES`] bytes, no control characters or line breaks, no
    /// whitespace but inner spaces. Checked in [`build`](Self::build).
    pub fn trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Checks the input and builds the envelope.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidField`] naming the first problem found, in this order:
    /// `event_type` empty; `producer` not set or empty; `payload` not serializable to JSON, or not
    /// a JSON object; `event_id` invalid (see [`EventId`]); `trace_id` empty, too long or not
    /// header-safe (see [`trace_id`](Self::trace_id)); `occurred_at` unparseable or outside
    /// years 0000–9999.
    pub fn build(self) -> Result<Envelope, EnvelopeError> {
        if self.event_type.is_empty() {
            return Err(EnvelopeError::invalid("event_type", "must not be empty"));
        }
        let producer = match self.producer {
            Some(producer) if !producer.is_empty() => producer,
            _ => {
                return Err(EnvelopeError::invalid(
                    "producer",
                    "must be set to the publishing app's name",
                ))
            }
        };
        let payload = match self.payload {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return Err(EnvelopeError::invalid(
                    "payload",
                    format!("must be a JSON object, found {}", json_kind(&other)),
                ))
            }
            Err(reason) => {
                return Err(EnvelopeError::invalid(
                    "payload",
                    format!("cannot be serialized to JSON: {reason}"),
                ))
            }
        };
        let event_id = match self.event_id {
            Some(event_id) => event_id.map_err(|e| e.in_field("event_id"))?,
            None => EventId::generate(),
        };
        let trace_id = match self.trace_id {
            Some(trace_id) => {
                check_trace_id(&trace_id)?;
                trace_id
            }
            None => format!("{:016x}", rand::random::<u64>()),
        };
        let occurred_at = match self.occurred_at {
            Some(occurred_at) => occurred_at.map_err(|e| e.in_field("occurred_at"))?,
            None => Timestamp::now(),
        };
        let resource_id = self
            .resource_id
            .unwrap_or_else(|| infer_resource_id(&payload));
        let resource_type = self
            .resource_type
            .unwrap_or_else(|| infer_resource_type(&self.event_type).to_owned());
        Ok(Envelope {
            event_id,
            schema_version: Envelope::SCHEMA_VERSION,
            event_type: self.event_type,
            producer,
            resource_id,
            occurred_at: Some(occurred_at),
            trace_id,
            resource_type,
            payload: Value::Object(payload),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> EnvelopeBuilder {
        Envelope::builder("user.created", json!({"id": "u-1"})).producer("accounts")
    }

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    // ---- builder defaults ----

    #[test]
    fn builder_fills_gem_defaults() {
        let envelope = minimal().build().unwrap();
        assert_eq!(envelope.event_id.to_uuid().unwrap().get_version_num(), 7);
        assert_eq!(envelope.schema_version, 1);
        assert_eq!(envelope.event_type, "user.created");
        assert_eq!(envelope.producer, "accounts");
        assert_eq!(envelope.resource_id, "u-1");
        assert!(
            is_generated_trace_id(&envelope.trace_id),
            "{}",
            envelope.trace_id
        );
        assert_eq!(envelope.resource_type, "user");
        let occurred_at = envelope.occurred_at.unwrap();
        assert_eq!(occurred_at.as_offset_date_time().nanosecond(), 0);
        assert!((Timestamp::now().unix_timestamp() - occurred_at.unix_timestamp()).abs() <= 2);
        assert!(occurred_at.to_string().ends_with('Z'));
    }

    /// The gem accepts any string as a trace id; so do we, as long as it is header-safe.
    #[test]
    fn gem_style_trace_ids_are_accepted() {
        let longest = "t".repeat(Envelope::MAX_TRACE_ID_BYTES);
        for trace_id in [
            "trace-abc-123",
            "0123456789ABCDEF",
            "0123456789abcdef",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "3b241101-e2bb-4255-8caf-4136c566a962",
            "req 42/orders:eu",
            "日本-トレース",
            "x",
            longest.as_str(),
        ] {
            let envelope = minimal().trace_id(trace_id).build().unwrap();
            assert_eq!(envelope.trace_id, trace_id);
            let back = Envelope::from_slice(&envelope.to_vec()).unwrap();
            assert_eq!(back.trace_id, trace_id);
        }
    }

    #[test]
    fn unsafe_trace_ids_are_rejected_with_the_reason() {
        let too_long = "t".repeat(Envelope::MAX_TRACE_ID_BYTES + 1);
        let multibyte = "é".repeat(Envelope::MAX_TRACE_ID_BYTES / 2 + 1);
        for (trace_id, reason) in [
            ("", "must not be empty"),
            (too_long.as_str(), "is 129 bytes, at most 128 allowed"),
            (multibyte.as_str(), "is 130 bytes, at most 128 allowed"),
            ("abc\r\nx-evil: 1", "found '\\r'"),
            ("abc\n", "found '\\n'"),
            ("a\u{0}b", "found '\\0'"),
            ("a\u{85}b", "found '\\u{85}'"),
            ("a\u{9b}b", "found '\\u{9b}'"),
            ("a\tb", "found '\\t'"),
            ("a\u{2028}b", "found '\\u{2028}'"),
            ("a\u{a0}b", "found '\\u{a0}'"),
            (" abc", "must not start or end with a space"),
            ("abc ", "must not start or end with a space"),
        ] {
            let err = minimal().trace_id(trace_id).build().unwrap_err();
            assert_eq!(err.field(), Some("trace_id"), "{trace_id:?}");
            assert!(err.to_string().contains(reason), "{trace_id:?}: {err}");
        }
    }

    #[test]
    fn trace_ids_are_random() {
        let a = minimal().build().unwrap().trace_id;
        let b = minimal().build().unwrap().trace_id;
        assert_ne!(a, b);
    }

    #[test]
    fn resource_id_rules() {
        for (payload, expected) in [
            (json!({"id": "abc"}), "abc"),
            (json!({"id": 42}), "42"),
            (json!({"id": -7}), "-7"),
            (json!({"id": 4.5}), "4.5"),
            (json!({"id": ""}), ""),
            (json!({"id": "x", "resource_id": "y"}), "x"),
            (json!({"resource_id": "y"}), "y"),
            (json!({"resource_id": 9}), "9"),
            (json!({"id": null, "resource_id": "y"}), "y"),
            (json!({"id": true, "resource_id": "y"}), "y"),
            (json!({"id": {"nested": 1}}), ""),
            (json!({"name": "no id"}), ""),
            (json!({}), ""),
        ] {
            let envelope = Envelope::builder("a.b", &payload)
                .producer("p")
                .build()
                .unwrap();
            assert_eq!(envelope.resource_id, expected, "{payload}");
        }
        let explicit = minimal().resource_id("override").build().unwrap();
        assert_eq!(explicit.resource_id, "override");
    }

    #[test]
    fn resource_type_rules_follow_ruby_split() {
        for (event_type, expected) in [
            ("user.created", "user"),
            ("order.line.added", "order"),
            ("heartbeat", "event"),
            ("user.", "event"),
            ("...", "event"),
            ("a..", "event"),
            ("a..b", "a"),
            (".created", ""),
        ] {
            assert_eq!(infer_resource_type(event_type), expected, "{event_type}");
        }
        let explicit = minimal().resource_type("account").build().unwrap();
        assert_eq!(explicit.resource_type, "account");
    }

    #[test]
    fn builder_accepts_given_values() {
        let envelope = minimal()
            .event_id("4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b")
            .trace_id("0123456789abcdef")
            .occurred_at("2025-11-23 11:00:00 +0100")
            .build()
            .unwrap();
        assert_eq!(envelope.event_id, "4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b");
        assert_eq!(envelope.trace_id, "0123456789abcdef");
        assert_eq!(
            envelope.occurred_at.unwrap().to_string(),
            "2025-11-23T10:00:00Z"
        );
        let uuid = uuid::Uuid::now_v7();
        let from_uuid = minimal().event_id(uuid).build().unwrap();
        assert_eq!(from_uuid.event_id.to_uuid(), Some(uuid));
        let id = EventId::generate();
        assert_eq!(minimal().event_id(id.clone()).build().unwrap().event_id, id);
        let time = time::macros::datetime!(2025-11-23 10:00:00.9 UTC);
        let from_time = minimal().occurred_at(time).build().unwrap();
        assert_eq!(
            from_time.occurred_at.unwrap().to_string(),
            "2025-11-23T10:00:00Z"
        );
        let ts = Timestamp::now();
        assert_eq!(
            minimal().occurred_at(ts).build().unwrap().occurred_at,
            Some(ts)
        );
        let system = minimal()
            .occurred_at(std::time::SystemTime::now())
            .build()
            .unwrap();
        assert!(system.occurred_at.is_some());
    }

    // ---- builder validation ----

    fn build_error(builder: EnvelopeBuilder) -> (Option<&'static str>, String) {
        let err = builder.build().unwrap_err();
        (err.field(), err.to_string())
    }

    #[test]
    fn builder_rejects_bad_input_with_typed_errors() {
        let cases: Vec<(EnvelopeBuilder, &str)> = vec![
            (Envelope::builder("", json!({})).producer("p"), "event_type"),
            (Envelope::builder("a.b", json!({})), "producer"),
            (Envelope::builder("a.b", json!({})).producer(""), "producer"),
            (
                Envelope::builder("a.b", json!([1])).producer("p"),
                "payload",
            ),
            (Envelope::builder("a.b", "text").producer("p"), "payload"),
            (Envelope::builder("a.b", ()).producer("p"), "payload"),
            (minimal().event_id(""), "event_id"),
            (minimal().event_id("bad\nid"), "event_id"),
            (minimal().trace_id(""), "trace_id"),
            (minimal().trace_id("trace\nabc"), "trace_id"),
            (minimal().occurred_at("yesterday"), "occurred_at"),
            (minimal().occurred_at("2025-11-23T10:00:00"), "occurred_at"),
        ];
        for (builder, field) in cases {
            let (got, message) = build_error(builder);
            assert_eq!(got, Some(field), "{message}");
            assert!(message.contains(field), "{message}");
        }
    }

    #[test]
    fn unserializable_payload_is_an_error_not_a_panic() {
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        let (field, message) = build_error(Envelope::builder("a.b", map).producer("p"));
        assert_eq!(field, Some("payload"));
        assert!(message.contains("cannot be serialized"), "{message}");
        // NaN becomes null in serde_json::Value, so a struct with NaN still builds.
        #[derive(Serialize)]
        struct WithNan {
            x: f64,
        }
        let built = Envelope::builder("a.b", WithNan { x: f64::NAN })
            .producer("p")
            .build()
            .unwrap();
        assert_eq!(built.payload, json!({"x": null}));
    }

    // ---- serialization ----

    #[test]
    fn writes_keys_in_wire_order_compact_and_unescaped() {
        let envelope = Envelope::builder(
            "note.added",
            json!({"id": 7, "text": "Grüße </script>&<b>", "url": "https://x/y"}),
        )
        .producer("notes")
        .event_id("e-1")
        .trace_id("00000000000000ff")
        .occurred_at("2025-11-23T10:00:00Z")
        .build()
        .unwrap();
        assert_eq!(
            envelope.to_json_string(),
            r#"{"event_id":"e-1","schema_version":1,"event_type":"note.added","producer":"notes","resource_id":"7","occurred_at":"2025-11-23T10:00:00Z","trace_id":"00000000000000ff","resource_type":"note","payload":{"id":7,"text":"Grüße </script>&<b>","url":"https://x/y"}}"#
        );
        assert_eq!(envelope.to_vec(), envelope.to_json_string().into_bytes());
        assert_eq!(
            serde_json::to_string(&envelope).unwrap(),
            envelope.to_json_string()
        );
        assert_eq!(envelope.encoded_len(), envelope.to_vec().len());
    }

    #[test]
    fn missing_occurred_at_is_not_written() {
        let envelope =
            Envelope::from_slice(br#"{"event_id":"e","event_type":"t","payload":{}}"#).unwrap();
        assert_eq!(envelope.occurred_at, None);
        let text = envelope.to_json_string();
        assert!(!text.contains("occurred_at"), "{text}");
        assert_eq!(serde_json::to_string(&envelope).unwrap(), text);
        assert_eq!(Envelope::from_slice(text.as_bytes()).unwrap(), envelope);
    }

    #[test]
    fn size_check() {
        let envelope = minimal().build().unwrap();
        let len = envelope.encoded_len();
        assert_eq!(envelope.to_vec_checked(len).unwrap().len(), len);
        assert_eq!(
            envelope.to_vec_checked(len - 1).unwrap_err(),
            EnvelopeError::TooLarge {
                size: len,
                max: len - 1
            }
        );
    }

    // ---- strict parsing ----

    #[test]
    fn rejects_non_json_and_non_objects() {
        for bytes in [
            &b""[..],
            b"{",
            b"not json",
            b"{\"a\":1} x",
            b"\xff\xfe",
            b"{'a':1}",
        ] {
            let err = Envelope::from_slice(bytes).unwrap_err();
            assert!(
                matches!(err, EnvelopeError::NotJson { .. }),
                "{bytes:?}: {err}"
            );
            assert!(err.is_malformed());
        }
        for (bytes, found) in [
            (&b"null"[..], "null"),
            (b"true", "a boolean"),
            (b"42", "a number"),
            (b"-1.5", "a number"),
            (b"\"user.created\"", "a string"),
            (b"[]", "an array"),
            (b" [{\"event_type\":\"x\"}] ", "an array"),
        ] {
            assert_eq!(
                Envelope::from_slice(bytes).unwrap_err(),
                EnvelopeError::NotAnObject { found }
            );
        }
    }

    #[test]
    fn error_messages_never_contain_the_body() {
        let secret = "s3cr3t-card-number-4111111111111111";
        for bytes in [
            format!("{{\"event_id\":\"e\",\"payload\":{{\"card\":\"{secret}\"}}}}"),
            format!("{{\"card\":\"{secret}\""),
            format!("\"{secret}\""),
            format!(
                "{{\"event_id\":\"e\",\"event_type\":\"t\",\"payload\":{{}},\"x\":\"{secret}\""
            ),
        ] {
            let message = Envelope::from_slice(bytes.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(!message.contains("4111111111111111"), "{message}");
            assert!(message.len() < 200, "{message}");
        }
        // An invalid timestamp is quoted, shortened to 40 characters.
        let long = format!(
            "{{\"event_id\":\"e\",\"event_type\":\"t\",\"payload\":{{}},\"occurred_at\":\"{}\"}}",
            "x".repeat(5000)
        );
        let message = Envelope::from_slice(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(message.contains(&"x".repeat(40)), "{message}");
        assert!(!message.contains(&"x".repeat(41)), "{message}");
    }

    #[test]
    fn required_fields() {
        let cases = [
            (json!({"event_type": "t", "payload": {}}), "event_id"),
            (
                json!({"event_id": null, "event_type": "t", "payload": {}}),
                "event_id",
            ),
            (json!({"event_id": "e", "payload": {}}), "event_type"),
            (
                json!({"event_id": "e", "event_type": null, "payload": {}}),
                "event_type",
            ),
            (json!({"event_id": "e", "event_type": "t"}), "payload"),
            (
                json!({"event_id": "e", "event_type": "t", "payload": null}),
                "payload",
            ),
            (json!({}), "event_id"),
        ];
        for (value, field) in cases {
            assert_eq!(
                Envelope::from_slice(&body(value.clone())).unwrap_err(),
                EnvelopeError::MissingField { field },
                "{value}"
            );
        }
    }

    #[test]
    fn ill_typed_fields() {
        let base = || json!({"event_id": "e", "event_type": "t", "payload": {}});
        for (key, bad, field) in [
            ("event_id", json!(42), "event_id"),
            ("event_id", json!(""), "event_id"),
            ("event_id", json!("a\nb"), "event_id"),
            ("schema_version", json!("1"), "schema_version"),
            ("schema_version", json!(-1), "schema_version"),
            ("schema_version", json!(1.5), "schema_version"),
            (
                "schema_version",
                json!(u64::from(u32::MAX) + 1),
                "schema_version",
            ),
            ("event_type", json!(""), "event_type"),
            ("event_type", json!(["t"]), "event_type"),
            ("producer", json!(1), "producer"),
            ("resource_id", json!(true), "resource_id"),
            ("resource_id", json!({"id": 1}), "resource_id"),
            ("occurred_at", json!(1_763_892_000), "occurred_at"),
            ("occurred_at", json!("not a time"), "occurred_at"),
            ("trace_id", json!(16), "trace_id"),
            ("resource_type", json!(false), "resource_type"),
        ] {
            let mut value = base();
            value[key] = bad.clone();
            let err = Envelope::from_slice(&body(value)).unwrap_err();
            assert_eq!(err.field(), Some(field), "{key}={bad}: {err}");
            assert!(matches!(err, EnvelopeError::InvalidField { .. }), "{err}");
            assert!(err.is_malformed());
        }
    }

    #[test]
    fn optional_fields_get_defaults_and_unknown_keys_are_ignored() {
        let envelope = Envelope::from_slice(&body(json!({
            "event_id": "e", "event_type": "order.placed", "payload": {"id": 5},
            "type": "ignored", "metadata": {"x": 1}
        })))
        .unwrap();
        assert_eq!(envelope.schema_version, 1);
        assert_eq!(envelope.producer, "");
        assert_eq!(
            envelope.resource_id, "",
            "not re-derived from the payload on read"
        );
        assert_eq!(envelope.occurred_at, None);
        assert_eq!(envelope.trace_id, "");
        assert_eq!(envelope.resource_type, "order");
        let nulls = Envelope::from_slice(&body(json!({
            "event_id": "e", "event_type": "ping", "payload": {}, "schema_version": null,
            "producer": null, "resource_id": null, "occurred_at": null, "trace_id": null,
            "resource_type": null
        })))
        .unwrap();
        assert_eq!(nulls.schema_version, 1);
        assert_eq!(nulls.resource_type, "event");
    }

    #[test]
    fn lenient_where_ruby_peers_differ() {
        let envelope = Envelope::from_slice(&body(json!({
            "event_id": "e", "schema_version": 2, "event_type": "a.b", "resource_id": 42,
            "occurred_at": "2025-11-23T10:00:00.123+00:00", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "payload": {}
        })))
        .unwrap();
        assert_eq!(envelope.schema_version, 2);
        assert_eq!(envelope.resource_id, "42");
        assert_eq!(
            envelope.occurred_at.unwrap().to_string(),
            "2025-11-23T10:00:00Z"
        );
        assert_eq!(envelope.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn non_object_payload_is_accepted_on_read_but_not_built() {
        for payload in [json!([1, 2]), json!("text"), json!(3), json!(false)] {
            let envelope = Envelope::from_slice(&body(json!({
                "event_id": "e", "event_type": "t", "payload": payload.clone()
            })))
            .unwrap();
            assert_eq!(envelope.payload, payload);
            assert_eq!(
                Envelope::from_slice(&envelope.to_vec()).unwrap(),
                envelope,
                "round trip keeps it"
            );
            assert_eq!(
                build_error(Envelope::builder("t", &payload).producer("p")).0,
                Some("payload")
            );
        }
    }

    #[test]
    fn from_message_takes_the_id_from_headers_first() {
        let with_id = br#"{"event_id":"body-id","event_type":"t","payload":{}}"#;
        let without_id = br#"{"event_type":"t","payload":{}}"#;
        let bad_id = br#"{"event_id":42,"event_type":"t","payload":{}}"#;
        let none: [(&str, &str); 0] = [];

        let env = Envelope::from_message([("Nats-Msg-Id", "hdr")], with_id).unwrap();
        assert_eq!(env.event_id, "hdr");
        let env = Envelope::from_message([("NATS-MSG-ID", "hdr")], without_id).unwrap();
        assert_eq!(env.event_id, "hdr");
        let env = Envelope::from_message([("nats-msg-id", "hdr")], bad_id).unwrap();
        assert_eq!(env.event_id, "hdr");
        let env = Envelope::from_message(none, with_id).unwrap();
        assert_eq!(env.event_id, "body-id");
        let env = Envelope::from_message([("Nats-Msg-Id", "")], with_id).unwrap();
        assert_eq!(
            env.event_id, "body-id",
            "an empty header falls back to the body"
        );
        assert_eq!(
            Envelope::from_message(none, without_id).unwrap_err(),
            EnvelopeError::MissingField { field: "event_id" }
        );
        assert_eq!(
            Envelope::from_message([("Nats-Msg-Id", "hdr")], b"[]").unwrap_err(),
            EnvelopeError::NotAnObject { found: "an array" }
        );
    }

    #[test]
    fn from_value_and_deserialize_apply_the_same_rules() {
        let value = json!({"event_id": "e", "event_type": "t", "payload": {"k": 1}});
        let a = Envelope::from_value(value.clone()).unwrap();
        let b: Envelope = serde_json::from_value(value.clone()).unwrap();
        let c = Envelope::from_slice(&body(value)).unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(
            Envelope::from_value(json!(null)).unwrap_err(),
            EnvelopeError::NotAnObject { found: "null" }
        );
        let err = serde_json::from_str::<Envelope>(r#"{"event_id":"e","payload":{}}"#).unwrap_err();
        assert!(err.to_string().contains("event_type"), "{err}");
    }

    #[test]
    fn payload_as_deserializes_without_clone() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct P {
            id: u32,
        }
        let envelope = Envelope::builder("a.b", json!({"id": 3}))
            .producer("p")
            .build()
            .unwrap();
        assert_eq!(envelope.payload_as::<P>().unwrap(), P { id: 3 });
        assert!(envelope.payload_as::<Vec<u8>>().is_err());
    }

    #[test]
    fn duplicate_keys_last_wins_like_ruby() {
        let envelope = Envelope::from_slice(
            br#"{"event_id":"a","event_id":"b","event_type":"t","payload":{}}"#,
        )
        .unwrap();
        assert_eq!(envelope.event_id, "b");
    }
}
