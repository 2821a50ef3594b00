//! Where results go: tables or JSON on stdout, notes and progress on stderr, and the masking
//! of every credential the command knows about.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jetstream_bridge_config::redact_url;
use serde_json::Value;

use crate::settings::GlobalArgs;

/// The credentials a command knows (URL passwords and tokens, the NKey seed, whole DSNs):
/// masked in everything it prints.
#[derive(Debug, Clone, Default)]
pub(crate) struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    /// The secrets in `urls` (each a URL, a comma-separated URL list or a DSN) and the opaque
    /// secrets `opaque`.
    pub(crate) fn from_sources<'a>(
        urls: impl IntoIterator<Item = &'a str>,
        opaque: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut values = Vec::new();
        for list in urls {
            for url in list.split(',').map(str::trim) {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                if let Some((userinfo, _)) = rest.rsplit_once('@') {
                    match userinfo.split_once(':') {
                        Some((_, password)) => values.push(password.to_owned()),
                        // `nats://token@host`: a token; `postgres://user@host`: a user name.
                        None if !scheme.starts_with("postgres") => {
                            values.push(userinfo.to_owned());
                        }
                        None => {}
                    }
                }
                // A key/value DSN (`host=db password=x`): its password value.
                for pair in url.split_whitespace() {
                    if let Some(password) = pair.strip_prefix("password=") {
                        values.push(password.trim_matches('\'').to_owned());
                    }
                }
            }
        }
        values.extend(opaque.into_iter().map(str::to_owned));
        values.retain(|v| v.len() >= 3);
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every URL's credentials masked ([`redact_url`]) and every known secret
    /// replaced by `***` (also inside messages that quote it without a URL).
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = mask_urls(text);
        for secret in &self.values {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// `text` with the credentials of every URL in it masked ([`redact_url`]). A URL is a scheme
/// (`[A-Za-z0-9+.-]+`), `://`, and everything up to whitespace, a quote, a backtick or a
/// closing bracket.
fn mask_urls(text: &str) -> String {
    let is_scheme = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-');
    let is_end = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | ']' | '>');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_scheme(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at + 3..]
            .find(is_end)
            .map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The output of one command.
#[derive(Debug)]
pub(crate) struct Out {
    json: bool,
    secrets: Secrets,
    progress: Mutex<ProgressState>,
}

#[derive(Debug)]
struct ProgressState {
    tty: bool,
    last: Option<Instant>,
    shown: bool,
}

impl Out {
    pub(crate) fn new(global: &GlobalArgs) -> Self {
        Self {
            json: global.json,
            secrets: global.secrets(),
            progress: Mutex::new(ProgressState {
                tty: std::io::stderr().is_terminal(),
                last: None,
                shown: false,
            }),
        }
    }

    pub(crate) fn json(&self) -> bool {
        self.json
    }

    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// One line of the result on stdout (write errors, e.g. a closed pipe, are ignored).
    pub(crate) fn line(&self, text: impl AsRef<str>) {
        let text = self.secrets.scrub(text.as_ref());
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }

    /// The JSON result on stdout, pretty-printed.
    pub(crate) fn value(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_owned());
        self.line(text);
    }

    /// A note on stderr ("connecting to …", what a step did).
    pub(crate) fn note(&self, text: impl AsRef<str>) {
        self.end_progress();
        let text = self.secrets.scrub(text.as_ref());
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// A progress line on stderr: rewritten in place on a terminal, otherwise at most one
    /// line per second (and the last one).
    pub(crate) fn progress(&self, what: &str, done: u64, total: u64) {
        let mut state = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let finished = done >= total;
        let due = state.last.is_none_or(|at| {
            at.elapsed() >= Duration::from_millis(if state.tty { 100 } else { 1000 })
        });
        if !due && !finished {
            return;
        }
        state.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        if state.tty {
            let _ = write!(err, "\r{what}: {done}/{total}\x1b[K");
            state.shown = !finished;
            if finished {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{what}: {done}/{total}");
        }
        let _ = err.flush();
    }

    fn end_progress(&self) {
        let mut state = self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.shown {
            state.shown = false;
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    /// A table on stdout: a header row and aligned columns (cells are single-line; long cells
    /// other than the last are cut at 60 characters with `…`).
    pub(crate) fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        const MAX: usize = 60;
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                let last = row.len().saturating_sub(1);
                row.iter()
                    .enumerate()
                    .map(|(i, c)| cell(c, if i == last { usize::MAX } else { MAX }))
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in &cells {
            for (i, c) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let render = |row: &[String]| {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    let pad = widths.get(i).copied().unwrap_or(0);
                    line.push_str(&format!("{c:<pad$}  "));
                }
            }
            line.trim_end().to_owned()
        };
        let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
        self.line(render(&header));
        for row in &cells {
            self.line(render(row));
        }
    }

    /// `key  value` lines, keys aligned.
    pub(crate) fn fields(&self, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in fields {
            self.line(format!("{key:<width$}  {value}"));
        }
    }
}

/// One table cell: newlines and tabs become spaces, cut at `max` characters.
fn cell(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

/// A short human age: `45s`, `12m`, `3h 5m`, `2d 4h`.
pub(crate) fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// [`age`] of an optional duration, `-` when absent.
pub(crate) fn opt_age(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), age)
}

/// Seconds as a JSON number (`null` when absent).
pub(crate) fn secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| Value::from(d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_urls_and_known_secrets() {
        let s = Secrets::from_sources(
            [
                "postgres://app:hunter2@db/app",
                "nats://tok3n@n1:4222,nats://u:pw9@n2",
            ],
            ["SUSEED"],
        );
        let text = "failed postgres://app:hunter2@db/app (password hunter2) tok3n pw9 SUSEED";
        let out = s.scrub(text);
        for secret in ["hunter2", "tok3n", "pw9", "SUSEED"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("postgres://app:***@db/app"), "{out}");
        assert_eq!(
            mask_urls(r#"{"db": "postgres://u:p@h/d", "n": "`nats://t@h:1`" x://y}"#),
            r#"{"db": "postgres://u:***@h/d", "n": "`nats://***@h:1`" x://y}"#
        );
        let user_only = Secrets::from_sources(["postgres://postgres@db/app"], []);
        assert_eq!(
            user_only.scrub("postgres://postgres@db/app: role postgres"),
            "postgres://***@db/app: role postgres"
        );
        let kv = Secrets::from_sources(["host=db password=s3cret user=x"], []);
        assert_eq!(kv.scrub("auth s3cret failed"), "auth *** failed");
    }

    #[test]
    fn ages_and_cells() {
        assert_eq!(age(Duration::from_secs(5)), "5s");
        assert_eq!(age(Duration::from_secs(125)), "2m");
        assert_eq!(age(Duration::from_secs(3700)), "1h 1m");
        assert_eq!(age(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(cell("a\nb", 10), "a b");
        assert_eq!(cell("abcdef", 4), "abc…");
    }
}
