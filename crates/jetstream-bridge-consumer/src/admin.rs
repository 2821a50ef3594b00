//! Operating the dead-letter queue: list, show, replay and purge dead letters
//! ([`DeadLetterQueue`]); what `jetstream-bridge dlq …` runs.
//!
//! Dead letters are read where they are stored, with the stream message API (`STREAM.MSG.GET`
//! by sequence and subject), so this works for both DLQ placements (a separate limits stream or
//! the DLQ subject inside the work-queue stream) and for dead letters written by the Ruby gem,
//! and creates no consumer. Every listing is a snapshot up to the stream's last sequence at the
//! start: dead letters arriving meanwhile (for example a replayed event failing again) are not
//! in it.
//!
//! # Replay and event ids
//!
//! A replay republishes the dead letter's body unchanged, with its original headers less the
//! `x-dead-letter`/`x-dlq-*`/`x-deliveries` headers, to its original subject
//! ([`DlqContext::original_subject`]), waits for the PubAck and then deletes the dead letter
//! (unless [`ReplayOptions::keep`]). Its msg-id is its own, `replay:<event_id>:<dlq sequence>`,
//! so the stream's duplicate window does not drop it as a copy of the original; the original
//! event id travels in [`REPLAY_OF_HEADER`] (and in the lowercase `nats-msg-id` the Ruby gem
//! reads), which the consumer takes as the event id. With the inbox on, a replayed event is
//! therefore applied exactly once: a second replay, or a replay of an event that was applied
//! before, is a duplicate in the inbox and is acked without calling the handler.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use jetstream_bridge_config::{
    Config, DlqContext, Envelope, Timestamp, DEAD_LETTER_HEADER, DELIVERIES_HEADER,
    DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER, REPLAY_OF_HEADER, RUBY_MSG_ID_HEADER,
};

use crate::error::BoxError;

/// `Result` with [`DlqError`] as the default error type.
pub type DlqResult<T, E = DlqError> = std::result::Result<T, E>;

/// An error operating the dead-letter queue (a failure that stops the whole operation; what
/// happened to each dead letter is in the [`ReplayReport`] / [`PurgeReport`]).
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct DlqError {
    kind: DlqErrorKind,
    #[source]
    source: Option<BoxError>,
}

/// What went wrong, see [`DlqError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DlqErrorKind {
    /// The configuration turns the DLQ off (`use_dlq = false`): there is no DLQ subject.
    #[error("the DLQ is off (use_dlq = false)")]
    Disabled,
    /// No stream holds the DLQ subject (topology not provisioned yet?).
    #[error("no stream holds the DLQ subject {subject}")]
    StreamNotFound {
        /// The DLQ subject looked for.
        subject: String,
    },
    /// A JetStream API request failed (connection, timeout, permissions, server error).
    #[error("JetStream request failed: {what}")]
    Nats {
        /// The request that failed.
        what: String,
    },
}

impl DlqError {
    fn new(kind: DlqErrorKind) -> Self {
        Self { kind, source: None }
    }

    fn nats(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            kind: DlqErrorKind::Nats { what: what.into() },
            source: Some(source.into()),
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> &DlqErrorKind {
        &self.kind
    }
}

/// Which dead letters an operation applies to: every condition given must hold (no condition:
/// all of them). Build with the setters, e.g. `DlqFilter::new().reason("unrecoverable")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct DlqFilter {
    event_ids: Vec<String>,
    sequences: Vec<u64>,
    reason: Option<String>,
    event_type: Option<String>,
    since: Option<Duration>,
    limit: Option<usize>,
}

