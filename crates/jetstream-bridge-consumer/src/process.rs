//! One message (or one pull's batch) to its end: parse, attempt, then ack, NAK with delay,
//! dead-letter or TERM. Every call runs inside a dispatcher job, whose end notifies the stats
//! watchers: the outcome counters here are recorded quietly (`Stats::record`). [`Processor`]
//! holds what that needs, shared by every job.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use jetstream_bridge_config::{resolve_event_id, DlqReason, Envelope, EnvelopeError, EventId};
use jetstream_bridge_inbox::Recorded;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn, Instrument};

use crate::attempt::{Apply, BatchApply};
use crate::dlq::DeadLetter;
use crate::event::{metadata, Event, Metadata};
use crate::handler::{HandlerAction, HandlerError};
use crate::middleware::Middleware;
use crate::outage::{Outage, Waited};
use crate::redelivery::Attempts;
use crate::retry::backoff_for;
use crate::stats::Stats;

/// What processing a message needs, shared by the fetch loop and every message job.
pub(crate) struct Processor<A> {
    /// The handler slot: the handler, with the inbox's pool when the inbox is on.
    pub(crate) apply: A,
    pub(crate) js: jetstream::Context,
    pub(crate) middleware: Vec<Arc<dyn Middleware>>,
    pub(crate) stats: Stats,
    pub(crate) dlq_subject: String,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) use_dlq: bool,
    /// The durable's `max_deliver`: the config's, replaced by the server's when it is read.
    pub(crate) max_deliver: AtomicU32,
    pub(crate) progress_interval: Option<Duration>,
    pub(crate) handler_timeout: Option<Duration>,
    /// The database as the message jobs see it.
    pub(crate) outage: Outage,
    /// Cancelled when shutdown begins.
    pub(crate) shutdown: CancellationToken,
    /// Messages given back (NAKed without delay) because shutdown began before they could run.
    pub(crate) released: AtomicU64,
    /// The running attempts, to notice a durable that redelivers while a handler runs.
    pub(crate) attempts: Attempts,
}

/// A message whose body is not an envelope.
struct Malformed {
    meta: Metadata,
    error: EnvelopeError,
    /// The event id its headers give, if any.
    event_id: Option<EventId>,
}

