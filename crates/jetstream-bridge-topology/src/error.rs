//! [`TopologyError`]: what can go wrong while connecting, planning and provisioning.

use std::fmt;

use serde::Serialize;

use crate::spec::DlqPlacement;
use crate::violations::PermissionViolation;

/// A boxed error kept as the [`source`](std::error::Error::source) of a [`TopologyError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`TopologyError`] as the default error type.
pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// What kind of failure a [`TopologyError`] is; branch on this, not on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// No connection to NATS could be made (after all configured attempts).
    #[error("cannot connect to NATS")]
    Connection,
    /// A JetStream API request got no reply in time (JetStream unavailable, or a permission
    /// the client could not observe).
    #[error("JetStream API request timed out")]
    Timeout,
    /// The server refused a publish or subscribe of this client (a permissions violation);
    /// [`TopologyError::permission`] names it.
    #[error("permission denied")]
    PermissionDenied,
    /// JetStream is not enabled for the account, or no server answers the JetStream API.
    #[error("JetStream is not available")]
    JetStreamUnavailable,
    /// Desired subjects overlap subjects of other streams (server error 10065 maps here too);
    /// [`TopologyError::conflicts`] lists every conflict.
    #[error("subjects overlap other streams")]
    SubjectOverlap,
    /// An existing stream has a retention or storage other than required; these are never
    /// changed.
    #[error("existing stream has a different retention or storage")]
    StreamMismatch,
    /// The DLQ subject already lives where the chosen [`DlqPlacement`] does not put it.
    #[error("DLQ subject is placed differently")]
    DlqPlacement,
    /// The durable consumer on the server differs from the configuration (or the server refused
    /// to update it in place); [`TopologyError::drift`] lists the fields.
    #[error("durable consumer differs from the configuration")]
    ConsumerDrift,
    /// Another consumer of the work-queue stream filters an overlapping subject (server error
    /// 10100).
    #[error("another consumer of the work-queue stream filters an overlapping subject")]
    ConsumerConflict,
    /// Concurrent changes by other deploys kept invalidating the plan; retrying later helps.
    #[error("topology kept changing concurrently")]
    Conflict,
    /// A name derived from the specification is invalid (e.g. a DLQ stream name over 255
    /// characters).
    #[error("invalid topology specification")]
    InvalidSpec,
    /// Any other error answer from the JetStream API.
    #[error("JetStream API error")]
    Api,
}

/// An error from this crate: a [`kind`](Self::kind) to branch on, a message naming the
/// streams, subjects and permissions involved, and for plan problems the full list of
/// [`problems`](Self::problems).
///
/// Messages never contain credentials: URLs are redacted and NKey seeds are never shown.
pub struct TopologyError {
    // Boxed: errors travel through many `Result`s and should stay one pointer wide.
    inner: Box<Inner>,
}

struct Inner {
    kind: TopologyErrorKind,
    message: String,
    problems: Vec<Problem>,
    permission: Option<PermissionViolation>,
    jetstream_code: Option<u64>,
    source: Option<BoxError>,
}

