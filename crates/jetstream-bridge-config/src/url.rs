//! NATS server URLs: [`NatsUrl`] (one validated server) and [`NatsUrls`] (the `nats_urls` list).
//!
//! Accepted: `nats://`, `tls://` and `nats+tls://` (scheme case-insensitive; `nats+tls` is the
//! gem's spelling and is normalised to `tls`, the one async-nats understands). WebSocket schemes
//! (`ws`, `wss`) are not accepted: the gem never supported them. A host is required; the port
//! defaults to 4222 and must be in 1..=65535. Credentials may be given as `user:pass@` or `token@`
//! and are never shown: errors carry the [`Redacted`] form.
//!
//! Credentials end at the URL's **last** `@`, and the host is what follows it. A `/`, `?` or `#`
//! before that `@` is refused ([`NatsUrlError::UnencodedCredentials`]): it would end the
//! credentials early, turn part of them into the host, and show that part wherever the URL is
//! shown. Such characters must be percent-encoded (`/` as `%2F`, `?` as `%3F`, `#` as `%23`);
//! the connecting code decodes them. So must a comma (`%2C`), which separates the URLs of a list
//! ([`NatsUrlError::UnexpectedComma`]). Raw `@` and `:` in a password work as they are.

use std::fmt;
use std::ops::Range;

use serde::{Serialize, Serializer};

use crate::error::{ConfigError, ConfigProblem, NatsUrlError};
use crate::redact::{redact_list_entry, redact_url, scheme_len, Redacted};

/// The default port of a NATS server.
const DEFAULT_PORT: u16 = 4222;

/// One validated NATS server URL.
///
/// `Debug` and `Display` mask credentials; [`expose_url`](Self::expose_url) gives the URL to
/// connect with.
///
/// ```
/// use jetstream_bridge_config::NatsUrl;
///
/// let url = NatsUrl::parse("NATS+TLS://user:pass@nats1")?;
/// assert_eq!(url.expose_url(), "tls://user:pass@nats1:4222");
/// assert_eq!(url.to_string(), "tls://user:***@nats1:4222");
/// assert_eq!((url.host(), url.port(), url.is_tls()), ("nats1", 4222, true));
/// # Ok::<(), jetstream_bridge_config::NatsUrlError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NatsUrl {
    /// Normalised: lower-case scheme (`nats` or `tls`), explicit port, credentials kept.
    url: String,
    host: String,
    port: u16,
    tls: bool,
}

impl NatsUrl {
    /// Parses and validates one URL. The input is used exactly as given (no trimming).
    ///
    /// # Errors
    ///
    /// [`NatsUrlError`] when the input is empty, contains whitespace or control characters, has
    /// no `scheme://`, a comma, an unsupported scheme, credentials with a raw `/`, `?` or `#` (or
    /// an `@` in a path, query or fragment), no host, a port outside
    /// 1..=65535, or does not parse. The error never contains the credentials (only an
    /// unsupported scheme is named).
    pub fn parse(input: &str) -> Result<Self, NatsUrlError> {
        if input.is_empty() {
            return Err(NatsUrlError::Empty);
        }
        // The url crate silently strips tabs and newlines; we reject them instead.
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NatsUrlError::InvalidCharacter);
        }
        let Some(scheme_len) = scheme_len(input) else {
            return Err(NatsUrlError::MissingScheme);
        };
        if input.contains(',') {
            return Err(NatsUrlError::UnexpectedComma);
        }
        // Everything up to the last `@` is credentials, so the host is what follows it. The
        // url crate ends the credentials at the first `/`, `?` or `#` instead: refuse those.
        let rest = &input[scheme_len + 3..];
        if rest
            .rfind('@')
            .is_some_and(|at| rest[..at].contains(['/', '?', '#']))
        {
            return Err(NatsUrlError::UnencodedCredentials);
        }
        let mut url = ::url::Url::parse(input).map_err(|e| match e {
            ::url::ParseError::EmptyHost => NatsUrlError::MissingHost,
            ::url::ParseError::InvalidPort => NatsUrlError::InvalidPort,
            ::url::ParseError::RelativeUrlWithoutBase => NatsUrlError::MissingScheme,
            other => NatsUrlError::Malformed {
                reason: other.to_string(),
            },
        })?;
        let tls = match url.scheme() {
            "nats" => false,
            "tls" | "nats+tls" => true,
            other => {
                return Err(NatsUrlError::UnsupportedScheme {
                    scheme: other.to_owned(),
                })
            }
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(NatsUrlError::MissingHost),
        };
        let port = match url.port() {
            Some(0) => return Err(NatsUrlError::InvalidPort),
            Some(p) => p,
            None => DEFAULT_PORT,
        };
        if tls && url.scheme() != "tls" {
            url.set_scheme("tls")
                .map_err(|()| NatsUrlError::Malformed {
                    reason: "cannot normalise the scheme".to_owned(),
                })?;
        }
        url.set_port(Some(port))
            .map_err(|()| NatsUrlError::Malformed {
                reason: "cannot set the port".to_owned(),
            })?;
        Ok(Self {
            url: String::from(url),
            host,
            port,
            tls,
        })
    }

    /// The normalised URL **with credentials**, to pass to the NATS client. Never log it; use
    /// `Display` instead.
    #[must_use]
    pub fn expose_url(&self) -> &str {
        &self.url
    }

    /// The host (for IPv6, with brackets, as in the URL).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (4222 when the URL has none).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the scheme demands TLS (`tls://` or `nats+tls://`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The URL with credentials masked (same as `Display`).
    #[must_use]
    pub fn redacted(&self) -> String {
        redact_url(&self.url).into_owned()
    }
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

