//! The crate's error type, [`ConfigError`], and the typed reasons it carries.
//!
//! Validation never stops at the first problem: [`ConfigError`] lists every [`ConfigProblem`] found
//! in one pass. No message ever contains a credential: URLs are shown through [`Redacted`], secrets
//! (NKey seeds, database URLs) are never echoed.

use std::fmt;

use crate::redact::Redacted;

/// Errors from building a [`Config`](crate::Config) (or a [`Subjects`](crate::Subjects) or
/// [`NatsUrls`](crate::NatsUrls) value on its own): every problem found, not just the first.
///
/// `Display` renders one line: `invalid configuration: <problem>; <problem>; …`. When a value came
/// from an environment variable, the variable is named after the problem.
///
/// ```
/// use jetstream_bridge_config::{Config, ConfigProblem};
///
/// let err = Config::builder("production", "my app", "billing")
///     .batch_size(0)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.problems().len(), 2);
/// assert!(matches!(err.problems()[0], ConfigProblem::InvalidSubjectToken { field: "app_name", .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
    /// `(field, environment variable)` for fields whose value came from the environment.
    origins: Vec<(&'static str, &'static str)>,
}

impl ConfigError {
    /// An error listing `problems` (none of them attributed to an environment variable).
    #[must_use]
    pub fn new(problems: Vec<ConfigProblem>) -> Self {
        Self {
            problems,
            origins: Vec::new(),
        }
    }

    pub(crate) fn with_origins(
        problems: Vec<ConfigProblem>,
        origins: Vec<(&'static str, &'static str)>,
    ) -> Self {
        Self { problems, origins }
    }

