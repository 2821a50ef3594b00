//! Credential masking: [`Redacted`] for URLs and DSNs, [`Secret`] for opaque secrets.
//!
//! The rules are documented on [`redact_url`].

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::{Serialize, Serializer};

const MASK: &str = "***";

/// Masks the credentials of a URL or DSN for display. Never fails and never panics, whatever
/// the input.
///
/// Rules:
///
/// | input | shown as |
/// |---|---|
/// | `nats://user:pass@host:4222` | `nats://user:***@host:4222` |
/// | `nats://token@host:4222` | `nats://***@host:4222` |
/// | `nats://host:4222/path?token=x#frag` | `nats://host:4222/path` (query and fragment dropped) |
/// | `postgres://u:p@db/app?sslmode=require` | `postgres://u:***@db/app` |
/// | `u:p@host` (no scheme) | `***@host` |
/// | `nats://tok@h1,nats://u:p@h2` (a list) | `nats://***@h2` |
/// | `host=db password=x` (key/value DSN) | `***` |
/// | `localhost:4222` | unchanged |
///
/// The masking is textual, so it works on input that no URL parser accepts: everything between
/// `://` and the **last** `@` is credentials. A password containing raw `@`, `/`, `?`, `#` or `,`
/// therefore stays hidden, and so does every credential of a comma-separated list of URLs. The
/// user name is shown only when it is plainly one (no `@`, `/`, `?`, `#`, `,` or whitespace).
/// The price is that an `@` in a path or query (`…?mail=a@b`) masks more than needed, which is
/// the safe direction.
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

/// The masked form of `list[entry]`, one entry of a comma-separated URL list, shown as it
/// appears in the masked list: everything from the list's leading `scheme://` to the list's
/// **last** `@` counts as credentials, whichever entries it spans.
///
/// Masking an entry on its own is not enough: in `nats://u:pa,nats://ss@h` the first entry,
/// `nats://u:pa`, has no `@` and would be shown as it is, although its tail may be the start of
/// a password that contains a comma. Masked in its list, it is `nats://***`.
///
/// | entry | shown as |
/// |---|---|
/// | after the list's last `@` | [`redact_url`] of the entry alone |
/// | holds the leading scheme and the last `@` | [`redact_url`] of the entry alone (`nats://u:***@h`) |
/// | holds the leading scheme, not the last `@` | the scheme and `***` (`nats://***`) |
/// | starts after the scheme, holds the last `@` | `***@` and what follows the `@` (`***@h:0`) |
/// | starts after the scheme, ends before the last `@` | `***` |
pub(crate) fn redact_list_entry(list: &str, entry: Range<usize>) -> String {
    let text = &list[entry.clone()];
    let region_start = credentials_start(list);
    match list.rfind('@') {
        Some(at) if at >= entry.start && at >= region_start => {
            let holds_last_at = at < entry.end;
            if (entry.start..=entry.end).contains(&region_start) {
                if holds_last_at {
                    redact_url(text).into_owned()
                } else {
                    format!("{}{MASK}", &list[entry.start..region_start])
                }
            } else if holds_last_at {
                format!("{MASK}@{}", cut_query(&list[at + 1..entry.end]))
            } else {
                MASK.to_owned()
            }
        }
        _ => redact_url(text).into_owned(),
    }
}

/// Where the credentials of `list` may start: after its leading `scheme://` (leading
/// whitespace and commas skipped), else at its first other character.
fn credentials_start(list: &str) -> usize {
    let lead = list.len()
        - list
            .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
            .len();
    let rest = &list[lead..];
    match scheme_len(rest) {
        Some(len) => lead + len + 3,
        None => lead,
    }
}

/// The length of the `scheme` when `s` starts with `scheme://`.
pub(crate) fn scheme_len(s: &str) -> Option<usize> {
    let len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .unwrap_or(s.len());
    (is_scheme(&s[..len]) && s[len..].starts_with("://")).then_some(len)
}