impl fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NatsUrl({:?})", redact_url(&self.url))
    }
}

impl Serialize for NatsUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url(&self.url))
    }
}

/// A non-empty list of NATS server URLs, parsed from the comma-separated `nats_urls` option.
///
/// Entries are trimmed and surplus commas skipped (`nats://a, ,nats://b,`), but a list with no
/// entry at all is an error. A comma separates two URLs only when the next one starts with a
/// scheme: text after a comma that does not (`nats://a,b:4222`, or the rest of a password
/// holding a raw comma) stays with the URL before it, which is then refused with
/// [`NatsUrlError::UnexpectedComma`](crate::NatsUrlError::UnexpectedComma), masked.
/// `Display` joins the masked URLs with `,`.
///
/// ```
/// use jetstream_bridge_config::NatsUrls;
///
/// let urls = NatsUrls::parse("nats://n1:4222, nats://u:p@n2 ,")?;
/// assert_eq!(urls.len(), 2);
/// assert_eq!(urls.to_string(), "nats://n1:4222,nats://u:***@n2:4222");
/// assert_eq!(urls.expose_urls(), ["nats://n1:4222", "nats://u:p@n2:4222"]);
///
/// let err = NatsUrls::parse("nats://admin:s3cr3t,Pass@nats.example.com").unwrap_err();
/// assert!(err.to_string().contains("nats://admin:***@nats.example.com"));
/// assert!(!err.to_string().contains("s3cr3t"));
/// let encoded = NatsUrls::parse("nats://admin:s3cr3t%2CPass@nats.example.com")?;
/// assert_eq!(encoded.to_string(), "nats://admin:***@nats.example.com:4222");
/// # Ok::<(), jetstream_bridge_config::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrls(Vec<NatsUrl>);

impl NatsUrls {
    /// Parses a comma-separated list.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with one [`ConfigProblem::InvalidNatsUrl`] per bad entry (masked as
    /// part of the whole list: see [`ConfigProblem::InvalidNatsUrl`]), or
    /// [`ConfigProblem::Missing`] when the list has no entry.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let urls = parse_into(list, &mut problems);
        match urls {
            Some(urls) if problems.is_empty() => Ok(urls),
            _ => Err(ConfigError::new(problems)),
        }
    }

    /// The URLs, in the order given.
    pub fn iter(&self) -> std::slice::Iter<'_, NatsUrl> {
        self.0.iter()
    }

    /// Number of URLs (at least 1).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: a `NatsUrls` holds at least one URL.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URLs **with credentials**, to pass to the NATS client. Never log them.
    #[must_use]
    pub fn expose_urls(&self) -> Vec<&str> {
        self.0.iter().map(NatsUrl::expose_url).collect()
    }

    /// Whether any URL demands TLS.
    #[must_use]
    pub fn any_tls(&self) -> bool {
        self.0.iter().any(NatsUrl::is_tls)
    }
}

