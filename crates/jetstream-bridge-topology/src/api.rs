//! The JetStream API calls provisioning makes, with errors classified at the boundary.
//!
//! Requests and answers are raw JSON (`serde_json::Value`) on purpose: an update sends back the
//! server's own configuration with one field changed, so fields this client version does not
//! model (or models behind cargo features, such as 2.10's `metadata` or `compression`)
//! survive.

use std::time::Duration;

use async_nats::jetstream::context::RequestErrorKind;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, Request};
use serde_json::Value;

use crate::error::{TopologyError, TopologyErrorKind};
use crate::violations::{PermissionViolations, Target};

/// The JetStream API prefix used in messages (a context with a domain uses another one).
pub(crate) const API_PREFIX: &str = "$JS.API";

/// A failed API call: either the server's JetStream error (for the caller to classify by code)
/// or an already classified error.
#[derive(Debug)]
pub(crate) enum ApiError {
    JetStream {
        subject: String,
        error: jetstream::Error,
    },
    Failed(TopologyError),
    /// A publish no stream captures (no responders), already classified.
    NoStream(TopologyError),
}

impl ApiError {
    /// The JetStream error code, if the server answered with an error.
    pub(crate) fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::JetStream { error, .. } => Some(error.error_code()),
            Self::Failed(_) | Self::NoStream(_) => None,
        }
    }

    /// The error as a [`TopologyError`] with the default classification: JetStream not enabled
    /// → [`JetStreamUnavailable`](TopologyErrorKind::JetStreamUnavailable), any other server
    /// error → [`Api`](TopologyErrorKind::Api).
    pub(crate) fn into_error(self) -> TopologyError {
        match self {
            Self::Failed(e) | Self::NoStream(e) => e,
            Self::JetStream { subject, error } => {
                let code = error.error_code();
                let kind = if code == ErrorCode::JETSTREAM_NOT_ENABLED
                    || code == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                {
                    TopologyErrorKind::JetStreamUnavailable
                } else {
                    TopologyErrorKind::Api
                };
                TopologyError::new(kind, format!("JetStream refused `{subject}`: {error}"))
                    .with_jetstream_code(code.0)
                    .with_source(error)
            }
        }
    }

    /// Like [`into_error`](Self::into_error) with another kind and message for a server error.
    pub(crate) fn into_error_as(
        self,
        kind: TopologyErrorKind,
        message: impl FnOnce(&str) -> String,
    ) -> TopologyError {
        match self {
            Self::Failed(e) | Self::NoStream(e) => e,
            Self::JetStream { error, .. } => {
                let code = error.error_code();
                TopologyError::new(kind, message(&error.to_string()))
                    .with_jetstream_code(code.0)
                    .with_source(error)
            }
        }
    }
}

/// A JetStream context plus what is needed to classify its failures.
pub(crate) struct Api {
    js: jetstream::Context,
    violations: Option<PermissionViolations>,
    inbox_prefix: String,
    timeout: Option<Duration>,
}

impl Api {
    pub(crate) fn new(
        js: &jetstream::Context,
        violations: Option<PermissionViolations>,
        timeout: Option<Duration>,
    ) -> Self {
        let mut js = js.clone();
        if let Some(timeout) = timeout {
            js.set_timeout(timeout);
        }
        let inbox = js.client().new_inbox();
        let inbox_prefix = inbox
            .rsplit_once('.')
            .map_or_else(|| "_INBOX".to_owned(), |(prefix, _)| prefix.to_owned());
        Self {
            js,
            violations,
            inbox_prefix,
            timeout,
        }
    }

    /// Sends `$JS.API.<suffix>` with a JSON payload and returns the JSON answer.
    pub(crate) async fn request(&self, suffix: &str, payload: &Value) -> Result<Value, ApiError> {
        let subject = format!("{API_PREFIX}.{suffix}");
        let request = self
            .js
            .request::<_, _, Response<Value>>(suffix.to_owned(), payload);
        let result = match &self.violations {
            Some(violations) => {
                let mark = violations.mark();
                tokio::select! {
                    result = request => result,
                    violation = violations.wait_for(mark, Target::Api(suffix), &self.inbox_prefix) => {
                        return Err(ApiError::Failed(permission_denied(violation)));
                    }
                }
            }
            None => request.await,
        };
        match result {
            Ok(Response::Ok(value)) => Ok(value),
            Ok(Response::Err { error }) => Err(ApiError::JetStream { subject, error }),
            Err(e) => Err(ApiError::Failed(self.request_failed(
                &subject,
                Target::Api(suffix),
                e,
            ))),
        }
    }

