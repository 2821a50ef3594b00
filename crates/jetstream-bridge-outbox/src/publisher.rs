//! [`Publisher`]: direct JetStream publish (outbox off), single and pipelined batch.

use std::time::Duration;

use async_nats::jetstream::Context;
use jetstream_bridge_config::{Config, EventId};

use crate::backoff::Backoff;
use crate::error::{OutboxError, OutboxErrorKind, Result};
use crate::model::{nats_headers, Defaults, NewEvent, Prepared};
use crate::window::{publish_windowed, Acked, Outgoing};

/// A publish JetStream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The stream that stored the message.
    pub stream: String,
    /// Its stream sequence (of the original message, for a duplicate).
    pub sequence: u64,
    /// JetStream had already stored this event id within its duplicate window.
    pub duplicate: bool,
    /// The event id (also the `Nats-Msg-Id` header).
    pub event_id: EventId,
    /// The subject published to.
    pub subject: String,
}

/// Publishes envelopes straight to JetStream, for services that do not use the outbox.
///
/// Transient failures ([`OutboxError::is_transient`]: timeouts, a lost connection, "no
/// responders" right after a reconnect or before the stream exists, JetStream 503) are retried with back-off, up to [`retry_attempts`](Self::retry_attempts) in
/// total; every attempt carries the same `Nats-Msg-Id`, so a retry of a publish that was in
/// fact stored is reported as a [duplicate](Published::duplicate), never stored twice.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(config: jetstream_bridge_config::Config, js: async_nats::jetstream::Context)
/// # -> Result<(), jetstream_bridge_outbox::OutboxError> {
/// use jetstream_bridge_outbox::{NewEvent, Publisher};
/// use serde_json::json;
///
/// let publisher = Publisher::new(&config, js);
/// let published = publisher.publish(NewEvent::new("user.created", json!({"id": 1}))).await?;
/// println!("{} #{}", published.stream, published.sequence);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    jetstream: Context,
    defaults: Defaults,
    attempts: u32,
    backoff: Backoff,
    max_in_flight: usize,
    ruby_msg_id_header: bool,
}

