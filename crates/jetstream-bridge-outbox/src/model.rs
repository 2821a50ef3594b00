//! [`NewEvent`] (what callers enqueue or publish), the row status, and the shared preparation
//! of an event into its wire form (envelope bytes, subject, headers).

use std::str::FromStr as _;

use async_nats::HeaderMap;
use jetstream_bridge_config::{
    validate_literal_subject, Config, Envelope, EnvelopeBuilder, EventId, TraceParent,
    MSG_ID_HEADER, RUBY_MSG_ID_HEADER, TRACEPARENT_HEADER,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{OutboxError, OutboxErrorKind, Result};

/// The state of an outbox row (`status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Committed and not sent yet: waiting for a relay (also after a failed attempt that will
    /// be retried), or claimed by one while `claimed_until` lies ahead.
    Pending,
    /// Claimed, as earlier versions and other tools mark it. This relay leaves a claimed row
    /// `Pending` and records the claim in `claimed_until` (the lease) and `claimed_by`, so that
    /// the claim changes no indexed column; it claims `Publishing` rows under the same lease
    /// rule (once `claimed_until` has passed, or when it is NULL).
    Publishing,
    /// Acknowledged by JetStream.
    Sent,
    /// Quarantined after `max_attempts` failed attempts; never retried automatically
    /// ([`Outbox::retry_failed`](crate::Outbox::retry_failed) puts it back).
    Failed,
}

impl Status {
    /// The value stored in the `status` column (the gem's spelling).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Publishing => "publishing",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

enum Source {
    Builder(EnvelopeBuilder),
    Envelope(Envelope),
}

/// An event to enqueue ([`Outbox::enqueue`](crate::Outbox::enqueue)) or publish directly
/// ([`Publisher::publish`](crate::Publisher::publish)).
///
/// Either built here from an event type and payload (the envelope's `producer` becomes the
/// configured `app_name`, every other field gets the gem's default, see docs/WIRE.md), or a ready
/// [`Envelope`] (`From<Envelope>`, sent as it is).
///
/// # Examples
///
/// ```
/// use jetstream_bridge_outbox::NewEvent;
/// use serde_json::json;
///
/// let event = NewEvent::new("user.created", json!({"id": "u-1"}))
///     .envelope_with(|b| b.trace_id("0123456789abcdef"))
///     .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .ordering_key("user:u-1");
/// # let _ = event;
/// ```
#[must_use]
pub struct NewEvent {
    source: Source,
    subject: Option<String>,
    traceparent: Option<String>,
    ordering_key: Option<String>,
}

impl std::fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("NewEvent");
        match &self.source {
            Source::Builder(b) => d.field("builder", b),
            Source::Envelope(e) => d.field("envelope", &e.event_id),
        };
        d.field("subject", &self.subject)
            .field("traceparent", &self.traceparent)
            .field("ordering_key", &self.ordering_key)
            .finish()
    }
}

impl NewEvent {
    /// An event of `event_type` (e.g. `user.created`) carrying `payload`, which must serialize
    /// to a JSON object (checked when it is enqueued or published).
    pub fn new(event_type: impl Into<String>, payload: impl Serialize) -> Self {
        Self::from_source(Source::Builder(Envelope::builder(event_type, payload)))
    }

    fn from_source(source: Source) -> Self {
        Self {
            source,
            subject: None,
            traceparent: None,
            ordering_key: None,
        }
    }

    /// Adjusts the envelope builder (event id, resource type or id, `occurred_at`, trace id).
    /// The producer is set afterwards to the configured `app_name`. No effect on an event made
    /// from a ready [`Envelope`].
    pub fn envelope_with(mut self, f: impl FnOnce(EnvelopeBuilder) -> EnvelopeBuilder) -> Self {
        if let Source::Builder(builder) = self.source {
            self.source = Source::Builder(f(builder));
        }
        self
    }

