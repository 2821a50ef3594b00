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
        // Every event, prepared lazily as the window pulls it: preparing one overlaps the wait
        // for the PubAcks of those before it.
        let mut prepared: Vec<Result<Prepared>> = Vec::new();
        let mut acked: Vec<(usize, Acked)> = Vec::new();
        let first = events.into_iter().enumerate().filter_map(|(i, event)| {
            let p = event.into().prepare(&self.defaults);
            let message = p.as_ref().ok().map(|p| (i, self.outgoing(p)));
            prepared.push(p);
            message
        });
        self.publish_round(first, &mut acked).await;
        let mut results: Vec<Option<Result<Published>>> = prepared.iter().map(|_| None).collect();
        let mut attempt = 1;
        loop {
            let mut retry = Vec::new();
            for (i, acked) in acked.drain(..) {
                let Some(Ok(p)) = prepared.get(i) else {
                    continue;
                };
                let r = published(p, acked);
                if matches!(&r, Err(e) if e.is_transient()) && attempt < self.attempts {
                    retry.push(i);
                }
                results[i] = Some(r);
            }
            if retry.is_empty() {
                break;
            }
            tracing::debug!(
                events = retry.len(),
                attempt,
                "batch publish: retrying transient failures"
            );
            tokio::time::sleep(self.backoff.delay(attempt)).await;
            attempt += 1;
            let again = retry.into_iter().filter_map(|i| match prepared.get(i) {
                Some(Ok(p)) => Some((i, self.outgoing(p))),
                _ => None,
            });
            self.publish_round(again, &mut acked).await;
        }
        prepared
            .into_iter()
            .zip(results)
            .map(|(p, r)| match (p, r) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(r)) => r,
                (Ok(p), None) => {
                    Err(OutboxError::new(OutboxErrorKind::PublishNotAcked).for_event(p.event_id))
                }
            })
            .collect()
    }

    /// One pass of `messages` (tagged with their index in the caller's input) through the
    /// shared PubAck window; what JetStream answered for each is appended to `acked`.
    async fn publish_round(
        &self,
        messages: impl Iterator<Item = (usize, Outgoing)>,
        acked: &mut Vec<(usize, Acked)>,
    ) {
        publish_windowed(
            &self.jetstream,
            self.max_in_flight,
            messages,
            |_| false,
            |i, r| acked.push((i, r)),
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