/// Parses `list`, pushing one problem per bad entry; `None` when nothing valid remains.
pub(crate) fn parse_into(list: &str, problems: &mut Vec<ConfigProblem>) -> Option<NatsUrls> {
    let entries = split_list(list);
    if entries.is_empty() {
        problems.push(ConfigProblem::Missing {
            field: "nats_urls",
            reason: "at least one NATS server URL is required",
        });
        return None;
    }
    let mut urls = Vec::with_capacity(entries.len());
    let mut bad = false;
    for (index, range) in entries.into_iter().enumerate() {
        match NatsUrl::parse(&list[range.clone()]) {
            Ok(url) => urls.push(url),
            Err(reason) => {
                bad = true;
                let shown = redact_list_entry(list, range);
                problems.push(ConfigProblem::InvalidNatsUrl {
                    index,
                    reason: mask_reason(&shown, reason),
                    url: Redacted::new(shown),
                });
            }
        }
    }
    (!bad).then_some(NatsUrls(urls))
}

/// The byte ranges of the entries of a comma-separated URL list, trimmed of whitespace and
/// surplus commas; empty entries are dropped.
///
/// A comma separates entries only when what follows it (after whitespace) is `scheme://` or
/// nothing but commas and whitespace, so a comma inside credentials (`nats://u:pa,ss@h`) never
/// cuts a URL in two: the entry keeps it and is refused whole.
fn split_list(list: &str) -> Vec<Range<usize>> {
    let is_filler = |c: char| c == ',' || c.is_whitespace();
    let tail = list.trim_end_matches(is_filler).len();
    let mut entries = Vec::new();
    let mut push = |range: Range<usize>| {
        let text = &list[range.clone()];
        let start = range.start + (text.len() - text.trim_start_matches(is_filler).len());
        let end = range.start + text.trim_end_matches(is_filler).len();
        if start < end {
            entries.push(start..end);
        }
    };
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        if comma >= tail || scheme_len(list[comma + 1..].trim_start()).is_some() {
            push(start..comma);
            start = comma + 1;
        }
    }
    push(start..list.len());
    entries
}

/// `reason` as shown next to an entry shown as `shown`: an unsupported scheme is named only
/// when `shown` shows it too (an entry inside an earlier URL's possible credentials is masked
/// whole, and its "scheme" may be part of a password).
fn mask_reason(shown: &str, reason: NatsUrlError) -> NatsUrlError {
    match reason {
        NatsUrlError::UnsupportedScheme { scheme }
            if !shown
                .to_ascii_lowercase()
                .starts_with(&format!("{scheme}://")) =>
        {
            NatsUrlError::UnsupportedScheme {
                scheme: "***".to_owned(),
            }
        }
        other => other,
    }
}

