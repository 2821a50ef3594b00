//! The relay's settings: [`RelayBuilder`], defaults and bounds.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use jetstream_bridge_config::Config;

use super::conn::OwnConn;
use super::{Inner, PgPool, Relay};
use crate::backoff::Backoff;
use crate::error::{OutboxError, OutboxErrorKind, Result};

/// Upper bound of the lease, the poll interval and back-off maxima.
pub(super) const MAX_SETTING: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) relay_id: String,
    pub(super) batch_size: usize,
    pub(super) max_in_flight: usize,
    pub(super) lease: Duration,
    pub(super) poll_interval: Duration,
    pub(super) max_attempts: u32,
    pub(super) retry: Backoff,
    pub(super) outage: Backoff,
    pub(super) ruby_msg_id_header: bool,
    pub(super) ordered: bool,
    pub(super) listen: bool,
}

impl Settings {
    /// The defaults listed on [`Relay::builder`].
    pub(super) fn new(config: &Config) -> Self {
        Self {
            relay_id: format!("{}-{}", config.app_name(), uuid::Uuid::now_v7()),
            batch_size: 500,
            max_in_flight: 256,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_attempts: 10,
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            outage: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            ruby_msg_id_header: true,
            ordered: false,
            listen: true,
        }
    }

    /// Every out-of-range setting, as `name: reason`.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(what.to_owned());
            }
        };
        check(self.batch_size >= 1, "batch_size must be at least 1");
        check(
            i64::try_from(self.batch_size).is_ok(),
            "batch_size must fit in an i64",
        );
        check(self.max_in_flight >= 1, "max_in_flight must be at least 1");
        check(!self.lease.is_zero(), "lease must be above zero");
        check(self.max_attempts >= 1, "max_attempts must be at least 1");
        check(
            !self.poll_interval.is_zero(),
            "poll_interval must be above zero",
        );
        check(
            !self.relay_id.is_empty() && !self.relay_id.contains('\0'),
            "relay_id must be non-empty and free of NUL",
        );
        // Upper bounds: PostgreSQL intervals and `Instant` arithmetic stay far from overflow.
        check(self.lease <= MAX_SETTING, "lease must be at most 1 day");
        check(
            self.poll_interval <= MAX_SETTING,
            "poll_interval must be at most 1 day",
        );
        for (name, b) in [
            ("retry_backoff", self.retry),
            ("outage_backoff", self.outage),
        ] {
            if b.base.is_zero() || b.base > b.max {
                problems.push(format!("{name} base must be above zero and at most max"));
            }
            if b.max > MAX_SETTING {
                problems.push(format!("{name} max must be at most 1 day"));
            }
        }
        problems
    }
}

/// Builds a [`Relay`]; see [`Relay::builder`] for the defaults.
#[must_use = "call `.build()` to get the relay"]
pub struct RelayBuilder {
    pub(super) jetstream: Context,
    pub(super) pool: PgPool,
    pub(super) settings: Settings,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Rows claimed per batch (default 500; 0 is invalid).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.settings.batch_size = n;
        self
    }

    /// Publishes awaiting their PubAck at most (default 256; 0 is invalid).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n;
        self
    }

    /// How long a claim lasts (default 30 s; zero is invalid). After it, another relay may
    /// take the rows over; keep it well above the time one batch takes (NATS ack timeout
    /// included) and well below the stream's duplicate window. A batch that waited more than
    /// half its lease (claimed ahead, or behind slow bookkeeping) is renewed before publishing.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How often to look for rows without a notification (default 1 s; zero is invalid): the
    /// safety net for a lost `LISTEN` connection, rows inserted by writers without the
    /// trigger, and back-offs.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Failed attempts after which a row is quarantined as `failed` (default 10; 0 is
    /// invalid). Only failures of the message itself count, never outages.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// Back-off of a failing row: `base × 2^(attempts-1)` capped at `max`, with jitter
    /// (default 1 s, 5 min; `base` must be above zero and at most `max`).
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.retry = Backoff::new(base, max);
        self
    }

    /// Back-off of the whole relay while the database or NATS is unavailable (default 100 ms,
    /// 10 s, with jitter; `base` must be above zero and at most `max`).
    pub fn outage_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.outage = Backoff::new(base, max);
        self
    }

    /// Also send the lowercase `nats-msg-id` header Ruby peers read (default true).
    pub fn ruby_msg_id_header(mut self, on: bool) -> Self {
        self.settings.ruby_msg_id_header = on;
        self
    }

    /// Per-key ordering (default off): events with the same ordering key are published in
    /// `id` order, even with several relays; a failing event blocks only its own key until it
    /// is sent or quarantined. Costs throughput: one event per key per batch. `id` order is
    /// commit order per key only if the writers use [`Outbox::ordered`](crate::Outbox::ordered).
    pub fn ordered(mut self, on: bool) -> Self {
        self.settings.ordered = on;
        self
    }

    /// Wake on `NOTIFY` from a dedicated connection taken out of the pool (default true);
    /// when off, the relay only polls.
    pub fn listen(mut self, on: bool) -> Self {
        self.settings.listen = on;
        self
    }

    /// The id written (with a claim number) to `claimed_by` (default `<app_name>-<UUIDv7>`;
    /// must be non-empty and unique among the relays of a table).
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.settings.relay_id = id.into();
        self
    }

    /// Builds the relay, refusing out-of-range settings.
    ///
    /// # Errors
    ///
    /// [`InvalidSettings`](OutboxErrorKind::InvalidSettings), listing every problem: a zero
    /// `batch_size`, `max_in_flight`, `lease`, `max_attempts` or `poll_interval`, a back-off
    /// whose base is zero or above its maximum, a lease, poll interval or back-off maximum
    /// above one day, an empty relay id.
    pub fn build(self) -> Result<Relay> {
        let problems = self.settings.problems();
        if !problems.is_empty() {
            return Err(OutboxError::with_source(
                OutboxErrorKind::InvalidSettings,
                problems.join("; "),
            ));
        }
        let claim_conn = OwnConn::claims(self.settings.ordered);
        Ok(Relay {
            inner: Arc::new(Inner {
                jetstream: self.jetstream,
                pool: self.pool,
                settings: self.settings,
                claims: AtomicU64::new(0),
                nonce: rand::random::<u32>(),
                muted: std::sync::Mutex::default(),
                claim_conn,
                record_conn: OwnConn::bookkeeping(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let config = Config::builder("test", "orders", "billing")
            .build()
            .unwrap();
        Settings::new(&config)
    }

    #[test]
    fn settings_have_upper_bounds() {
        assert!(settings().problems().is_empty());
        let at_most = Settings {
            lease: MAX_SETTING,
            poll_interval: MAX_SETTING,
            retry: Backoff::new(MAX_SETTING, MAX_SETTING),
            outage: Backoff::new(Duration::from_secs(1), MAX_SETTING),
            ..settings()
        };
        assert!(at_most.problems().is_empty(), "{:?}", at_most.problems());
        let huge = Duration::from_secs(u64::MAX);
        let too_big = Settings {
            lease: huge,
            poll_interval: huge,
            retry: Backoff::new(Duration::from_secs(1), huge),
            outage: Backoff::new(huge, huge),
            ..settings()
        };
        let problems = too_big.problems().join("; ");
        for what in [
            "lease must be at most 1 day",
            "poll_interval must be at most 1 day",
            "retry_backoff max must be at most 1 day",
            "outage_backoff max must be at most 1 day",
        ] {
            assert!(problems.contains(what), "{what} missing from {problems}");
        }
    }
}
