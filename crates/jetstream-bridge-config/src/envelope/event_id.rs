//! [`EventId`]: the envelope's `event_id`, the `Nats-Msg-Id` header value and the inbox dedupe key.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::EnvelopeError;

/// The id of one event: the envelope's `event_id`, the value of the `Nats-Msg-Id` header that
/// JetStream deduplicates on, and the inbox's dedupe key.
///
/// We generate UUIDv7 ids ([`generate`](Self::generate)); the gem generates UUIDv4. Because Ruby
/// peers may pass any string as `event_id`, a reader accepts any string that can travel safely in
/// a NATS header and a database key, not only UUIDs. The rules, checked by [`new`](Self::new):
///
/// - not empty, at most [`MAX_LEN`](Self::MAX_LEN) (255) bytes;
/// - no control characters (C0, DEL, C1): a CR or LF would break the header block;
/// - no leading or trailing whitespace: header parsers trim it, so the header and the body would
///   disagree about the id.
///
/// Serialized as a plain JSON string.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::EventId;
///
/// let id = EventId::generate();
/// assert_eq!(id.as_str().len(), 36);
///
/// let ruby = EventId::new("4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b")?;
/// assert_eq!(ruby.to_string(), "4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b");
/// assert!(EventId::new("").is_err());
/// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// The maximum length of an id in bytes.
    pub const MAX_LEN: usize = 255;

    /// A new, time-ordered UUIDv7 id in the hyphenated lowercase form
    /// (`0190163d-8694-739b-aea5-966c26f8ad91`).
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// Validates and wraps an id received from a peer or chosen by the caller.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidField`] with field `"event_id"` if the id is empty, longer than
    /// [`MAX_LEN`](Self::MAX_LEN) bytes, contains a control character or starts or ends with
    /// whitespace.
    pub fn new(id: impl Into<String>) -> Result<Self, EnvelopeError> {
        let id = id.into();
        validate(&id)?;
        Ok(Self(id))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    #[must_use]
    pub fn into_string(self) -> String {
        self.0
    }

    /// The id as a UUID, if it is one (any version: ours are v7, the gem's v4).
    #[must_use]
    pub fn to_uuid(&self) -> Option<Uuid> {
        Uuid::try_parse(&self.0).ok()
    }
}

/// Checks the rules listed on [`EventId`].
pub(crate) fn validate(id: &str) -> Result<(), EnvelopeError> {
    let reason = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.len() > EventId::MAX_LEN {
        format!(
            "is {} bytes, over the {}-byte limit",
            id.len(),
            EventId::MAX_LEN
        )
    } else if id.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else if id.starts_with(char::is_whitespace) || id.ends_with(char::is_whitespace) {
        "must not start or end with whitespace".to_owned()
    } else {
        return Ok(());
    };
    Err(EnvelopeError::invalid("event_id", reason))
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({:?})", self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for EventId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<Uuid> for EventId {
    /// Hyphenated lowercase form; a UUID always satisfies the rules.
    fn from(value: Uuid) -> Self {
        Self(value.to_string())
    }
}

impl From<EventId> for String {
    fn from(value: EventId) -> Self {
        value.0
    }
}

impl FromStr for EventId {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for EventId {
    type Error = EnvelopeError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<String> for EventId {
    type Error = EnvelopeError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&String> for EventId {
    type Error = EnvelopeError;

    fn try_from(value: &String) -> Result<Self, Self::Error> {
        Self::new(value.as_str())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuid_v7_and_ordered() {
        let a = EventId::generate();
        let b = EventId::generate();
        let uuid = a.to_uuid().unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(a.as_str(), a.as_str().to_lowercase());
        assert!(a < b, "v7 ids from one process sort by time: {a} {b}");
    }

    #[test]
    fn accepts_ruby_v4_ids_and_arbitrary_strings() {
        let v4 = EventId::new("4f8a5c1e-6f8e-4c8e-9d1a-2b7c3e4f5a6b").unwrap();
        assert_eq!(v4.to_uuid().unwrap().get_version_num(), 4);
        for id in [
            "evt-1",
            "seq:42",
            "order 7 created",
            "ünïcode-ïd",
            &"a".repeat(255),
        ] {
            let parsed = EventId::new(id).unwrap();
            assert_eq!(parsed, id);
            assert_eq!(parsed.to_uuid(), None);
        }
    }

    #[test]
    fn rejects_ids_unsafe_in_headers() {
        for (id, reason) in [
            ("", "must not be empty"),
            ("a\r\nX-Evil: 1", "must not contain control characters"),
            ("tab\there", "must not contain control characters"),
            ("del\u{7f}", "must not contain control characters"),
            (" lead", "must not start or end with whitespace"),
            ("trail ", "must not start or end with whitespace"),
        ] {
            assert_eq!(
                EventId::new(id).unwrap_err(),
                EnvelopeError::invalid("event_id", reason),
                "{id:?}"
            );
        }
        let long = EventId::new("a".repeat(256)).unwrap_err();
        assert_eq!(
            long.to_string(),
            "invalid field `event_id`: is 256 bytes, over the 255-byte limit"
        );
    }

    #[test]
    fn serde_is_a_plain_string_and_validates() {
        let id = EventId::new("abc").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""abc""#);
        assert_eq!(serde_json::from_str::<EventId>(r#""abc""#).unwrap(), id);
        assert!(serde_json::from_str::<EventId>(r#""""#).is_err());
        assert!(serde_json::from_str::<EventId>("42").is_err());
    }

    #[test]
    fn conversions() {
        let uuid = Uuid::now_v7();
        let id = EventId::from(uuid);
        assert_eq!(id.to_uuid(), Some(uuid));
        assert_eq!(String::from(id.clone()), uuid.to_string());
        assert_eq!("x".parse::<EventId>().unwrap().as_ref(), "x");
        assert_eq!(
            format!("{:?}", EventId::new("x").unwrap()),
            r#"EventId("x")"#
        );
        let set: std::collections::HashSet<EventId> = [id.clone()].into();
        assert!(set.contains(id.as_str()));
    }
}
