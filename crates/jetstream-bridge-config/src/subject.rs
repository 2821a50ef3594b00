//! Subjects and names: validated components, the two layouts, and NATS wildcard
//! matching. The layouts are documented on [`Subjects`], the validation rules on
//! [`SubjectToken`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::{
    ConfigError, ConfigProblem, SubjectError, SubjectTokenError, UnknownVariantError,
};

/// The most characters a [`SubjectToken`] or [`NatsName`] may have.
pub const MAX_TOKEN_CHARS: usize = 255;

/// Whitespace or a control character (C0, DEL and C1: every [`char::is_control`]).
fn is_space_or_control(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

fn is_forbidden_token_char(c: char) -> bool {
    matches!(c, '.' | '*' | '>') || is_space_or_control(c)
}

fn is_forbidden_name_char(c: char) -> bool {
    is_forbidden_token_char(c) || matches!(c, '/' | '\\')
}

fn check_token(s: &str, forbidden: fn(char) -> bool) -> Result<(), SubjectTokenError> {
    if s.is_empty() {
        return Err(SubjectTokenError::Empty);
    }
    let mut chars = 0;
    for (position, ch) in s.chars().enumerate() {
        if forbidden(ch) {
            return Err(SubjectTokenError::ForbiddenChar { ch, position });
        }
        chars += 1;
    }
    if chars > MAX_TOKEN_CHARS {
        return Err(SubjectTokenError::TooLong { chars });
    }
    Ok(())
}

/// Checks a subject that may contain wildcards (a subscription or stream filter).
///
/// ```
/// use jetstream_bridge_config::{validate_subject, SubjectError};
///
/// assert!(validate_subject("orders.*.created").is_ok());
/// assert!(validate_subject("orders.>").is_ok());
/// assert_eq!(validate_subject("orders..x"), Err(SubjectError::EmptyToken { index: 1 }));
/// assert_eq!(validate_subject("orders.a*"), Err(SubjectError::PartialWildcard { index: 1 }));
/// assert_eq!(validate_subject(">.a"), Err(SubjectError::FullWildcardNotLast { index: 0 }));
/// ```
///
/// # Errors
///
/// [`SubjectError`] when the subject is empty, has an empty token, contains whitespace or a
/// control character, mixes a wildcard into a token, or has `>` before the last token.
pub fn validate_subject(subject: &str) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if let Some((position, ch)) = subject
        .chars()
        .enumerate()
        .find(|&(_, c)| is_space_or_control(c))
    {
        return Err(SubjectError::ForbiddenChar { ch, position });
    }
    let count = subject.split('.').count();
    for (index, token) in subject.split('.').enumerate() {
        match token {
            "" => return Err(SubjectError::EmptyToken { index }),
            "*" => {}
            ">" if index + 1 == count => {}
            ">" => return Err(SubjectError::FullWildcardNotLast { index }),
            t if t.contains(['*', '>']) => return Err(SubjectError::PartialWildcard { index }),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a literal subject (one that can be published to): [`validate_subject`] plus no
/// wildcards.
///
/// ```
/// use jetstream_bridge_config::{validate_literal_subject, SubjectError};
///
/// assert!(validate_literal_subject("_INBOX.orders").is_ok());
/// assert!(validate_literal_subject("$RPC").is_ok());
/// assert_eq!(validate_literal_subject("a.*"), Err(SubjectError::WildcardNotAllowed { index: 1 }));
/// ```
///
/// # Errors
///
/// [`SubjectError`] as for [`validate_subject`], and [`SubjectError::WildcardNotAllowed`] for a
/// `*` or `>` token.
pub fn validate_literal_subject(subject: &str) -> Result<(), SubjectError> {
    validate_subject(subject)?;
    match subject
        .split('.')
        .position(|token| token == "*" || token == ">")
    {
        Some(index) => Err(SubjectError::WildcardNotAllowed { index }),
        None => Ok(()),
    }
}

/// Whether the literal `subject` is matched by `pattern`, with NATS semantics: `*` matches
/// exactly one token, `>` (last token only) one or more.
///
/// [`subject_matches`] and [`subjects_overlap`] follow NATS: `*` matches exactly one token, `>`
/// one or more tokens, so `a.>` does **not** match `a` (the gem got this wrong).
///
/// Returns `false` when `pattern` is not a valid subject or `subject` is not a valid literal one.
///
/// ```
/// use jetstream_bridge_config::subject_matches;
///
/// assert!(subject_matches("orders.*", "orders.created"));
/// assert!(subject_matches("orders.>", "orders.a.b"));
/// assert!(!subject_matches("orders.>", "orders"));
/// assert!(!subject_matches("orders.*", "orders.a.b"));
/// ```
#[must_use]
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    if validate_subject(pattern).is_err() || validate_literal_subject(subject).is_err() {
        return false;
    }
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            // Validation guarantees `>` is the pattern's last token.
            (Some(">"), Some(_)) => return true,
            (Some(pt), Some(st)) if pt == "*" || pt == st => {}
            _ => return false,
        }
    }
}

