//! Credential masking: [`Redacted`] for URLs and DSNs, [`Secret`] for opaque secrets.
//!
//! The rules are documented on [`redact_url`].

use std::borrow::Cow;
use std::fmt;

use serde::{Serialize, Serializer};

const MASK: &str = "***";

/// Masks the credentials of a URL or DSN for display. Never fails and never panics, whatever
/// the input.
///
/// Rules (the seed's examples, SPEC §8):
///
/// | input | shown as |
/// |---|---|
/// | `nats://user:pass@host:4222` | `nats://user:***@host:4222` |
/// | `nats://token@host:4222` | `nats://***@host:4222` |
/// | `nats://host:4222/path?token=x#frag` | `nats://host:4222/path` (query and fragment dropped) |
/// | `postgres://u:p@db/app?sslmode=require` | `postgres://u:***@db/app` |
/// | `u:p@host` (no scheme) | `***@host` |
/// | `host=db password=x` (key/value DSN) | `***` |
/// | `localhost:4222` | unchanged |
///
/// The masking is textual, so it works on input that no URL parser accepts: everything between
/// `://` and the **last** `@` is credentials. A password containing raw `@`, `/`, `?` or `#`
/// therefore stays hidden. The price is that an `@` in a path or query (`…?mail=a@b`) masks more
/// than needed, which is the safe direction.
///
/// ```
/// use jetstream_bridge_config::redact_url;
///
/// assert_eq!(redact_url("nats://user:pass@host:4222"), "nats://user:***@host:4222");
/// assert_eq!(redact_url("nats://token@host:4222"), "nats://***@host:4222");
/// assert_eq!(redact_url("nats://host:4222?token=secret"), "nats://host:4222");
/// ```
#[must_use]
pub fn redact_url(input: &str) -> Cow<'_, str> {
    match input.find("://") {
        Some(i) if is_scheme(&input[..i]) => {
            let scheme = &input[..i];
            let rest = &input[i + 3..];
            let (masked_userinfo, after) = match rest.rfind('@') {
                Some(at) => (mask_userinfo(&rest[..at]), &rest[at + 1..]),
                None => (String::new(), rest),
            };
            let after = cut_query(after);
            if masked_userinfo.is_empty() && after.len() == rest.len() {
                Cow::Borrowed(input)
            } else {
                Cow::Owned(format!("{scheme}://{masked_userinfo}{after}"))
            }
        }
        _ => {
            if let Some(at) = input.rfind('@') {
                Cow::Owned(format!("{MASK}@{}", cut_query(&input[at + 1..])))
            } else if input.contains('=') || input.chars().any(char::is_whitespace) {
                // A key/value DSN (`host=db password=x`): no reliable structure, hide it all.
                Cow::Borrowed(MASK)
            } else {
                let cut = cut_query(input);
                if cut.len() == input.len() {
                    Cow::Borrowed(input)
                } else {
                    Cow::Owned(cut.to_owned())
                }
            }
        }
    }
}

/// `user:pass` → `user:***@`; `token` → `***@`.
fn mask_userinfo(userinfo: &str) -> String {
    match userinfo.find(':') {
        Some(colon) => format!("{}:{MASK}@", &userinfo[..colon]),
        None => format!("{MASK}@"),
    }
}

/// Drops everything from the first `?` or `#`.
fn cut_query(s: &str) -> &str {
    match s.find(['?', '#']) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// RFC 3986 scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A URL or DSN that may carry credentials: `Debug`, `Display` and `Serialize` show it masked by
/// [`redact_url`]; only [`expose`](Self::expose) gives the real value.
///
/// ```
/// use jetstream_bridge_config::Redacted;
///
/// let url = Redacted::new("nats://user:pass@host:4222".to_owned());
/// assert_eq!(url.to_string(), "nats://user:***@host:4222");
/// assert_eq!(format!("{url:?}"), "\"nats://user:***@host:4222\"");
/// assert_eq!(url.expose(), "nats://user:pass@host:4222");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a value.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The real value, credentials included. Do not log it.
    pub const fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the real value, credentials included. Do not log it.
    pub fn into_exposed(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T: AsRef<str>> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0.as_ref()))
    }
}

impl<T: AsRef<str>> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*redact_url(self.0.as_ref()), f)
    }
}

impl<T: AsRef<str>> Serialize for Redacted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(self.0.as_ref()))
    }
}

