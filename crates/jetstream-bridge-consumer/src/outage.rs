//! [`Outage`]: the database as the message jobs see it. An unreachable database is an outage,
//! not a failure of the messages that ran into it: they are held (with in-progress acks) until
//! the database answers again, fetching pauses, and no delivery, inbox attempt or dead letter
//! is spent on it.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jetstream_bridge_inbox::InboxError;
use jetstream_bridge_pg::{classify, DbErrorClass, PgError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::retry::Doubling;
use crate::stats::Stats;

/// Whether `error` (or one of its sources) says the database is unavailable rather than that
/// the statement is wrong: a lost, refused or closed connection, a pool that hands out none,
/// an administrator shutdown or a starting server, too many connections, a read-only standby
/// (the shared classification of `jetstream_bridge_pg`).
pub(crate) fn is_unavailable(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<diesel::result::Error>() {
            return classify(e) == DbErrorClass::Unavailable;
        }
        if let Some(e) = e.downcast_ref::<PgError>() {
            return e.is_transient();
        }
        if let Some(e) = e.downcast_ref::<InboxError>() {
            return e.is_transient();
        }
        if let Some(e) = e.downcast_ref::<jetstream_bridge_pg::PoolError>() {
            return is_pool_outage(e);
        }
        next = e.source();
    }
    false
}

/// A pool that hands out no connection is an outage, unless it was closed or built without a
/// runtime (the application's mistake, which waiting does not fix).
pub(crate) fn is_pool_outage(error: &jetstream_bridge_pg::PoolError) -> bool {
    use diesel_async::pooled_connection::deadpool::PoolError;
    !matches!(error, PoolError::Closed | PoolError::NoRuntimeSpecified)
}

/// How a wait for the database ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The database answered (or there is no outage): try again.
    Available,
    /// Shutdown began first: give the held messages back.
    Shutdown,
}

/// The shared view of the database: up, or down since when. One task at a time probes it with
/// a doubling backoff while the others wait.
pub(crate) struct Outage {
    /// Down: no new attempts and no new pull requests. Read on every message (relaxed).
    down: AtomicBool,
    /// An episode is open: from the first outage error to the first attempt the database
    /// answered. Read after every attempt (relaxed).
    open: AtomicBool,
    /// Woken when the database is up again.
    up: watch::Sender<bool>,
    /// A task is probing.
    probing: AtomicBool,
    /// Failed probes in this episode: the next probe waits `backoff.delay(failures + 1)`.
    failures: AtomicU32,
    episode: Mutex<Episode>,
    backoff: Doubling,
    stats: Stats,
}

#[derive(Default)]
struct Episode {
    since: Option<Instant>,
    /// Outage time of the closed episodes.
    past: Duration,
}

impl Outage {
    pub(crate) fn new(backoff: Doubling, stats: Stats) -> Self {
        Self {
            down: AtomicBool::new(false),
            open: AtomicBool::new(false),
            up: watch::channel(true).0,
            probing: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            episode: Mutex::new(Episode::default()),
            backoff,
            stats,
        }
    }

