//! [`PermissionViolations`]: the permission errors a NATS server reported to one client.
//!
//! A publish or subscribe the user may not make is not an error of the call that made it: the
//! server drops it and sends `-ERR 'Permissions Violation for Publish to "<subject>"'` (or
//! `... for Subscription to "<subject>"`) on the connection, which async-nats hands to the
//! event callback. A JetStream API request therefore just times out (verified against
//! nats-server 2.9.10, test `permissions::missing_permission_is_named`). This log, fed by the
//! event callback that [`connect`](crate::connect) installs, lets provisioning fail at once with
//! the exact subject instead of a timeout.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// How many violations a log keeps (the oldest are dropped first).
const CAPACITY: usize = 64;

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Publishing to a subject (a request is a publish).
    Publish,
    /// Subscribing to a subject (e.g. the client's reply inbox `_INBOX.<id>.*`).
    Subscribe,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        })
    }
}

/// One permissions violation reported by the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PermissionViolation {
    /// What the client tried.
    pub operation: Operation,
    /// The subject exactly as the server reported it.
    pub subject: String,
    /// The permission to grant: the subject itself, or for a reply inbox `<prefix>.>`.
    pub needed: String,
}

impl PermissionViolation {
    /// Parses the text of a server `-ERR` (as async-nats reports it in
    /// [`ServerError::Other`](async_nats::ServerError::Other)): `Permissions Violation for
    /// Publish to "<subject>"` or `... for Subscription to "<subject>"`. The match is
    /// case-insensitive, as in nats.go; the subject keeps its case.
    ///
    /// ```
    /// use jetstream_bridge_topology::{Operation, PermissionViolation};
    ///
    /// let v = PermissionViolation::parse(r#"Permissions Violation for Publish to "$JS.API.STREAM.LIST""#)
    ///     .unwrap();
    /// assert_eq!(v.operation, Operation::Publish);
    /// assert_eq!(v.subject, "$JS.API.STREAM.LIST");
    /// assert!(PermissionViolation::parse("Maximum Payload Violation").is_none());
    /// ```
    #[must_use]
    pub fn parse(server_error: &str) -> Option<Self> {
        const PREFIX: &str = "permissions violation for ";
        let text = server_error.trim().trim_matches('\'');
        let head = text.get(..PREFIX.len())?;
        if !head.eq_ignore_ascii_case(PREFIX) {
            return None;
        }
        let rest = &text[PREFIX.len()..];
        let (operation, rest) = if let Some(r) = strip_prefix_ci(rest, "publish to ") {
            (Operation::Publish, r)
        } else if let Some(r) = strip_prefix_ci(rest, "subscription to ") {
            (Operation::Subscribe, r)
        } else {
            return None;
        };
        // `"subject"`, possibly followed by ` using queue "group"` for queue subscriptions.
        let rest = rest.trim().strip_prefix('"')?;
        let subject = rest.split('"').next()?.to_owned();
        if subject.is_empty() {
            return None;
        }
        Some(Self {
            operation,
            needed: subject.clone(),
            subject,
        })
    }

    fn for_inbox(mut self, inbox_prefix: &str) -> Self {
        self.needed = format!("{inbox_prefix}.>");
        self
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl fmt::Display for PermissionViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to `{}`", self.operation, self.subject)
    }
}

/// A shared, bounded log of the permissions violations one client was told about.
///
/// [`connect`](crate::connect) creates one and feeds it from the client's event callback. With a
/// client built elsewhere, feed it yourself with [`observe`](Self::observe) and pass it in
/// [`EnsureOptions::permission_violations`](crate::EnsureOptions::permission_violations):
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_topology::PermissionViolations;
///
/// let violations = PermissionViolations::new();
/// let log = violations.clone();
/// let client = async_nats::ConnectOptions::new()
///     .event_callback(move |event| {
///         log.observe(&event);
///         async {}
///     })
///     .connect("nats://127.0.0.1:4222")
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct PermissionViolations {
    inner: Arc<Inner>,
}

struct Inner {
    /// `(sequence number, violation)`, oldest first.
    log: Mutex<VecDeque<(u64, PermissionViolation)>>,
    /// The sequence number of the last violation recorded (0: none yet).
    last: watch::Sender<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            log: Mutex::new(VecDeque::new()),
            last: watch::Sender::new(0),
        }
    }
}

impl fmt::Debug for PermissionViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermissionViolations")
            .field("recent", &self.recent())
            .finish()
    }
}

impl PermissionViolations {
    /// An empty log.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the event if it is a permissions violation; returns whether it was.
    pub fn observe(&self, event: &async_nats::Event) -> bool {
        match event {
            async_nats::Event::ServerError(async_nats::ServerError::Other(text)) => {
                self.record_server_error(text)
            }
            _ => false,
        }
    }