impl Publisher {
    /// A publisher for the service described by `config` (producer, source subject, payload
    /// limit). Defaults: 3 attempts, back-off 250 ms..2 s with jitter, 256 acks in flight for
    /// batches, lowercase `nats-msg-id` header on.
    #[must_use]
    pub fn new(config: &Config, jetstream: Context) -> Self {
        Self {
            jetstream,
            defaults: Defaults::from_config(config),
            attempts: 3,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(2)),
            max_in_flight: 256,
            ruby_msg_id_header: true,
        }
    }

    /// Attempts per event in total, at least 1.
    #[must_use]
    pub fn retry_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Back-off between attempts: `base × 2^(n-1)` capped at `max`, with jitter.
    #[must_use]
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(base, max);
        self
    }

    /// PubAcks awaited at once by [`publish_batch`](Self::publish_batch), at least 1.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Also send the lowercase `nats-msg-id` header Ruby peers read (default true).
    #[must_use]
    pub fn ruby_msg_id_header(mut self, on: bool) -> Self {
        self.ruby_msg_id_header = on;
        self
    }

    /// Publishes one event and waits for its PubAck.
    ///
    /// # Errors
    ///
    /// [`PayloadTooLarge`](OutboxErrorKind::PayloadTooLarge) and
    /// [`InvalidEvent`](OutboxErrorKind::InvalidEvent) before sending;
    /// [`NoStream`](OutboxErrorKind::NoStream) or
    /// [`PublishNotAcked`](OutboxErrorKind::PublishNotAcked) when the attempts are used up.
    /// The error's [`event_id`](OutboxError::event_id) is set once the envelope exists.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the event published or not; publishing it again with
    /// the same event id is safe within the stream's duplicate window.
    pub async fn publish(&self, event: impl Into<NewEvent>) -> Result<Published> {
        let prepared = event.into().prepare(&self.defaults)?;
        self.publish_prepared(&prepared).await
    }

    /// Publishes many events, pipelined (up to [`max_in_flight`](Self::max_in_flight) PubAcks
    /// outstanding), and reports one result per event in input order. Events that failed
    /// transiently are retried together, again pipelined, after a back-off, up to
    /// [`retry_attempts`](Self::retry_attempts) rounds in total (a retry of an event that was in
    /// fact stored comes back as a duplicate). There is no atomicity: some may succeed while
    /// others fail.
    ///
    /// # Cancel safety
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_batch<I>(&self, events: I) -> Vec<Result<Published>>
    where
        I: IntoIterator,
        I::Item: Into<NewEvent>,
    {
        let events = events.into_iter();
        let mut pulled = 0;
        let mut unprepared: Vec<(usize, OutboxError)> = Vec::new();
        let mut settled: Vec<(usize, Result<Published>)> = Vec::with_capacity(events.size_hint().0);
        let mut retry: Vec<(usize, Prepared)> = Vec::new();
        // The first round prepares each event when the window takes it, so preparing overlaps
        // the wait for earlier PubAcks; an event is held (for a retry) only while in flight.
        let first = events.enumerate().filter_map(|(i, event)| {
            pulled = i + 1;
            match event.into().prepare(&self.defaults) {
                Ok(p) => {
                    let message = self.outgoing(&p);
                    Some(((i, p), message))
                }
                Err(e) => {
                    unprepared.push((i, e));
                    None
                }
            }
        });
        let mut attempt = 1;
        self.publish_round(first, attempt, &mut settled, &mut retry)
            .await;
        while !retry.is_empty() {
            tracing::debug!(
                events = retry.len(),
                attempt,
                "batch publish: retrying transient failures"
            );
            tokio::time::sleep(self.backoff.delay(attempt)).await;
            attempt += 1;
            let again = std::mem::take(&mut retry).into_iter().map(|(i, p)| {
                let message = self.outgoing(&p);
                ((i, p), message)
            });
            self.publish_round(again, attempt, &mut settled, &mut retry)
                .await;
        }
        let mut results: Vec<Option<Result<Published>>> = (0..pulled).map(|_| None).collect();
        for (i, r) in unprepared
            .into_iter()
            .map(|(i, e)| (i, Err(e)))
            .chain(settled)
        {
            results[i] = Some(r);
        }
        results
            .into_iter()
            // Every event pulled was either refused before sending or settled.
            .map(|r| r.unwrap_or_else(|| Err(OutboxError::new(OutboxErrorKind::PublishNotAcked))))
            .collect()
    }

    /// One pass of `messages` (each tagged with its index in the caller's input and the event)
    /// through the shared PubAck window: transient failures go to `retry` while `attempt` is
    /// below [`retry_attempts`](Self::retry_attempts), every other result to `settled`.
    async fn publish_round(
        &self,
        messages: impl Iterator<Item = ((usize, Prepared), Outgoing)>,
        attempt: u32,
        settled: &mut Vec<(usize, Result<Published>)>,
        retry: &mut Vec<(usize, Prepared)>,
    ) {
        publish_windowed(
            &self.jetstream,
            self.max_in_flight,
            messages,
            |_| false,
            |(i, p), acked| match published(&p, acked) {
                Err(e) if e.is_transient() && attempt < self.attempts => retry.push((i, p)),
                r => settled.push((i, r)),
            },
        )
        .await;
    }

    /// The event in wire form: subject, msg-id headers (and traceparent), body.
    fn outgoing(&self, p: &Prepared) -> Outgoing {
        let extra = p
            .traceparent
            .as_deref()
            .map(|tp| (jetstream_bridge_config::TRACEPARENT_HEADER, tp));
        Outgoing {
            subject: p.subject.clone(),
            headers: nats_headers(p.event_id.as_str(), extra, self.ruby_msg_id_header),
            body: p.body.clone(),
        }
    }

    async fn send(
        &self,
        p: &Prepared,
    ) -> std::result::Result<
        async_nats::jetstream::context::PublishAckFuture,
        async_nats::jetstream::context::PublishError,
    > {
        let m = self.outgoing(p);
        self.jetstream
            .publish_with_headers(m.subject, m.headers, m.body.into())
            .await
    }

    #[tracing::instrument(
        name = "outbox_publish",
        skip_all,
        fields(
            event_id = %p.event_id,
            subject = %p.subject,
            // The W3C trace id (characters 3..35 of a normalised traceparent).
            trace_id = p.traceparent.as_deref().and_then(|tp| tp.get(3..35)),
        )
    )]
    async fn publish_prepared(&self, p: &Prepared) -> Result<Published> {
        let mut attempt = 1;
        loop {
            let acked = match self.send(p).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match published(p, acked) {
                Ok(published) => return Ok(published),
                Err(err) => {
                    if attempt >= self.attempts || !err.is_transient() {
                        return Err(err);
                    }
                    tracing::debug!(event_id = %p.event_id, attempt, error = %err, "publish failed; retrying");
                    tokio::time::sleep(self.backoff.delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// What a publish of `p` came to: the ack as [`Published`], or the error for its event.
fn published(p: &Prepared, acked: Acked) -> Result<Published> {
    match acked {
        Ok(ack) => Ok(Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            event_id: p.event_id.clone(),
            subject: p.subject.clone(),
        }),
        Err(e) => Err(OutboxError::publish(e).for_event(p.event_id.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: T) {}

    /// Compiles only if the publish futures can be spawned on a multi-threaded runtime.
    #[allow(dead_code)]
    fn publish_futures_are_send(publisher: &Publisher, events: Vec<NewEvent>) {
        is_send(publisher.publish_batch(events));
        is_send(publisher.publish(NewEvent::new("user.created", serde_json::json!({}))));
    }
}
