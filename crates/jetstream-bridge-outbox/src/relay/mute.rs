//! The mute list: subjects that answered "no responders", left out of claims until their
//! back-off ends.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use crate::backoff::Backoff;

/// At most this many subjects are muted at once (see [`add_mute`]).
const MAX_MUTED_SUBJECTS: usize = 1024;

/// The back-off of a subject without responders.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mute {
    until: Instant,
    /// Consecutive "no responders" rounds: the back-off grows with it.
    streak: u32,
}

/// Subjects muted by a relay, by subject.
pub(super) type MuteList = std::sync::Mutex<HashMap<String, Mute>>;

impl Inner {
    fn muted_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mute>> {
        self.muted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subjects whose "no responders" back-off has not ended yet (see [`active_mutes`]).
    pub(super) fn muted_subjects(&self) -> Vec<String> {
        active_mutes(
            &mut self.muted_map(),
            Instant::now(),
            self.settings.outage.max,
        )
    }

    /// Leaves `subject` out of claims for an outage back-off (see [`add_mute`]).
    pub(super) fn mute(&self, subject: &str) {
        add_mute(
            &mut self.muted_map(),
            subject,
            Instant::now(),
            &self.settings.outage,
        );
    }

    /// A publish to `subject` went through: forget its back-off.
    pub(super) fn unmute(&self, subject: &str) {
        let mut muted = self.muted_map();
        if !muted.is_empty() {
            muted.remove(subject);
        }
    }
}

/// The subjects of `muted` whose back-off has not ended at `now`. Entries whose back-off ended
/// more than `forget_after` (the outage back-off maximum) ago are forgotten (their subject was
/// published elsewhere, or its rows are gone), so the map only holds subjects with a recent
/// "no responders".
fn active_mutes(
    muted: &mut HashMap<String, Mute>,
    now: Instant,
    forget_after: Duration,
) -> Vec<String> {
    muted.retain(|_, m| now.saturating_duration_since(m.until) <= forget_after);
    muted
        .iter()
        .filter(|(_, m)| m.until > now)
        .map(|(subject, _)| subject.clone())
        .collect()
}

/// Mutes `subject` for an outage back-off growing with each round of "no responders"
/// (jittered); rows already claimed in the round are not counted again. At most
/// [`MAX_MUTED_SUBJECTS`] entries: beyond it, expired entries are forgotten first, then the
/// subject whose back-off ends first.
fn add_mute(muted: &mut HashMap<String, Mute>, subject: &str, now: Instant, backoff: &Backoff) {
    if muted.len() >= MAX_MUTED_SUBJECTS && !muted.contains_key(subject) {
        muted.retain(|_, m| m.until > now);
        if muted.len() >= MAX_MUTED_SUBJECTS {
            if let Some(first) = muted
                .iter()
                .min_by_key(|(_, m)| m.until)
                .map(|(s, _)| s.clone())
            {
                muted.remove(&first);
            }
        }
    }
    let entry = muted.entry(subject.to_owned()).or_insert(Mute {
        until: now,
        streak: 0,
    });
    if entry.until <= now {
        entry.streak = entry.streak.saturating_add(1);
        entry.until = now.checked_add(backoff.delay(entry.streak)).unwrap_or(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutes_expire_are_forgotten_and_stay_bounded() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let mut muted = HashMap::new();
        let t0 = Instant::now();
        add_mute(&mut muted, "a", t0, &backoff);
        assert_eq!(
            active_mutes(&mut muted, t0, backoff.max),
            vec!["a".to_owned()]
        );
        // Muted again within its back-off: unchanged (the round is not counted twice).
        let until = muted["a"].until;
        add_mute(&mut muted, "a", t0, &backoff);
        assert_eq!((muted["a"].until, muted["a"].streak), (until, 1));
        // Back-off over: no longer muted, but remembered (the streak grows on the next round).
        let later = t0 + Duration::from_secs(2);
        assert!(active_mutes(&mut muted, later, backoff.max).is_empty());
        assert_eq!(muted.len(), 1);
        add_mute(&mut muted, "a", later, &backoff);
        assert_eq!(muted["a"].streak, 2);
        // Idle for longer than the back-off maximum: forgotten.
        let much_later = later + Duration::from_secs(30);
        assert!(active_mutes(&mut muted, much_later, backoff.max).is_empty());
        assert!(muted.is_empty());

        // Bounded: never more than MAX_MUTED_SUBJECTS entries; the newest subject is muted.
        for i in 0..MAX_MUTED_SUBJECTS + 10 {
            add_mute(&mut muted, &format!("s{i}"), t0, &backoff);
            assert!(muted.len() <= MAX_MUTED_SUBJECTS);
        }
        assert_eq!(muted.len(), MAX_MUTED_SUBJECTS);
        let last = format!("s{}", MAX_MUTED_SUBJECTS + 9);
        assert!(active_mutes(&mut muted, t0, backoff.max).contains(&last));
        // Expired entries make room before live ones are dropped.
        let mut muted: HashMap<String, Mute> = (0..MAX_MUTED_SUBJECTS)
            .map(|i| {
                let until = if i == 0 {
                    t0
                } else {
                    t0 + Duration::from_secs(5)
                };
                (format!("s{i}"), Mute { until, streak: 1 })
            })
            .collect();
        add_mute(&mut muted, "new", t0 + Duration::from_secs(1), &backoff);
        assert!(!muted.contains_key("s0"));
        assert_eq!(muted.len(), MAX_MUTED_SUBJECTS);
    }
}
