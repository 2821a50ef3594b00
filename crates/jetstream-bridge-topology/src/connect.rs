//! [`connect`]: a NATS client from a [`Config`], with retries and a permission log.

use async_nats::{Client, ConnectOptions};
use jetstream_bridge_config::Config;

use crate::ensure::{self, TopologyPlan, TopologyReport};
use crate::error::{TopologyError, TopologyErrorKind};
use crate::spec::{EnsureOptions, TopologySpec};
use crate::violations::PermissionViolations;

/// A client connected by [`connect`], with the log of permissions violations the server
/// reported to it.
///
/// Other crates of the bridge take a plain [`Client`] (or a JetStream context); use
/// [`client`](Self::client) or [`into_client`](Self::into_client) to hand it over.
#[derive(Debug, Clone)]
pub struct Connection {
    client: Client,
    violations: PermissionViolations,
}

impl Connection {
    /// The NATS client.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The NATS client, dropping the rest.
    #[must_use]
    pub fn into_client(self) -> Client {
        self.client
    }

    /// A JetStream context on the client (default API prefix `$JS.API`).
    #[must_use]
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// The permissions violations the server reported on this connection.
    #[must_use]
    pub fn violations(&self) -> &PermissionViolations {
        &self.violations
    }

    /// [`plan`](crate::plan) on this connection, with its permission log so that a refused
    /// request names the missing permission at once.
    ///
    /// # Errors
    ///
    /// As [`plan`](crate::plan).
    pub async fn plan(
        &self,
        spec: &TopologySpec,
        options: &EnsureOptions,
    ) -> Result<TopologyPlan, TopologyError> {
        let options = options
            .clone()
            .permission_violations(self.violations.clone());
        ensure::plan(&self.jetstream(), spec, &options).await
    }

    /// [`check`](crate::check) on this connection, with its permission log.
    ///
    /// # Errors
    ///
    /// As [`check`](crate::check).
    pub async fn check(
        &self,
        spec: &TopologySpec,
        options: &EnsureOptions,
    ) -> Result<crate::TopologyCheck, TopologyError> {
        let options = options
            .clone()
            .permission_violations(self.violations.clone());
        crate::check(&self.jetstream(), spec, &options).await
    }

    /// [`ensure_topology`](crate::ensure_topology) on this connection, with its permission log.
    ///
    /// # Errors
    ///
    /// As [`ensure_topology`](crate::ensure_topology).
    pub async fn ensure_topology(
        &self,
        spec: &TopologySpec,
        options: &EnsureOptions,
    ) -> Result<TopologyReport, TopologyError> {
        let options = options
            .clone()
            .permission_violations(self.violations.clone());
        ensure::ensure_topology(&self.jetstream(), spec, &options).await
    }
}