/// Whether some literal subject is matched by both `a` and `b` (both may contain wildcards). Used
/// to find streams whose subjects would collide. Symmetric; `false` when either is invalid.
///
/// ```
/// use jetstream_bridge_config::subjects_overlap;
///
/// assert!(subjects_overlap("orders.>", "orders.*.created"));
/// assert!(subjects_overlap("*.sync.billing", "orders.sync.*"));
/// assert!(!subjects_overlap("orders.>", "orders"));
/// assert!(!subjects_overlap("orders.*", "billing.*"));
/// ```
#[must_use]
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    if validate_subject(a).is_err() || validate_subject(b).is_err() {
        return false;
    }
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            // `>` takes one or more tokens: the other side has at least one here.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(p), Some(q)) if p == "*" || q == "*" || p == q => {}
            _ => return false,
        }
    }
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $err:ty, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`, used exactly as given (no trimming).
            ///
            /// # Errors
            ///
            /// The reason the value is invalid (see the type's documentation for the rules).
            pub fn new(value: impl Into<String>) -> Result<Self, $err> {
                let value = value.into();
                let check: fn(&str) -> Result<(), $err> = $check;
                check(&value)?;
                Ok(Self(value))
            }

            /// The value.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Unwraps the value.
            #[must_use]
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = $err;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

validated_string!(
    /// One component of a subject (env, app name, destination app, push group). The rules:
    ///
    /// - [`SubjectToken`] (env, app name, destination app, push group): non-empty, at most
    ///   [`MAX_TOKEN_CHARS`] characters (Unicode scalar values, not bytes), and none of `.`, `*`, `>`,
    ///   any Unicode whitespace or control characters (C0 `U+0000..=U+001F`, DEL `U+007F`, C1
    ///   `U+0080..=U+009F`). The
    ///   value is validated exactly as it will be used: nothing is trimmed, so `" api"` is rejected
    ///   (the gem validated the trimmed value and used the raw one).
    /// - [`NatsName`] (stream and durable consumer names): the token rules plus no `/` or `\` (the
    ///   server stores streams and consumers as directories).
    /// - Subjects ([`validate_subject`]): non-empty tokens separated by `.`, no whitespace or control
    ///   characters, `*` and `>` only as whole tokens, `>` only last. [`Subject`] and
    ///   [`validate_literal_subject`] additionally forbid wildcards. `inbox_prefix` and
    ///   `delivery_subject` are literal subjects (dots allowed, e.g. `_INBOX.orders` or `$RPC`).
    ///
    /// ```
    /// use jetstream_bridge_config::{SubjectToken, SubjectTokenError};
    ///
    /// assert_eq!(SubjectToken::new("orders")?.as_str(), "orders");
    /// assert_eq!(
    ///     SubjectToken::new(" api"),
    ///     Err(SubjectTokenError::ForbiddenChar { ch: ' ', position: 0 })
    /// );
    /// # Ok::<(), SubjectTokenError>(())
    /// ```
    SubjectToken,
    SubjectTokenError,
    |s| check_token(s, is_forbidden_token_char)
);

validated_string!(
    /// A stream or consumer name: the [`SubjectToken`] rules plus no `/` or `\`.
    ///
    /// ```
    /// use jetstream_bridge_config::NatsName;
    ///
    /// assert!(NatsName::new("production-jetstream-bridge-stream").is_ok());
    /// assert!(NatsName::new("a/b").is_err());
    /// ```
    NatsName,
    SubjectTokenError,
    |s| check_token(s, is_forbidden_name_char)
);

validated_string!(
    /// A literal subject (no wildcards): see [`validate_literal_subject`].
    ///
    /// ```
    /// use jetstream_bridge_config::Subject;
    ///
    /// let s = Subject::new("production.orders.sync.billing")?;
    /// assert_eq!(s.tokens().collect::<Vec<_>>(), ["production", "orders", "sync", "billing"]);
    /// assert!(Subject::new("orders.*").is_err());
    /// # Ok::<(), jetstream_bridge_config::SubjectError>(())
    /// ```
    Subject,
    SubjectError,
    validate_literal_subject
);

impl Subject {
    /// The subject's tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// Whether `pattern` matches this subject (see [`subject_matches`]).
    #[must_use]
    pub fn is_matched_by(&self, pattern: &str) -> bool {
        subject_matches(pattern, &self.0)
    }
}

impl From<NatsName> for SubjectToken {
    /// Every NATS name is a valid subject token (the name rules are stricter).
    fn from(name: NatsName) -> Self {
        Self(name.0)
    }
}

/// Which subject layout a service uses. Both must interoperate with Ruby peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SubjectLayout {
    /// `{env}.{app}.sync.{dest}` (the default, as in gem 4.0–4.4). Requires an env.
    #[default]
    EnvPrefixed,
    /// `{app}.sync.{dest}` (gem ≥ 4.5). The env, if given, is not used in subjects or names.
    EnvLess,
}

impl SubjectLayout {
    const NAMES: &'static [&'static str] = &["env-prefixed", "env-less"];

    /// `env-prefixed` or `env-less`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EnvPrefixed => "env-prefixed",
            Self::EnvLess => "env-less",
        }
    }
}

impl fmt::Display for SubjectLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubjectLayout {
    type Err = UnknownVariantError;

    /// `env-prefixed` or `env-less`, case-insensitive, `_` accepted for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "env-prefixed" => Ok(Self::EnvPrefixed),
            "env-less" => Ok(Self::EnvLess),
            _ => Err(UnknownVariantError::new("subject layout", s, Self::NAMES)),
        }
    }
}

