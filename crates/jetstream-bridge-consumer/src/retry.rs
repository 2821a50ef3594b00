//! Delays: the NAK delay of a failed delivery, and the doubling backoff of the fetch loop's
//! recovery.

use std::time::Duration;

/// The NAK delay after failed delivery `deliveries` (1-based): `backoff[n-1]`, the last entry
/// repeating; one second when the list is empty.
pub(crate) fn backoff_for(backoff: &[Duration], deliveries: u32) -> Duration {
    let index = usize::try_from(deliveries.saturating_sub(1)).unwrap_or(usize::MAX);
    backoff
        .get(index)
        .or(backoff.last())
        .copied()
        .unwrap_or(Duration::from_secs(1))
}

/// A delay doubling from `min` (first failure) up to `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doubling {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Doubling {
    /// The delay after `failures` consecutive failures (1-based).
    pub(crate) fn delay(self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        self.min.saturating_mul(1u32 << exp).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_uses_the_entry_for_the_delivery_and_repeats_the_last() {
        let b = [Duration::from_millis(200), Duration::from_millis(400)];
        assert_eq!(backoff_for(&b, 1), b[0]);
        assert_eq!(backoff_for(&b, 2), b[1]);
        assert_eq!(backoff_for(&b, 9), b[1]);
        assert_eq!(backoff_for(&b, 0), b[0]);
        assert_eq!(backoff_for(&[], 3), Duration::from_secs(1));
    }

    #[test]
    fn doubling_starts_at_min_and_stops_at_max() {
        let d = Doubling {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| d.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(d.delay(0), d.min);
        assert_eq!(d.delay(u32::MAX), d.max);
    }
}
