//! The dead-letter copy of a message (see docs/WIRE.md).

use async_nats::HeaderMap;
use jetstream_bridge_config::{
    DlqContext, DlqReason, DEAD_LETTER_HEADER, DEAD_LETTER_HEADER_VALUE, DELIVERIES_HEADER,
    DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER, REPLAY_OF_HEADER,
};

/// What the DLQ copy says about its original.
pub(crate) struct DeadLetter<'a> {
    pub(crate) reason: DlqReason,
    pub(crate) event_id: Option<&'a str>,
    pub(crate) error_class: &'a str,
    pub(crate) error_message: String,
    pub(crate) deliveries: u32,
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) consumer: &'a str,
    pub(crate) stream_sequence: u64,
    pub(crate) consumer_sequence: u64,
}

impl DeadLetter<'_> {
    /// The msg-id of the DLQ copy: `dlq:<event_id>`, or `dlq:<stream>:<sequence>` when the
    /// original has no event id (a malformed body without a msg-id header). A different id than
    /// the original's, so the server does not drop the copy as a duplicate of it (the Ruby
    /// gem loses dead letters that way), and a stable one, so a DLQ publish repeated after a redelivery is deduplicated.
    pub(crate) fn msg_id(&self) -> String {
        match self.event_id {
            Some(id) => format!("dlq:{id}"),
            None => format!("dlq:{}:{}", self.stream, self.stream_sequence),
        }
    }

    pub(crate) fn context(&self) -> DlqContext {
        let mut context = DlqContext::new(self.reason);
        context.event_id = self.event_id.map(str::to_owned);
        context.error_class = Some(self.error_class.to_owned());
        context.error_message = Some(self.error_message.clone());
        context.deliveries = u64::from(self.deliveries);
        context.original_subject = Some(self.subject.to_owned());
        context.sequence = Some(self.stream_sequence);
        context.consumer_sequence = Some(self.consumer_sequence);
        context.consumer = Some(self.consumer.to_owned());
        context.stream = Some(self.stream.to_owned());
        context
    }

    /// The msg-id of the DLQ copy of `original`: [`msg_id`](Self::msg_id), except for a
    /// replayed dead letter (it carries [`REPLAY_OF_HEADER`]), whose event id was dead-lettered
    /// before: `dlq:<its own Nats-Msg-Id>` (unique per replay), so that the new dead letter is
    /// not dropped as a duplicate of the earlier one inside the DLQ stream's duplicate window.
    fn msg_id_for(&self, original: Option<&HeaderMap>) -> String {
        let replay_id = original
            .filter(|h| {
                h.iter().any(|(name, _)| {
                    let name: &str = name.as_ref();
                    name.eq_ignore_ascii_case(REPLAY_OF_HEADER)
                })
            })
            .and_then(|h| h.get(MSG_ID_HEADER))
            .map(|v| v.as_str().trim())
            .filter(|v| !v.is_empty());
        match replay_id {
            Some(id) => format!("dlq:{id}"),
            None => self.msg_id(),
        }
    }

    /// The original headers, each msg-id header (any spelling) re-keyed to the DLQ copy's
    /// msg-id ([`msg_id`](Self::msg_id); for a replay see `msg_id_for`), the canonical
    /// `Nats-Msg-Id` always set, then the DLQ headers.
    pub(crate) fn headers(&self, original: Option<&HeaderMap>) -> HeaderMap {
        let msg_id = self.msg_id_for(original);
        let mut headers = HeaderMap::new();
        if let Some(original) = original {
            for (name, values) in original.iter() {
                let text: &str = name.as_ref();
                if text.eq_ignore_ascii_case(MSG_ID_HEADER) {
                    if text != MSG_ID_HEADER {
                        headers.insert(name.clone(), msg_id.as_str());
                    }
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(MSG_ID_HEADER, msg_id.as_str());
        headers.insert(DEAD_LETTER_HEADER, DEAD_LETTER_HEADER_VALUE);
        headers.insert(DLQ_REASON_HEADER, self.reason.as_str());
        headers.insert(DELIVERIES_HEADER, self.deliveries.to_string().as_str());
        headers.insert(DLQ_CONTEXT_HEADER, self.context().to_json_string().as_str());
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(event_id: Option<&str>) -> DeadLetter<'_> {
        DeadLetter {
            reason: DlqReason::MaxDeliverExceeded,
            event_id,
            error_class: "HandlerError",
            error_message: "boom".into(),
            deliveries: 3,
            subject: "a.sync.b",
            stream: "s",
            consumer: "c",
            stream_sequence: 42,
            consumer_sequence: 7,
        }
    }

    #[test]
    fn headers_rekey_every_msg_id_spelling_and_add_the_dlq_headers() {
        let mut original = HeaderMap::new();
        original.insert("nats-msg-id", "e1");
        original.insert("Nats-Msg-Id", "e1");
        original.insert("traceparent", "00-abc");
        let h = letter(Some("e1")).headers(Some(&original));
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "dlq:e1");
        assert_eq!(h.get("nats-msg-id").unwrap().as_str(), "dlq:e1");
        assert_eq!(h.get("traceparent").unwrap().as_str(), "00-abc");
        assert_eq!(h.get(DEAD_LETTER_HEADER).unwrap().as_str(), "true");
        assert_eq!(
            h.get(DLQ_REASON_HEADER).unwrap().as_str(),
            "max_deliver_exceeded"
        );
        assert_eq!(h.get(DELIVERIES_HEADER).unwrap().as_str(), "3");
        let context = DlqContext::from_json(h.get(DLQ_CONTEXT_HEADER).unwrap().as_str()).unwrap();
        assert_eq!(context.sequence, Some(42));
        assert_eq!(context.consumer_sequence, Some(7));
        assert_eq!(context.event_id.as_deref(), Some("e1"));
        assert_eq!(letter(None).msg_id(), "dlq:s:42");
    }

    #[test]
    fn a_replayed_dead_letter_is_rekeyed_from_its_own_msg_id() {
        let mut original = HeaderMap::new();
        original.insert("Nats-Msg-Id", "replay:e1:9");
        original.insert("nats-msg-id", "e1");
        original.insert(REPLAY_OF_HEADER, "e1");
        let h = letter(Some("e1")).headers(Some(&original));
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "dlq:replay:e1:9");
        assert_eq!(h.get("nats-msg-id").unwrap().as_str(), "dlq:replay:e1:9");
        assert_eq!(h.get(REPLAY_OF_HEADER).unwrap().as_str(), "e1");
        let context = DlqContext::from_json(h.get(DLQ_CONTEXT_HEADER).unwrap().as_str()).unwrap();
        assert_eq!(context.event_id.as_deref(), Some("e1"));
    }
}