impl TopologyError {
    pub(crate) fn new(kind: TopologyErrorKind, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                problems: Vec::new(),
                permission: None,
                jetstream_code: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_jetstream_code(mut self, code: u64) -> Self {
        self.inner.jetstream_code = Some(code);
        self
    }

    pub(crate) fn with_permission(mut self, violation: PermissionViolation) -> Self {
        self.inner.permission = Some(violation);
        self
    }

    /// One error for all `problems` of a plan; its kind is that of the first problem (they are
    /// ordered overlap, stream mismatch, DLQ placement, drift).
    pub(crate) fn from_problems(problems: Vec<Problem>) -> Self {
        let kind = problems
            .first()
            .map_or(TopologyErrorKind::Api, Problem::kind);
        let mut message = String::new();
        for (i, problem) in problems.iter().enumerate() {
            if i > 0 {
                message.push_str("; ");
            }
            message.push_str(&problem.to_string());
        }
        let mut error = Self::new(kind, message);
        error.inner.problems = problems;
        error
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> TopologyErrorKind {
        self.inner.kind
    }

    /// Every problem found by the plan (overlaps, mismatches, drift); empty for I/O errors.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.inner.problems
    }

    /// Every subject overlap with another stream (empty unless the kind is
    /// [`SubjectOverlap`](TopologyErrorKind::SubjectOverlap) or other problems came with one).
    #[must_use]
    pub fn conflicts(&self) -> Vec<&OverlapConflict> {
        self.inner
            .problems
            .iter()
            .filter_map(|p| match p {
                Problem::SubjectOverlap(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The consumer drift, if this error reports one.
    #[must_use]
    pub fn drift(&self) -> Option<&ConsumerDrift> {
        self.inner.problems.iter().find_map(|p| match p {
            Problem::ConsumerDrift(d) => Some(d),
            _ => None,
        })
    }

    /// The permissions violation the server reported, for
    /// [`PermissionDenied`](TopologyErrorKind::PermissionDenied).
    #[must_use]
    pub fn permission(&self) -> Option<&PermissionViolation> {
        self.inner.permission.as_ref()
    }

    /// The JetStream API error code (`err_code`, e.g. 10065) when the server answered with an
    /// error.
    #[must_use]
    pub fn jetstream_code(&self) -> Option<u64> {
        self.inner.jetstream_code
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl fmt::Debug for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopologyError")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("problems", &self.inner.problems)
            .field("permission", &self.inner.permission)
            .field("jetstream_code", &self.inner.jetstream_code)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl std::error::Error for TopologyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Something the plan found that provisioning must not paper over.
///
/// Serialised (for JSON reports) as an object with `"kind"` naming the variant in snake case
/// (`subject_overlap`, `stream_mismatch`, `dlq_placement`, `dlq_not_empty`, `consumer_drift`)
/// beside the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// A desired subject overlaps a subject of another stream.
    SubjectOverlap(OverlapConflict),
    /// An existing stream's retention or storage differs from what is required.
    StreamMismatch {
        /// The stream.
        stream: String,
        /// `retention` or `storage`.
        field: &'static str,
        /// What the bridge requires (`workqueue`, `limits`, `file`).
        expected: String,
        /// What the server has.
        actual: String,
    },
    /// The DLQ subject is already held by a stream the chosen placement does not use.
    DlqPlacement {
        /// This app's DLQ subject (or the desired subject that overlaps it).
        subject: String,
        /// The stream that holds it now.
        stream: String,
        /// Its subject that covers the DLQ subject.
        stream_subject: String,
        /// The placement that was asked for.
        placement: DlqPlacement,
    },
    /// A DLQ subject that should move out of the work-queue stream
    /// ([`EnsureOptions::move_dlq_subjects`](crate::EnsureOptions::move_dlq_subjects)) has dead
    /// letters stored there; moving the subject would strand them.
    DlqNotEmpty {
        /// The DLQ subject.
        subject: String,
        /// The work-queue stream holding it.
        stream: String,
        /// How many messages on it the stream stores.
        messages: u64,
    },
    /// The durable consumer differs from the configuration.
    ConsumerDrift(ConsumerDrift),
}

impl Problem {
    /// The error kind this problem is reported as.
    #[must_use]
    pub fn kind(&self) -> TopologyErrorKind {
        match self {
            Self::SubjectOverlap(_) => TopologyErrorKind::SubjectOverlap,
            Self::StreamMismatch { .. } => TopologyErrorKind::StreamMismatch,
            Self::DlqPlacement { .. } | Self::DlqNotEmpty { .. } => TopologyErrorKind::DlqPlacement,
            Self::ConsumerDrift(_) => TopologyErrorKind::ConsumerDrift,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SubjectOverlap(c) => c.fmt(f),
            Self::StreamMismatch {
                stream,
                field,
                expected,
                actual,
            } => write!(
                f,
                "stream `{stream}` has {field} `{actual}`, the bridge needs `{expected}` \
                 ({field} is never changed: recreate the stream or choose another name)"
            ),
            Self::DlqPlacement {
                subject,
                stream,
                stream_subject,
                placement,
            } => match placement {
                DlqPlacement::SeparateStream => write!(
                    f,
                    "DLQ subject `{subject}` is already in stream `{stream}` (as `{stream_subject}`), \
                     the Ruby gem's layout; keep it there with DLQ placement `main-stream` \
                     (`DlqPlacement::MainStream`, `--dlq-placement main-stream`), or move it \
                     to a separate, browsable stream (`EnsureOptions::move_dlq_subjects`, \
                     `--move-dlq-subjects`; it must store no dead letter in `{stream}`)"
                ),
                DlqPlacement::MainStream => write!(
                    f,
                    "DLQ subject `{subject}` is in the separate DLQ stream `{stream}` (as \
                     `{stream_subject}`); use DLQ placement `separate-stream` \
                     (`DlqPlacement::SeparateStream`, `--dlq-placement separate-stream`), or \
                     remove it from `{stream}` to put dead letters in the main stream"
                ),
            },
            Self::DlqNotEmpty {
                subject,
                stream,
                messages,
            } => write!(
                f,
                "cannot move DLQ subject `{subject}` out of stream `{stream}`: {messages} dead \
                 letter{} stored there on it would be stranded; read them (a consumer filtered \
                 on `{subject}`) or purge them (`nats stream purge {stream} --subject \
                 {subject}`), then provision again",
                if *messages == 1 { " is" } else { "s are" }
            ),
            Self::ConsumerDrift(d) => d.fmt(f),
        }
    }
}

/// Something provisioning leaves as it is but that loses data unless someone acts on it.
///
/// Serialised like [`Problem`], with `"kind"` (`dead_letters_dropped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// A work-queue stream captures both a subject this service publishes (with the canonical
    /// `Nats-Msg-Id` header, which the outbox always sets) and the DLQ subject of the service
    /// consuming it. A consumer running the Ruby gem (7.x) dead-letters by copying the
    /// original's headers, `Nats-Msg-Id` included: the server drops that copy as a duplicate of
    /// the original, and the gem acks the original, so the event is lost. (The bridge's own
    /// consumer gives dead letters a msg-id of their own and is not affected.)
    DeadLettersDropped {
        /// The stream capturing both subjects.
        stream: String,
        /// The subject this service publishes.
        source_subject: String,
        /// The consuming service's DLQ subject.
        dlq_subject: String,
        /// The stream's subject (pattern) that captures the DLQ subject.
        stream_subject: String,
        /// Where the DLQ subject should go instead (the separate DLQ stream), if there is one.
        dlq_stream: Option<String>,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeadLettersDropped {
                stream,
                source_subject,
                dlq_subject,
                stream_subject,
                dlq_stream,
            } => {
                let captured = if stream_subject == dlq_subject {
                    String::new()
                } else {
                    format!(" (as `{stream_subject}`)")
                };
                write!(
                    f,
                    "stream `{stream}` captures both `{source_subject}`, published with \
                     `Nats-Msg-Id`, and the DLQ subject `{dlq_subject}`{captured} of its \
                     consumer: if that consumer runs the Ruby gem, its dead letters copy the \
                     header, the server drops them as duplicates and the gem acks the \
                     originals, so they are lost; "
                )?;
                match dlq_stream {
                    Some(dlq_stream) if stream_subject == dlq_subject => write!(
                        f,
                        "move `{dlq_subject}` to the DLQ stream `{dlq_stream}` \
                         (`EnsureOptions::move_dlq_subjects`)"
                    ),
                    _ => write!(
                        f,
                        "put `{dlq_subject}` into a stream of its own (see the DLQ placement \
                         section of docs/TOPOLOGY.md)"
                    ),
                }
            }
        }
    }
}

/// One overlap between a subject this service needs and a subject of another stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OverlapConflict {
    /// The stream the subject was meant for.
    pub stream: String,
    /// The desired subject.
    pub subject: String,
    /// The other stream.
    pub other_stream: String,
    /// The other stream's subject (pattern) that overlaps it.
    pub other_subject: String,
}

impl fmt::Display for OverlapConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject `{}` (for stream `{}`) overlaps `{}` of stream `{}`",
            self.subject, self.stream, self.other_subject, self.other_stream
        )
    }
}

/// How a durable consumer on the server differs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConsumerDrift {
    /// The stream.
    pub stream: String,
    /// The durable name.
    pub durable: String,
    /// Every field that differs.
    pub fields: Vec<FieldDrift>,
    /// Why an in-place update was not possible, when one was attempted.
    pub update_refused: Option<String>,
}

impl fmt::Display for ConsumerDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "durable `{}` on stream `{}` differs from the configuration: ",
            self.durable, self.stream
        )?;
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            field.fmt(f)?;
        }
        match &self.update_refused {
            Some(reason) => write!(
                f,
                "; the server refused to update it in place ({reason}); it is never deleted \
                 and recreated automatically (that would lose its delivery state)"
            ),
            None => f.write_str(
                " (update it in place with `DriftPolicy::Update` / `--update-drift`, or align \
                 the configuration)",
            ),
        }
    }
}

/// One consumer field that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FieldDrift {
    /// The field name as in the JetStream consumer configuration (`max_deliver`, `ack_wait` …).
    pub field: &'static str,
    /// The configured value.
    pub expected: String,
    /// The server's value.
    pub actual: String,
}

impl fmt::Display for FieldDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} expected {} but is {}",
            self.field, self.expected, self.actual
        )
    }
}