    /// Every problem found, in a stable order (the order in which fields are checked).
    #[must_use]
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }

    /// Consumes the error and returns its problems.
    #[must_use]
    pub fn into_problems(self) -> Vec<ConfigProblem> {
        self.problems
    }

    /// The environment variable that supplied `field`, when the builder was loaded with
    /// [`ConfigBuilder::from_env`](crate::ConfigBuilder::from_env) and no setter overrode it.
    #[must_use]
    pub fn env_var_for(&self, field: &str) -> Option<&'static str> {
        self.origins
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, var)| *var)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        if self.problems.is_empty() {
            return f.write_str("no details");
        }
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
            if let Some(var) = problem.field().and_then(|field| self.env_var_for(field)) {
                write!(f, " (env `{var}`)")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigProblem> for ConfigError {
    fn from(problem: ConfigProblem) -> Self {
        Self::new(vec![problem])
    }
}

/// One problem found while validating configuration.
///
/// `field` is the option's name as in the Ruby gem / this crate's setters (`app_name`,
/// `ack_wait`, …). Values that may carry credentials are never stored in clear text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// A required value is missing or empty.
    #[error("missing value for `{field}`: {reason}")]
    Missing {
        /// The option.
        field: &'static str,
        /// Why it is required.
        reason: &'static str,
    },
    /// A subject component (env, app name, destination app, push group) is not a valid token.
    #[error("invalid subject token for `{field}`: {value:?} ({reason})")]
    InvalidSubjectToken {
        /// The option.
        field: &'static str,
        /// The offending value, exactly as given.
        value: String,
        /// What is wrong with it.
        reason: SubjectTokenError,
    },
    /// A stream or consumer name (given or derived) is not a valid NATS name.
    #[error("invalid name for `{field}`: {value:?} ({reason})")]
    InvalidName {
        /// The option.
        field: &'static str,
        /// The offending value, exactly as given or derived.
        value: String,
        /// What is wrong with it.
        reason: SubjectTokenError,
    },
    /// A subject or subject prefix (`inbox_prefix`, `delivery_subject`) is invalid.
    #[error("invalid subject for `{field}`: {value:?} ({reason})")]
    InvalidSubject {
        /// The option.
        field: &'static str,
        /// The offending value, exactly as given.
        value: String,
        /// What is wrong with it.
        reason: SubjectError,
    },
    /// A duration option did not parse or is out of range.
    #[error("invalid duration for `{field}`: {value:?} ({reason})")]
    InvalidDuration {
        /// The option.
        field: &'static str,
        /// The offending value (the text given, or the formatted duration).
        value: String,
        /// What is wrong with it.
        reason: DurationError,
    },
    /// An entry of `backoff` did not parse or is out of range.
    #[error("invalid duration for `backoff[{index}]`: {value:?} ({reason})")]
    InvalidBackoff {
        /// Zero-based position in the list.
        index: usize,
        /// The offending value (the text given, or the formatted duration).
        value: String,
        /// What is wrong with it.
        reason: DurationError,
    },
    /// `backoff` lists more delays than `max_deliver` allows. After failed delivery `n` the
    /// bridge waits `backoff[n-1]` and the last delivery goes to the DLQ, so at most
    /// `max_deliver - 1` delays apply; one per delivery (`max_deliver` of them) is accepted, as
    /// the gem's defaults list.
    #[error(
        "`backoff` lists {delays} delays but `max_deliver` {max_deliver} lets at most {} apply \
         (after failed delivery n the bridge waits backoff[n-1]; the last delivery goes to the \
         DLQ): list at most {max_deliver}, or raise `max_deliver`",
        max_deliver.saturating_sub(1)
    )]
    BackoffTooLong {
        /// How many delays `backoff` lists.
        delays: usize,
        /// The configured `max_deliver`.
        max_deliver: u32,
    },
    /// A number is outside its allowed range.
    #[error("`{field}` is {value}, expected {expected}")]
    OutOfRange {
        /// The option.
        field: &'static str,
        /// The offending value.
        value: String,
        /// The allowed range, in words (e.g. `1..=5`, `at least 1`).
        expected: &'static str,
    },
    /// An entry of `nats_urls` is invalid. The entry is shown as it appears in the masked
    /// list: everything from the list's first `scheme://` to its **last** `@` is hidden, even
    /// across entries, because a comma inside a password cannot be told apart from a list
    /// separator (`nats://u:pa,nats://ss@h`). So in `nats://h:0,nats://u:p@h2` the first entry
    /// is shown as `nats://***`.
    #[error("invalid NATS URL `nats_urls[{index}]` {url}: {reason}")]
    InvalidNatsUrl {
        /// Zero-based position among the list's entries.
        index: usize,
        /// The entry, already masked; [`Redacted::expose`] gives the masked text too.
        url: Redacted<String>,
        /// What is wrong with it.
        reason: NatsUrlError,
    },
    /// Two options contradict each other.
    #[error("`{field}` conflicts with `{other}`: {reason}")]
    Conflict {
        /// The option reported.
        field: &'static str,
        /// The option it conflicts with.
        other: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A value is reserved because it would make two derived subjects collide.
    #[error("`{field}` must not be {value:?}: {reason}")]
    Reserved {
        /// The option.
        field: &'static str,
        /// The reserved value.
        value: String,
        /// Which subjects would collide.
        reason: &'static str,
    },
    /// A non-secret value (a file path, a connection name) is invalid.
    #[error("invalid value for `{field}`: {value:?} ({reason})")]
    InvalidValue {
        /// The option.
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A secret (NKey seed, database URL) is invalid. Its value is never shown.
    #[error("invalid value for `{field}` (value hidden): {reason}")]
    InvalidSecret {
        /// The option.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An environment variable holds text that cannot be read as the option's type.
    #[error("environment variable `{var}`: {reason}")]
    EnvVar {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with its value.
        reason: EnvVarError,
    },
}

impl ConfigProblem {
    /// The option this problem is about, if it is about one option.
    #[must_use]
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::Missing { field, .. }
            | Self::InvalidSubjectToken { field, .. }
            | Self::InvalidName { field, .. }
            | Self::InvalidSubject { field, .. }
            | Self::InvalidDuration { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::Conflict { field, .. }
            | Self::Reserved { field, .. }
            | Self::InvalidValue { field, .. }
            | Self::InvalidSecret { field, .. } => Some(field),
            Self::InvalidBackoff { .. } | Self::BackoffTooLong { .. } => Some("backoff"),
            Self::InvalidNatsUrl { .. } => Some("nats_urls"),
            Self::EnvVar { .. } => None,
        }
    }
}

/// Why a subject token or a NATS name (stream, consumer) is invalid.
///
/// Positions count Unicode scalar values (`char`s) from 0, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectTokenError {
    /// The value is empty.
    #[error("empty")]
    Empty,
    /// The value is longer than [`MAX_TOKEN_CHARS`](crate::MAX_TOKEN_CHARS) characters.
    #[error("{chars} characters, at most 255 allowed")]
    TooLong {
        /// Its length in characters.
        chars: usize,
    },
    /// The value contains a forbidden character: `.`, `*`, `>`, whitespace or a control
    /// character (C0, DEL, C1) (and, in stream and consumer names, `/` or `\`).
    #[error("contains {ch:?} at character {position}; `.`, `*`, `>`, whitespace and control characters are not allowed")]
    ForbiddenChar {
        /// The character.
        ch: char,
        /// Its zero-based position in characters.
        position: usize,
    },
}