    /// Publishes to this subject instead of the configured source subject
    /// (`{env}.{app}.sync.{dest}`); must be a literal subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// A W3C `traceparent` to send as a header with the event:
    /// `<version>-<trace-id>-<parent-id>-<flags>`, lowercase hex, e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`; ids must not be all zeros.
    /// Checked when the event is enqueued or published
    /// ([`InvalidEvent`](crate::OutboxErrorKind::InvalidEvent)).
    ///
    /// Without one, an event enqueued or published while a [`TraceParent`] is
    /// [current](TraceParent::current) (inside a consumer handler, or your own
    /// [`TraceParent::scope`]) carries a child of it, captured at enqueue time.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The ordering key (default `resource_type:resource_id`): an ordered relay publishes
    /// events with the same key in insertion order.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Builds the envelope and checks subject and size, without any I/O.
    pub(crate) fn prepare(self, defaults: &Defaults) -> Result<Prepared> {
        let envelope = match self.source {
            Source::Builder(builder) => builder
                .producer(defaults.producer.as_str())
                .build()
                .map_err(OutboxError::envelope)?,
            Source::Envelope(envelope) => envelope,
        };
        let event_id = envelope.event_id.clone();
        let fail = |e: OutboxError| e.for_event(event_id.clone());
        let body = envelope
            .to_vec_checked(defaults.max_payload_bytes)
            .map_err(|e| fail(OutboxError::envelope(e)))?;
        let subject = match self.subject {
            Some(subject) => {
                validate_literal_subject(&subject).map_err(|e| {
                    fail(OutboxError::with_source(OutboxErrorKind::InvalidEvent, e))
                })?;
                subject
            }
            None => defaults.subject.clone(),
        };
        // The given traceparent, else a child of the task's current one (set by the consumer
        // runtime while a handler runs), so a trace continues across services.
        let traceparent =
            match &self.traceparent {
                Some(tp) => Some(tp.parse::<TraceParent>().map_err(|e| {
                    fail(OutboxError::with_source(OutboxErrorKind::InvalidEvent, e))
                })?),
                None => TraceParent::current().map(|current| current.child()),
            };
        let ordering_key = self
            .ordering_key
            .unwrap_or_else(|| format!("{}:{}", envelope.resource_type, envelope.resource_id));
        Ok(Prepared {
            event_id,
            subject,
            body,
            traceparent: traceparent.map(|tp| tp.to_string()),
            ordering_key,
        })
    }
}

/// Whether a JSON value holds a NUL character (`\u0000`) in any string or key: PostgreSQL's
/// `jsonb` cannot store it.
pub(crate) fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Whether JSON text (valid, as our writer produces it) holds the escape `\u0000` in any
/// string or key. A backslash only ever starts an escape there, so escapes are skipped as
/// pairs: `\\u0000` (an escaped backslash, then `u0000`) is not a NUL.
pub(crate) fn json_text_contains_nul(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|b| *b == b'\\') {
        let escape = i + offset + 1;
        if bytes[escape..].starts_with(b"u0000") {
            return true;
        }
        i = escape + 1;
        if i >= bytes.len() {
            return false;
        }
    }
    false
}

impl From<Envelope> for NewEvent {
    fn from(envelope: Envelope) -> Self {
        Self::from_source(Source::Envelope(envelope))
    }
}

/// What enqueue and publish take from the [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Defaults {
    pub(crate) producer: String,
    pub(crate) subject: String,
    pub(crate) max_payload_bytes: usize,
}

impl Defaults {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            producer: config.app_name().as_str().to_owned(),
            subject: config.subjects().source().as_str().to_owned(),
            max_payload_bytes: config.max_payload_bytes(),
        }
    }
}

/// An event in wire form.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) event_id: EventId,
    pub(crate) subject: String,
    /// The envelope's wire bytes: what is published, and what the outbox stores.
    pub(crate) body: Vec<u8>,
    pub(crate) traceparent: Option<String>,
    pub(crate) ordering_key: String,
}

impl Prepared {
    /// The `headers` column: the canonical msg-id and the traceparent, if any.
    pub(crate) fn headers_json(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            MSG_ID_HEADER.to_owned(),
            Value::from(self.event_id.as_str()),
        );
        if let Some(tp) = &self.traceparent {
            map.insert(TRACEPARENT_HEADER.to_owned(), Value::from(tp.as_str()));
        }
        Value::Object(map)
    }
}

/// NATS headers for one event: `Nats-Msg-Id` (and the gem's lowercase `nats-msg-id` when
/// `ruby_header`), then the extra headers (msg-id keys in any case are ignored there).
pub(crate) fn nats_headers<'a>(
    event_id: &str,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
    ruby_header: bool,
) -> HeaderMap {
    // async-nats asserts on invalid header names/values; parse them fallibly so that a bad
    // traceparent or a hand-written row can never panic a publisher or a relay.
    let mut headers = HeaderMap::new();
    match async_nats::HeaderValue::from_str(event_id) {
        Ok(id) => {
            headers.insert(MSG_ID_HEADER, id.clone());
            if ruby_header {
                headers.insert(RUBY_MSG_ID_HEADER, id);
            }
        }
        Err(_) => tracing::warn!("event id is not a valid header value: sent without msg-id"),
    }
    for (name, value) in extra {
        if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            continue;
        }
        match (
            async_nats::HeaderName::from_str(name),
            async_nats::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.insert(name, value);
            }
            _ => tracing::warn!(header = %name.escape_debug(), "invalid header skipped"),
        }
    }
    headers
}