    /// Records the text of a server `-ERR` if it is a permissions violation; returns whether it
    /// was.
    pub fn record_server_error(&self, text: &str) -> bool {
        let Some(violation) = PermissionViolation::parse(text) else {
            return false;
        };
        tracing::warn!(
            operation = %violation.operation,
            subject = %violation.subject,
            "NATS permissions violation"
        );
        let mut log = self.inner.log.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *self.inner.last.borrow() + 1;
        if log.len() == CAPACITY {
            log.pop_front();
        }
        log.push_back((seq, violation));
        drop(log);
        self.inner.last.send_replace(seq);
        true
    }

    /// The violations recorded so far (at most the last 64), oldest first.
    #[must_use]
    pub fn recent(&self) -> Vec<PermissionViolation> {
        let log = self.inner.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The sequence number of the newest violation (a mark for [`wait_for`](Self::wait_for)).
    pub(crate) fn mark(&self) -> u64 {
        *self.inner.last.borrow()
    }

    /// The first violation relevant to a request to `target`: a publish to it recorded after
    /// `since`, or a subscription to the client's reply inbox `<inbox_prefix>.…` recorded at any
    /// time (the client subscribes its inbox once, so an old refusal still applies).
    fn find(
        &self,
        since: u64,
        target: Target<'_>,
        inbox_prefix: &str,
    ) -> Option<PermissionViolation> {
        let log = self.inner.log.lock().unwrap_or_else(|e| e.into_inner());
        let inbox = format!("{inbox_prefix}.");
        log.iter().find_map(|(seq, v)| match v.operation {
            Operation::Publish if *seq > since && target.matches(&v.subject) => Some(v.clone()),
            Operation::Subscribe if v.subject.starts_with(&inbox) => {
                Some(v.clone().for_inbox(inbox_prefix))
            }
            _ => None,
        })
    }

    /// Resolves with the first violation relevant to the request (see `find`); never resolves
    /// if none arrives.
    pub(crate) async fn wait_for(
        &self,
        since: u64,
        target: Target<'_>,
        inbox_prefix: &str,
    ) -> PermissionViolation {
        let mut updates = self.inner.last.subscribe();
        loop {
            if let Some(v) = self.find(since, target, inbox_prefix) {
                return v;
            }
            if updates.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen; wait forever regardless.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What a request was sent to, for matching the violations the server reports.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A JetStream API request `<api prefix>.<suffix>` (e.g. `STREAM.INFO.orders`; the prefix
    /// differs with a JetStream domain).
    Api(&'a str),
    /// A publish to exactly this subject (e.g. a lock entry in a key-value bucket).
    Subject(&'a str),
}

impl Target<'_> {
    /// Whether a refused publish to `subject` is this request.
    pub(crate) fn matches(self, subject: &str) -> bool {
        match self {
            Self::Api(suffix) => {
                subject.starts_with("$JS.")
                    && subject
                        .strip_suffix(suffix)
                        .is_some_and(|head| head.ends_with('.'))
            }
            Self::Subject(s) => subject == s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_publish_and_subscribe_violations() {
        let v = PermissionViolation::parse(
            r#"Permissions Violation for Publish to "$JS.API.STREAM.CREATE.s""#,
        )
        .unwrap();
        assert_eq!(v.operation, Operation::Publish);
        assert_eq!(v.subject, "$JS.API.STREAM.CREATE.s");
        let v = PermissionViolation::parse(
            r#"'permissions violation for subscription to "_INBOX.abc.*" using queue "q"'"#,
        )
        .unwrap();
        assert_eq!(v.operation, Operation::Subscribe);
        assert_eq!(v.subject, "_INBOX.abc.*");
        assert!(PermissionViolation::parse("Permissions Violation for Publish to \"\"").is_none());
        assert!(PermissionViolation::parse("Slow Consumer").is_none());
        assert!(PermissionViolation::parse("Permissions Violation").is_none());
    }

    #[test]
    fn finds_relevant_violations_only() {
        let log = PermissionViolations::new();
        assert!(log.record_server_error(r#"Permissions Violation for Publish to "a.b""#));
        let mark = log.mark();
        assert!(log
            .find(mark, Target::Api("STREAM.LIST"), "_INBOX")
            .is_none());
        log.record_server_error(r#"Permissions Violation for Publish to "$JS.API.STREAM.LIST""#);
        assert_eq!(
            log.find(mark, Target::Api("STREAM.LIST"), "_INBOX")
                .unwrap()
                .subject,
            "$JS.API.STREAM.LIST"
        );
        assert!(log
            .find(log.mark(), Target::Api("STREAM.LIST"), "_INBOX")
            .is_none());
        log.record_server_error(r#"Permissions Violation for Subscription to "$RPC.x1.*""#);
        let v = log
            .find(log.mark(), Target::Api("STREAM.INFO.s"), "$RPC")
            .unwrap();
        assert_eq!(v.needed, "$RPC.>");
        assert_eq!(log.recent().len(), 3);
    }

    #[test]
    fn log_is_bounded() {
        let log = PermissionViolations::new();
        for i in 0..100 {
            log.record_server_error(&format!(r#"Permissions Violation for Publish to "s.{i}""#));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent.last().unwrap().subject, "s.99");
    }
}
