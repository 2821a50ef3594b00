//! Wire header names shared by the outbox, the consumer and tooling, and event-id extraction.
//!
//! Generic over `(name, value)` pairs so this crate does not depend on async-nats; with an
//! `async_nats::HeaderMap` pass something like
//! `headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_ref(), v.as_str())))`.

use super::{event_id, Envelope, EventId};

/// The canonical message-id header. JetStream deduplicates on this exact spelling (it compares
/// header names case-sensitively), so every publish sets it to the event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The lowercase message-id header the Ruby gem (≥ 2.3) sends and its consumer reads. The server
/// does **not** deduplicate on it; we send it as well so Ruby consumers see our ids.
pub const RUBY_MSG_ID_HEADER: &str = "nats-msg-id";

/// W3C Trace Context header carrying the active span across publish and consume.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// DLQ header marking a dead-lettered copy; its value is [`DEAD_LETTER_HEADER_VALUE`].
pub const DEAD_LETTER_HEADER: &str = "x-dead-letter";

/// The value of [`DEAD_LETTER_HEADER`].
pub const DEAD_LETTER_HEADER_VALUE: &str = "true";

/// DLQ header with the reason, one of [`DlqReason::as_str`](crate::DlqReason::as_str).
pub const DLQ_REASON_HEADER: &str = "x-dlq-reason";

/// DLQ header with the delivery count of the dead-lettered message, in decimal.
pub const DELIVERIES_HEADER: &str = "x-deliveries";

/// DLQ header with the compact JSON [`DlqContext`](crate::DlqContext).
pub const DLQ_CONTEXT_HEADER: &str = "x-dlq-context";

/// Header of a dead letter republished by a replay (`jetstream-bridge dlq replay`): the
/// original event id.
///
/// A replay cannot reuse the original id as `Nats-Msg-Id`: inside the stream's duplicate window
/// the server would drop the copy as a duplicate of the original. It publishes with a msg-id of
/// its own (`replay:<event_id>:<dlq sequence>`) and names the original event here;
/// [`event_id_from_headers`] reads this header first, so a consumer's inbox dedupes the replay
/// on the original event id (applied once, also when replayed twice or already applied).
pub const REPLAY_OF_HEADER: &str = "x-replay-of";

/// Finds the event id in a message's headers: the value of [`REPLAY_OF_HEADER`] on a replayed
/// dead letter, else the value of `Nats-Msg-Id`, matched case-insensitively (so the gem's
/// `nats-msg-id` counts too).
///
/// When several msg-id spellings are present, the exact canonical `Nats-Msg-Id` wins (it is the
/// one the server deduplicated on), then the first other match. Values are trimmed; a value that
/// is not a valid [`EventId`] (empty, too long, control characters) is skipped, as the gem skips
/// blank ones.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::event_id_from_headers;
///
/// let headers = [("content-type", "application/json"), ("nats-msg-id", "evt-1")];
/// assert_eq!(event_id_from_headers(headers).unwrap(), "evt-1");
///
/// let both = [("nats-msg-id", "ruby"), ("Nats-Msg-Id", "canonical")];
/// assert_eq!(event_id_from_headers(both).unwrap(), "canonical");
///
/// assert!(event_id_from_headers([("Nats-Msg-Id", "  ")]).is_none());
///
/// // A replayed dead letter: its own msg-id, the original event id in `x-replay-of`.
/// let replay = [("Nats-Msg-Id", "replay:evt-1:42"), ("x-replay-of", "evt-1")];
/// assert_eq!(event_id_from_headers(replay).unwrap(), "evt-1");
/// ```
#[must_use]
pub fn event_id_from_headers<I, K, V>(headers: I) -> Option<EventId>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut canonical: Option<String> = None;
    let mut first_other: Option<String> = None;
    for (name, value) in headers {
        let name = name.as_ref();
        let is_replay = name.eq_ignore_ascii_case(REPLAY_OF_HEADER);
        if !is_replay && !name.eq_ignore_ascii_case(MSG_ID_HEADER) {
            continue;
        }
        let value = value.as_ref().trim();
        if event_id::validate(value).is_err() {
            continue;
        }
        if is_replay {
            return EventId::new(value).ok();
        }
        if name == MSG_ID_HEADER {
            canonical.get_or_insert_with(|| value.to_owned());
        } else if first_other.is_none() {
            first_other = Some(value.to_owned());
        }
    }
    canonical
        .or(first_other)
        .and_then(|id| EventId::new(id).ok())
}