/// Why a subject (possibly with wildcards) or a subject prefix is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// The subject is empty.
    #[error("empty")]
    Empty,
    /// A token is empty (leading, trailing or doubled `.`).
    #[error("token {index} is empty")]
    EmptyToken {
        /// Zero-based token index.
        index: usize,
    },
    /// The subject contains whitespace or a control character (C0, DEL, C1).
    #[error("contains {ch:?} at character {position}; whitespace and control characters are not allowed")]
    ForbiddenChar {
        /// The character.
        ch: char,
        /// Its zero-based position in characters.
        position: usize,
    },
    /// `*` or `>` appears inside a token instead of being the whole token.
    #[error("token {index} mixes a wildcard with other characters")]
    PartialWildcard {
        /// Zero-based token index.
        index: usize,
    },
    /// `>` is used before the last token.
    #[error("`>` must be the last token, found at token {index}")]
    FullWildcardNotLast {
        /// Zero-based token index.
        index: usize,
    },
    /// A wildcard appears where a literal subject is required.
    #[error("wildcard at token {index} where a literal subject is required")]
    WildcardNotAllowed {
        /// Zero-based token index.
        index: usize,
    },
}

/// Why a duration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The text is empty (or only whitespace).
    #[error("empty duration")]
    Empty,
    /// The text starts with `-`.
    #[error("negative durations are not allowed")]
    Negative,
    /// A number without a unit, e.g. `30` or `1h 30`.
    #[error("a unit is required (e.g. `30s`, `500ms`): bare numbers are ambiguous (the gem read < 1000 as seconds and >= 1000 as milliseconds)")]
    MissingUnit,
    /// The unit is not one of the supported ones.
    #[error("unknown unit {unit:?} (use ns, us, µs, ms, s, m, h or d)")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// A character that is neither part of a number nor of a unit.
    #[error("invalid character at byte {offset}")]
    InvalidCharacter {
        /// Byte offset in the (trimmed) text.
        offset: usize,
    },
    /// A unit without a number before it.
    #[error("expected a number at byte {offset}")]
    NumberExpected {
        /// Byte offset in the (trimmed) text.
        offset: usize,
    },
    /// Too large (more than `i64::MAX` nanoseconds, about 292 years, the most NATS can store) or
    /// more precise than one nanosecond.
    #[error("out of range (at most about 292 years, at least 1ns precision)")]
    OutOfRange,
    /// Zero where the option needs a positive duration (reported by validation, never by
    /// [`parse_duration`](crate::parse_duration)).
    #[error("must be greater than zero")]
    Zero,
}

/// Why an entry of a NATS URL list is invalid. Never contains any part of the URL itself, except
/// the scheme of [`UnsupportedScheme`](Self::UnsupportedScheme).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatsUrlError {
    /// The entry is empty.
    #[error("empty URL")]
    Empty,
    /// No `scheme://` prefix.
    #[error("missing scheme, expected e.g. nats://host:4222")]
    MissingScheme,
    /// The scheme is not `nats`, `tls` or `nats+tls`.
    #[error("unsupported scheme {scheme:?} (use nats, tls or nats+tls)")]
    UnsupportedScheme {
        /// The scheme, lower-cased.
        scheme: String,
    },
    /// No host after `scheme://`.
    #[error("missing host")]
    MissingHost,
    /// The port is not a number in 1..=65535.
    #[error("invalid port (expected 1..=65535)")]
    InvalidPort,
    /// The URL contains whitespace or a control character.
    #[error("contains whitespace or a control character")]
    InvalidCharacter,
    /// A `/`, `?` or `#` comes before the URL's last `@`: credentials holding those characters
    /// raw (or an `@` in a path, query or fragment). The credentials would end early and part of
    /// them would become the host.
    #[error(
        "a `/`, `?` or `#` comes before the last `@`: percent-encode the user name and password \
         (`/` as %2F, `?` as %3F, `#` as %23)"
    )]
    UnencodedCredentials,
    /// The URL contains a comma. Commas separate the URLs of a list, so a list entry that does
    /// not start with a scheme (`nats://a:4222,b:4222`), or credentials holding a raw comma
    /// (`nats://user:pa,ss@host`), cannot be read safely.
    #[error(
        "contains a comma: give every server its own scheme (`nats://a:4222,nats://b:4222`) \
         and percent-encode a comma in a user name or password as %2C"
    )]
    UnexpectedComma,
    /// The URL does not parse for another reason.
    #[error("malformed URL: {reason}")]
    Malformed {
        /// The parser's description (never contains the input).
        reason: String,
    },
}

