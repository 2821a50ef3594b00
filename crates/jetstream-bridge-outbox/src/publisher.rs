//! [`Publisher`]: direct JetStream publish (outbox off), single and pipelined batch.

use std::time::Duration;

use async_nats::jetstream::Context;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use jetstream_bridge_config::{Config, EventId};

use crate::backoff::Backoff;
use crate::error::{OutboxError, OutboxErrorKind, Result};
use crate::model::{nats_headers, Defaults, NewEvent, Prepared};

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
        let prepared: Vec<Result<Prepared>> = events
            .into_iter()
            .map(|e| e.into().prepare(&self.defaults))
            .collect();
        let mut results: Vec<Option<Result<Published>>> = prepared.iter().map(|_| None).collect();
        let mut round: Vec<(usize, &Prepared)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
            .collect();
        let mut attempt = 1;
        loop {
            let mut retry = Vec::new();
            for (i, r) in self.publish_round(&round).await {
                if matches!(&r, Err(e) if e.is_transient()) && attempt < self.attempts {
                    if let Some(entry) = round.iter().find(|(j, _)| *j == i) {
                        retry.push(*entry);
                    }
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
            round = retry;
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

    /// One pipelined pass over `events` (index into the caller's input, event): the result of
    /// each, in the same order.
    async fn publish_round(
        &self,
        events: &[(usize, &Prepared)],
    ) -> Vec<(usize, Result<Published>)> {
        let mut out = Vec::with_capacity(events.len());
        let mut in_flight = FuturesOrdered::new();
        for &(i, p) in events {
            while in_flight.len() >= self.max_in_flight {
                if let Some(done) = in_flight.next().await {
                    out.push(done);
                }
            }
            match self.send(p).await {
                Ok(ack) => {
                    let (event_id, subject) = (p.event_id.clone(), p.subject.clone());
                    in_flight.push_back(async move {
                        let r = ack
                            .await
                            .map(|ack| Published {
                                stream: ack.stream,
                                sequence: ack.sequence,
                                duplicate: ack.duplicate,
                                event_id: event_id.clone(),
                                subject,
                            })
                            .map_err(|e| OutboxError::publish(e).for_event(event_id));
                        (i, r)
                    });
                }
                Err(e) => {
                    // Keep the output in input order: wait for what is in flight first.
                    while let Some(done) = in_flight.next().await {
                        out.push(done);
                    }
                    out.push((
                        i,
                        Err(OutboxError::publish(e).for_event(p.event_id.clone())),
                    ));
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            out.push(done);
        }
        out
    }

    async fn send(
        &self,
        p: &Prepared,
    ) -> std::result::Result<
        async_nats::jetstream::context::PublishAckFuture,
        async_nats::jetstream::context::PublishError,
    > {
        let extra = p
            .traceparent
            .as_deref()
            .map(|tp| (jetstream_bridge_config::TRACEPARENT_HEADER, tp));
        let headers = nats_headers(p.event_id.as_str(), extra, self.ruby_msg_id_header);
        self.jetstream
            .publish_with_headers(p.subject.clone(), headers, p.body.clone().into())
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
            let result = match self.send(p).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match result {
                Ok(ack) => {
                    return Ok(Published {
                        stream: ack.stream,
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                        event_id: p.event_id.clone(),
                        subject: p.subject.clone(),
                    })
                }
                Err(e) => {
                    let err = OutboxError::publish(e).for_event(p.event_id.clone());
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