    /// The database is known to be unavailable: hold off.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// An attempt ran into an unavailable database: mark it down (logged once per episode).
    pub(crate) fn enter(&self, error: &dyn std::fmt::Display) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.up.send_replace(false);
        let mut episode = self.lock();
        if episode.since.is_none() {
            episode.since = Some(Instant::now());
            self.open.store(true, Ordering::Release);
            warn!(error = %error, "database unavailable: consumption paused, held messages kept \
                in progress until it answers (no deliveries spent)");
            self.stats.update(|s| {
                s.db_outage = true;
                s.db_outages += 1;
            });
        } else {
            debug!(error = %error, "database still unavailable");
        }
    }

    /// An attempt got an answer from the database (success or a failure of its own): the
    /// episode, if one is open and the database is up again, ends here.
    pub(crate) fn answered(&self) {
        // An attempt that began before the outage may finish after it began: only an answer
        // while the database is up again closes it.
        if !self.open.load(Ordering::Relaxed) || self.is_down() {
            return;
        }
        let mut episode = self.lock();
        let Some(since) = episode.since.take() else {
            return;
        };
        self.open.store(false, Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        let lasted = since.elapsed();
        episode.past += lasted;
        let total = episode.past;
        drop(episode);
        info!(
            outage_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
            "database available again: consumption resumed"
        );
        self.stats.update(|s| {
            s.db_outage = false;
            s.db_outage_time = total;
        });
    }

    /// Waits until the database is up (without probing it): for the fetch loop.
    pub(crate) async fn until_up(&self) {
        let mut up = self.up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    /// Waits while the database is down: one waiter probes it (`probe`, after a doubling
    /// backoff) until it answers, the others wait for that. Cancel safe.
    pub(crate) async fn wait<F, Fut>(&self, probe: F, shutdown: &CancellationToken) -> Waited
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        loop {
            if shutdown.is_cancelled() {
                return Waited::Shutdown;
            }
            if !self.is_down() {
                return Waited::Available;
            }
            let Some(_prober) = self.claim_probe() else {
                tokio::select! {
                    () = shutdown.cancelled() => return Waited::Shutdown,
                    () = self.until_up() => {}
                    // The prober may give up (shutdown) or be cancelled: look again.
                    () = tokio::time::sleep(self.backoff.max) => {}
                }
                continue;
            };
            loop {
                let failures = self.failures.load(Ordering::Relaxed);
                tokio::select! {
                    () = shutdown.cancelled() => return Waited::Shutdown,
                    () = tokio::time::sleep(self.backoff.delay(failures + 1)) => {}
                }
                match probe().await {
                    Ok(()) => {
                        self.down.store(false, Ordering::Release);
                        self.up.send_replace(true);
                        return Waited::Available;
                    }
                    Err(e) => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "database probe failed");
                        let so_far = {
                            let episode = self.lock();
                            episode.since.map(|since| episode.past + since.elapsed())
                        };
                        if let Some(so_far) = so_far {
                            // The outage time so far (also progress for the liveness check).
                            self.stats.update(|s| s.db_outage_time = so_far);
                        }
                    }
                }
            }
        }
    }

    /// Becomes the prober, unless another task is.
    fn claim_probe(&self) -> Option<ProbeGuard<'_>> {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| ProbeGuard(&self.probing))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Episode> {
        self.episode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Releases the probe on drop (also when the prober's task is cancelled).
struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Outage {
        Outage::new(
            Doubling {
                min: Duration::from_millis(5),
                max: Duration::from_millis(20),
            },
            Stats::new(),
        )
    }

    #[test]
    fn unavailable_errors_are_found_in_the_source_chain() {
        use diesel::result::{DatabaseErrorKind, Error};
        let closed = Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection".to_owned()),
        );
        assert!(is_unavailable(&closed));
        assert!(crate::HandlerError::retry(closed).is_unavailable());
        let unique = Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate key".to_owned()),
        );
        assert!(!is_unavailable(&unique));
        assert!(!is_unavailable(&Error::NotFound));
        let refused = jetstream_bridge_pg::PoolError::Backend(
            diesel_async::pooled_connection::PoolError::ConnectionError(
                diesel::ConnectionError::BadConnection("connection refused".to_owned()),
            ),
        );
        assert!(is_unavailable(&refused));
        assert!(!is_unavailable(&jetstream_bridge_pg::PoolError::Closed));
    }

    /// One waiter probes until the probe answers; every waiter resumes; the episode is
    /// counted once and closed by the first answered attempt.
    #[tokio::test]
    async fn waiters_resume_when_the_probe_answers() {
        let o = outage();
        let token = CancellationToken::new();
        assert_eq!(o.wait(|| async { Ok(()) }, &token).await, Waited::Available);
        o.enter(&"connection refused");
        o.enter(&"connection refused");
        assert!(o.is_down());
        let probes = AtomicU32::new(0);
        let probe = || {
            let n = probes.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 2 {
                    Err("refused".to_owned())
                } else {
                    Ok(())
                }
            }
        };
        let (a, b) = tokio::join!(o.wait(probe, &token), o.wait(probe, &token));
        assert_eq!((a, b), (Waited::Available, Waited::Available));
        assert_eq!(probes.load(Ordering::Relaxed), 3, "one prober");
        assert!(!o.is_down());
        let stats = o.stats.get();
        assert!(stats.db_outage && stats.db_outages == 1);
        o.answered();
        let stats = o.stats.get();
        assert!(!stats.db_outage && stats.db_outage_time > Duration::ZERO);
        assert_eq!(o.failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let o = outage();
        o.enter(&"refused");
        let token = CancellationToken::new();
        token.cancel();
        let never = || async { Err::<(), _>("refused".to_owned()) };
        assert_eq!(o.wait(never, &token).await, Waited::Shutdown);
    }
}