/// The async-nats [`ConnectOptions`] for `config`: connection name (default: the app name),
/// connect timeout, custom inbox prefix, TLS (required flag, CA file, client certificate and
/// key), `.creds` file or NKey seed, the user and password (or token) embedded in the URLs, and
/// an event callback that records permissions violations in `violations` (and logs connection
/// events through `tracing`).
///
/// async-nats 0.51 ignores credentials embedded in server URLs (`nats://user:pass@host`), so
/// they are passed as options here; connect to [`server_urls`] (the URLs without them).
///
/// # Errors
///
/// [`TopologyErrorKind::Connection`] when the `.creds` file cannot be read, or the URLs carry
/// different credentials (one client authenticates the same way with every server).
pub async fn connect_options(
    config: &Config,
    violations: &PermissionViolations,
) -> Result<ConnectOptions, TopologyError> {
    let (_, auth) = split_credentials(config)?;
    let log = violations.clone();
    let mut options = ConnectOptions::new()
        .name(
            config
                .connection_name()
                .unwrap_or_else(|| config.app_name().as_str()),
        )
        .connection_timeout(config.connect_timeout())
        .custom_inbox_prefix(config.inbox_prefix().as_str())
        .event_callback(move |event| {
            if !log.observe(&event) {
                match &event {
                    async_nats::Event::Connected => tracing::debug!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
            async {}
        });
    if config.tls_required() {
        options = options.require_tls(true);
    }
    if let Some(ca) = config.tls_ca_file() {
        options = options.add_root_certificates(ca.to_path_buf());
    }
    if let (Some(cert), Some(key)) = (config.tls_client_cert(), config.tls_client_key()) {
        options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
    }
    match auth {
        Some(UrlAuth::UserPassword(user, password)) => {
            options = options.user_and_password(user, password);
        }
        Some(UrlAuth::Token(token)) => options = options.token(token),
        None => {}
    }
    if let Some(seed) = config.nkey_seed() {
        options = options.nkey(seed.expose_secret().to_owned());
    }
    if let Some(path) = config.creds_file() {
        options = options.credentials_file(path).await.map_err(|e| {
            TopologyError::new(
                TopologyErrorKind::Connection,
                format!("cannot read the NATS credentials file {}", path.display()),
            )
            .with_source(e)
        })?;
    }
    Ok(options)
}

/// Connects to the servers of `config` ([`Config::nats_urls`]) with [`connect_options`],
/// trying [`connect_retry_attempts`](Config::connect_retry_attempts) times; after failed
/// attempt `n` it waits `n ×` [`connect_retry_delay`](Config::connect_retry_delay), as the gem
/// does. Every failure is retried (timeouts, refused connections, TLS and authorization
/// errors alike: a server restarting may briefly refuse), and a failed attempt leaves no client
/// behind.
///
/// The returned client reconnects on its own afterwards (async-nats' default, without limit).
///
/// # Errors
///
/// [`TopologyErrorKind::Connection`] after the last attempt, naming the servers with
/// credentials masked; the last attempt's error is the source, with every URL and the NKey
/// seed masked in its text.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_config::Config;
///
/// let config = Config::builder("production", "orders", "billing")
///     .nats_urls("nats://orders:secret@nats-1:4222,nats://orders:secret@nats-2:4222")
///     .inbox_prefix("_INBOX.orders")
///     .build()?;
/// let connection = jetstream_bridge_topology::connect(&config).await?;
/// let client = connection.client().clone();
/// # let _ = client; Ok(()) }
/// ```
pub async fn connect(config: &Config) -> Result<Connection, TopologyError> {
    let violations = PermissionViolations::new();
    let urls = server_urls(config)?;
    let attempts = config.connect_retry_attempts().max(1);
    let mut attempt = 1;
    loop {
        let options = connect_options(config, &violations).await?;
        match options.connect(urls.as_slice()).await {
            Ok(client) => {
                tracing::info!(servers = %config.nats_urls(), "connected to NATS");
                return Ok(Connection { client, violations });
            }
            Err(e) if attempt < attempts => {
                let delay = config.connect_retry_delay().saturating_mul(attempt);
                tracing::warn!(
                    servers = %config.nats_urls(),
                    attempt,
                    attempts,
                    error = %mask(config, &e.to_string()),
                    retry_in = ?delay,
                    "cannot connect to NATS, retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(TopologyError::new(
                    TopologyErrorKind::Connection,
                    format!(
                        "cannot connect to NATS at {} after {attempts} attempt{}",
                        config.nats_urls(),
                        if attempts == 1 { "" } else { "s" }
                    ),
                )
                .with_source(MaskedError(mask(config, &error_chain(&e)))));
            }
        }
    }
}

/// Credentials embedded in a server URL.
#[derive(PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for UrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The servers of `config` without the credentials embedded in their URLs (those go into
/// [`connect_options`]), to pass to [`ConnectOptions::connect`].
///
/// # Errors
///
/// [`TopologyErrorKind::Connection`] when the URLs carry different credentials.
pub fn server_urls(config: &Config) -> Result<Vec<String>, TopologyError> {
    Ok(split_credentials(config)?.0)
}

fn split_credentials(config: &Config) -> Result<(Vec<String>, Option<UrlAuth>), TopologyError> {
    let mut urls = Vec::new();
    let mut auth: Option<UrlAuth> = None;
    for nats_url in config.nats_urls().iter() {
        let Ok(mut url) = url::Url::parse(nats_url.expose_url()) else {
            // The config crate validated it; pass it on unchanged.
            urls.push(nats_url.expose_url().to_owned());
            continue;
        };
        let user = percent_decode(url.username());
        let found = match url.password().map(percent_decode) {
            Some(password) => Some(UrlAuth::UserPassword(user, password)),
            None if !user.is_empty() => Some(UrlAuth::Token(user)),
            None => None,
        };
        if let Some(found) = found {
            if auth.as_ref().is_some_and(|a| *a != found) {
                return Err(TopologyError::new(
                    TopologyErrorKind::Connection,
                    format!(
                        "the NATS URLs {} carry different credentials; one client authenticates the same way with every server",
                        config.nats_urls()
                    ),
                ));
            }
            auth = Some(found);
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        urls.push(String::from(url));
    }
    Ok((urls, auth))
}

/// Decodes `%XX` escapes (userinfo in a URL is percent-encoded); invalid escapes stay as they
/// are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// `text` with every configured URL replaced by its redacted form and the NKey seed masked.
fn mask(config: &Config, text: &str) -> String {
    let mut out = text.to_owned();
    for url in config.nats_urls().iter() {
        out = out.replace(url.expose_url(), &url.redacted());
    }
    if let Some(seed) = config.nkey_seed() {
        out = out.replace(seed.expose_secret(), "***");
    }
    out
}

/// An error message already stripped of credentials.
#[derive(Debug)]
struct MaskedError(String);

impl std::fmt::Display for MaskedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MaskedError {}

/// The delay before attempt `n + 1` (for tests of the schedule).
#[cfg(test)]
fn retry_delay(config: &Config, failed_attempt: u32) -> std::time::Duration {
    config.connect_retry_delay().saturating_mul(failed_attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_delay_grows_with_the_attempt() {
        let config = Config::builder("e", "a", "b").build().unwrap();
        assert_eq!(retry_delay(&config, 1), Duration::from_secs(2));
        assert_eq!(retry_delay(&config, 2), Duration::from_secs(4));
    }

    #[test]
    fn credentials_leave_the_urls() {
        let config = Config::builder("e", "a", "b")
            .nats_urls("nats://us%40r:p%3Aw@h1:4222,nats://us%40r:p%3Aw@h2")
            .build()
            .unwrap();
        let (urls, auth) = split_credentials(&config).unwrap();
        assert_eq!(urls, ["nats://h1:4222", "nats://h2:4222"]);
        assert!(auth == Some(UrlAuth::UserPassword("us@r".into(), "p:w".into())));
        let token = Config::builder("e", "a", "b")
            .nats_urls("tls://s3cr3t@h")
            .build()
            .unwrap();
        let (urls, auth) = split_credentials(&token).unwrap();
        assert_eq!(urls, ["tls://h:4222"]);
        assert!(auth == Some(UrlAuth::Token("s3cr3t".into())));
        let mixed = Config::builder("e", "a", "b")
            .nats_urls("nats://a:b@h1,nats://c:d@h2")
            .build()
            .unwrap();
        let err = split_credentials(&mixed).unwrap_err();
        assert!(!err.to_string().contains(":b@"), "{err}");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn masks_urls_and_seed() {
        let config = Config::builder("e", "a", "b")
            .nats_urls("nats://u:pw@h1:4222")
            .build()
            .unwrap();
        let url = config.nats_urls().expose_urls()[0].to_owned();
        let masked = mask(&config, &format!("failed to reach {url}"));
        assert!(!masked.contains("pw"), "{masked}");
        assert!(masked.contains("u:***@h1"), "{masked}");
    }

    #[tokio::test]
    async fn connection_errors_name_the_servers_without_credentials() {
        let config = Config::builder("e", "a", "b")
            .nats_urls("nats://user:hunter2@127.0.0.1:1")
            .connect_retry_attempts(2)
            .connect_retry_delay("10ms")
            .connect_timeout("500ms")
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let err = connect(&config).await.unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Connection);
        assert!(start.elapsed() >= Duration::from_millis(10));
        let text = format!("{err} {err:?} {}", error_chain(&err));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("nats://user:***@127.0.0.1:1"), "{text}");
        assert!(text.contains("after 2 attempts"), "{text}");
    }
}
