//! One message: parse, inbox transaction + handler, then ack, NAK with delay, DLQ or TERM.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::FutureExt;
use jetstream_bridge_config::{
    resolve_event_id, DlqReason, Envelope, Timestamp, TraceParent, TRACEPARENT_HEADER,
};
use jetstream_bridge_inbox::{InboxEntry, InboxError, Recorded};
use tracing::{debug, error, warn, Instrument};

use crate::dlq::DeadLetter;
use crate::handler::{backoff_for, Event, Handler, HandlerAction, HandlerError, Metadata};
use crate::middleware::Next;
use crate::runtime::Shared;

/// Errors of the inbox transaction.
enum TxError {
    Handler(HandlerError),
    Inbox(InboxError),
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Database(e)
    }
}

impl From<InboxError> for TxError {
    fn from(e: InboxError) -> Self {
        Self::Inbox(e)
    }
}

impl From<TxError> for HandlerError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Handler(e) => e,
            TxError::Inbox(e) => Self::retry(e).with_class("InboxError"),
            TxError::Database(e) => Self::from(e),
        }
    }
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
    let subject = message.subject.to_string();
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

impl<H: Handler> Shared<H> {
    /// Processes one message to its final ack / NAK / TERM. Never panics (the handler's panics
    /// are caught), never returns an error (failures are logged and counted).
    pub(crate) async fn process(&self, message: &Message) {
        let meta = metadata(message);
        let span = tracing::info_span!(
            "jetstream_bridge.handle",
            event_id = tracing::field::Empty,
            subject = %meta.subject,
            stream_seq = meta.stream_sequence,
            deliveries = meta.deliveries,
            trace_id = meta.traceparent.map(|tp| tp.trace_id()),
            parent_span_id = meta.traceparent.map(|tp| tp.parent_id()),
        );
        self.process_in_span(message, meta, span.clone())
            .instrument(span)
            .await;
    }

    async fn process_in_span(&self, message: &Message, meta: Metadata, span: tracing::Span) {
        let envelope = match Envelope::from_message(
            meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &message.payload,
        ) {
            Ok(envelope) => envelope,
            Err(e) => {
                let event_id = resolve_event_id(
                    meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    None,
                );
                if let Some(id) = &event_id {
                    span.record("event_id", id.as_str());
                }
                warn!(error = %e, "malformed message body, dead-lettering");
                self.dead_letter(
                    message,
                    &meta,
                    event_id.as_ref().map(|id| id.as_str()),
                    DlqReason::MalformedJson,
                    "EnvelopeError",
                    e.to_string(),
                )
                .await;
                return;
            }
        };
        span.record("event_id", envelope.event_id.as_str());
        let event = Event {
            envelope,
            metadata: meta,
        };
        // The handler runs in a child of the producer's trace, so events it enqueues or
        // publishes carry the same trace id on to the next service.
        let outcome = match event.metadata.traceparent {
            Some(tp) => {
                self.with_progress(&[message], tp.child().scope(self.attempt(&event)))
                    .await
            }
            None => self.with_progress(&[message], self.attempt(&event)).await,
        };
        match outcome {
            Ok(recorded) => {
                self.ack_all(&[message], &[recorded]).await;
                debug!("acked");
            }
            Err(e) => self.failed(message, &event, &e).await,
        }
    }

    /// A failed attempt of one message: record it in the inbox, then NAK with the delay for
    /// this delivery, or dead-letter (permanent error, or delivery `max_deliver`).
    async fn failed(&self, message: &Message, event: &Event, e: &HandlerError) {
        if self.inbox_pool().is_some() {
            self.record_failure(event, e).await;
        }
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
                self.stats.send_modify(|s| s.retried += 1);
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
        self.stats.send_modify(|s| {
            s.processed += processed;
            s.duplicates += duplicates;
        });
    }

    /// Batch mode: the well-formed events of one pull request in **one** inbox transaction:
    /// one multi-row claim (`Inbox::record_processed_batch`), the batch handler on the new
    /// events, commit, then every message acked. Malformed bodies are dead-lettered one by one
    /// first. When the batch fails (handler error, panic, timeout, database error) it rolls
    /// back as a whole and its messages are processed again one by one (`process`), so only
    /// the failing ones are retried or dead-lettered and the others commit.
    pub(crate) async fn process_batch(&self, messages: &[Message]) {
        let mut refs: Vec<&Message> = Vec::with_capacity(messages.len());
        let mut events: Vec<Event> = Vec::with_capacity(messages.len());
        for message in messages {
            let meta = metadata(message);
            match Envelope::from_message(
                meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &message.payload,
            ) {
                Ok(envelope) => {
                    refs.push(message);
                    events.push(Event {
                        envelope,
                        metadata: meta,
                    });
                }
                // The single-message path dead-letters it (malformed_json), no inbox row.
                Err(_) => self.process(message).await,
            }
        }
        if events.is_empty() {
            return;
        }
        let span = tracing::info_span!("jetstream_bridge.handle_batch", events = events.len());
        let outcome = self
            .with_progress(&refs, self.attempt_batch(&events))
            .instrument(span)
            .await;
        match outcome {
            Ok(recorded) => self.ack_all(&refs, &recorded).await,
            Err(e) => {
                warn!(error = %e, events = refs.len(), "batch failed; processing its events one by one");
                // The messages still waiting for their turn get in-progress acks on one ticker
                // across the whole fallback (the one being processed gets its own), so a long
                // fallback does not let them pass `ack_wait` and be redelivered meanwhile.
                let started = std::sync::atomic::AtomicUsize::new(0);
                let fallback = async {
                    for (i, message) in refs.iter().enumerate() {
                        started.store(i + 1, Ordering::Relaxed);
                        self.process(message).await;
                    }
                };
                let waiting = || {
                    let from = started.load(Ordering::Relaxed).min(refs.len());
                    &refs[from..]
                };
                self.with_progress_of(waiting, fallback).await;
            }
        }
    }