impl DlqFilter {
    /// Every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only dead letters of these event ids (added to earlier ones).
    pub fn event_ids<I, S>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_ids.extend(ids.into_iter().map(Into::into));
        self
    }

    /// Only the dead letters at these DLQ stream sequences (added to earlier ones).
    pub fn sequences(mut self, sequences: impl IntoIterator<Item = u64>) -> Self {
        self.sequences.extend(sequences);
        self
    }

    /// Only dead letters with this reason (`x-dlq-reason`, e.g. `max_deliver_exceeded`).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Only dead letters whose body's `event_type` is this.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only dead letters stored in the DLQ less than this long ago.
    pub fn since(mut self, age: Duration) -> Self {
        self.since = Some(age);
        self
    }

    /// At most this many dead letters, oldest first.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether the filter selects by event id, sequence or reason (a CLI requires one of
    /// these, or an explicit "all", before it deletes anything).
    #[must_use]
    pub fn selects(&self) -> bool {
        !self.event_ids.is_empty() || !self.sequences.is_empty() || self.reason.is_some()
    }

    fn matches(&self, letter: &DeadLetter, now: i64) -> bool {
        if !self.sequences.is_empty() && !self.sequences.contains(&letter.sequence) {
            return false;
        }
        if !self.event_ids.is_empty()
            && !letter
                .event_id
                .as_ref()
                .is_some_and(|id| self.event_ids.iter().any(|wanted| wanted == id))
        {
            return false;
        }
        if let Some(reason) = &self.reason {
            if letter.reason.as_deref() != Some(reason.as_str()) {
                return false;
            }
        }
        if let Some(event_type) = &self.event_type {
            if letter.event_type.as_deref() != Some(event_type.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since {
            let since = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
            match letter.stored_at {
                Some(at) if now.saturating_sub(at.unix_timestamp()) <= since => {}
                _ => return false,
            }
        }
        true
    }
}

/// One dead letter as stored in the DLQ stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its sequence in the DLQ stream (what `--seq` selects).
    pub sequence: u64,
    /// The subject it is stored under (the DLQ subject).
    pub subject: String,
    /// When the DLQ stream stored it.
    pub stored_at: Option<Timestamp>,
    /// The original event's id: the context's `event_id`, else the body's (when the body is an
    /// envelope).
    pub event_id: Option<String>,
    /// The body's `event_type`, when the body is an envelope.
    pub event_type: Option<String>,
    /// `x-dlq-reason` (else the context's `reason`).
    pub reason: Option<String>,
    /// `x-deliveries` (else the context's `deliveries`).
    pub deliveries: Option<u64>,
    /// The parsed `x-dlq-context`, if present and valid.
    pub context: Option<DlqContext>,
    /// Why `x-dlq-context` could not be read, if it is present but invalid.
    pub context_error: Option<String>,
    /// Every header, `(name, value)`, one pair per value, sorted by name.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The subject the original was published on (from the context).
    #[must_use]
    pub fn original_subject(&self) -> Option<&str> {
        self.context
            .as_ref()
            .and_then(|c| c.original_subject.as_deref())
    }

    /// The error class (from the context).
    #[must_use]
    pub fn error_class(&self) -> Option<&str> {
        self.context.as_ref().and_then(|c| c.error_class.as_deref())
    }

    /// The error message (from the context).
    #[must_use]
    pub fn error_message(&self) -> Option<&str> {
        self.context
            .as_ref()
            .and_then(|c| c.error_message.as_deref())
    }

    /// How long ago the DLQ stream stored it (`None` when unknown).
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        let at = self.stored_at?;
        let secs = Timestamp::now()
            .unix_timestamp()
            .saturating_sub(at.unix_timestamp());
        Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }

    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The msg-id its replay is published with: `replay:<event_id>:<sequence>`, or
    /// `replay:<dlq stream>:<sequence>` without an event id. Stable per dead letter, so a
    /// replay repeated within the duplicate window (after a lost PubAck, or with
    /// [`ReplayOptions::keep`]) is deduplicated by the stream.
    #[must_use]
    pub fn replay_msg_id(&self, dlq_stream: &str) -> String {
        match &self.event_id {
            Some(id) => format!("replay:{id}:{}", self.sequence),
            None => format!("replay:{dlq_stream}:{}", self.sequence),
        }
    }

    /// The headers its replay is published with: the stored headers less the DLQ headers
    /// (`x-dead-letter`, `x-dlq-reason`, `x-deliveries`, `x-dlq-context`), every msg-id
    /// spelling and any earlier [`REPLAY_OF_HEADER`]; then `Nats-Msg-Id` =
    /// [`replay_msg_id`](Self::replay_msg_id) and, with an event id, [`REPLAY_OF_HEADER`] and
    /// the lowercase `nats-msg-id` set to it (a Ruby consumer reads the latter as the event id).
    #[must_use]
    pub fn replay_headers(&self, dlq_stream: &str) -> HeaderMap {
        const DROPPED: [&str; 6] = [
            DEAD_LETTER_HEADER,
            DLQ_REASON_HEADER,
            DELIVERIES_HEADER,
            DLQ_CONTEXT_HEADER,
            MSG_ID_HEADER,
            REPLAY_OF_HEADER,
        ];
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            if DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                continue;
            }
            headers.append(name.as_str(), value.as_str());
        }
        headers.insert(MSG_ID_HEADER, self.replay_msg_id(dlq_stream).as_str());
        if let Some(id) = &self.event_id {
            headers.insert(RUBY_MSG_ID_HEADER, id.as_str());
            headers.insert(REPLAY_OF_HEADER, id.as_str());
        }
        headers
    }

    fn from_stored(message: async_nats::jetstream::message::StreamMessage) -> Self {
        let mut headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|(name, values)| {
                let name: &str = name.as_ref();
                values
                    .iter()
                    .map(move |v| (name.to_owned(), v.as_str().to_owned()))
            })
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        let find = |wanted: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
                .map(|(_, v)| v.clone())
        };
        let (context, context_error) = match find(DLQ_CONTEXT_HEADER) {
            Some(text) => match DlqContext::from_json(&text) {
                Ok(context) => (Some(context), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        // The body when it is an envelope (a `malformed_json` dead letter's is not).
        let body = Envelope::from_slice(&message.payload).ok();
        let event_id = context
            .as_ref()
            .and_then(|c| c.event_id.clone())
            .or_else(|| body.as_ref().map(|b| b.event_id.as_str().to_owned()))
            .filter(|id| !id.trim().is_empty());
        let reason = find(DLQ_REASON_HEADER).or_else(|| {
            context
                .as_ref()
                .map(|c| c.reason.clone())
                .filter(|r| !r.is_empty())
        });
        let deliveries = find(DELIVERIES_HEADER)
            .and_then(|d| d.trim().parse().ok())
            .or_else(|| context.as_ref().map(|c| c.deliveries));
        Self {
            sequence: message.sequence,
            subject: message.subject.to_string(),
            stored_at: Timestamp::from_offset_date_time(message.time).ok(),
            event_type: body.map(|b| b.event_type),
            event_id,
            reason,
            deliveries,
            context,
            context_error,
            headers,
            payload: message.payload.to_vec(),
        }
    }
}

/// Options of [`DeadLetterQueue::replay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct ReplayOptions {
    dry_run: bool,
    keep: bool,
}