/// `user:pass` → `user:***@`; `token` → `***@`.
///
/// The user name is shown only when it is plainly one: without `@`, `/`, `?`, `#`, `,` or
/// whitespace. Otherwise the text before the first `:` may hold another URL's token or part of a
/// password (`nats://tok@h,nats://u:p@h2` has the "user" `tok@h,nats`), and all is masked.
fn mask_userinfo(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        Some((user, _))
            if !user.contains(['@', '/', '?', '#', ',']) && !user.contains(char::is_whitespace) =>
        {
            format!("{user}:{MASK}@")
        }
        _ => format!("{MASK}@"),
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
    fn a_list_hides_every_credential_up_to_its_last_at_sign() {
        assert_eq!(redact_url("nats://tok@h1,nats://u:p@h2"), "nats://***@h2");
        assert_eq!(
            redact_url("nats://admin:s3cr3t,Pass@h"),
            "nats://admin:***@h"
        );
        assert_eq!(redact_url("nats://a@b:pw@h"), "nats://***@h");
        assert_eq!(redact_url("nats://a/b:pw@h"), "nats://***@h");
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

    fn entry_shown(list: &str, entry: &str) -> String {
        let start = list.find(entry).unwrap();
        redact_list_entry(list, start..start + entry.len())
    }

    #[test]
    fn list_entry_is_masked_as_part_of_the_whole_list() {
        let list = "nats://h:0,http://u:pw@x,nats://v:pw@h2:0,nats://h3:0?t=1";
        assert_eq!(entry_shown(list, "nats://h:0"), "nats://***");
        assert_eq!(entry_shown(list, "http://u:pw@x"), "***");
        assert_eq!(entry_shown(list, "nats://v:pw@h2:0"), "***@h2:0");
        assert_eq!(entry_shown(list, "nats://h3:0?t=1"), "nats://h3:0");
        // One entry holding the scheme and the last `@`: the entry alone.
        assert_eq!(
            entry_shown("nats://u:pw@h:0,nats://h2", "nats://u:pw@h:0"),
            "nats://u:***@h:0"
        );
        // No credentials anywhere: unchanged (query dropped).
        assert_eq!(entry_shown("nats://a,nats://b?x", "nats://b?x"), "nats://b");
        // A first entry without a scheme hides everything up to the last `@`.
        assert_eq!(entry_shown(" u:pw,nats://x@h", "u:pw"), "***");
        assert_eq!(entry_shown(" u:pw,nats://x@h", "nats://x@h"), "***@h");
        assert_eq!(entry_shown("u:pw@h,nats://x", "u:pw@h"), "***@h");
    }

    #[test]
    fn scheme_len_needs_a_scheme_and_the_slashes() {
        assert_eq!(scheme_len("nats://h"), Some(4));
        assert_eq!(scheme_len("nats+tls://h"), Some(8));
        assert_eq!(scheme_len("nats:/h"), None);
        assert_eq!(scheme_len("1nats://h"), None);
        assert_eq!(scheme_len("u:p@nats://h"), None);
        assert_eq!(scheme_len("://h"), None);
        assert_eq!(scheme_len(""), None);
    }

    proptest! {
        /// Whatever the user and password, the password never shows and the shape is kept.
        #[test]
        fn password_never_leaks(user in "[^:@/?#,\\s]{0,12}", pass in "\\PC{0,24}") {
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

        /// A password in the list, even one cut by a comma, never shows in any entry's masked
        /// form, wherever the entry starts and ends.
        #[test]
        fn list_entry_never_shows_a_password(
            before in "[a-z:/,]{0,12}",
            pass in "[A-Z]{1,4}([,/:@][A-Z]{1,4}){0,3}",
            after in "[a-z:/?#,@]{0,12}",
            cut in any::<prop::sample::Index>(),
            len in any::<prop::sample::Index>(),
        ) {
            let list = format!("nats://{before}u:{pass}@h{after}");
            let start = cut.index(list.len());
            let end = start + len.index(list.len() - start + 1);
            let shown = redact_list_entry(&list, start..end);
            for word in pass.split([',', '/', ':', '@']) {
                prop_assert!(!shown.contains(word), "{list} [{start}..{end}] -> {shown}");
            }
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
