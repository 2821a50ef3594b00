//! Duration parsing and formatting (`250ms`, `30s`, `1m`, `1h`, `1d`, `0.5s`, `1h 30m`).
//!
//! The grammar is documented on [`parse_duration`].

use std::time::Duration;

use serde::Serializer;

use crate::error::DurationError;

/// The largest duration NATS can represent (`i64::MAX` nanoseconds).
const NATS_MAX: Duration = Duration::new(9_223_372_036, 854_775_807);

/// Parses a duration such as `250ms`, `30s`, `0.5s`, `1m`, `1h 30m` or `1d`.
///
/// Parsing is [`humantime`]'s grammar with three changes for the gem's users:
/// - a unit is **required**: `30` (and even `0`) is rejected. The gem's "auto" rule (below 1000
///   means seconds, from 1000 on milliseconds) makes `1000` shorter than `999`;
/// - units are case-insensitive (`30S`, `1M` = one minute, as in the gem; humantime's `M` for
///   months is therefore not available, write `month`);
/// - `_` between digits is ignored (`1_000ms`), and surrounding whitespace is trimmed.
///
/// Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, `d` (plus humantime's long forms such as `sec`,
/// `min`, `hours`, `days`, `weeks`). Decimals are fine (`0.5s`, `1.5h`), several parts add up
/// (`1h 30m`), negatives are rejected, and so is anything above `i64::MAX` nanoseconds (about 292
/// years, the largest duration NATS can store) or finer than a nanosecond.
///
/// ```
/// use std::time::Duration;
/// use jetstream_bridge_config::{parse_duration, DurationError};
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("30"), Err(DurationError::MissingUnit));
/// ```
///
/// # Errors
///
/// [`DurationError`] for empty input, a negative value, a number without a unit, an unknown
/// unit, a stray character, or a value out of range. Never panics.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if trimmed
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
    {
        return Err(DurationError::MissingUnit);
    }
    let normalised = normalise(trimmed);
    let parsed = humantime::parse_duration(&normalised).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            DurationError::MissingUnit
        }
        humantime::DurationError::UnknownUnit { unit, .. } => DurationError::UnknownUnit { unit },
        humantime::DurationError::InvalidCharacter(offset) => {
            if normalised
                .get(offset..)
                .is_some_and(|rest| rest.starts_with('-'))
            {
                DurationError::Negative
            } else {
                DurationError::InvalidCharacter { offset }
            }
        }
        humantime::DurationError::NumberExpected(offset) => {
            if normalised
                .get(offset..)
                .is_some_and(|rest| rest.starts_with('-'))
            {
                DurationError::Negative
            } else {
                DurationError::NumberExpected { offset }
            }
        }
        humantime::DurationError::NumberOverflow => DurationError::OutOfRange,
        humantime::DurationError::Empty => DurationError::Empty,
    })?;
    check_nats_range(parsed)?;
    Ok(parsed)
}

/// Removes `_` between two ASCII digits and lower-cases ASCII letters (offsets stay byte-exact
/// except for removed underscores).
fn normalise(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == '_'
            && i > 0
            && bytes[i - 1].is_ascii_digit()
            && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
        {
            continue;
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Fails with [`DurationError::OutOfRange`] above `i64::MAX` nanoseconds.
pub(crate) fn check_nats_range(d: Duration) -> Result<(), DurationError> {
    if d > NATS_MAX {
        Err(DurationError::OutOfRange)
    } else {
        Ok(())
    }
}

/// Formats a duration in the form [`parse_duration`] reads back (humantime's format, e.g.
/// `30s`, `1m 30s`, `100ms`, `1day 2h`).
///
/// ```
/// use std::time::Duration;
/// use jetstream_bridge_config::{format_duration, parse_duration};
///
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
/// let d = Duration::new(93_784, 5);
/// assert_eq!(parse_duration(&format_duration(d)), Ok(d));
/// ```
#[must_use]
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde helper: a duration as its formatted string.
pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serde helper: a list of durations as formatted strings.
pub(crate) fn serialize_list<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|d| format_duration(*d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap()
    }

    #[test]
    fn spec_units() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("7us"), Duration::from_micros(7));
        assert_eq!(ok("7µs"), Duration::from_micros(7));
    }

    #[test]
    fn decimals_work() {
        assert_eq!(ok("0.5s"), Duration::from_millis(500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2.5ms"), Duration::from_micros(2500));
    }

    #[test]
    fn case_insensitive_units_like_the_gem() {
        assert_eq!(ok("30S"), Duration::from_secs(30));
        assert_eq!(ok("1M"), Duration::from_secs(60));
        assert_eq!(ok("500MS"), Duration::from_millis(500));
        assert_eq!(ok("2H"), Duration::from_secs(7200));
    }

    #[test]
    fn separators_whitespace_and_compound_forms() {
        assert_eq!(ok("1_000ms"), Duration::from_secs(1));
        assert_eq!(ok(" 30s\n"), Duration::from_secs(30));
        assert_eq!(ok("30 s"), Duration::from_secs(30));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_need_a_unit() {
        for s in ["30", "0", "1000", "1.5", "1_000", "1h 30"] {
            assert_eq!(parse_duration(s), Err(DurationError::MissingUnit), "{s}");
        }
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
        assert_eq!(parse_duration("-1s"), Err(DurationError::Negative));
        assert_eq!(parse_duration("1s -5ms"), Err(DurationError::Negative));
        assert_eq!(
            parse_duration("5parsecs"),
            Err(DurationError::UnknownUnit {
                unit: "parsecs".into()
            })
        );
        assert!(matches!(
            parse_duration("5s!"),
            Err(DurationError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            parse_duration("ms"),
            Err(DurationError::NumberExpected { .. })
        ));
        assert_eq!(
            parse_duration("99999999999999999999999d"),
            Err(DurationError::OutOfRange)
        );
        assert_eq!(parse_duration("0.5ns"), Err(DurationError::OutOfRange));
        assert_eq!(parse_duration("300years"), Err(DurationError::OutOfRange));
    }

    #[test]
    fn nats_range_limit_is_exact() {
        assert_eq!(
            check_nats_range(Duration::from_nanos(u64::try_from(i64::MAX).unwrap())),
            Ok(())
        );
        assert_eq!(
            check_nats_range(Duration::from_nanos(u64::try_from(i64::MAX).unwrap() + 1)),
            Err(DurationError::OutOfRange)
        );
    }

    #[test]
    fn missing_unit_error_explains_why() {
        let msg = DurationError::MissingUnit.to_string();
        assert!(msg.contains("ambiguous"), "{msg}");
    }

    #[test]
    fn format_examples() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        /// Formatting then parsing gives the same duration back.
        #[test]
        fn format_parse_round_trip(nanos in 0u64..=u64::try_from(i64::MAX).unwrap()) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        /// Any `<n><unit>` parses to `n` times the unit.
        #[test]
        fn integer_with_unit(n in 0u64..1_000_000, unit in prop::sample::select(
            vec![("ns", 1u64), ("us", 1_000), ("µs", 1_000), ("ms", 1_000_000),
                 ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)])) {
            let d = parse_duration(&format!("{n}{}", unit.0)).unwrap();
            prop_assert_eq!(d, Duration::from_nanos(n * unit.1));
        }

        /// Never panics.
        #[test]
        fn never_panics(input in "\\PC*") {
            let _ = parse_duration(&input);
        }

        /// A bare number is always rejected, whatever its size.
        #[test]
        fn bare_numbers_always_rejected(n in any::<u64>()) {
            prop_assert_eq!(parse_duration(&n.to_string()), Err(DurationError::MissingUnit));
        }
    }
}