impl ReplayOptions {
    /// Replay and delete each dead letter after its PubAck.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only say what would be replayed; publish and delete nothing.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Keep the dead letters in the DLQ after replaying them.
    pub fn keep(mut self, on: bool) -> Self {
        self.keep = on;
        self
    }
}

/// What happened to one dead letter in [`DeadLetterQueue::replay`] or
/// [`DeadLetterQueue::purge`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Dry run: it would have been replayed to `subject` (or deleted, for a purge).
    WouldApply,
    /// Republished; `stream`/`sequence` is the new message (`duplicate`: the stream already
    /// held this replay, from an earlier run within its duplicate window).
    Replayed {
        /// The stream that stored the replay.
        stream: String,
        /// Its sequence there.
        sequence: u64,
        /// Whether the stream reported it as a duplicate of an earlier replay.
        duplicate: bool,
        /// Whether the dead letter was deleted from the DLQ (false with `keep`, or when the
        /// delete failed: see `delete_error`).
        deleted: bool,
        /// Why the delete after the replay failed, if it did (replaying it again is safe).
        delete_error: Option<String>,
    },
    /// Deleted from the DLQ (purge).
    Deleted,
    /// The delete found no message (already deleted by someone else).
    AlreadyGone,
    /// Not replayable: no original subject in its context.
    Skipped {
        /// Why.
        reason: String,
    },
    /// The publish (or delete) failed; the operation stopped here.
    Failed {
        /// The error, with its sources.
        error: String,
    },
    /// Not attempted because the operation stopped at an earlier failure.
    NotAttempted,
}

/// One line of a [`ReplayReport`] / [`PurgeReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LetterOutcome {
    /// The dead letter's DLQ stream sequence.
    pub sequence: u64,
    /// Its event id.
    pub event_id: Option<String>,
    /// The subject it was (or would be) replayed to.
    pub subject: Option<String>,
    /// What happened.
    pub outcome: Outcome,
}