impl<'a> IntoIterator for &'a NatsUrls {
    type Item = &'a NatsUrl;
    type IntoIter = std::slice::Iter<'a, NatsUrl>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for NatsUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(url, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for NatsUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl Serialize for NatsUrls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(input: &str) -> NatsUrlError {
        NatsUrl::parse(input).unwrap_err()
    }

    #[test]
    fn accepts_the_three_schemes_case_insensitively() {
        let a = NatsUrl::parse("nats://h:4222").unwrap();
        assert_eq!((a.expose_url(), a.is_tls()), ("nats://h:4222", false));
        let b = NatsUrl::parse("TLS://h:4443").unwrap();
        assert_eq!((b.expose_url(), b.is_tls()), ("tls://h:4443", true));
        let c = NatsUrl::parse("nats+tls://h").unwrap();
        assert_eq!((c.expose_url(), c.is_tls()), ("tls://h:4222", true));
        let d = NatsUrl::parse("Nats://h").unwrap();
        assert_eq!(d.expose_url(), "nats://h:4222");
    }

    #[test]
    fn default_port_is_4222_and_explicit_ports_are_kept() {
        assert_eq!(NatsUrl::parse("nats://h").unwrap().port(), 4222);
        assert_eq!(NatsUrl::parse("nats://h:1").unwrap().port(), 1);
        assert_eq!(NatsUrl::parse("nats://h:65535").unwrap().port(), 65535);
    }

    #[test]
    fn ipv6_hosts_work() {
        let u = NatsUrl::parse("nats://[::1]:4222").unwrap();
        assert_eq!(u.host(), "[::1]");
        assert_eq!(u.expose_url(), "nats://[::1]:4222");
    }

    #[test]
    fn credentials_are_kept_for_connecting_but_masked_for_display() {
        let u = NatsUrl::parse("nats://user:pass@h:4222").unwrap();
        assert_eq!(u.expose_url(), "nats://user:pass@h:4222");
        assert_eq!(u.to_string(), "nats://user:***@h:4222");
        assert_eq!(u.redacted(), "nats://user:***@h:4222");
        assert_eq!(format!("{u:?}"), "NatsUrl(\"nats://user:***@h:4222\")");
        let t = NatsUrl::parse("nats://tok@h").unwrap();
        assert_eq!(t.to_string(), "nats://***@h:4222");
    }

    #[test]
    fn rejects_bad_urls_with_typed_errors() {
        assert_eq!(err(""), NatsUrlError::Empty);
        assert_eq!(err("localhost:4222"), NatsUrlError::MissingScheme);
        assert_eq!(err("nats:h"), NatsUrlError::MissingScheme);
        assert_eq!(
            err("http://h:4222"),
            NatsUrlError::UnsupportedScheme {
                scheme: "http".into()
            }
        );
        assert_eq!(
            err("wss://h:443"),
            NatsUrlError::UnsupportedScheme {
                scheme: "wss".into()
            }
        );
        assert_eq!(err("nats://:4222"), NatsUrlError::MissingHost);
        assert_eq!(err("nats://"), NatsUrlError::MissingHost);
        assert_eq!(err("nats://h:0"), NatsUrlError::InvalidPort);
        assert_eq!(err("nats://h:65536"), NatsUrlError::InvalidPort);
        assert_eq!(err("nats://h:abc"), NatsUrlError::InvalidPort);
        assert_eq!(err(" nats://h"), NatsUrlError::InvalidCharacter);
        assert_eq!(err("nats://h\n:4222"), NatsUrlError::InvalidCharacter);
    }

    #[test]
    fn errors_never_contain_the_input() {
        for input in [
            "nats://user:hunter2@h:99999",
            "http://user:hunter2@h",
            "nats://user:hunter2@",
            "nats://user:hunter2@h:4222/\u{7}",
        ] {
            let e = err(input).to_string();
            assert!(!e.contains("hunter2"), "{input} -> {e}");
        }
    }

    #[test]
    fn list_trims_and_skips_empty_entries() {
        let urls = NatsUrls::parse(" nats://a , ,tls://b:1,").unwrap();
        assert_eq!(urls.expose_urls(), ["nats://a:4222", "tls://b:1"]);
        assert!(urls.any_tls());
        assert!(!urls.is_empty());
        assert_eq!(urls.iter().count(), 2);
        assert_eq!((&urls).into_iter().count(), 2);
        assert_eq!(
            serde_json::to_string(&urls).unwrap(),
            r#"["nats://a:4222","tls://b:1"]"#
        );
    }

    #[test]
    fn empty_list_is_an_error() {
        for list in ["", " ", ",", " , , "] {
            let e = NatsUrls::parse(list).unwrap_err();
            assert_eq!(
                e.problems(),
                [ConfigProblem::Missing {
                    field: "nats_urls",
                    reason: "at least one NATS server URL is required"
                }]
            );
        }
    }

    #[test]
    fn list_reports_every_bad_entry_with_index_and_masked_url() {
        let e = NatsUrls::parse("nats://u:secret@x:0,http://h,nats://ok").unwrap_err();
        assert_eq!(e.problems().len(), 2);
        match &e.problems()[0] {
            ConfigProblem::InvalidNatsUrl { index, url, reason } => {
                assert_eq!(*index, 0);
                assert_eq!(url.to_string(), "nats://u:***@x:0");
                assert_eq!(*reason, NatsUrlError::InvalidPort);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            &e.problems()[1],
            ConfigProblem::InvalidNatsUrl {
                index: 1,
                reason: NatsUrlError::UnsupportedScheme { scheme },
                url,
            } if scheme == "http" && url.expose() == "http://h"
        ));
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
    }

    /// An entry before the list's last `@` may be the start of a password holding a comma: it
    /// is masked whole, scheme of a later entry included.
    #[test]
    fn entries_before_the_last_at_sign_are_masked_whole() {
        let list = "nats://h:0,http://u:secret@x,nats://u:secret@h:0";
        let e = NatsUrls::parse(list).unwrap_err();
        let shown: Vec<_> = e
            .problems()
            .iter()
            .map(|p| match p {
                ConfigProblem::InvalidNatsUrl { index, url, reason } => {
                    (*index, url.expose().clone(), reason.clone())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                (0, "nats://***".to_owned(), NatsUrlError::InvalidPort),
                (
                    1,
                    "***".to_owned(),
                    NatsUrlError::UnsupportedScheme {
                        scheme: "***".into()
                    }
                ),
                (2, "***@h:0".to_owned(), NatsUrlError::InvalidPort),
            ]
        );
        // The password `s3cr3t,nats://x` split where the comma is.
        let e = NatsUrls::parse("nats://admin:s3cr3t,nats://x@h").unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("admin"),
            "{text}"
        );
    }

    /// Found by fuzzing: each of these showed part of the credentials, or connected elsewhere.
    #[test]
    fn credentials_with_raw_separators_are_refused_and_never_shown() {
        for (input, reason, shown) in [
            (
                "nats://admin:s3cr3t,Pass@nats.example.com:4222",
                NatsUrlError::UnexpectedComma,
                "nats://admin:***@nats.example.com:4222",
            ),
            (
                "nats://Zm9vYmFy/YmF6+cXV4=@nats.example.com",
                NatsUrlError::UnencodedCredentials,
                "nats://***@nats.example.com",
            ),
            (
                "nats://admin:1234?s3cr3t@nats.example.com",
                NatsUrlError::UnencodedCredentials,
                "nats://admin:***@nats.example.com",
            ),
            (
                "nats://admin:12#s3cr3t@nats.example.com",
                NatsUrlError::UnencodedCredentials,
                "nats://admin:***@nats.example.com",
            ),
            (
                "nats://nats.example.com/x?mail=a@b",
                NatsUrlError::UnencodedCredentials,
                "nats://***@b",
            ),
            (
                "nats://h1:4222,u:s3cr3t@h2",
                NatsUrlError::UnexpectedComma,
                "nats://h1:***@h2",
            ),
        ] {
            assert_eq!(err(input), reason, "{input}");
            let e = NatsUrls::parse(input).unwrap_err();
            assert_eq!(
                e.problems(),
                [ConfigProblem::InvalidNatsUrl {
                    index: 0,
                    url: Redacted::new(shown.to_owned()),
                    reason
                }],
                "{input}"
            );
            for text in [e.to_string(), format!("{e:?}")] {
                for secret in ["s3cr3t", "Pass", "Zm9v", "YmF6", "1234"] {
                    assert!(!text.contains(secret), "{input}: {text}");
                }
            }
        }
        assert!(err("nats://u:p@h,").to_string().contains("%2C"));
        assert!(err("nats://a/b@h").to_string().contains("%2F"));
    }

    #[test]
    fn percent_encoded_credentials_and_raw_at_and_colon_work() {
        let u = NatsUrl::parse("nats://Zm9vYmFy%2FYmF6+cXV4=@nats.example.com").unwrap();
        assert_eq!(u.host(), "nats.example.com");
        assert_eq!(u.to_string(), "nats://***@nats.example.com:4222");
        let u = NatsUrl::parse("nats://admin:s3cr3t%2CPass@h").unwrap();
        assert_eq!(u.expose_url(), "nats://admin:s3cr3t%2CPass@h:4222");
        // Raw `@` and `:` in a password: the url crate encodes them; the host follows the last `@`.
        let u = NatsUrl::parse("nats://admin:p@ss:w0rd@h:1").unwrap();
        assert_eq!((u.host(), u.port()), ("h", 1));
        assert_eq!(u.expose_url(), "nats://admin:p%40ss%3Aw0rd@h:1");
        assert_eq!(u.to_string(), "nats://admin:***@h:1");
    }

    #[test]
    fn split_list_cuts_only_before_a_scheme() {
        let entries = |list: &str| -> Vec<String> {
            split_list(list)
                .into_iter()
                .map(|r| list[r].to_owned())
                .collect()
        };
        assert_eq!(
            entries(" nats://a , ,tls://b:1,,"),
            ["nats://a", "tls://b:1"]
        );
        assert_eq!(entries("nats://u:p,q@h"), ["nats://u:p,q@h"]);
        assert_eq!(entries("nats://a,b:1, c"), ["nats://a,b:1, c"]);
        assert_eq!(
            entries(",nats://a,  Nats+TLS://b"),
            ["nats://a", "Nats+TLS://b"]
        );
        assert_eq!(entries("h:1,nats://b"), ["h:1", "nats://b"]);
        assert!(entries(" , ,").is_empty());
    }

    #[test]
    fn display_and_debug_of_list_mask() {
        let urls = NatsUrls::parse("nats://a:b@h1,nats://h2").unwrap();
        assert_eq!(urls.to_string(), "nats://a:***@h1:4222,nats://h2:4222");
        let dbg = format!("{urls:?}");
        assert!(!dbg.contains(":b@"), "{dbg}");
    }

    proptest! {
        /// Parsing never panics, and a failure never echoes a password-like input.
        #[test]
        fn parse_never_panics(input in "\\PC*") {
            let _ = NatsUrl::parse(&input);
            let _ = NatsUrls::parse(&input);
        }

        /// Arbitrary bytes-ish input, including control characters.
        #[test]
        fn parse_never_panics_on_any_chars(input in any::<String>()) {
            let _ = NatsUrl::parse(&input);
        }

        /// A valid host and port always round-trip.
        #[test]
        fn valid_host_port_round_trip(host in "[a-z][a-z0-9-]{0,20}", port in 1u16..) {
            let u = NatsUrl::parse(&format!("nats://{host}:{port}")).unwrap();
            prop_assert_eq!(u.host(), host.as_str());
            prop_assert_eq!(u.port(), port);
        }

        /// Errors and Display never contain the password.
        #[test]
        fn url_errors_and_display_never_leak(pass in "[A-Za-z0-9]{12,20}", port in "[0-9a-z]{0,7}") {
            let input = format!("nats://user:{pass}@host:{port}");
            match NatsUrl::parse(&input) {
                Ok(u) => {
                    prop_assert!(!u.to_string().contains(&pass));
                    let debug = format!("{u:?}");
                    prop_assert!(!debug.contains(&pass));
                }
                Err(e) => prop_assert!(!e.to_string().contains(&pass)),
            }
            if let Err(e) = NatsUrls::parse(&input) {
                prop_assert!(!e.to_string().contains(&pass));
                let debug = format!("{e:?}");
                prop_assert!(!debug.contains(&pass));
            }
        }

        /// Splitting never loses or reorders text: entries are disjoint, in order, trimmed.
        #[test]
        fn split_list_ranges_are_ordered_and_trimmed(list in "[a-z:/@, ]{0,40}") {
            let mut last_end = 0;
            for range in split_list(&list) {
                prop_assert!(range.start >= last_end && range.start < range.end);
                let text = &list[range.clone()];
                prop_assert_eq!(text, text.trim_matches(|c: char| c == ',' || c.is_whitespace()));
                last_end = range.end;
            }
        }
    }
}
