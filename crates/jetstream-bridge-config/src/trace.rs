//! W3C trace context (`traceparent`) carried from a publisher to its consumers.
//!
//! A [`TraceParent`] names a trace and the span that caused a message. Publishing takes the
//! traceparent given with the event, or else the [current](TraceParent::current) one, and sends
//! it as the `traceparent` header; the consumer runtime reads it back, records the trace id on
//! its `handle` span and makes a [child](TraceParent::child) current while the handler runs, so
//! events the handler publishes continue the same trace across services.
//!
//! This crate does not depend on OpenTelemetry: bridge to it by formatting the OTel span
//! context as a traceparent ([`TraceParent::from_str`](std::str::FromStr)) and by reading
//! [`TraceParent::trace_id`] / [`TraceParent::parent_id`] on the consuming side.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

/// A W3C `traceparent` (version `00`): trace id, parent span id and trace flags.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::TraceParent;
///
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(tp.sampled());
/// let child = tp.child();
/// assert_eq!(child.trace_id(), tp.trace_id());
/// assert_ne!(child.parent_id(), tp.parent_id());
/// # Ok::<(), jetstream_bridge_config::TraceParentError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a string is not a valid `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Not `version-traceid-parentid-flags` with 2, 32, 16 and 2 lowercase hex digits.
    #[error("traceparent must be `00-<32 hex>-<16 hex>-<2 hex>` (lowercase), got {0:?}")]
    Format(String),
    /// Version `ff` is forbidden by the W3C specification.
    #[error("traceparent version ff is invalid")]
    Version,
    /// An all-zero trace id or parent id.
    #[error("traceparent has an all-zero {0} id")]
    ZeroId(&'static str),
}

tokio::task_local! {
    static CURRENT: TraceParent;
}

impl TraceParent {
    /// A new trace: random trace and parent ids, sampled.
    #[must_use]
    pub fn new_root() -> Self {
        let mut trace_id = rand::random::<[u8; 16]>();
        // Ids must not be all zero; the chance is negligible, but make it impossible.
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            parent_id: nonzero_span_id(),
            flags: 0x01,
        }
    }

    /// The same trace with a new parent span id (for the next hop).
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            parent_id: nonzero_span_id(),
            ..*self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    #[must_use]
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent span id as 16 lowercase hex digits.
    #[must_use]
    pub fn parent_id(&self) -> String {
        hex(&self.parent_id)
    }

    /// The trace flags byte.
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set.
    #[must_use]
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 0x01
    }

    /// The traceparent current on this task: set by [`scope`](Self::scope) (the consumer
    /// runtime sets one while a handler runs), `None` elsewhere.
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|tp| *tp).ok()
    }

    /// Runs `future` with `self` as the [current](Self::current) traceparent.
    ///
    /// A plain function, not an `async fn`: the returned future holds `future` once (an
    /// `async fn` would keep the argument and the scoped copy side by side).
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    /// Parses a version-`00` traceparent strictly; a higher version is read by its first four
    /// fields, as the W3C specification asks of version-00 parsers.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format = || TraceParentError::Format(s.chars().take(80).collect());
        let mut parts = s.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format());
        };
        let version = parse_hex::<1>(version).ok_or_else(format)?;
        if version == [0xff] {
            return Err(TraceParentError::Version);
        }
        if version == [0x00] && parts.next().is_some() {
            return Err(format());
        }
        let trace_id = parse_hex::<16>(trace).ok_or_else(format)?;
        let parent_id = parse_hex::<8>(parent).ok_or_else(format)?;
        let [flags] = parse_hex::<1>(flags).ok_or_else(format)?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroId("trace"));
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroId("parent"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.parent_id(),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

fn nonzero_span_id() -> [u8; 8] {
    let mut id = rand::random::<[u8; 8]>();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `N` bytes from exactly `2 * N` lowercase hex digits.
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_the_w3c_example() {
        let tp: TraceParent = SAMPLE.parse().unwrap();
        assert_eq!(tp.to_string(), SAMPLE);
        assert_eq!(tp.parent_id(), "00f067aa0ba902b7");
        assert_eq!(tp.flags(), 1);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(
                matches!(bad.parse::<TraceParent>(), Err(TraceParentError::Format(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(TraceParentError::Version)
        );
        assert_eq!(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(TraceParentError::ZeroId("trace"))
        );
        assert_eq!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".parse::<TraceParent>(),
            Err(TraceParentError::ZeroId("parent"))
        );
    }

    #[test]
    fn a_future_version_is_read_by_its_first_fields() {
        let tp: TraceParent = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"
            .parse()
            .unwrap();
        assert_eq!(tp.to_string(), SAMPLE);
    }

    #[test]
    fn roots_and_children() {
        let root = TraceParent::new_root();
        assert!(root.sampled());
        assert_eq!(root.to_string().parse::<TraceParent>().unwrap(), root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.parent_id(), root.parent_id());
        assert_ne!(TraceParent::new_root().trace_id(), root.trace_id());
    }

    #[test]
    fn current_is_scoped_to_the_future() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(TraceParent::current(), None);
            let tp: TraceParent = SAMPLE.parse().unwrap();
            let seen = tp.scope(async { TraceParent::current() }).await;
            assert_eq!(seen, Some(tp));
            assert_eq!(TraceParent::current(), None);
        });
    }
}