/// What [`DeadLetterQueue::replay`] did, letter by letter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// The DLQ stream.
    pub stream: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One entry per selected dead letter, in DLQ order.
    pub letters: Vec<LetterOutcome>,
}

/// What [`DeadLetterQueue::purge`] did, letter by letter (or in one bulk purge).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// The DLQ stream.
    pub stream: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// One entry per selected dead letter, in DLQ order.
    pub letters: Vec<LetterOutcome>,
}

fn count(letters: &[LetterOutcome], f: impl Fn(&Outcome) -> bool) -> usize {
    letters.iter().filter(|l| f(&l.outcome)).count()
}

impl ReplayReport {
    /// How many were republished (duplicates included).
    #[must_use]
    pub fn replayed(&self) -> usize {
        count(&self.letters, |o| matches!(o, Outcome::Replayed { .. }))
    }

    /// Whether every selected dead letter was handled (no failure, nothing skipped or left).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.letters.iter().all(|l| match &l.outcome {
            Outcome::Replayed { delete_error, .. } => delete_error.is_none(),
            Outcome::WouldApply | Outcome::Deleted | Outcome::AlreadyGone => true,
            _ => false,
        })
    }
}

impl PurgeReport {
    /// How many were deleted.
    #[must_use]
    pub fn deleted(&self) -> usize {
        count(&self.letters, |o| {
            matches!(o, Outcome::Deleted | Outcome::AlreadyGone)
        })
    }

    /// Whether every selected dead letter is gone (or would be, in a dry run).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.letters.iter().all(|l| {
            matches!(
                l.outcome,
                Outcome::WouldApply | Outcome::Deleted | Outcome::AlreadyGone
            )
        })
    }
}

/// Progress of a long DLQ operation, for a progress line: `done` of `total` steps of `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// `"scan"` (reading the DLQ stream), `"replay"` or `"purge"`.
    pub stage: &'static str,
    /// Steps done.
    pub done: u64,
    /// Steps in all (for `scan`, DLQ stream sequences to cover).
    pub total: u64,
}

/// The dead letters of one service: the messages on its DLQ subject, in whichever stream holds
/// that subject. Needs the JetStream API (`STREAM.INFO`, `STREAM.MSG.GET`, `STREAM.MSG.DELETE`,
/// `STREAM.PURGE`, and publish rights on the original subjects for a replay).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(config: jetstream_bridge_config::Config, js: async_nats::jetstream::Context)
/// # -> Result<(), jetstream_bridge_consumer::admin::DlqError> {
/// use jetstream_bridge_consumer::admin::{DeadLetterQueue, DlqFilter, ReplayOptions};
///
/// let dlq = DeadLetterQueue::open(js, &config).await?;
/// for letter in dlq.list(&DlqFilter::new().reason("unrecoverable")).await? {
///     println!("{} {:?} {:?}", letter.sequence, letter.event_id, letter.error_message());
/// }
/// let report = dlq
///     .replay(&DlqFilter::new().event_ids(["0190…"]), ReplayOptions::new(), |_| {})
///     .await?;
/// assert!(report.is_complete());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DeadLetterQueue {
    js: Context,
    stream: Stream<()>,
    stream_name: String,
    subject: String,
}

impl fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("stream", &self.stream_name)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl DeadLetterQueue {
    /// The DLQ of the service `config` describes (its subject
    /// `config.subjects().dlq()`), in the stream that holds that subject.
    ///
    /// # Errors
    ///
    /// [`Disabled`](DlqErrorKind::Disabled) when `use_dlq` is off;
    /// [`StreamNotFound`](DlqErrorKind::StreamNotFound) when no stream holds the subject;
    /// [`Nats`](DlqErrorKind::Nats) when the lookup fails.
    pub async fn open(js: Context, config: &Config) -> DlqResult<Self> {
        if !config.use_dlq() {
            return Err(DlqError::new(DlqErrorKind::Disabled));
        }
        Self::open_subject(js, config.subjects().dlq().as_str()).await
    }