    /// One batch attempt; `Ok` holds, per event, whether it was new or a duplicate.
    async fn attempt_batch(&self, events: &[Event]) -> Result<Vec<Recorded>, HandlerError> {
        self.limited("batch handler", async {
            let Some(pool) = self.inbox_pool() else {
                self.call_batch(events, None).await?;
                return Ok(vec![Recorded::New; events.len()]);
            };
            // Built before the transaction opens: no lock is held during this CPU work.
            let entries: Vec<InboxEntry> = events.iter().map(inbox_entry).collect();
            let mut guard = TxConn::checkout(pool).await?;
            let recorded = guard
                .conn()?
                .transaction::<Vec<Recorded>, TxError, _>(async |conn| {
                    let recorded = self.inbox.record_processed_batch(conn, &entries).await?;
                    if recorded.iter().all(|r| *r == Recorded::New) {
                        self.call_batch(events, Some(conn))
                            .await
                            .map_err(TxError::Handler)?;
                    } else {
                        let fresh: Vec<Event> = events
                            .iter()
                            .zip(&recorded)
                            .filter(|(_, r)| **r == Recorded::New)
                            .map(|(e, _)| e.clone())
                            .collect();
                        if !fresh.is_empty() {
                            self.call_batch(&fresh, Some(conn))
                                .await
                                .map_err(TxError::Handler)?;
                        }
                    }
                    Ok(recorded)
                })
                .await;
            guard.release();
            Ok(recorded?)
        })
        .await
    }

    /// The batch handler, with a panic turned into a retryable error.
    async fn call_batch(
        &self,
        events: &[Event],
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let Some(call) = self.handler.__handle_batch(events, conn) else {
            return Err(HandlerError::permanent("not a batch handler"));
        };
        self.catch_panic(call, "batch handler").await
    }

