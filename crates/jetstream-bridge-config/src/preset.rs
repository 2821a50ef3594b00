//! Configuration presets, exactly as the gem's `ConfigPreset`.
//!
//! The table is documented on [`Preset`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::error::UnknownVariantError;

/// A named bundle of settings. Applying one with
/// [`ConfigBuilder::preset`](crate::ConfigBuilder::preset) sets those fields; setters called
/// afterwards override them. Exactly as the gem's `ConfigPreset`:
///
/// | preset | outbox | inbox | dlq | max_deliver | ack_wait | backoff |
/// |---|---|---|---|---|---|---|
/// | `development` | off | off | off | 3 | 10s | 1s 2s 5s |
/// | `test` | off | off | off | 2 | 5s | 100ms 500ms |
/// | `production` | on | on | on | 5 | 30s | 1s 5s 15s 30s 60s |
/// | `staging` | on | on | on | 3 | 15s | 1s 5s 15s |
/// | `high_throughput` | off | off | on | 3 | 10s | 1s 2s 5s |
/// | `maximum_reliability` | on | on | on | 10 | 60s | 1s 5s 15s 30s 60s 120s 300s 600s 1200s 1800s |
///
/// The `test` preset keeps its sub-second delays (the gem rounded them up to 1 s when it sent them
/// to the server; the bridge applies backoff itself as NAK delays, so real durations work).
///
/// ```
/// use jetstream_bridge_config::Preset;
///
/// let p: Preset = "high_throughput".parse()?;
/// assert_eq!(p, Preset::HighThroughput);
/// assert_eq!(p.to_string(), "high_throughput");
/// assert!("turbo".parse::<Preset>().unwrap_err().to_string().contains("maximum_reliability"));
/// # Ok::<(), jetstream_bridge_config::UnknownVariantError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Preset {
    /// Local development: no outbox, inbox or DLQ; few, quick retries.
    Development,
    /// Tests: no outbox, inbox or DLQ; two deliveries, sub-second backoff.
    Test,
    /// Production: outbox, inbox and DLQ; the gem's defaults for retries.
    Production,
    /// Staging: like production with fewer, shorter retries.
    Staging,
    /// Throughput over durability: DLQ only; few, quick retries.
    HighThroughput,
    /// Durability over everything: outbox, inbox, DLQ; ten deliveries, long backoff.
    MaximumReliability,
}

/// The fields a preset sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresetSettings {
    pub(crate) use_outbox: bool,
    pub(crate) use_inbox: bool,
    pub(crate) use_dlq: bool,
    pub(crate) max_deliver: u32,
    pub(crate) ack_wait: Duration,
    pub(crate) backoff: Vec<Duration>,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Preset {
    /// Every preset, in the gem's order.
    pub const ALL: [Self; 6] = [
        Self::Development,
        Self::Test,
        Self::Production,
        Self::Staging,
        Self::HighThroughput,
        Self::MaximumReliability,
    ];

    const NAMES: &'static [&'static str] = &[
        "development",
        "test",
        "production",
        "staging",
        "high_throughput",
        "maximum_reliability",
    ];

    /// The gem's name (`high_throughput`, …).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Test => "test",
            Self::Production => "production",
            Self::Staging => "staging",
            Self::HighThroughput => "high_throughput",
            Self::MaximumReliability => "maximum_reliability",
        }
    }

    pub(crate) fn settings(self) -> PresetSettings {
        let (use_outbox, use_inbox, use_dlq, max_deliver, ack_wait, backoff) = match self {
            Self::Development => (
                false,
                false,
                false,
                3,
                secs(10),
                vec![secs(1), secs(2), secs(5)],
            ),
            Self::Test => (
                false,
                false,
                false,
                2,
                secs(5),
                vec![Duration::from_millis(100), Duration::from_millis(500)],
            ),
            Self::Production => (
                true,
                true,
                true,
                5,
                secs(30),
                vec![secs(1), secs(5), secs(15), secs(30), secs(60)],
            ),
            Self::Staging => (
                true,
                true,
                true,
                3,
                secs(15),
                vec![secs(1), secs(5), secs(15)],
            ),
            Self::HighThroughput => (
                false,
                false,
                true,
                3,
                secs(10),
                vec![secs(1), secs(2), secs(5)],
            ),
            Self::MaximumReliability => (
                true,
                true,
                true,
                10,
                secs(60),
                [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800]
                    .into_iter()
                    .map(secs)
                    .collect(),
            ),
        };
        PresetSettings {
            use_outbox,
            use_inbox,
            use_dlq,
            max_deliver,
            ack_wait,
            backoff,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preset {
    type Err = UnknownVariantError;

    /// The gem's names, case-insensitive, `-` accepted for `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == wanted)
            .ok_or_else(|| UnknownVariantError::new("preset", s, Self::NAMES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn table_matches_the_gem() {
        let expected = [
            (
                Preset::Development,
                false,
                false,
                false,
                3,
                10,
                ms(&[1000, 2000, 5000]),
            ),
            (Preset::Test, false, false, false, 2, 5, ms(&[100, 500])),
            (
                Preset::Production,
                true,
                true,
                true,
                5,
                30,
                ms(&[1000, 5000, 15000, 30000, 60000]),
            ),
            (
                Preset::Staging,
                true,
                true,
                true,
                3,
                15,
                ms(&[1000, 5000, 15000]),
            ),
            (
                Preset::HighThroughput,
                false,
                false,
                true,
                3,
                10,
                ms(&[1000, 2000, 5000]),
            ),
            (
                Preset::MaximumReliability,
                true,
                true,
                true,
                10,
                60,
                ms(&[
                    1000, 5000, 15000, 30000, 60000, 120_000, 300_000, 600_000, 1_200_000,
                    1_800_000,
                ]),
            ),
        ];
        for (preset, outbox, inbox, dlq, max_deliver, ack_wait, backoff) in expected {
            assert_eq!(
                preset.settings(),
                PresetSettings {
                    use_outbox: outbox,
                    use_inbox: inbox,
                    use_dlq: dlq,
                    max_deliver,
                    ack_wait: Duration::from_secs(ack_wait),
                    backoff,
                },
                "{preset}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.as_str().parse::<Preset>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
        assert_eq!("HIGH-THROUGHPUT".parse(), Ok(Preset::HighThroughput));
    }

    #[test]
    fn unknown_name_lists_the_available_ones() {
        let e = "fast".parse::<Preset>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown preset \"fast\" (available: development, test, production, staging, \
             high_throughput, maximum_reliability)"
        );
    }
}
