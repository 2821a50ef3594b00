#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod config;
mod duration;
mod env;
mod envelope;
mod error;
mod preset;
mod redact;
mod shutdown;
mod subject;
mod trace;
mod url;
mod warning;

pub use builder::{ConfigBuilder, DurationInput};
pub use config::{Config, ConsumerMode, DEFAULT_NATS_URL};
pub use duration::{format_duration, parse_duration};
pub use envelope::{
    event_id_from_headers, resolve_event_id, DlqContext, DlqReason, Envelope, EnvelopeBuilder,
    EnvelopeError, EventId, Timestamp, DEAD_LETTER_HEADER, DEAD_LETTER_HEADER_VALUE,
    DELIVERIES_HEADER, DLQ_CONTEXT_HEADER, DLQ_REASON_HEADER, MSG_ID_HEADER, REPLAY_OF_HEADER,
    RUBY_MSG_ID_HEADER, TRACEPARENT_HEADER,
};
pub use error::{
    ConfigError, ConfigProblem, DurationError, EnvVarError, NatsUrlError, SubjectError,
    SubjectTokenError, UnknownVariantError,
};
pub use preset::Preset;
pub use redact::{redact_url, Redacted, Secret};
pub use shutdown::Shutdown;
pub use subject::{
    subject_matches, subjects_overlap, validate_literal_subject, validate_subject, NatsName,
    Subject, SubjectLayout, SubjectToken, Subjects, SubjectsBuilder, MAX_TOKEN_CHARS,
};
pub use trace::{TraceParent, TraceParentError};
pub use url::{NatsUrl, NatsUrls};
pub use warning::ConfigWarning;

/// `Result` with [`ConfigError`] as the default error type.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