/// The event id of a received message: the replay or message-id header
/// ([`event_id_from_headers`]), else the body's `event_id` when the body parsed, else `None`.
///
/// Use it for logs and the DLQ context when the body may be malformed; when it parses,
/// [`Envelope::from_message`] already applies the same rule to [`Envelope::event_id`].
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::{resolve_event_id, Envelope};
///
/// let body = br#"{"event_id":"from-body","event_type":"user.created","payload":{}}"#;
/// let envelope = Envelope::from_slice(body).ok();
/// let no_headers: [(&str, &str); 0] = [];
/// assert_eq!(resolve_event_id(no_headers, envelope.as_ref()).unwrap(), "from-body");
/// assert_eq!(
///     resolve_event_id([("NATS-MSG-ID", "from-header")], envelope.as_ref()).unwrap(),
///     "from-header"
/// );
/// assert!(resolve_event_id(no_headers, None).is_none());
/// ```
#[must_use]
pub fn resolve_event_id<I, K, V>(headers: I, body: Option<&Envelope>) -> Option<EventId>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    event_id_from_headers(headers).or_else(|| body.map(|envelope| envelope.event_id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_any_case() {
        for name in ["Nats-Msg-Id", "nats-msg-id", "NATS-MSG-ID", "nAtS-mSg-Id"] {
            assert_eq!(
                event_id_from_headers([(name, "abc")]).unwrap(),
                "abc",
                "{name}"
            );
        }
        assert!(event_id_from_headers([("Nats-Msg-Id2", "abc")]).is_none());
        assert!(event_id_from_headers(Vec::<(String, String)>::new()).is_none());
    }

    #[test]
    fn canonical_spelling_wins_over_earlier_other_spellings() {
        let headers = vec![
            ("nats-msg-id".to_owned(), "lower".to_owned()),
            ("NATS-MSG-ID".to_owned(), "upper".to_owned()),
            ("Nats-Msg-Id".to_owned(), "canonical".to_owned()),
        ];
        assert_eq!(event_id_from_headers(headers).unwrap(), "canonical");
        let no_canonical = [("NATS-MSG-ID", "upper"), ("nats-msg-id", "lower")];
        assert_eq!(event_id_from_headers(no_canonical).unwrap(), "upper");
    }

    #[test]
    fn invalid_values_are_skipped_and_values_trimmed() {
        let headers = [("Nats-Msg-Id", ""), ("nats-msg-id", " ok ")];
        assert_eq!(event_id_from_headers(headers).unwrap(), "ok");
        let long = "x".repeat(300);
        assert!(event_id_from_headers([("Nats-Msg-Id", long.as_str())]).is_none());
    }

    #[test]
    fn replay_header_wins_over_every_msg_id_spelling() {
        let headers = [
            ("Nats-Msg-Id", "replay:e1:7"),
            ("nats-msg-id", "e1"),
            ("X-Replay-Of", " e1 "),
        ];
        assert_eq!(event_id_from_headers(headers).unwrap(), "e1");
        // An invalid replay header is skipped like an invalid msg-id.
        let blank = [("x-replay-of", " "), ("Nats-Msg-Id", "m1")];
        assert_eq!(event_id_from_headers(blank).unwrap(), "m1");
        let body =
            Envelope::from_slice(br#"{"event_id":"b1","event_type":"a.b","payload":{}}"#).unwrap();
        assert_eq!(
            resolve_event_id([(REPLAY_OF_HEADER, "e1")], Some(&body)).unwrap(),
            "e1"
        );
    }

    #[test]
    fn dlq_header_names_are_the_gems() {
        assert_eq!(
            [
                DEAD_LETTER_HEADER,
                DLQ_REASON_HEADER,
                DELIVERIES_HEADER,
                DLQ_CONTEXT_HEADER
            ],
            [
                "x-dead-letter",
                "x-dlq-reason",
                "x-deliveries",
                "x-dlq-context"
            ]
        );
        assert!(MSG_ID_HEADER.eq_ignore_ascii_case(RUBY_MSG_ID_HEADER));
        assert_ne!(MSG_ID_HEADER, RUBY_MSG_ID_HEADER);
    }
}