/// Why an environment variable's value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvVarError {
    /// The value is not valid Unicode.
    #[error("value is not valid Unicode")]
    NotUnicode,
    /// Not one of `true/false/1/0/yes/no/on/off` (case-insensitive).
    #[error("{value:?} is not a boolean (use true/false, 1/0, yes/no or on/off)")]
    NotBoolean {
        /// The value as read.
        value: String,
    },
    /// Not a non-negative integer that fits the option's type.
    #[error("{value:?} is not a non-negative integer in range")]
    NotInteger {
        /// The value as read.
        value: String,
    },
    /// Not one of the option's names.
    #[error(transparent)]
    Unknown(#[from] UnknownVariantError),
}

/// A name that is not one of the allowed ones (preset, subject layout, consumer mode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (available: {})", .available.join(", "))]
pub struct UnknownVariantError {
    kind: &'static str,
    value: String,
    available: &'static [&'static str],
}

impl UnknownVariantError {
    pub(crate) fn new(kind: &'static str, value: &str, available: &'static [&'static str]) -> Self {
        Self {
            kind,
            value: value.to_owned(),
            available,
        }
    }

    /// What was being parsed (`preset`, `subject layout`, `consumer mode`).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The rejected text.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The accepted names.
    #[must_use]
    pub fn available(&self) -> &'static [&'static str] {
        self.available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_every_problem_and_names_env_vars() {
        let err = ConfigError::with_origins(
            vec![
                ConfigProblem::Missing {
                    field: "app_name",
                    reason: "required",
                },
                ConfigProblem::OutOfRange {
                    field: "batch_size",
                    value: "0".into(),
                    expected: "at least 1",
                },
            ],
            vec![("app_name", "APP_NAME")],
        );
        assert_eq!(
            err.to_string(),
            "invalid configuration: missing value for `app_name`: required (env `APP_NAME`); \
             `batch_size` is 0, expected at least 1"
        );
        assert_eq!(err.env_var_for("app_name"), Some("APP_NAME"));
        assert_eq!(err.env_var_for("batch_size"), None);
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn unknown_variant_lists_available_names() {
        let e = UnknownVariantError::new("preset", "fast", &["a", "b"]);
        assert_eq!(e.to_string(), "unknown preset \"fast\" (available: a, b)");
        assert_eq!(e.kind(), "preset");
        assert_eq!(e.value(), "fast");
        assert_eq!(e.available(), &["a", "b"]);
    }

    #[test]
    fn nats_url_problem_masks_credentials() {
        let p = ConfigProblem::InvalidNatsUrl {
            index: 1,
            url: Redacted::new("nats://user:hunter2@host:0".to_owned()),
            reason: NatsUrlError::InvalidPort,
        };
        let s = p.to_string();
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("nats://user:***@host:0"), "{s}");
        assert_eq!(p.field(), Some("nats_urls"));
    }

    #[test]
    fn secret_problem_never_shows_a_value() {
        let p = ConfigProblem::InvalidSecret {
            field: "nkey_seed",
            reason: "not an NKey seed",
        };
        assert_eq!(
            p.to_string(),
            "invalid value for `nkey_seed` (value hidden): not an NKey seed"
        );
    }

    #[test]
    fn empty_error_still_displays() {
        assert_eq!(
            ConfigError::new(vec![]).to_string(),
            "invalid configuration: no details"
        );
        let single: ConfigError = ConfigProblem::Missing {
            field: "env",
            reason: "x",
        }
        .into();
        assert_eq!(single.into_problems().len(), 1);
    }
}