impl<A: Apply> Processor<A> {
    /// Processes one message to its final ack / NAK / TERM. Never panics (the handler's panics
    /// are caught), never returns an error (failures are logged and counted).
    ///
    /// The span and the envelope are made here, before the returned future: what is done
    /// without waiting is not stored in it, and the job that holds it stays small (it is
    /// allocated and moved once per message).
    pub(crate) fn process<'a>(
        &'a self,
        message: &'a Message,
        meta: Metadata,
    ) -> impl Future<Output = ()> + Send + 'a {
        let span = tracing::info_span!(
            "jetstream_bridge.handle",
            event_id = tracing::field::Empty,
            subject = %meta.subject,
            stream_seq = meta.stream_sequence,
            deliveries = meta.deliveries,
            trace_id = meta.traceparent.map(|tp| tp.trace_id()),
            parent_span_id = meta.traceparent.map(|tp| tp.parent_id()),
        );
        let running = self.attempts.start(meta.stream_sequence);
        let parsed = match Envelope::from_message(
            meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &message.payload,
        ) {
            Ok(envelope) => {
                span.record("event_id", envelope.event_id.as_str());
                Ok(Event {
                    envelope,
                    metadata: meta,
                    body: message.payload.clone(),
                })
            }
            Err(error) => {
                let event_id = resolve_event_id(
                    meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    None,
                );
                if let Some(id) = &event_id {
                    span.record("event_id", id.as_str());
                }
                Err(Malformed {
                    meta,
                    error,
                    event_id,
                })
            }
        };
        // An `async move` block rather than an `async fn` taking `parsed`: that would store it
        // twice (the argument and its local).
        async move {
            let _running = running;
            let event = match &parsed {
                Ok(event) => event,
                Err(malformed) => return Box::pin(self.malformed(message, malformed)).await,
            };
            let outcome = {
                // The handler runs in a child of the producer's trace, so events it enqueues
                // or publishes carry the same trace id on to the next service.
                let attempts = std::pin::pin!(self.through_outage(|| async {
                    match event.metadata.traceparent {
                        Some(tp) => tp.child().scope(A::attempt(self, event)).await,
                        None => A::attempt(self, event).await,
                    }
                }));
                self.with_progress(&[message], attempts).await
            };
            // The rare outcomes are boxed: inline, their futures would size every job.
            match outcome {
                Some(Ok(recorded)) => {
                    self.ack_all(&[message], &[recorded]).await;
                    debug!("acked");
                }
                Some(Err(e)) => Box::pin(self.failed(message, event, &e)).await,
                None => Box::pin(self.release(&[message])).await,
            }
        }
        .instrument(span)
    }

    /// A body that is not an envelope: dead-lettered (`malformed_json`), no inbox row.
    async fn malformed(&self, message: &Message, malformed: &Malformed) {
        let meta = &malformed.meta;
        let e = &malformed.error;
        warn!(error = %e, "malformed message body, dead-lettering");
        self.dead_letter(
            message,
            meta,
            malformed.event_id.as_ref().map(|id| id.as_str()),
            DlqReason::MalformedJson,
            "EnvelopeError",
            e.to_string(),
        )
        .await;
    }

    /// Runs `attempt` until an answer that is not an unavailable database: while the database
    /// is down the message waits (one waiter probes it with backoff), and an attempt that runs
    /// into an outage marks it down and is tried again once it answers: no delivery, failure
    /// record or dead letter is spent on it. `None` when shutdown began while waiting.
    pub(crate) async fn through_outage<T, F, Fut>(
        &self,
        mut attempt: F,
    ) -> Option<Result<T, HandlerError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        loop {
            // Boxed: rare, and inline it would size every job.
            if self.outage.is_down()
                && Box::pin(self.outage.wait(|| self.apply.probe(), &self.shutdown)).await
                    == Waited::Shutdown
            {
                return None;
            }
            match attempt().await {
                Err(e) if e.is_unavailable() => self.outage.enter(&e),
                outcome => {
                    self.outage.answered();
                    return Some(outcome);
                }
            }
        }
    }

    /// Gives messages back without delay (shutdown began while they waited for the
    /// database), so another instance takes them at once.
    pub(crate) async fn release(&self, messages: &[&Message]) {
        for message in messages {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        self.released
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
    }

    /// A failed attempt of one message: record it in the inbox, then NAK with the delay for
    /// this delivery, or dead-letter (permanent error, or delivery `max_deliver`).
    async fn failed(&self, message: &Message, event: &Event, e: &HandlerError) {
        self.apply.record_failure(event, e).await;
        let meta = &event.metadata;
        let max_deliver = self.max_deliver.load(Ordering::Relaxed);
        let reason = match e.action() {
            HandlerAction::Permanent => Some(DlqReason::Unrecoverable),
            _ if meta.deliveries >= max_deliver => Some(DlqReason::MaxDeliverExceeded),
            _ => None,
        };
        match reason {
            Some(reason) => {
                warn!(error = %e, %reason, "handler failed, dead-lettering");
                self.dead_letter(
                    message,
                    meta,
                    Some(event.envelope.event_id.as_str()),
                    reason,
                    e.class(),
                    e.to_string(),
                )
                .await;
            }
            None => {
                let delay = match e.action() {
                    HandlerAction::RetryAfter(d) => d,
                    _ => backoff_for(&self.backoff, meta.deliveries),
                };
                warn!(error = %e, delay = ?delay, "handler failed, retrying");
                self.nak(message, delay).await;
                self.stats.record(|s| s.retried += 1);
            }
        }
    }

    /// Acks `messages` (after their commit) and counts them as processed or duplicates.
    async fn ack_all(&self, messages: &[&Message], recorded: &[Recorded]) {
        for message in messages {
            if let Err(e) = message.ack_with(AckKind::Ack).await {
                warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        let duplicates = recorded
            .iter()
            .filter(|r| **r == Recorded::Duplicate)
            .count() as u64;
        let processed = recorded.len() as u64 - duplicates;
        self.stats.record(|s| {
            s.processed += processed;
            s.duplicates += duplicates;
        });
    }

    /// NAKs `message` with `delay` (a failed NAK only delays the redelivery to `ack_wait`).
    pub(crate) async fn nak(&self, message: &Message, delay: Duration) {
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            warn!(error = %e, "NAK failed; the message will be redelivered after ack_wait");
        }
    }

    /// Publishes the DLQ copy and acks the original once the PubAck arrived; NAKs with the
    /// delay for this delivery when the publish fails; TERMs when the DLQ is off.
    async fn dead_letter(
        &self,
        message: &Message,
        meta: &Metadata,
        event_id: Option<&str>,
        reason: DlqReason,
        error_class: &str,
        error_message: String,
    ) {
        if !self.use_dlq {
            error!(%reason, "use_dlq is off: terminating the message (no more redeliveries)");
            if let Err(e) = message.ack_with(AckKind::Term).await {
                warn!(error = %e, "TERM failed; the message will be redelivered");
            }
            self.stats.record(|s| s.terminated += 1);
            return;
        }
        let letter = DeadLetter {
            reason,
            event_id,
            error_class,
            error_message,
            deliveries: meta.deliveries,
            subject: &meta.subject,
            stream: &meta.stream,
            consumer: &meta.consumer,
            stream_sequence: meta.stream_sequence,
            consumer_sequence: meta.consumer_sequence,
        };
        let headers = letter.headers(message.headers.as_ref());
        let published = match self
            .js
            .publish_with_headers(self.dlq_subject.clone(), headers, message.payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match published {
            Ok(()) => {
                if let Err(e) = message.ack_with(AckKind::Ack).await {
                    warn!(error = %e, "ack after DLQ publish failed; a redelivery is deduplicated by the DLQ msg-id");
                }
                self.stats.record(|s| s.dead_lettered += 1);
            }
            Err(e) => {
                let delay = backoff_for(&self.backoff, meta.deliveries);
                error!(error = %e, delay = ?delay, dlq_subject = %self.dlq_subject,
                    "DLQ publish failed; the original is not acked");
                self.nak(message, delay).await;
                self.stats.record(|s| s.dlq_publish_failures += 1);
            }
        }
    }
}

impl<A: BatchApply> Processor<A> {
    /// Batch mode: the well-formed events of one pull request in **one** inbox transaction:
    /// one multi-row claim (`Inbox::record_processed_batch`), the batch handler on the new
    /// events, commit, then every message acked. Malformed bodies are dead-lettered one by one
    /// first. When the batch fails (handler error, panic, timeout, database error) it rolls
    /// back as a whole and its messages are processed again one by one (`process`), so only
    /// the failing ones are retried or dead-lettered and the others commit.
    pub(crate) async fn process_batch(&self, messages: &[Message]) {
        let mut refs: Vec<&Message> = Vec::with_capacity(messages.len());
        let mut events: Vec<Event> = Vec::with_capacity(messages.len());
        let mut running = Vec::with_capacity(messages.len());
        for message in messages {
            let meta = metadata(message);
            running.push(self.attempts.start(meta.stream_sequence));
            match Envelope::from_message(
                meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &message.payload,
            ) {
                Ok(envelope) => {
                    refs.push(message);
                    events.push(Event {
                        envelope,
                        metadata: meta,
                        body: message.payload.clone(),
                    });
                }
                // The single-message path dead-letters it (malformed_json), no inbox row.
                Err(_) => self.process(message, metadata(message)).await,
            }
        }
        if events.is_empty() {
            return;
        }
        let span = tracing::info_span!("jetstream_bridge.handle_batch", events = events.len());
        let attempts = std::pin::pin!(self.through_outage(|| A::attempt_batch(self, &events)));
        let outcome = self.with_progress(&refs, attempts).instrument(span).await;
        match outcome {
            None => self.release(&refs).await,
            Some(Ok(recorded)) => self.ack_all(&refs, &recorded).await,
            Some(Err(e)) => {
                warn!(error = %e, events = refs.len(), "batch failed; processing its events one by one");
                // The messages still waiting for their turn get in-progress acks on one ticker
                // across the whole fallback (the one being processed gets its own), so a long
                // fallback does not let them pass `ack_wait` and be redelivered meanwhile.
                let started = std::sync::atomic::AtomicUsize::new(0);
                let fallback = std::pin::pin!(async {
                    for (i, message) in refs.iter().enumerate() {
                        started.store(i + 1, Ordering::Relaxed);
                        self.process(message, metadata(message)).await;
                    }
                });
                let waiting = || {
                    let from = started.load(Ordering::Relaxed).min(refs.len());
                    &refs[from..]
                };
                self.with_progress_of(waiting, fallback).await;
            }
        }
    }
}