/// Every subject and name one service uses, derived from layout, env, app and destination app
/// (with optional overrides). Holding one means all of them are valid.
///
/// With env `production`, app `orders`, destination `billing`:
///
/// | | [`EnvPrefixed`](SubjectLayout::EnvPrefixed) (seed, gem 4.0–4.4) | [`EnvLess`](SubjectLayout::EnvLess) (gem ≥ 4.5) |
/// |---|---|---|
/// | source (publish) | `production.orders.sync.billing` | `orders.sync.billing` |
/// | destination (consume) | `production.billing.sync.orders` | `billing.sync.orders` |
/// | DLQ | `production.orders.sync.dlq` | `orders.sync.dlq` |
/// | stream | `production-jetstream-bridge-stream` | `jetstream-bridge-stream` |
/// | durable | `production-orders-workers` | `orders-workers` |
/// | push delivery subject | `production.billing.sync.orders.worker` | `billing.sync.orders.worker` |
/// | push group | the durable name | the durable name |
///
/// ```
/// use jetstream_bridge_config::{SubjectLayout, Subjects};
///
/// let s = Subjects::builder("production", "orders", "billing").build()?;
/// assert_eq!(s.source().as_str(), "production.orders.sync.billing");
/// assert_eq!(s.destination().as_str(), "production.billing.sync.orders");
/// assert_eq!(s.dlq().as_str(), "production.orders.sync.dlq");
/// assert_eq!(s.stream_name().as_str(), "production-jetstream-bridge-stream");
/// assert_eq!(s.durable_name().as_str(), "production-orders-workers");
///
/// let s = Subjects::builder("", "orders", "billing").layout(SubjectLayout::EnvLess).build()?;
/// assert_eq!(s.source().as_str(), "orders.sync.billing");
/// assert_eq!(s.destination().as_str(), "billing.sync.orders");
/// assert_eq!(s.dlq().as_str(), "orders.sync.dlq");
/// assert_eq!(s.stream_name().as_str(), "jetstream-bridge-stream");
/// assert_eq!(s.durable_name().as_str(), "orders-workers");
/// assert_eq!(s.delivery_subject().as_str(), "billing.sync.orders.worker");
/// assert_eq!(s.push_group().as_str(), "orders-workers");
/// # Ok::<(), jetstream_bridge_config::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subjects {
    layout: SubjectLayout,
    env: Option<SubjectToken>,
    app_name: SubjectToken,
    destination_app: SubjectToken,
    #[serde(rename = "source_subject")]
    source: Subject,
    #[serde(rename = "destination_subject")]
    destination: Subject,
    #[serde(rename = "dlq_subject")]
    dlq: Subject,
    #[serde(skip)]
    peer_dlq: Subject,
    stream_name: NatsName,
    durable_name: NatsName,
    delivery_subject: Subject,
    #[serde(rename = "push_consumer_group")]
    push_group: SubjectToken,
}

impl Subjects {
    /// Starts a [`SubjectsBuilder`] with the env-prefixed layout; an empty `env` together with
    /// [`SubjectLayout::EnvLess`] is the env-less layout.
    pub fn builder(
        env: impl Into<String>,
        app_name: impl Into<String>,
        destination_app: impl Into<String>,
    ) -> SubjectsBuilder {
        SubjectsBuilder {
            layout: SubjectLayout::default(),
            env: env.into(),
            app_name: app_name.into(),
            destination_app: destination_app.into(),
            stream_name: None,
            durable_name: None,
            delivery_subject: None,
            push_group: None,
        }
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> SubjectLayout {
        self.layout
    }

    /// The env, if one was given (with the env-less layout it is kept but not used).
    #[must_use]
    pub fn env(&self) -> Option<&SubjectToken> {
        self.env.as_ref()
    }

    /// This service's name.
    #[must_use]
    pub fn app_name(&self) -> &SubjectToken {
        &self.app_name
    }

    /// The peer service's name.
    #[must_use]
    pub fn destination_app(&self) -> &SubjectToken {
        &self.destination_app
    }

    /// Where this service publishes: `[{env}.]{app}.sync.{dest}`.
    #[must_use]
    pub fn source(&self) -> &Subject {
        &self.source
    }

    /// What this service consumes (the durable's filter): `[{env}.]{dest}.sync.{app}`.
    #[must_use]
    pub fn destination(&self) -> &Subject {
        &self.destination
    }

    /// This service's dead-letter subject: `[{env}.]{app}.sync.dlq`.
    #[must_use]
    pub fn dlq(&self) -> &Subject {
        &self.dlq
    }

    /// The peer's dead-letter subject, `[{env}.]{dest}.sync.dlq`, which the peer adds to the
    /// shared stream when it provisions its side.
    #[must_use]
    pub fn peer_dlq(&self) -> &Subject {
        &self.peer_dlq
    }

    /// The shared stream's name (`[{env}-]jetstream-bridge-stream` unless overridden).
    #[must_use]
    pub fn stream_name(&self) -> &NatsName {
        &self.stream_name
    }

    /// The durable consumer's name (`[{env}-]{app}-workers` unless overridden).
    #[must_use]
    pub fn durable_name(&self) -> &NatsName {
        &self.durable_name
    }

    /// The push consumer's delivery subject (`{destination}.worker` unless overridden).
    #[must_use]
    pub fn delivery_subject(&self) -> &Subject {
        &self.delivery_subject
    }

    /// The push consumer's queue group (the durable name unless overridden).
    #[must_use]
    pub fn push_group(&self) -> &SubjectToken {
        &self.push_group
    }

    /// The subjects this service puts on the stream: source, destination and, with `use_dlq`,
    /// its own DLQ. (The peer adds the same two plus [`peer_dlq`](Self::peer_dlq).)
    #[must_use]
    pub fn all_stream_subjects(&self, use_dlq: bool) -> Vec<Subject> {
        let mut subjects = vec![self.source.clone(), self.destination.clone()];
        if use_dlq {
            subjects.push(self.dlq.clone());
        }
        subjects
    }
}

/// Builds [`Subjects`]; all checks run in [`build`](Self::build). See [`Subjects::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SubjectsBuilder {
    layout: SubjectLayout,
    env: String,
    app_name: String,
    destination_app: String,
    stream_name: Option<String>,
    durable_name: Option<String>,
    delivery_subject: Option<String>,
    push_group: Option<String>,
}

impl SubjectsBuilder {
    /// Replaces the environment name given to [`Subjects::builder`].
    pub fn env(mut self, env: impl Into<String>) -> Self {
        self.env = env.into();
        self
    }

    /// Replaces this service's name given to [`Subjects::builder`].
    pub fn app_name(mut self, app_name: impl Into<String>) -> Self {
        self.app_name = app_name.into();
        self
    }

