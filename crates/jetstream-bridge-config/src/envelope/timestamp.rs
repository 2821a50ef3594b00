//! [`Timestamp`]: the envelope's `occurred_at` and the DLQ context's `published_at`.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::EnvelopeError;

/// A UTC instant at whole-second precision, written as the gem writes it (Ruby
/// `Time#utc.iso8601`): `2025-11-23T10:00:00Z`.
///
/// Holding a `Timestamp` means the value is in UTC, has no sub-second part and its year is in
/// `0000..=9999`, so formatting it can never fail and reading back what was written gives the
/// same value.
///
/// [`parse`](Self::parse) accepts what Ruby peers actually send and normalizes it:
///
/// | input | example | result |
/// |---|---|---|
/// | RFC 3339, any offset, any fraction | `2025-11-23T11:00:00.750+01:00` | `2025-11-23T10:00:00Z` |
/// | ActiveSupport `Time#to_json` | `2025-11-23T10:00:00.000Z` | `2025-11-23T10:00:00Z` |
/// | Ruby `Time#to_s` (UTC) | `2025-11-23 10:00:00 UTC` | `2025-11-23T10:00:00Z` |
/// | Ruby `Time#to_s` (offset) | `2025-11-23 11:00:00 +0100` | `2025-11-23T10:00:00Z` |
///
/// Fractions are truncated (not rounded) because the wire format has whole seconds. Anything else
/// (a date alone, a local time without offset, Unix seconds) is rejected: the time zone would be
/// a guess.
///
/// # Examples
///
/// ```
/// use jetstream_bridge_config::Timestamp;
///
/// let ts = Timestamp::parse("2025-11-23 11:00:00 +0100")?;
/// assert_eq!(ts.to_string(), "2025-11-23T10:00:00Z");
/// assert_eq!(ts.unix_timestamp(), 1_763_892_000);
/// # Ok::<(), jetstream_bridge_config::EnvelopeError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The current time, truncated to the second.
    #[must_use]
    pub fn now() -> Self {
        // The system clock is well inside years 0000..=9999.
        Self(OffsetDateTime::now_utc().truncate_to_second())
    }

    /// Parses a timestamp in one of the forms listed on the [type](Self), normalizing it to UTC
    /// at whole seconds.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidField`] with field `"timestamp"` (re-labelled `"occurred_at"` or
    /// `"published_at"` when it comes from those fields) if the text is in none of the accepted
    /// forms or its year falls outside `0000..=9999` in UTC.
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        let ruby_utc = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
        let ruby_offset = format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
        );
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .or_else(|_| {
                PrimitiveDateTime::parse(text, ruby_utc).map(PrimitiveDateTime::assume_utc)
            })
            .or_else(|_| OffsetDateTime::parse(text, ruby_offset))
            .map_err(|_| {
                EnvelopeError::invalid(
                    "timestamp",
                    format!(
                        "{:?} is not an ISO-8601 time with offset (e.g. 2025-11-23T10:00:00Z)",
                        Shortened(text)
                    ),
                )
            })?;
        Self::from_offset_date_time(parsed).map_err(|e| e.in_field("timestamp"))
    }

    /// Converts to UTC and truncates to the second.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidField`] with field `"timestamp"` if the year in UTC is outside
    /// `0000..=9999` (not representable in the wire format).
    pub fn from_offset_date_time(value: OffsetDateTime) -> Result<Self, EnvelopeError> {
        let utc = value
            .checked_to_offset(UtcOffset::UTC)
            .filter(|t| (0..=9999).contains(&t.year()))
            .ok_or_else(|| {
                EnvelopeError::invalid("timestamp", "year must be 0000..=9999 in UTC")
            })?;
        Ok(Self(utc.truncate_to_second()))
    }

    /// The instant `seconds` after (or before, when negative) 1970-01-01T00:00:00Z.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::InvalidField`] with field `"timestamp"` if the year would be outside
    /// `0000..=9999`.
    pub fn from_unix_timestamp(seconds: i64) -> Result<Self, EnvelopeError> {
        let value = OffsetDateTime::from_unix_timestamp(seconds)
            .map_err(|_| EnvelopeError::invalid("timestamp", "year must be 0000..=9999 in UTC"))?;
        Self::from_offset_date_time(value)
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    #[must_use]
    pub fn unix_timestamp(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// The value as a `time` date-time with offset UTC.
    #[must_use]
    pub fn as_offset_date_time(self) -> OffsetDateTime {
        self.0
    }
}

impl fmt::Display for Timestamp {
    /// Writes the wire form `YYYY-MM-DDTHH:MM:SSZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Timestamp {
    type Error = EnvelopeError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl TryFrom<String> for Timestamp {
    type Error = EnvelopeError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl TryFrom<&String> for Timestamp {
    type Error = EnvelopeError;

    fn try_from(value: &String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl TryFrom<OffsetDateTime> for Timestamp {
    type Error = EnvelopeError;

    fn try_from(value: OffsetDateTime) -> Result<Self, Self::Error> {
        Self::from_offset_date_time(value)
    }
}

impl TryFrom<SystemTime> for Timestamp {
    type Error = EnvelopeError;

    /// Truncates towards the past (so `1969-12-31T23:59:59.5Z` becomes `…:59Z`).
    fn try_from(value: SystemTime) -> Result<Self, Self::Error> {
        let out_of_range =
            || EnvelopeError::invalid("timestamp", "year must be 0000..=9999 in UTC");
        let seconds = match value.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).map_err(|_| out_of_range())?,
            Err(before) => {
                let before = before.duration();
                let whole = i64::try_from(before.as_secs()).map_err(|_| out_of_range())?;
                -whole - i64::from(before.subsec_nanos() > 0)
            }
        };
        Self::from_unix_timestamp(seconds)
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(value: Timestamp) -> Self {
        value.0
    }
}

impl From<Timestamp> for SystemTime {
    fn from(value: Timestamp) -> Self {
        value.0.into()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Debug-formats at most 40 characters of an input, so error messages stay short.
struct Shortened<'a>(&'a str);

impl fmt::Debug for Shortened<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 40;
        match self.0.char_indices().nth(MAX) {
            None => fmt::Debug::fmt(self.0, f),
            Some((cut, _)) => write!(f, "{:?}…", &self.0[..cut]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_whole_seconds_with_z() {
        let ts = Timestamp::from_offset_date_time(datetime!(2025-11-23 10:00:00 UTC)).unwrap();
        assert_eq!(ts.to_string(), "2025-11-23T10:00:00Z");
        assert_eq!(format!("{ts:?}"), "Timestamp(2025-11-23T10:00:00Z)");
        let early = Timestamp::from_offset_date_time(datetime!(0001-02-03 04:05:06 UTC)).unwrap();
        assert_eq!(early.to_string(), "0001-02-03T04:05:06Z");
    }

    #[test]
    fn parses_and_normalizes_the_forms_ruby_sends() {
        for (input, expected) in [
            ("2025-11-23T10:00:00Z", "2025-11-23T10:00:00Z"),
            ("2025-11-23T10:00:00.000Z", "2025-11-23T10:00:00Z"),
            ("2025-11-23T10:00:00.999999Z", "2025-11-23T10:00:00Z"),
            ("2025-11-23T11:00:00+01:00", "2025-11-23T10:00:00Z"),
            ("2025-11-23T05:30:00-04:30", "2025-11-23T10:00:00Z"),
            ("2025-11-23T10:00:00+00:00", "2025-11-23T10:00:00Z"),
            ("2025-11-23 10:00:00 UTC", "2025-11-23T10:00:00Z"),
            ("2025-11-23 11:00:00 +0100", "2025-11-23T10:00:00Z"),
            ("2025-11-23 05:00:00 -0500", "2025-11-23T10:00:00Z"),
        ] {
            let ts = Timestamp::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(ts.to_string(), expected, "{input}");
        }
    }

    #[test]
    fn rejects_ambiguous_or_garbage_text() {
        for input in [
            "",
            "2025-11-23",
            "2025-11-23T10:00:00",
            "2025-11-23 10:00:00",
            "1763892000",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-11-23T10:00Z",
        ] {
            let err = Timestamp::parse(input).unwrap_err();
            assert_eq!(err.field(), Some("timestamp"), "{input}");
        }
    }

    #[test]
    fn error_message_shortens_long_input() {
        let long = "x".repeat(10_000);
        let msg = Timestamp::parse(&long).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn year_outside_wire_range_is_rejected() {
        // 0000-01-01T00:30:00+01:00 is year -1 in UTC.
        assert!(Timestamp::parse("0000-01-01T00:30:00+01:00").is_err());
        assert!(Timestamp::parse("0000-01-01T00:00:00Z").is_ok());
        assert!(Timestamp::parse("9999-12-31T23:59:59Z").is_ok());
        assert!(Timestamp::from_unix_timestamp(i64::MAX).is_err());
    }

    #[test]
    fn system_time_truncates_towards_the_past() {
        use std::time::Duration;
        let before = UNIX_EPOCH - Duration::from_millis(500);
        let ts = Timestamp::try_from(before).unwrap();
        assert_eq!(ts.to_string(), "1969-12-31T23:59:59Z");
        let after = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(Timestamp::try_from(after).unwrap().unix_timestamp(), 1);
    }

    #[test]
    fn now_has_no_fraction() {
        let now = Timestamp::now();
        assert_eq!(now.as_offset_date_time().nanosecond(), 0);
        assert_eq!(now.as_offset_date_time().offset(), UtcOffset::UTC);
    }

    #[test]
    fn serde_uses_the_wire_string() {
        let ts = Timestamp::parse("2025-11-23T10:00:00Z").unwrap();
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            r#""2025-11-23T10:00:00Z""#
        );
        let back: Timestamp = serde_json::from_str(r#""2025-11-23 10:00:00 UTC""#).unwrap();
        assert_eq!(back, ts);
        assert!(serde_json::from_str::<Timestamp>("17").is_err());
    }
}
