//! The probe rate limit: at most one uncached probe per interval, concurrent callers sharing
//! the one in flight (the whole probe is cached, and throttling is never an error).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The last probe's value and when it started, behind an async lock held while probing.
#[derive(Debug)]
pub(crate) struct ProbeCache<T> {
    min_interval: Duration,
    /// Completed probes; read before waiting for the lock to tell whether another caller
    /// probed meanwhile.
    generation: AtomicU64,
    state: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> ProbeCache<T> {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            generation: AtomicU64::new(0),
            state: Mutex::new(None),
        }
    }

    /// The cached value (`true`) when the last probe started less than the interval ago or
    /// completed while this caller waited for the one in flight; else runs `probe` (`false`).
    ///
    /// Cancel safety: cancelling a caller that is probing drops its probe; the next caller
    /// probes instead.
    pub(crate) async fn get<F, Fut>(&self, probe: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let seen = self.generation.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some((started, value)) = state.as_ref() {
            let shared = self.generation.load(Ordering::Acquire) != seen;
            if shared || started.elapsed() < self.min_interval {
                return (value.clone(), true);
            }
        }
        let started = Instant::now();
        let value = probe().await;
        *state = Some((started, value.clone()));
        self.generation.fetch_add(1, Ordering::AcqRel);
        (value, false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    use super::*;

    const FIVE_S: Duration = Duration::from_secs(5);

    /// A probe that counts its runs and takes `took` (paused time).
    async fn probe(runs: &AtomicU32, took: Duration) -> u32 {
        tokio::time::sleep(took).await;
        runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Within the interval calls get the cached value; at 5 s a new probe runs; the window is
    /// anchored at the accepted probe, not at the cached calls.
    #[tokio::test(start_paused = true)]
    async fn one_uncached_probe_per_interval() {
        let cache = ProbeCache::new(FIVE_S);
        let runs = AtomicU32::new(0);
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (1, false));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(400)).await;
            assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (1, true));
        }
        tokio::time::advance(Duration::from_millis(999)).await; // 4.999 s
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (1, true));
        tokio::time::advance(Duration::from_millis(1)).await; // 5 s
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (2, false));
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (2, true));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Concurrent callers share the probe in flight: one runs, the others get its value marked
    /// cached, even when the probe is slower than the interval.
    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_probe() {
        let cache = Arc::new(ProbeCache::new(FIVE_S));
        let runs = Arc::new(AtomicU32::new(0));
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                let runs = runs.clone();
                tokio::spawn(
                    async move { cache.get(|| probe(&runs, Duration::from_secs(7))).await },
                )
            })
            .collect();
        let mut uncached = 0;
        for c in callers {
            let (value, cached) = c.await.unwrap();
            assert_eq!(value, 1);
            uncached += u32::from(!cached);
        }
        assert_eq!(uncached, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// With a zero interval every sequential call probes (the setting fault tests use).
    #[tokio::test(start_paused = true)]
    async fn zero_interval_always_probes() {
        let cache = ProbeCache::new(Duration::ZERO);
        let runs = AtomicU32::new(0);
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (1, false));
        assert_eq!(cache.get(|| probe(&runs, Duration::ZERO)).await, (2, false));
    }
}