    /// Replaces the peer service's name given to [`Subjects::builder`].
    pub fn destination_app(mut self, destination_app: impl Into<String>) -> Self {
        self.destination_app = destination_app.into();
        self
    }

    /// Chooses the layout (default [`SubjectLayout::EnvPrefixed`]).
    pub fn layout(mut self, layout: SubjectLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Overrides the stream name.
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = Some(name.into());
        self
    }

    /// Overrides the durable consumer name.
    pub fn durable_name(mut self, name: impl Into<String>) -> Self {
        self.durable_name = Some(name.into());
        self
    }

    /// Overrides the push delivery subject (a literal subject).
    pub fn delivery_subject(mut self, subject: impl Into<String>) -> Self {
        self.delivery_subject = Some(subject.into());
        self
    }

    /// Overrides the push consumer's queue group (a subject token).
    pub fn push_consumer_group(mut self, group: impl Into<String>) -> Self {
        self.push_group = Some(group.into());
        self
    }

    pub(crate) fn set_env(&mut self, v: String) {
        self.env = v;
    }

    pub(crate) fn set_app_name(&mut self, v: String) {
        self.app_name = v;
    }

    pub(crate) fn set_destination_app(&mut self, v: String) {
        self.destination_app = v;
    }

    pub(crate) fn set_layout(&mut self, layout: SubjectLayout) {
        self.layout = layout;
    }

    pub(crate) fn set_stream_name(&mut self, v: String) {
        self.stream_name = Some(v);
    }

    pub(crate) fn set_durable_name(&mut self, v: String) {
        self.durable_name = Some(v);
    }

    pub(crate) fn set_delivery_subject(&mut self, v: String) {
        self.delivery_subject = Some(v);
    }

    pub(crate) fn set_push_group(&mut self, v: String) {
        self.push_group = Some(v);
    }

    /// Validates everything.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing every invalid component, name or subject.
    pub fn build(&self) -> Result<Subjects, ConfigError> {
        let mut problems = Vec::new();
        match self.validate(&mut problems) {
            Some(subjects) if problems.is_empty() => Ok(subjects),
            _ => Err(ConfigError::new(problems)),
        }
    }

    /// Validates, pushing every problem; `Some` only when there were none.
    pub(crate) fn validate(&self, problems: &mut Vec<ConfigProblem>) -> Option<Subjects> {
        let before = problems.len();
        let env = match (self.layout, self.env.is_empty()) {
            (SubjectLayout::EnvPrefixed, true) => {
                problems.push(ConfigProblem::Missing {
                    field: "env",
                    reason: "required by the env-prefixed subject layout (choose the env-less layout to omit it)",
                });
                None
            }
            (SubjectLayout::EnvLess, true) => None,
            (_, false) => token(problems, "env", &self.env),
        };
        let app = required_token(
            problems,
            "app_name",
            &self.app_name,
            "the name of this service",
        );
        let dest = required_token(
            problems,
            "destination_app",
            &self.destination_app,
            "the name of the peer service",
        );
        if let (Some(app), Some(dest)) = (&app, &dest) {
            if app == dest {
                problems.push(ConfigProblem::Conflict {
                    field: "destination_app",
                    other: "app_name",
                    reason: "they must differ, or the source and destination subjects are the same",
                });
            }
        }
        if app.as_ref().is_some_and(|a| a == "dlq") {
            problems.push(ConfigProblem::Reserved {
                field: "app_name",
                value: "dlq".to_owned(),
                reason: "the destination subject `{dest}.sync.dlq` would be the peer's DLQ subject",
            });
        }
        if dest.as_ref().is_some_and(|d| d == "dlq") {
            problems.push(ConfigProblem::Reserved {
                field: "destination_app",
                value: "dlq".to_owned(),
                reason: "the source subject `{app}.sync.dlq` would be this service's DLQ subject",
            });
        }

        // The prefixes for subjects (`production.`) and names (`production-`); `None` when the
        // env-prefixed layout has no valid env, so derived values are not reported twice.
        let prefixes = match self.layout {
            SubjectLayout::EnvPrefixed => env.as_ref().map(|e| (format!("{e}."), format!("{e}-"))),
            SubjectLayout::EnvLess => Some((String::new(), String::new())),
        };
        let subject_prefix = prefixes.as_ref().map(|(s, _)| s);
        let name_prefix = prefixes.as_ref().map(|(_, n)| n);

        let stream_name = match (&self.stream_name, &name_prefix) {
            (Some(given), _) => name(problems, "stream_name", given),
            (None, Some(prefix)) => name(
                problems,
                "stream_name",
                &format!("{prefix}jetstream-bridge-stream"),
            ),
            (None, None) => None,
        };
        let durable_name = match (&self.durable_name, &name_prefix, &app) {
            (Some(given), _, _) => name(problems, "durable_name", given),
            (None, Some(prefix), Some(app)) => {
                name(problems, "durable_name", &format!("{prefix}{app}-workers"))
            }
            _ => None,
        };

        let subjects = match (&subject_prefix, &app, &dest) {
            (Some(prefix), Some(app), Some(dest)) => Some((
                derived(
                    problems,
                    "source_subject",
                    format!("{prefix}{app}.sync.{dest}"),
                ),
                derived(
                    problems,
                    "destination_subject",
                    format!("{prefix}{dest}.sync.{app}"),
                ),
                derived(problems, "dlq_subject", format!("{prefix}{app}.sync.dlq")),
                derived(problems, "dlq_subject", format!("{prefix}{dest}.sync.dlq")),
            )),
            _ => None,
        };

        let delivery_subject = match (&self.delivery_subject, &subjects) {
            (Some(given), _) => match Subject::new(given.as_str()) {
                Ok(s) => Some(s),
                Err(reason) => {
                    problems.push(ConfigProblem::InvalidSubject {
                        field: "delivery_subject",
                        value: given.clone(),
                        reason,
                    });
                    None
                }
            },
            (None, Some((_, Some(destination), _, _))) => derived(
                problems,
                "delivery_subject",
                format!("{destination}.worker"),
            ),
            _ => None,
        };

        let push_group = match (&self.push_group, &durable_name) {
            (Some(given), _) => token(problems, "push_consumer_group", given),
            (None, Some(durable)) => Some(SubjectToken::from(durable.clone())),
            (None, None) => None,
        };

        if problems.len() != before {
            return None;
        }
        match (
            app,
            dest,
            subjects,
            stream_name,
            durable_name,
            delivery_subject,
            push_group,
        ) {
            (
                Some(app_name),
                Some(destination_app),
                Some((Some(source), Some(destination), Some(dlq), Some(peer_dlq))),
                Some(stream_name),
                Some(durable_name),
                Some(delivery_subject),
                Some(push_group),
            ) => Some(Subjects {
                layout: self.layout,
                env,
                app_name,
                destination_app,
                source,
                destination,
                dlq,
                peer_dlq,
                stream_name,
                durable_name,
                delivery_subject,
                push_group,
            }),
            _ => None,
        }
    }
}