    /// The dead letters on `subject`, in the stream that holds it.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), except `Disabled`.
    pub async fn open_subject(js: Context, subject: &str) -> DlqResult<Self> {
        let stream_name = match js.stream_by_subject(subject).await {
            Ok(name) => name,
            Err(e) if matches!(e.kind(), GetStreamByNameErrorKind::NotFound) => {
                return Err(DlqError::new(DlqErrorKind::StreamNotFound {
                    subject: subject.to_owned(),
                }))
            }
            Err(e) => {
                return Err(DlqError::nats(
                    format!("finding the stream of {subject}"),
                    e,
                ))
            }
        };
        let stream = js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| DlqError::nats(format!("opening stream {stream_name}"), e))?;
        Ok(Self {
            js,
            stream,
            stream_name,
            subject: subject.to_owned(),
        })
    }

    /// The stream holding the dead letters.
    #[must_use]
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// The DLQ subject.
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The dead letters `filter` selects, oldest first.
    ///
    /// # Errors
    ///
    /// [`Nats`](DlqErrorKind::Nats) when reading the stream fails.
    pub async fn list(&self, filter: &DlqFilter) -> DlqResult<Vec<DeadLetter>> {
        self.list_with_progress(filter, |_| {}).await
    }

    /// [`list`](Self::list), calling `progress` as the scan advances.
    ///
    /// # Errors
    ///
    /// As [`list`](Self::list).
    pub async fn list_with_progress(
        &self,
        filter: &DlqFilter,
        mut progress: impl FnMut(Progress),
    ) -> DlqResult<Vec<DeadLetter>> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| DlqError::nats(format!("reading stream {}", self.stream_name), e))?;
        let first = info.state.first_sequence.max(1);
        let last = info.state.last_sequence;
        let total = last.saturating_sub(first) + 1;
        let now = Timestamp::now().unix_timestamp();
        let mut out = Vec::new();
        if !filter.sequences.is_empty() {
            // Direct reads by sequence: no scan.
            let mut sequences = filter.sequences.clone();
            sequences.sort_unstable();
            sequences.dedup();
            for (i, seq) in sequences.iter().enumerate() {
                if let Some(letter) = self.get(*seq).await? {
                    if filter.matches(&letter, now) {
                        out.push(letter);
                    }
                }
                progress(Progress {
                    stage: "scan",
                    done: i as u64 + 1,
                    total: sequences.len() as u64,
                });
                if filter.limit.is_some_and(|limit| out.len() >= limit) {
                    break;
                }
            }
            return Ok(out);
        }
        let mut seq = first;
        while seq <= last {
            let message = match self
                .stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(self.subject.clone())
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(e) => {
                    return Err(DlqError::nats(
                        format!("reading stream {} at sequence {seq}", self.stream_name),
                        e,
                    ))
                }
            };
            if message.sequence > last {
                break;
            }
            seq = message.sequence + 1;
            let letter = DeadLetter::from_stored(message);
            if filter.matches(&letter, now) {
                out.push(letter);
            }
            progress(Progress {
                stage: "scan",
                done: seq.saturating_sub(first).min(total),
                total,
            });
            if filter.limit.is_some_and(|limit| out.len() >= limit) {
                break;
            }
        }
        Ok(out)
    }

    /// The dead letter at DLQ stream sequence `sequence` (`None` when there is none, or the
    /// message there is not on the DLQ subject).
    ///
    /// # Errors
    ///
    /// [`Nats`](DlqErrorKind::Nats) when the request fails.
    pub async fn get(&self, sequence: u64) -> DlqResult<Option<DeadLetter>> {
        match self.stream.get_raw_message(sequence).await {
            Ok(message) if message.subject.as_str() == self.subject => {
                Ok(Some(DeadLetter::from_stored(message)))
            }
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(DlqError::nats(
                format!("reading stream {} at sequence {sequence}", self.stream_name),
                e,
            )),
        }
    }

    /// Replays the dead letters `filter` selects (see the [module docs](self)), oldest first,
    /// one at a time: publish, wait for the PubAck, delete (unless `keep`). Stops at the first
    /// failed publish; the report then says which were replayed, which failed and which were
    /// not attempted (running the same replay again is safe).
    ///
    /// # Errors
    ///
    /// [`Nats`](DlqErrorKind::Nats) when the DLQ cannot be read; failures after that are in
    /// the report.
    pub async fn replay(
        &self,
        filter: &DlqFilter,
        options: ReplayOptions,
        mut progress: impl FnMut(Progress),
    ) -> DlqResult<ReplayReport> {
        let letters = self.list_with_progress(filter, &mut progress).await?;
        let total = letters.len() as u64;
        let mut report = ReplayReport {
            stream: self.stream_name.clone(),
            dry_run: options.dry_run,
            letters: Vec::with_capacity(letters.len()),
        };
        let mut stopped = false;
        for (i, letter) in letters.iter().enumerate() {
            let subject = letter.original_subject().map(str::to_owned);
            let outcome = if stopped {
                Outcome::NotAttempted
            } else if subject.is_none() {
                Outcome::Skipped {
                    reason: "no original_subject in x-dlq-context".to_owned(),
                }
            } else if options.dry_run {
                Outcome::WouldApply
            } else {
                let outcome = self
                    .replay_one(letter, subject.as_deref().unwrap_or_default(), options)
                    .await;
                stopped = matches!(outcome, Outcome::Failed { .. });
                outcome
            };
            report.letters.push(LetterOutcome {
                sequence: letter.sequence,
                event_id: letter.event_id.clone(),
                subject,
                outcome,
            });
            progress(Progress {
                stage: "replay",
                done: i as u64 + 1,
                total,
            });
        }
        Ok(report)
    }

    async fn replay_one(
        &self,
        letter: &DeadLetter,
        subject: &str,
        options: ReplayOptions,
    ) -> Outcome {
        let headers = letter.replay_headers(&self.stream_name);
        let published = match self
            .js
            .publish_with_headers(subject.to_owned(), headers, letter.payload.clone().into())
            .await
        {
            Ok(ack) => ack.await.map_err(|e| error_chain(&e)),
            Err(e) => Err(error_chain(&e)),
        };
        let ack = match published {
            Ok(ack) => ack,
            Err(error) => {
                return Outcome::Failed {
                    error: format!("publishing to {subject}: {error}"),
                }
            }
        };
        let (deleted, delete_error) = if options.keep {
            (false, None)
        } else {
            match self.delete(letter.sequence).await {
                Ok(_) => (true, None),
                Err(e) => (false, Some(error_chain(&e))),
            }
        };
        Outcome::Replayed {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
            deleted,
            delete_error,
        }
    }

    /// Deletes the dead letter at `sequence`; `false` when there was none.
    async fn delete(&self, sequence: u64) -> DlqResult<bool> {
        match self.stream.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if is_no_message(&e.to_string()) => Ok(false),
            Err(e) => Err(DlqError::nats(
                format!("deleting sequence {sequence} from {}", self.stream_name),
                e,
            )),
        }
    }

    /// Deletes the dead letters `filter` selects, one at a time (stopping at the first
    /// failure), or, for a filter without conditions, with one purge of the DLQ subject up to
    /// the last sequence listed (dead letters arriving meanwhile stay).
    ///
    /// # Errors
    ///
    /// [`Nats`](DlqErrorKind::Nats) when the DLQ cannot be read; failures after that are in
    /// the report.
    pub async fn purge(
        &self,
        filter: &DlqFilter,
        dry_run: bool,
        mut progress: impl FnMut(Progress),
    ) -> DlqResult<PurgeReport> {
        let letters = self.list_with_progress(filter, &mut progress).await?;
        let mut report = PurgeReport {
            stream: self.stream_name.clone(),
            dry_run,
            letters: Vec::with_capacity(letters.len()),
        };
        let line = |letter: &DeadLetter, outcome| LetterOutcome {
            sequence: letter.sequence,
            event_id: letter.event_id.clone(),
            subject: letter.original_subject().map(str::to_owned),
            outcome,
        };
        if dry_run {
            report.letters = letters
                .iter()
                .map(|l| line(l, Outcome::WouldApply))
                .collect();
            return Ok(report);
        }
        let unfiltered = *filter == DlqFilter::default();
        if let (true, Some(last)) = (unfiltered, letters.last()) {
            let purged = self
                .stream
                .purge()
                .filter(self.subject.clone())
                .sequence(last.sequence + 1)
                .await;
            let outcome = match purged {
                Ok(_) => Outcome::Deleted,
                Err(e) => Outcome::Failed {
                    error: error_chain(&e),
                },
            };
            report.letters = letters.iter().map(|l| line(l, outcome.clone())).collect();
            progress(Progress {
                stage: "purge",
                done: letters.len() as u64,
                total: letters.len() as u64,
            });
            return Ok(report);
        }
        let total = letters.len() as u64;
        let mut stopped = false;
        for (i, letter) in letters.iter().enumerate() {
            let outcome = if stopped {
                Outcome::NotAttempted
            } else {
                match self.delete(letter.sequence).await {
                    Ok(true) => Outcome::Deleted,
                    Ok(false) => Outcome::AlreadyGone,
                    Err(e) => {
                        stopped = true;
                        Outcome::Failed {
                            error: error_chain(&e),
                        }
                    }
                }
            };
            report.letters.push(line(letter, outcome));
            progress(Progress {
                stage: "purge",
                done: i as u64 + 1,
                total,
            });
        }
        Ok(report)
    }
}

