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
    match message.info() {
        Ok(info) => Metadata {
            subject,
            stream: info.stream.to_owned(),
            consumer: info.consumer.to_owned(),
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            deliveries: u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            published: Timestamp::from_offset_date_time(info.published).ok(),
            headers,
            traceparent,
        },
        Err(_) => metadata_without_info(subject, headers, traceparent),
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