fn token(
    problems: &mut Vec<ConfigProblem>,
    field: &'static str,
    value: &str,
) -> Option<SubjectToken> {
    match SubjectToken::new(value) {
        Ok(t) => Some(t),
        Err(reason) => {
            problems.push(ConfigProblem::InvalidSubjectToken {
                field,
                value: value.to_owned(),
                reason,
            });
            None
        }
    }
}

fn required_token(
    problems: &mut Vec<ConfigProblem>,
    field: &'static str,
    value: &str,
    reason: &'static str,
) -> Option<SubjectToken> {
    if value.is_empty() {
        problems.push(ConfigProblem::Missing { field, reason });
        None
    } else {
        token(problems, field, value)
    }
}

fn name(problems: &mut Vec<ConfigProblem>, field: &'static str, value: &str) -> Option<NatsName> {
    match NatsName::new(value) {
        Ok(n) => Some(n),
        Err(reason) => {
            problems.push(ConfigProblem::InvalidName {
                field,
                value: value.to_owned(),
                reason,
            });
            None
        }
    }
}

/// A subject built from valid tokens; cannot fail, but reports instead of panicking if it did.
fn derived(
    problems: &mut Vec<ConfigProblem>,
    field: &'static str,
    value: String,
) -> Option<Subject> {
    match validate_literal_subject(&value) {
        Ok(()) => Some(Subject(value)),
        Err(reason) => {
            problems.push(ConfigProblem::InvalidSubject {
                field,
                value,
                reason,
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forbidden_char_strategy() -> impl Strategy<Value = char> {
        prop_oneof![
            Just('.'),
            Just('*'),
            Just('>'),
            Just('\u{7f}'),
            (0u32..=0x1f).prop_map(|c| char::from_u32(c).unwrap()),
            (0x80u32..=0x9f).prop_map(|c| char::from_u32(c).unwrap()),
            prop::sample::select(vec![
                ' ', '\t', '\n', '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{a0}', '\u{1680}',
                '\u{2000}', '\u{2009}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}'
            ]),
        ]
    }

    fn allowed_char_strategy() -> impl Strategy<Value = char> {
        any::<char>().prop_filter("allowed", |c| !is_forbidden_token_char(*c))
    }

    // ---- tokens ----------------------------------------------------------------------------

    #[test]
    fn token_accepts_printable_non_space_text() {
        for ok in [
            "orders",
            "a",
            "billing-v2",
            "my_app",
            "$SYS",
            "app:1",
            "ördérs",
            "日本",
            "a/b",
        ] {
            assert!(SubjectToken::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn token_rejects_each_forbidden_character_with_its_position() {
        for (input, ch, position) in [
            ("a.b", '.', 1),
            ("a*", '*', 1),
            (">", '>', 0),
            (" api", ' ', 0),
            ("api ", ' ', 3),
            ("a\tb", '\t', 1),
            ("a\nb", '\n', 1),
            ("a\u{0}b", '\u{0}', 1),
            ("a\u{1b}", '\u{1b}', 1),
            ("a\u{7f}", '\u{7f}', 1),
            ("a\u{80}", '\u{80}', 1),
            ("a\u{85}b", '\u{85}', 1),
            ("ab\u{9f}", '\u{9f}', 2),
            ("a\u{a0}b", '\u{a0}', 1),
            ("é\u{3000}", '\u{3000}', 1),
        ] {
            assert_eq!(
                SubjectToken::new(input),
                Err(SubjectTokenError::ForbiddenChar { ch, position }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn token_rejects_empty() {
        assert_eq!(SubjectToken::new(""), Err(SubjectTokenError::Empty));
    }

    #[test]
    fn token_length_counts_characters_not_bytes() {
        assert!(SubjectToken::new("a".repeat(255)).is_ok());
        assert_eq!(
            SubjectToken::new("a".repeat(256)),
            Err(SubjectTokenError::TooLong { chars: 256 })
        );
        // 255 two-byte characters are 510 bytes but still 255 characters.
        assert!(SubjectToken::new("é".repeat(255)).is_ok());
        assert_eq!(
            SubjectToken::new("é".repeat(256)),
            Err(SubjectTokenError::TooLong { chars: 256 })
        );
    }

    #[test]
    fn token_conversions_and_serde() {
        let t: SubjectToken = "orders".parse().unwrap();
        assert_eq!(t, "orders");
        assert_eq!(t.to_string(), "orders");
        assert_eq!(t.as_ref(), "orders");
        assert_eq!(SubjectToken::try_from("x").unwrap().into_string(), "x");
        assert_eq!(
            String::from(SubjectToken::try_from(String::from("y")).unwrap()),
            "y"
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"orders\"");
        let back: SubjectToken = serde_json::from_str("\"orders\"").unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<SubjectToken>("\"a.b\"").is_err());
    }

    #[test]
    fn names_also_reject_path_separators() {
        assert_eq!(
            NatsName::new("a/b"),
            Err(SubjectTokenError::ForbiddenChar {
                ch: '/',
                position: 1
            })
        );
        assert_eq!(
            NatsName::new("a\\b"),
            Err(SubjectTokenError::ForbiddenChar {
                ch: '\\',
                position: 1
            })
        );
        assert!(NatsName::new("a.b").is_err());
        assert!(NatsName::new("").is_err());
        assert!(NatsName::new("orders-workers").is_ok());
    }

    // ---- subjects ---------------------------------------------------------------------------

    #[test]
    fn subject_validation() {
        assert_eq!(validate_subject(""), Err(SubjectError::Empty));
        assert_eq!(
            validate_subject("."),
            Err(SubjectError::EmptyToken { index: 0 })
        );
        assert_eq!(
            validate_subject("a."),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        assert_eq!(
            validate_subject(".a"),
            Err(SubjectError::EmptyToken { index: 0 })
        );
        assert_eq!(
            validate_subject("a b"),
            Err(SubjectError::ForbiddenChar {
                ch: ' ',
                position: 1
            })
        );
        assert_eq!(
            validate_subject("a\u{7f}"),
            Err(SubjectError::ForbiddenChar {
                ch: '\u{7f}',
                position: 1
            })
        );
        assert_eq!(
            validate_subject("a.\u{9b}b"),
            Err(SubjectError::ForbiddenChar {
                ch: '\u{9b}',
                position: 2
            })
        );
        assert_eq!(
            validate_subject("a.b*"),
            Err(SubjectError::PartialWildcard { index: 1 })
        );
        assert_eq!(
            validate_subject("a.>b"),
            Err(SubjectError::PartialWildcard { index: 1 })
        );
        assert_eq!(
            validate_subject("a.>.b"),
            Err(SubjectError::FullWildcardNotLast { index: 1 })
        );
        assert!(validate_subject("*").is_ok());
        assert!(validate_subject(">").is_ok());
        assert!(validate_subject("*.*.>").is_ok());
        assert!(validate_subject("$JS.API.>").is_ok());
    }

    #[test]
    fn literal_subject_validation() {
        assert!(validate_literal_subject("_INBOX").is_ok());
        assert!(validate_literal_subject("_INBOX.app").is_ok());
        assert!(validate_literal_subject("$RPC").is_ok());
        assert_eq!(
            validate_literal_subject("_INBOX.>"),
            Err(SubjectError::WildcardNotAllowed { index: 1 })
        );
        assert_eq!(
            validate_literal_subject("*"),
            Err(SubjectError::WildcardNotAllowed { index: 0 })
        );
        assert_eq!(
            validate_literal_subject("a..b"),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        let s = Subject::new("a.b").unwrap();
        assert!(s.is_matched_by("a.*"));
        assert!(!s.is_matched_by("a"));
    }

    #[test]
    fn matching_follows_nats_semantics() {
        assert!(subject_matches("a", "a"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"), "`a.>` must not cover `a`");
        assert!(subject_matches(">", "a"));
        assert!(subject_matches("*.sync.*", "orders.sync.billing"));
        assert!(!subject_matches("*", "a.b"));
    }

    #[test]
    fn matching_invalid_input_is_false() {
        assert!(!subject_matches("a.>.b", "a.x.b"));
        assert!(!subject_matches("a..b", "a..b"));
        assert!(!subject_matches("a.*", "a.*"), "subject must be literal");
        assert!(!subject_matches("", ""));
        assert!(!subject_matches("a b", "a b"));
    }

    #[test]
    fn overlap_examples() {
        assert!(subjects_overlap("a.b", "a.b"));
        assert!(!subjects_overlap("a.b", "a.c"));
        assert!(subjects_overlap("a.*", "a.b"));
        assert!(subjects_overlap("a.*", "*.b"));
        assert!(subjects_overlap("a.>", "a.b.c"));
        assert!(subjects_overlap(">", "a.b.c"));
        assert!(subjects_overlap("a.>", "*.*"));
        assert!(!subjects_overlap("a.>", "a"));
        assert!(!subjects_overlap("a.*", "a.b.c"));
        assert!(!subjects_overlap("a.*.c", "a.b.d"));
        assert!(!subjects_overlap("a", "a.b"));
        assert!(!subjects_overlap("a.>.b", "a.x.b"), "invalid pattern");
        assert!(subjects_overlap(
            "production.orders.sync.>",
            "production.*.sync.billing"
        ));
    }

    // ---- layouts & Subjects -----------------------------------------------------------------

    #[test]
    fn env_prefixed_layout_matches_the_spec() {
        let s = Subjects::builder("production", "orders", "billing")
            .build()
            .unwrap();
        assert_eq!(s.layout(), SubjectLayout::EnvPrefixed);
        assert_eq!(s.env().unwrap(), "production");
        assert_eq!(s.app_name(), "orders");
        assert_eq!(s.destination_app(), "billing");
        assert_eq!(s.source(), "production.orders.sync.billing");
        assert_eq!(s.destination(), "production.billing.sync.orders");
        assert_eq!(s.dlq(), "production.orders.sync.dlq");
        assert_eq!(s.peer_dlq(), "production.billing.sync.dlq");
        assert_eq!(s.stream_name(), "production-jetstream-bridge-stream");
        assert_eq!(s.durable_name(), "production-orders-workers");
        assert_eq!(
            s.delivery_subject(),
            "production.billing.sync.orders.worker"
        );
        assert_eq!(s.push_group(), "production-orders-workers");
    }

    #[test]
    fn env_less_layout_matches_the_spec() {
        let s = Subjects::builder("", "orders", "billing")
            .layout(SubjectLayout::EnvLess)
            .build()
            .unwrap();
        assert_eq!(s.env(), None);
        assert_eq!(s.source(), "orders.sync.billing");
        assert_eq!(s.destination(), "billing.sync.orders");
        assert_eq!(s.dlq(), "orders.sync.dlq");
        assert_eq!(s.peer_dlq(), "billing.sync.dlq");
        assert_eq!(s.stream_name(), "jetstream-bridge-stream");
        assert_eq!(s.durable_name(), "orders-workers");
        assert_eq!(s.delivery_subject(), "billing.sync.orders.worker");
        assert_eq!(s.push_group(), "orders-workers");
    }

    #[test]
    fn env_less_keeps_but_ignores_a_given_env() {
        let s = Subjects::builder("staging", "orders", "billing")
            .layout(SubjectLayout::EnvLess)
            .build()
            .unwrap();
        assert_eq!(s.env().unwrap(), "staging");
        assert_eq!(s.source(), "orders.sync.billing");
        assert_eq!(s.stream_name(), "jetstream-bridge-stream");
    }

    #[test]
    fn env_less_still_validates_a_given_env() {
        let e = Subjects::builder("bad env", "orders", "billing")
            .layout(SubjectLayout::EnvLess)
            .build()
            .unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::InvalidSubjectToken { field: "env", .. }]
        ));
    }

    #[test]
    fn env_prefixed_requires_an_env() {
        let e = Subjects::builder("", "orders", "billing")
            .build()
            .unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::Missing { field: "env", .. }]
        ));
    }

    #[test]
    fn overrides_are_used_and_validated() {
        let s = Subjects::builder("production", "orders", "billing")
            .stream_name("my-stream")
            .durable_name("my-durable")
            .delivery_subject("deliver.orders")
            .push_consumer_group("grp")
            .build()
            .unwrap();
        assert_eq!(s.stream_name(), "my-stream");
        assert_eq!(s.durable_name(), "my-durable");
        assert_eq!(s.delivery_subject(), "deliver.orders");
        assert_eq!(s.push_group(), "grp");

        let s = Subjects::builder("production", "orders", "billing")
            .durable_name("custom")
            .build()
            .unwrap();
        assert_eq!(
            s.push_group(),
            "custom",
            "push group follows the durable name"
        );

        let e = Subjects::builder("production", "orders", "billing")
            .stream_name("my/stream")
            .durable_name("dur able")
            .delivery_subject("deliver.*")
            .push_consumer_group("a.b")
            .build()
            .unwrap_err();
        let fields: Vec<_> = e
            .problems()
            .iter()
            .filter_map(ConfigProblem::field)
            .collect();
        assert_eq!(
            fields,
            [
                "stream_name",
                "durable_name",
                "delivery_subject",
                "push_consumer_group"
            ]
        );
    }

    #[test]
    fn every_component_problem_is_reported_at_once() {
        let e = Subjects::builder("pro duction", " orders", "bill.ing")
            .build()
            .unwrap_err();
        let fields: Vec<_> = e
            .problems()
            .iter()
            .filter_map(ConfigProblem::field)
            .collect();
        assert_eq!(fields, ["env", "app_name", "destination_app"]);
    }

    #[test]
    fn missing_app_and_destination() {
        let e = Subjects::builder("p", "", "").build().unwrap_err();
        assert!(matches!(
            e.problems(),
            [
                ConfigProblem::Missing {
                    field: "app_name",
                    ..
                },
                ConfigProblem::Missing {
                    field: "destination_app",
                    ..
                }
            ]
        ));
    }

    #[test]
    fn same_app_and_destination_is_a_conflict() {
        let e = Subjects::builder("p", "orders", "orders")
            .build()
            .unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::Conflict {
                field: "destination_app",
                other: "app_name",
                ..
            }]
        ));
    }

    #[test]
    fn dlq_is_reserved() {
        let e = Subjects::builder("p", "orders", "dlq").build().unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::Reserved {
                field: "destination_app",
                ..
            }]
        ));
        let e = Subjects::builder("p", "dlq", "orders").build().unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::Reserved {
                field: "app_name",
                ..
            }]
        ));
    }

    #[test]
    fn derived_names_are_validated_too() {
        // `/` is fine in a subject token but not in a stream or consumer name.
        let e = Subjects::builder("a/b", "orders", "billing")
            .build()
            .unwrap_err();
        let fields: Vec<_> = e
            .problems()
            .iter()
            .filter_map(ConfigProblem::field)
            .collect();
        assert_eq!(fields, ["stream_name", "durable_name"]);
        // 255 characters is fine for a token, but the derived durable name gets too long.
        let long = "a".repeat(250);
        let e = Subjects::builder("p", long.as_str(), "billing")
            .build()
            .unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::InvalidName {
                field: "durable_name",
                reason: SubjectTokenError::TooLong { chars: 260 },
                ..
            }]
        ));
        // With an override, the derived name does not matter.
        assert!(Subjects::builder("p", long.as_str(), "billing")
            .durable_name("d")
            .build()
            .is_ok());
    }

    #[test]
    fn all_stream_subjects_with_and_without_dlq() {
        let s = Subjects::builder("p", "orders", "billing").build().unwrap();
        assert_eq!(
            s.all_stream_subjects(true),
            [
                "p.orders.sync.billing",
                "p.billing.sync.orders",
                "p.orders.sync.dlq"
            ]
            .map(|x| Subject::new(x).unwrap())
        );
        assert_eq!(s.all_stream_subjects(false).len(), 2);
    }

    #[test]
    fn subjects_serialize_with_gem_names() {
        let s = Subjects::builder("p", "orders", "billing").build().unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["layout"], "env-prefixed");
        assert_eq!(v["env"], "p");
        assert_eq!(v["app_name"], "orders");
        assert_eq!(v["destination_app"], "billing");
        assert_eq!(v["source_subject"], "p.orders.sync.billing");
        assert_eq!(v["destination_subject"], "p.billing.sync.orders");
        assert_eq!(v["dlq_subject"], "p.orders.sync.dlq");
        assert_eq!(v["stream_name"], "p-jetstream-bridge-stream");
        assert_eq!(v["durable_name"], "p-orders-workers");
        assert_eq!(v["delivery_subject"], "p.billing.sync.orders.worker");
        assert_eq!(v["push_consumer_group"], "p-orders-workers");
    }

    #[test]
    fn layout_parsing() {
        assert_eq!("env-prefixed".parse(), Ok(SubjectLayout::EnvPrefixed));
        assert_eq!("ENV_LESS".parse(), Ok(SubjectLayout::EnvLess));
        let e = "flat".parse::<SubjectLayout>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown subject layout \"flat\" (available: env-prefixed, env-less)"
        );
        assert_eq!(SubjectLayout::EnvLess.to_string(), "env-less");
        assert_eq!(SubjectLayout::default(), SubjectLayout::EnvPrefixed);
    }

    // ---- properties -------------------------------------------------------------------------

    /// A deliberately naive reference matcher (recursive on token slices).
    fn reference_match(p: &[&str], s: &[&str]) -> bool {
        match (p.split_first(), s.split_first()) {
            (None, None) => true,
            (Some((&">", rest)), Some(_)) => rest.is_empty(),
            (Some((&"*", prest)), Some((_, srest))) => reference_match(prest, srest),
            (Some((pt, prest)), Some((st, srest))) => pt == st && reference_match(prest, srest),
            _ => false,
        }
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*", ">"]), 1..5)
            .prop_map(|t| t.join("."))
    }

    fn literal_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..6)
            .prop_map(|t| t.join("."))
    }

    /// Every literal subject over `alphabet` with 1..=max_len tokens.
    fn all_literals(alphabet: &[&str], max_len: usize) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec![]];
        let mut all = Vec::new();
        for _ in 0..max_len {
            let mut next = Vec::new();
            for prefix in &out {
                for t in alphabet {
                    let mut v = prefix.clone();
                    v.push(t);
                    all.push(v.join("."));
                    next.push(v);
                }
            }
            out = next;
        }
        all
    }

    proptest! {
        /// Any string containing a forbidden character is rejected.
        #[test]
        fn token_with_forbidden_char_is_rejected(
            before in prop::collection::vec(allowed_char_strategy(), 0..20),
            bad in forbidden_char_strategy(),
            after in prop::collection::vec(any::<char>(), 0..20),
        ) {
            let s: String = before.iter().chain(std::iter::once(&bad)).chain(after.iter()).collect();
            let err = SubjectToken::new(s.as_str()).unwrap_err();
            prop_assert_eq!(err, SubjectTokenError::ForbiddenChar { ch: bad, position: before.len() });
        }

        /// Anything else of 1..=255 characters is accepted, exactly as given.
        #[test]
        fn token_without_forbidden_chars_is_accepted(
            chars in prop::collection::vec(allowed_char_strategy(), 1..=255),
        ) {
            let s: String = chars.into_iter().collect();
            let t = SubjectToken::new(s.as_str()).unwrap();
            prop_assert_eq!(t.as_str(), s.as_str());
        }

        /// Too long is rejected with the character count.
        #[test]
        fn token_too_long_is_rejected(chars in prop::collection::vec(allowed_char_strategy(), 256..300)) {
            let n = chars.len();
            let s: String = chars.into_iter().collect();
            prop_assert_eq!(SubjectToken::new(s), Err(SubjectTokenError::TooLong { chars: n }));
        }

        /// `subject_matches` agrees with the naive reference implementation.
        #[test]
        fn matches_agrees_with_reference(p in pattern_strategy(), s in literal_strategy()) {
            let pt: Vec<&str> = p.split('.').collect();
            let st: Vec<&str> = s.split('.').collect();
            prop_assert_eq!(subject_matches(&p, &s), reference_match(&pt, &st), "{} vs {}", p, s);
        }

        /// Overlap is symmetric.
        #[test]
        fn overlap_is_symmetric(a in pattern_strategy(), b in pattern_strategy()) {
            prop_assert_eq!(subjects_overlap(&a, &b), subjects_overlap(&b, &a));
        }

        /// If a literal matches both patterns they overlap; if they overlap, some literal (over
        /// the patterns' alphabet plus one fresh token) matches both.
        #[test]
        fn overlap_is_consistent_with_matching(a in pattern_strategy(), b in pattern_strategy()) {
            let max_len = a.split('.').count().max(b.split('.').count()) + 1;
            let witness = all_literals(&["a", "b", "z"], max_len)
                .into_iter()
                .find(|s| subject_matches(&a, s) && subject_matches(&b, s));
            prop_assert_eq!(subjects_overlap(&a, &b), witness.is_some(), "{} / {}: {:?}", a, b, witness);
        }

        /// Every literal subject matches itself and overlaps itself.
        #[test]
        fn literal_matches_itself(s in literal_strategy()) {
            prop_assert!(subject_matches(&s, &s));
            prop_assert!(subjects_overlap(&s, &s));
        }

        /// Validation never panics on arbitrary input.
        #[test]
        fn validators_never_panic(s in any::<String>()) {
            let _ = validate_subject(&s);
            let _ = validate_literal_subject(&s);
            let _ = SubjectToken::new(s.as_str());
            let _ = NatsName::new(s.as_str());
            let _ = subject_matches(&s, &s);
            let _ = subjects_overlap(&s, "a.>");
        }
    }
}