/// "no message found" (10037): the message was deleted meanwhile.
fn is_no_message(text: &str) -> bool {
    text.contains("10037") || text.to_ascii_lowercase().contains("no message found")
}

/// An error and its sources, `": "`-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            sequence: 9,
            subject: "a.sync.dlq".into(),
            stored_at: Some(Timestamp::now()),
            event_id: Some("e1".into()),
            event_type: Some("order.created".into()),
            reason: Some("unrecoverable".into()),
            deliveries: Some(1),
            context: None,
            context_error: None,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: b"{}".to_vec(),
        }
    }

    #[test]
    fn replay_headers_drop_the_dlq_headers_and_rekey_the_msg_id() {
        let l = letter(&[
            ("Nats-Msg-Id", "dlq:e1"),
            ("nats-msg-id", "dlq:e1"),
            ("traceparent", "00-abc"),
            ("x-dead-letter", "true"),
            ("x-dlq-reason", "unrecoverable"),
            ("x-deliveries", "1"),
            ("x-dlq-context", "{}"),
            ("x-replay-of", "old"),
        ]);
        let h = l.replay_headers("S-dlq");
        assert_eq!(h.get(MSG_ID_HEADER).unwrap().as_str(), "replay:e1:9");
        assert_eq!(h.get(RUBY_MSG_ID_HEADER).unwrap().as_str(), "e1");
        assert_eq!(h.get(REPLAY_OF_HEADER).unwrap().as_str(), "e1");
        assert_eq!(h.get("traceparent").unwrap().as_str(), "00-abc");
        for gone in [
            "x-dead-letter",
            "x-dlq-reason",
            "x-deliveries",
            "x-dlq-context",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        let pairs: Vec<(String, String)> = h
            .iter()
            .flat_map(|(n, vs)| {
                let n: &str = n.as_ref();
                vs.iter()
                    .map(move |v| (n.to_owned(), v.as_str().to_owned()))
            })
            .collect();
        assert_eq!(
            jetstream_bridge_config::event_id_from_headers(pairs).unwrap(),
            "e1"
        );
        let mut anonymous = letter(&[]);
        anonymous.event_id = None;
        let h = anonymous.replay_headers("S-dlq");
        assert_eq!(h.get(MSG_ID_HEADER).unwrap().as_str(), "replay:S-dlq:9");
        assert!(h.get(REPLAY_OF_HEADER).is_none());
    }

    #[test]
    fn filter_conditions_all_hold() {
        let now = Timestamp::now().unix_timestamp();
        let l = letter(&[]);
        assert!(DlqFilter::new().matches(&l, now));
        assert!(DlqFilter::new().event_ids(["x", "e1"]).matches(&l, now));
        assert!(!DlqFilter::new().event_ids(["x"]).matches(&l, now));
        assert!(DlqFilter::new().sequences([9]).matches(&l, now));
        assert!(!DlqFilter::new().sequences([8]).matches(&l, now));
        assert!(!DlqFilter::new().reason("malformed_json").matches(&l, now));
        assert!(DlqFilter::new()
            .reason("unrecoverable")
            .event_type("order.created")
            .since(Duration::from_secs(60))
            .matches(&l, now));
        assert!(!DlqFilter::new()
            .since(Duration::from_secs(60))
            .matches(&l, now + 3600));
        assert!(!DlqFilter::new().event_type("x").matches(&l, now));
        assert!(DlqFilter::new().reason("r").selects());
        assert!(!DlqFilter::new().since(Duration::from_secs(1)).selects());
    }
}
