//! The windowed publish shared by the [`Relay`](crate::Relay) and
//! [`Publisher::publish_batch`](crate::Publisher::publish_batch): messages go out one after
//! another while at most `window` PubAcks are awaited.

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

/// One message in wire form.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// What JetStream answered for one message (or why it could not be sent).
pub(crate) type Acked = std::result::Result<PublishAck, PublishError>;

/// Sends `messages` in order, with at most `window` PubAcks outstanding (at least one), and
/// hands every result to `done` with the message's tag, in the order the results arrive.
///
/// The iterator is pulled only when a message can be sent, so work it does to build a message
/// (encoding, headers) overlaps the wait for earlier PubAcks. When sending itself fails and
/// `halt` says the failure is the connection's, nothing more is pulled or sent; the caller
/// knows which tags never reached `done`.
pub(crate) async fn publish_windowed<T, I>(
    jetstream: &Context,
    window: usize,
    messages: I,
    halt: impl Fn(&PublishError) -> bool,
    mut done: impl FnMut(T, Acked),
) where
    I: IntoIterator<Item = (T, Outgoing)>,
{
    let window = window.max(1);
    let mut in_flight = FuturesUnordered::new();
    for (tag, message) in messages {
        while in_flight.len() >= window {
            if let Some((tag, acked)) = in_flight.next().await {
                done(tag, acked);
            }
        }
        let sent = jetstream
            .publish_with_headers(message.subject, message.headers, message.body.into())
            .await;
        match sent {
            Ok(ack) => in_flight.push(async move { (tag, ack.await) }),
            Err(e) => {
                let stop = halt(&e);
                done(tag, Err(e));
                if stop {
                    break;
                }
            }
        }
    }
    while let Some((tag, acked)) = in_flight.next().await {
        done(tag, acked);
    }
}
