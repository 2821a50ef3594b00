//! [`Event`] and its [`Metadata`]: what a handler receives, read from a JetStream message.

use async_nats::jetstream::Message;
use jetstream_bridge_config::{Envelope, Timestamp, TraceParent, TRACEPARENT_HEADER};

/// One received event: the parsed envelope and where it came from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The envelope; its `event_id` is the inbox's dedupe key (msg-id header first, then body).
    pub envelope: Envelope,
    /// Delivery metadata.
    pub metadata: Metadata,
    /// The message body as received: the JSON text the envelope was parsed from (the inbox
    /// stores it as the event's payload).
    pub body: bytes::Bytes,
}

/// Where and how an event was delivered (from the message's ack subject and headers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// The subject the message was published on.
    pub subject: String,
    /// The stream that stores it.
    pub stream: String,
    /// The durable consumer that delivered it.
    pub consumer: String,
    /// The message's stream sequence.
    pub stream_sequence: u64,
    /// The consumer sequence of this delivery.
    pub consumer_sequence: u64,
    /// The delivery count: 1 for the first delivery.
    pub deliveries: u32,
    /// When the server stored the message.
    pub published: Option<Timestamp>,
    /// The message headers, `(name, value)`, one pair per value. The order of names is not
    /// the wire order: async-nats parses headers into a hash map.
    pub headers: Vec<(String, String)>,
    /// The W3C `traceparent` the producer sent, if any and valid. While the handler
    /// runs, a [child](TraceParent::child) of it is [current](TraceParent::current), so events
    /// the handler enqueues or publishes continue the trace; the runtime's
    /// `jetstream_bridge.handle` span records its `trace_id` and `parent_span_id`.
    pub traceparent: Option<TraceParent>,
}