    /// Runs `work`, sending an in-progress ack for each of `messages` every
    /// `progress_interval` while it runs.
    pub(crate) async fn with_progress<T>(
        &self,
        messages: &[&Message],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        let Some(every) = self.progress_interval else {
            return work.await;
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                _ = ticker.tick() => self.progress_ack(messages).await,
            }
        }
    }

    /// [`with_progress`](Self::with_progress) for a set of messages that changes while `work`
    /// runs (`messages()` is read at every tick). Kept apart from `with_progress`, which is on
    /// every message's path: routing that through this closure-taking variant measurably
    /// slowed the per-message path (`bench consumer-no-inbox`).
    async fn with_progress_of<'m, T>(
        &self,
        messages: impl Fn() -> &'m [&'m Message],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let mut work = std::pin::pin!(work);
        let Some(every) = self.progress_interval else {
            return work.await;
        };
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                _ = ticker.tick() => self.progress_ack(messages()).await,
            }
        }
    }

    /// One in-progress ack (`+WPI`) per message.
    pub(crate) async fn progress_ack(&self, messages: &[&Message]) {
        for message in messages {
            if message.ack_with(AckKind::Progress).await.is_ok() {
                self.stats.send_modify(|s| s.progress_acks += 1);
            }
        }
    }

    /// `work` under the per-message time limit (`handler_timeout`): a timeout is a
    /// retryable error of class `Timeout` (dropping `work` rolls its transaction back).
    async fn limited<T>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, HandlerError>>,
    ) -> Result<T, HandlerError> {
        match self.handler_timeout {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(out) => out,
                Err(_) => Err(HandlerError::retry(format!(
                    "{what} did not finish within {limit:?}"
                ))
                .with_class("Timeout")),
            },
            None => work.await,
        }
    }

    /// The pool when the inbox is on.
    fn inbox_pool(&self) -> Option<&Pool<AsyncPgConnection>> {
        self.pool.as_ref().filter(|_| self.use_inbox)
    }

    /// One attempt: with the inbox, its transaction around the handler; without, the handler.
    async fn attempt(&self, event: &Event) -> Result<Recorded, HandlerError> {
        self.limited("handler", async {
            let Some(pool) = self.inbox_pool() else {
                return self.call_handler(event, None).await.map(|()| Recorded::New);
            };
            let entry = inbox_entry(event);
            let mut guard = TxConn::checkout(pool).await?;
            let recorded = guard
                .conn()?
                .transaction::<Recorded, TxError, _>(async |conn| {
                    // Written as processed at once: the row commits only with the handler's
                    // writes.
                    if self.inbox.record_processed(conn, &entry).await? == Recorded::Duplicate {
                        return Ok(Recorded::Duplicate);
                    }
                    self.call_handler(event, Some(conn))
                        .await
                        .map_err(TxError::Handler)?;
                    Ok(Recorded::New)
                })
                .await;
            guard.release();
            Ok(recorded?)
        })
        .await
    }

    /// The middleware chain and the handler, with a panic turned into a retryable error.
    async fn call_handler(
        &self,
        event: &Event,
        conn: Option<&mut AsyncPgConnection>,
    ) -> Result<(), HandlerError> {
        let chain = Next::new(&self.middleware, conn, &self.handler);
        self.catch_panic(chain.run(event), "handler").await
    }

    /// Awaits `call`, turning a panic into a retryable error of class `Panic` (counted).
    async fn catch_panic(
        &self,
        call: impl std::future::Future<Output = Result<(), HandlerError>>,
        what: &str,
    ) -> Result<(), HandlerError> {
        match AssertUnwindSafe(call).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                self.stats.send_modify(|s| s.panics += 1);
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| format!("{what} panicked"));
                error!(panic = %text, "{what} panicked");
                Err(HandlerError::retry(format!("{what} panicked: {text}")).with_class("Panic"))
            }
        }
    }

    async fn record_failure(&self, event: &Event, error: &HandlerError) {
        let Some(pool) = self.inbox_pool() else {
            return;
        };
        let entry = inbox_entry(event);
        let result = match pool.get().await {
            Ok(mut conn) => self
                .inbox
                .record_failure(&mut conn, &entry, &format!("{}: {error}", error.class()))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            warn!(error = %e, "could not record the failed attempt in the inbox");
        }
    }

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
            self.stats.send_modify(|s| s.terminated += 1);
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
                self.stats.send_modify(|s| s.dead_lettered += 1);
            }
            Err(e) => {
                let delay = backoff_for(&self.backoff, meta.deliveries);
                error!(error = %e, delay = ?delay, dlq_subject = %self.dlq_subject,
                    "DLQ publish failed; the original is not acked");
                self.nak(message, delay).await;
                self.stats.send_modify(|s| s.dlq_publish_failures += 1);
            }
        }
    }
}

/// A pooled connection for one inbox transaction. Dropped before [`release`](Self::release)
/// (the attempt was cancelled mid-transaction: handler timeout, shutdown hard stop), it is
/// taken out of the pool and closed, so PostgreSQL rolls the transaction back at once instead
/// of an idle-in-transaction connection keeping the inbox rows locked in the pool until its
/// next checkout.
struct TxConn(Option<Object<AsyncPgConnection>>);

impl TxConn {
    /// A connection from `pool`; a pool error is retryable (class `PoolError`).
    async fn checkout(pool: &Pool<AsyncPgConnection>) -> Result<Self, HandlerError> {
        pool.get()
            .await
            .map(|conn| Self(Some(conn)))
            .map_err(|e| HandlerError::retry(e.to_string()).with_class("PoolError"))
    }

    fn conn(&mut self) -> Result<&mut AsyncPgConnection, HandlerError> {
        match &mut self.0 {
            Some(conn) => Ok(conn),
            None => Err(HandlerError::retry("connection already released").with_class("PoolError")),
        }
    }

    /// The transaction has ended (committed or rolled back): back to the pool.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

fn inbox_entry(event: &Event) -> InboxEntry {
    let meta = &event.metadata;
    InboxEntry::from_envelope(&event.envelope)
        .with_message(
            meta.subject.as_str(),
            meta.stream.as_str(),
            meta.stream_sequence,
            meta.deliveries,
        )
        .with_headers(meta.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(metadata: Metadata) -> Event {
        Event {
            envelope: Envelope::builder("user.created", serde_json::json!({"id": 1}))
                .producer("orders")
                .build()
                .unwrap(),
            metadata,
        }
    }

    /// Without message info the inbox entry has no stream position (`NULL`, not `("", 0)`),
    /// so two such events in one batch statement cannot collide on the unique
    /// `(stream, stream_seq)` index.
    #[test]
    fn inbox_entry_without_message_info_has_no_stream_position() {
        let meta = metadata_without_info("a.sync.b".to_owned(), Vec::new(), None);
        let entry = inbox_entry(&event(meta));
        assert_eq!((entry.stream.as_deref(), entry.stream_seq), (None, None));
        assert_eq!(entry.subject.as_deref(), Some("a.sync.b"));
        assert_eq!(entry.deliveries, Some(1));

        let mut known = metadata_without_info("a.sync.b".to_owned(), Vec::new(), None);
        known.stream = "s".to_owned();
        known.stream_sequence = 9;
        let entry = inbox_entry(&event(known));
        assert_eq!(
            (entry.stream.as_deref(), entry.stream_seq),
            (Some("s"), Some(9))
        );
    }
}