/// The string entries of a `headers` column value (an object, or a gem-style JSON string
/// holding an object).
pub(crate) fn header_pairs(value: &Value) -> Vec<(String, String)> {
    let decoded;
    let object = match value {
        Value::Object(map) => map,
        Value::String(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                decoded = map;
                &decoded
            }
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    object
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Defaults {
        Defaults {
            producer: "orders".into(),
            subject: "production.orders.sync.billing".into(),
            max_payload_bytes: 1024,
        }
    }

    #[test]
    fn prepare_fills_producer_subject_and_key() {
        let p = NewEvent::new("user.created", json!({"id": 7}))
            .prepare(&defaults())
            .unwrap();
        let envelope = Envelope::from_slice(&p.body).unwrap();
        assert_eq!(envelope.producer, "orders");
        assert_eq!(p.subject, "production.orders.sync.billing");
        assert_eq!(p.ordering_key, "user:7");
        assert_eq!(p.body, envelope.to_vec());
    }

    #[test]
    fn prepare_rejects_oversized_and_invalid() {
        let err = NewEvent::new("blob.put", json!({"d": "x".repeat(2000)}))
            .prepare(&defaults())
            .unwrap_err();
        assert!(matches!(
            err.kind(),
            OutboxErrorKind::PayloadTooLarge { max: 1024, .. }
        ));
        assert!(err.event_id().is_some());
        let err = NewEvent::new("x.y", json!([1, 2]))
            .prepare(&defaults())
            .unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
        let err = NewEvent::new("x.y", json!({}))
            .subject("a.*")
            .prepare(&defaults())
            .unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
    }

    #[test]
    fn prepare_accepts_gem_trace_ids_and_refuses_unsafe_ones() {
        let with_trace = |id: &str| {
            NewEvent::new("x.y", json!({}))
                .envelope_with(|b| b.trace_id(id))
                .prepare(&defaults())
        };
        let p = with_trace("trace-abc-123").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(body["trace_id"], "trace-abc-123");
        for bad in ["", "a\r\nb", "a\u{0}"] {
            let err = with_trace(bad).unwrap_err();
            assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent, "{bad:?}");
        }
    }

    #[test]
    fn headers_carry_both_msg_ids_and_traceparent() {
        let h = nats_headers("e1", [("traceparent", "tp"), ("NATS-MSG-ID", "x")], true);
        assert_eq!(h.get(MSG_ID_HEADER).unwrap().as_str(), "e1");
        assert_eq!(h.get(RUBY_MSG_ID_HEADER).unwrap().as_str(), "e1");
        assert_eq!(h.get("traceparent").unwrap().as_str(), "tp");
        let h = nats_headers("e1", [], false);
        assert!(h.get(RUBY_MSG_ID_HEADER).is_none());
    }

    #[test]
    fn invalid_header_data_is_skipped_not_a_panic() {
        let h = nats_headers(
            "bad\nid",
            [
                ("traceparent", "a\r\nb"),
                ("bad name", "v"),
                ("x-ok", "fine"),
            ],
            true,
        );
        assert!(h.get(MSG_ID_HEADER).is_none());
        assert!(h.get("traceparent").is_none());
        assert_eq!(h.get("x-ok").map(|v| v.as_str()), Some("fine"));
        assert_eq!(h.iter().count(), 1);
    }

    #[test]
    fn traceparent_must_be_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let valid = |tp: &str| tp.parse::<TraceParent>().is_ok();
        assert!(valid(ok));
        assert!(valid(&format!("01{}-extra", &ok[2..])));
        for bad in [
            "",
            "tp",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
        ] {
            assert!(!valid(bad), "{bad:?}");
        }
        let err = NewEvent::new("x.y", json!({}))
            .traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
            .prepare(&defaults())
            .unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
        assert!(err.event_id().is_some());
    }

    #[test]
    fn nul_is_found_in_values_and_keys() {
        assert!(!contains_nul(&json!({"a": ["b", 1, null, {"c": "d"}]})));
        assert!(contains_nul(&json!({"a": ["b", {"c": "d\u{0}"}]})));
        assert!(contains_nul(&json!({"a\u{0}": 1})));
    }

    #[test]
    fn nul_is_found_in_json_text() {
        let text = |v: Value| serde_json::to_string(&v).unwrap();
        assert!(!json_text_contains_nul(&text(
            json!({"a": ["b", 1, null, {"c": "d\u{1}"}]})
        )));
        assert!(json_text_contains_nul(&text(
            json!({"a": ["b", {"c": "d\u{0}"}]})
        )));
        assert!(json_text_contains_nul(&text(json!({"a\u{0}": 1}))));
        assert!(json_text_contains_nul(&text(json!({"a": "\\\u{0}"}))));
        // An escaped backslash followed by the letters `u0000`, and a trailing backslash.
        assert!(!json_text_contains_nul(&text(json!({"a": "\\u0000"}))));
        assert!(!json_text_contains_nul(&text(json!({"a": "x\\"}))));
        assert!(!json_text_contains_nul(r"\"));
    }

    #[test]
    fn header_pairs_accept_object_and_double_encoded() {
        assert_eq!(
            header_pairs(&json!({"traceparent": "t"})),
            vec![("traceparent".to_owned(), "t".to_owned())]
        );
        assert_eq!(
            header_pairs(&json!("{\"nats-msg-id\":\"e\"}")),
            vec![("nats-msg-id".to_owned(), "e".to_owned())]
        );
    }
}