/// The message's metadata, from its ack subject and headers.
pub(crate) fn metadata(message: &Message) -> Metadata {
    let headers: Vec<(String, String)> = message
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .flat_map(|(name, values)| {
                    let name: &str = name.as_ref();
                    values
                        .iter()
                        .map(move |v| (name.to_owned(), v.as_str().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    let subject = message.subject.as_str().to_owned();
    // An invalid traceparent is ignored (the message is still processed).
    let traceparent = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(TRACEPARENT_HEADER))
        .and_then(|(_, value)| value.parse::<TraceParent>().ok());
    match message.reply.as_deref().and_then(AckInfo::parse) {
        Some(info) => Metadata {
            subject,
            stream: info.stream.to_owned(),
            consumer: info.consumer.to_owned(),
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            deliveries: u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            published: info.published,
            headers,
            traceparent,
        },
        None => metadata_without_info(subject, headers, traceparent),
    }
}

/// The publish times `Message::info` accepts: -9999-01-01T00:00:00Z up to the end of
/// 9999-12-31, in nanoseconds since 1970.
const MIN_NANOS: i128 = -377_705_116_800 * 1_000_000_000;
const MAX_NANOS: i128 = 253_402_300_800 * 1_000_000_000 - 1;

/// What the metadata keeps of a message's `$JS.ACK.` reply subject.
///
/// Read here rather than with `Message::info`, which also converts the publish time to a
/// date with nanoseconds: that was a tenth of the runtime's own work per message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AckInfo<'a> {
    stream: &'a str,
    consumer: &'a str,
    pub(crate) delivered: i64,
    pub(crate) stream_sequence: u64,
    consumer_sequence: u64,
    /// `None` when outside the years 0000..=9999 (the rest is still used).
    published: Option<Timestamp>,
}

impl<'a> AckInfo<'a> {
    /// Both formats of the JetStream ack subject, as `Message::info` accepts them: the
    /// original 7 tokens after `$JS.ACK.` (stream, consumer, delivered, stream sequence,
    /// consumer sequence, publish time in nanoseconds, pending) and the 9 or more that start
    /// with the domain and the account hash. `None` for anything else, as `info` fails.
    pub(crate) fn parse(reply: &'a str) -> Option<Self> {
        let rest = reply.strip_prefix("$JS.ACK.")?;
        let mut tokens = [""; 9];
        let mut n = 0;
        let mut split = rest.split('.');
        for token in &mut tokens {
            let Some(next) = split.next() else { break };
            *token = next;
            n += 1;
        }
        let fields = match n {
            7 => &tokens[..7],
            9 => &tokens[2..],
            _ => return None,
        };
        let [stream, consumer, delivered, stream_sequence, consumer_sequence, nanos, pending] =
            *fields
        else {
            return None;
        };
        // Parsed only to reject what `info` rejects.
        pending.parse::<u64>().ok()?;
        // A server's time fits in a u64 (until 2554), which parses in a third of the time of
        // the i128 that `info` accepts.
        let nanos: i128 = match nanos.parse::<u64>() {
            Ok(nanos) => i128::from(nanos),
            // As `info`, reject what the `time` crate cannot represent (years ±9999); any u64
            // is inside.
            Err(_) => {
                Some(nanos.parse::<i128>().ok()?).filter(|n| (MIN_NANOS..=MAX_NANOS).contains(n))?
            }
        };
        Some(Self {
            stream,
            consumer,
            delivered: delivered.parse().ok()?,
            stream_sequence: stream_sequence.parse().ok()?,
            consumer_sequence: consumer_sequence.parse().ok()?,
            published: i64::try_from(nanos.div_euclid(1_000_000_000))
                .ok()
                .and_then(|secs| Timestamp::from_unix_timestamp(secs).ok()),
        })
    }
}

/// The metadata of a message whose ack subject cannot be parsed (`Message::info` failed):
/// no stream position (empty stream, sequence 0, which JetStream never assigns, so the inbox
/// entry stores `NULL` for both), first delivery.
fn metadata_without_info(
    subject: String,
    headers: Vec<(String, String)>,
    traceparent: Option<TraceParent>,
) -> Metadata {
    Metadata {
        subject,
        stream: String::new(),
        consumer: String::new(),
        stream_sequence: 0,
        consumer_sequence: 0,
        deliveries: 1,
        published: None,
        headers,
        traceparent,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A `user.created` event with `metadata`.
    pub(crate) fn event(metadata: Metadata) -> Event {
        Event {
            envelope: Envelope::builder("user.created", serde_json::json!({"id": 1}))
                .producer("orders")
                .build()
                .unwrap(),
            metadata,
            body: bytes::Bytes::new(),
        }
    }

    /// Metadata without message info, for `subject`.
    pub(crate) fn metadata_for(subject: &str) -> Metadata {
        metadata_without_info(subject.to_owned(), Vec::new(), None)
    }

    /// The ack subject is read as `Message::info` (async-nats 0.51) reads it: both formats,
    /// and what it rejects; the publish time is kept to the second. (Real deliveries are
    /// covered by the tests that check the metadata a handler sees.)
    #[test]
    fn ack_info_reads_both_subject_formats_like_the_client() {
        const TS: &str = "1790230470084404000";
        let expect = |stream, consumer| AckInfo {
            stream,
            consumer,
            delivered: 3,
            stream_sequence: 100,
            consumer_sequence: 7,
            published: Timestamp::from_unix_timestamp(1_790_230_470).ok(),
        };
        for (reply, ok) in [
            (format!("$JS.ACK.events.durable.3.100.7.{TS}.42"), true),
            (
                format!("$JS.ACK._.acc.events.durable.3.100.7.{TS}.42"),
                true,
            ),
            (
                format!("$JS.ACK.hub.acc.events.durable.3.100.7.{TS}.42.tok"),
                true,
            ),
            (
                format!("$JS.ACK.hub.acc.events.durable.3.100.7.{TS}.42.tok.x.y"),
                true,
            ),
            (format!("$JS.ACK.acc.events.durable.3.100.7.{TS}.42"), false),
            (format!("$JS.ACK.events.durable.3.100.7.{TS}"), false),
            (format!("$JS.ACK.events.durable.x.100.7.{TS}.42"), false),
            (format!("$JS.ACK.events.durable.3.100.7.{TS}.-1"), false),
            (format!("$JS.NAK.events.durable.3.100.7.{TS}.42"), false),
            ("_INBOX.abc".to_owned(), false),
        ] {
            let ours = AckInfo::parse(&reply);
            assert_eq!(ours.is_some(), ok, "{reply}");
            if let Some(ours) = ours {
                assert_eq!(ours, expect("events", "durable"), "{reply}");
            }
        }
        // Before 1970 the second is rounded down; before year 0 there is no time, but the
        // rest is kept; beyond the years ±9999 the subject is rejected, as by `info`.
        let early = AckInfo::parse("$JS.ACK.s.c.1.1.1.-1500000000.0").unwrap();
        assert_eq!(early.published, Timestamp::from_unix_timestamp(-2).ok());
        let bc = AckInfo::parse("$JS.ACK.s.c.1.1.1.-100000000000000000000.0").unwrap();
        assert_eq!((bc.published, bc.stream_sequence), (None, 1));
        assert_eq!(
            AckInfo::parse("$JS.ACK.s.c.1.1.1.999999999999999999999999.0"),
            None,
            "beyond what the client's time type holds, as `info`"
        );
    }

    #[test]
    fn metadata_without_info_is_a_first_delivery_without_position() {
        let e = event(metadata_for("a.sync.b"));
        assert_eq!(
            (
                e.metadata.stream.as_str(),
                e.metadata.stream_sequence,
                e.metadata.deliveries
            ),
            ("", 0, 1)
        );
    }
}