/// An opaque secret (an NKey seed): `Debug` and `Display` show `***`, and it is not
/// serializable. Only [`expose_secret`](Self::expose_secret) gives the value.
///
/// ```
/// use jetstream_bridge_config::Secret;
///
/// let seed = Secret::new("SUAEXAMPLE");
/// assert_eq!(seed.to_string(), "***");
/// assert_eq!(format!("{seed:?}"), "Secret(***)");
/// assert_eq!(seed.expose_secret(), "SUAEXAMPLE");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Do not log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_examples() {
        assert_eq!(
            redact_url("nats://user:pass@host:4222"),
            "nats://user:***@host:4222"
        );
        assert_eq!(redact_url("nats://token@host:4222"), "nats://***@host:4222");
    }

    #[test]
    fn gem_logging_spec_examples() {
        assert_eq!(
            redact_url("nats://user:secret@example.com:4222/path"),
            "nats://user:***@example.com:4222/path"
        );
        assert_eq!(
            redact_url("nats://example.com:4222/path?token=secret"),
            "nats://example.com:4222/path"
        );
        assert_eq!(
            redact_url("nats://u:p@example.com:4222/path?token=secret#frag"),
            "nats://u:***@example.com:4222/path"
        );
    }

    #[test]
    fn url_without_credentials_is_unchanged_and_borrowed() {
        let out = redact_url("tls://host:4222");
        assert_eq!(out, "tls://host:4222");
        assert!(matches!(out, Cow::Borrowed(_)));
    }

    #[test]
    fn fragment_is_dropped() {
        assert_eq!(redact_url("nats://host:4222#x"), "nats://host:4222");
    }

    #[test]
    fn password_with_raw_special_chars_stays_hidden() {
        for pass in ["p@ss", "a/b", "a?b", "a#b", "12/x", "1?b", "::", "a b"] {
            let input = format!("nats://user:{pass}@host:4222");
            assert_eq!(redact_url(&input), "nats://user:***@host:4222", "{input}");
        }
    }

    #[test]
    fn empty_password_and_empty_user() {
        assert_eq!(redact_url("nats://user:@h"), "nats://user:***@h");
        assert_eq!(redact_url("nats://:pw@h"), "nats://:***@h");
        assert_eq!(redact_url("nats://@h"), "nats://***@h");
    }

    #[test]
    fn unparsable_input_masks_up_to_the_at_sign() {
        assert_eq!(redact_url("user:pass@host:4222"), "***@host:4222");
        assert_eq!(redact_url("nats://u:p@[::1"), "nats://u:***@[::1");
        // A bogus "scheme" that contains credentials is not treated as a scheme.
        assert_eq!(redact_url("user:pass@host://x"), "***@host://x");
    }

    #[test]
    fn key_value_dsn_is_hidden_entirely() {
        assert_eq!(redact_url("host=db user=app password=secret"), "***");
        assert_eq!(redact_url("password=secret"), "***");
    }

    #[test]
    fn plain_host_port_is_unchanged() {
        assert_eq!(redact_url("localhost:4222"), "localhost:4222");
        assert_eq!(redact_url("localhost:4222?token"), "localhost:4222");
        // `=` may be a key/value DSN: hidden entirely.
        assert_eq!(redact_url("localhost:4222?token=x"), "***");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn database_url_masks_password_and_query() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/app?sslmode=require&password=x"),
            "postgres://app:***@db:5432/app"
        );
    }

    #[test]
    fn redacted_display_debug_serialize_mask() {
        let r = Redacted::new("nats://a:b@h:1");
        assert_eq!(r.to_string(), "nats://a:***@h:1");
        assert_eq!(format!("{r:?}"), "\"nats://a:***@h:1\"");
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"nats://a:***@h:1\"");
        assert_eq!(*r.expose(), "nats://a:b@h:1");
        assert_eq!(r.into_exposed(), "nats://a:b@h:1");
        let from: Redacted<String> = String::from("x").into();
        assert_eq!(from.expose(), "x");
    }

    #[test]
    fn secret_never_shows() {
        let s = Secret::new("SUAABC");
        assert_eq!(s.to_string(), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s:#?}"), "Secret(***)");
        assert_eq!(s.expose_secret(), "SUAABC");
    }

    proptest! {
        /// Whatever the user and password, the password never shows and the shape is kept.
        #[test]
        fn password_never_leaks(user in "[^:]{0,12}", pass in "\\PC{0,24}") {
            let input = format!("nats://{user}:{pass}@example.com:4222");
            let out = redact_url(&input);
            prop_assert_eq!(out.as_ref(), format!("nats://{user}:***@example.com:4222"));
        }

        /// A distinctive password never appears, even in odd surroundings.
        #[test]
        fn distinctive_password_never_appears(
            prefix in "\\PC{0,10}",
            user in "[a-z]{0,5}",
            suffix in "[^@]{0,10}",
        ) {
            let secret = "Zq9SECRETzq9";
            let input = format!("{prefix}://{user}:{secret}@{suffix}");
            let out = redact_url(&input);
            prop_assert!(!out.contains(secret), "{} -> {}", input, out);
        }

        /// Never panics on arbitrary input.
        #[test]
        fn never_panics(input in "\\PC*") {
            let _ = redact_url(&input);
        }

        /// A token (userinfo without `:`) never appears.
        #[test]
        fn token_never_leaks(token in "[A-Za-z0-9]{8,20}") {
            let input = format!("nats://{token}@host:4222");
            let out = redact_url(&input);
            prop_assert_eq!(out.as_ref(), "nats://***@host:4222");
        }
    }
}