    /// Publishes `payload` with `headers` to a subject a stream captures (e.g. a lock entry)
    /// and returns the PubAck. A JetStream error in the PubAck (e.g. 10071, wrong last
    /// sequence) is [`ApiError::JetStream`]; no stream capturing the subject is
    /// [`ApiError::NoStream`].
    pub(crate) async fn publish(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<Value, ApiError> {
        let mut request = Request::new().headers(headers).payload(payload.into());
        if let Some(timeout) = self.timeout {
            request = request.timeout(Some(timeout));
        }
        let client = self.js.client();
        let send = client.send_request(subject.to_owned(), request);
        let result = match &self.violations {
            Some(violations) => {
                let mark = violations.mark();
                tokio::select! {
                    result = send => result,
                    violation = violations.wait_for(mark, Target::Subject(subject), &self.inbox_prefix) => {
                        return Err(ApiError::Failed(permission_denied(violation)));
                    }
                }
            }
            None => send.await,
        };
        let message = match result {
            Ok(message) => message,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                return Err(ApiError::NoStream(
                    TopologyError::new(
                        TopologyErrorKind::Api,
                        format!("no stream captures `{subject}` (no responders)"),
                    )
                    .with_source(e),
                ));
            }
            Err(e) => {
                let kind = match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => RequestErrorKind::TimedOut,
                    _ => RequestErrorKind::Other,
                };
                let error = async_nats::jetstream::context::RequestError::with_source(kind, e);
                return Err(ApiError::Failed(self.request_failed(
                    subject,
                    Target::Subject(subject),
                    error,
                )));
            }
        };
        match serde_json::from_slice::<Response<Value>>(&message.payload) {
            Ok(Response::Ok(ack)) => Ok(ack),
            Ok(Response::Err { error }) => Err(ApiError::JetStream {
                subject: subject.to_owned(),
                error,
            }),
            Err(e) => Err(ApiError::Failed(
                TopologyError::new(
                    TopologyErrorKind::Api,
                    format!("unexpected answer to a publish to `{subject}`"),
                )
                .with_source(e),
            )),
        }
    }

    fn request_failed(
        &self,
        subject: &str,
        target: Target<'_>,
        error: async_nats::jetstream::context::RequestError,
    ) -> TopologyError {
        match error.kind() {
            RequestErrorKind::NoResponders => TopologyError::new(
                TopologyErrorKind::JetStreamUnavailable,
                format!(
                    "no server answered `{subject}` (no responders): JetStream is not enabled for \
                     this account or server"
                ),
            )
            .with_source(error),
            RequestErrorKind::TimedOut => {
                // A refusal reported just as the request timed out still names the subject.
                if let Some(v) = self.violations.as_ref().and_then(|log| {
                    log.recent().into_iter().rev().find(|v| {
                        target.matches(&v.subject)
                            || v.subject.starts_with(&format!("{}.", self.inbox_prefix))
                    })
                }) {
                    return permission_denied(v);
                }
                let after = self
                    .timeout
                    .map(|t| format!(" within {}", jetstream_bridge_config::format_duration(t)))
                    .unwrap_or_default();
                TopologyError::new(
                    TopologyErrorKind::Timeout,
                    format!(
                        "no reply to `{subject}`{after}: JetStream may be unavailable, or this \
                         user may lack permission to publish to `{subject}` or to subscribe to \
                         `{}.>` (permissions violations are only named when the client was \
                         made by `connect` or its log is passed in `EnsureOptions`)",
                        self.inbox_prefix
                    ),
                )
                .with_source(error)
            }
            RequestErrorKind::InvalidSubject | RequestErrorKind::Other => TopologyError::new(
                TopologyErrorKind::Api,
                format!("request to `{subject}` failed"),
            )
            .with_source(error),
        }
    }
}

fn permission_denied(violation: crate::PermissionViolation) -> TopologyError {
    let message = if violation.needed == violation.subject {
        format!(
            "permission denied: this user may not {} (grant {} permission on `{}`)",
            violation, violation.operation, violation.needed
        )
    } else {
        format!(
            "permission denied: this user may not {} (grant {} permission on `{}`, the reply \
             inbox used by every request)",
            violation, violation.operation, violation.needed
        )
    };
    TopologyError::new(TopologyErrorKind::PermissionDenied, message).with_permission(violation)
}
