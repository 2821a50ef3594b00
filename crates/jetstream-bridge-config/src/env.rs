//! Loading a [`ConfigBuilder`] from environment variables (the table is in the crate README).
//!
//! Rules: an empty value counts as unset. Booleans, integers, layouts, modes and presets are
//! trimmed before parsing; names, subjects, URLs and secrets are used exactly as given (URL lists
//! are trimmed around the commas). Unreadable values become [`ConfigProblem::EnvVar`] problems,
//! reported by [`ConfigBuilder::build`] together with everything else; nothing panics.

use std::collections::HashMap;
use std::str::FromStr;

use crate::builder::{ConfigBuilder, DurationInput};
use crate::config::ConsumerMode;
use crate::error::{ConfigProblem, EnvVarError};
use crate::preset::Preset;
use crate::subject::SubjectLayout;

/// Every variable read, with the option it sets (kept in sync with the README by a test).
#[cfg(test)]
const ENV_VARS: &[(&str, &str)] = &[
    ("NATS_URLS", "nats_urls"),
    ("NATS_URL", "nats_urls"),
    ("NATS_ENV", "env"),
    ("JETSTREAM_SUBJECT_LAYOUT", "layout"),
    ("APP_NAME", "app_name"),
    ("DESTINATION_APP", "destination_app"),
    ("JETSTREAM_PRESET", "preset"),
    ("JETSTREAM_STREAM_NAME", "stream_name"),
    ("JETSTREAM_DURABLE_NAME", "durable_name"),
    ("JETSTREAM_DELIVERY_SUBJECT", "delivery_subject"),
    ("JETSTREAM_PUSH_CONSUMER_GROUP", "push_consumer_group"),
    ("JETSTREAM_DISABLE_JS_API", "disable_js_api"),
    ("NATS_INBOX_PREFIX", "inbox_prefix"),
    ("JETSTREAM_CONNECT_RETRY_ATTEMPTS", "connect_retry_attempts"),
    ("JETSTREAM_CONNECT_RETRY_DELAY", "connect_retry_delay"),
    ("JETSTREAM_CONNECT_TIMEOUT", "connect_timeout"),
    ("JETSTREAM_CONNECTION_NAME", "connection_name"),
    ("JETSTREAM_USE_OUTBOX", "use_outbox"),
    ("JETSTREAM_USE_INBOX", "use_inbox"),
    ("JETSTREAM_USE_DLQ", "use_dlq"),
    ("JETSTREAM_CONSUMER_MODE", "consumer_mode"),
    ("JETSTREAM_BATCH_SIZE", "batch_size"),
    ("JETSTREAM_MAX_DELIVER", "max_deliver"),
    ("JETSTREAM_ACK_WAIT", "ack_wait"),
    ("JETSTREAM_BACKOFF", "backoff"),
    ("JETSTREAM_MAX_ACK_PENDING", "max_ack_pending"),
    ("JETSTREAM_HANDLER_CONCURRENCY", "handler_concurrency"),
    ("JETSTREAM_MAX_PAYLOAD_BYTES", "max_payload_bytes"),
    ("JETSTREAM_STREAM_REPLICAS", "stream_replicas"),
    ("JETSTREAM_DUPLICATE_WINDOW", "duplicate_window"),
    ("JETSTREAM_TLS_REQUIRED", "tls_required"),
    ("JETSTREAM_TLS_CA_FILE", "tls_ca_file"),
    ("JETSTREAM_TLS_CLIENT_CERT", "tls_client_cert"),
    ("JETSTREAM_TLS_CLIENT_KEY", "tls_client_key"),
    ("JETSTREAM_CREDS_FILE", "creds_file"),
    ("JETSTREAM_NKEY_SEED", "nkey_seed"),
    ("DATABASE_URL", "database_url"),
];

/// What a lookup found.
enum Lookup {
    Missing,
    Value(String),
    NotUnicode,
}

/// Reads variables, collecting problems and the variable behind each field.
struct Reader<F> {
    lookup: F,
    problems: Vec<ConfigProblem>,
    origins: Vec<(&'static str, &'static str)>,
}

impl<F: FnMut(&str) -> Lookup> Reader<F> {
    /// The raw value; empty counts as unset. Records `field` as coming from `var`.
    fn string(&mut self, var: &'static str, field: &'static str) -> Option<String> {
        match (self.lookup)(var) {
            Lookup::Value(v) if !v.is_empty() => {
                self.origins.push((field, var));
                Some(v)
            }
            Lookup::Value(_) | Lookup::Missing => None,
            Lookup::NotUnicode => {
                self.problems.push(ConfigProblem::EnvVar {
                    var,
                    reason: EnvVarError::NotUnicode,
                });
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        var: &'static str,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, EnvVarError>,
    ) -> Option<T> {
        let raw = self.string(var, field)?;
        match parse(raw.trim()) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.problems.push(ConfigProblem::EnvVar { var, reason });
                None
            }
        }
    }

    fn bool(&mut self, var: &'static str, field: &'static str) -> Option<bool> {
        self.parsed(var, field, parse_bool)
    }

    fn int<T: FromStr>(&mut self, var: &'static str, field: &'static str) -> Option<T> {
        self.parsed(var, field, |s| {
            s.parse().map_err(|_| EnvVarError::NotInteger {
                value: s.to_owned(),
            })
        })
    }

    fn named<T: FromStr<Err = crate::error::UnknownVariantError>>(
        &mut self,
        var: &'static str,
        field: &'static str,
    ) -> Option<T> {
        self.parsed(var, field, |s| s.parse().map_err(EnvVarError::Unknown))
    }
}

/// `true/false/1/0/yes/no/on/off`, case-insensitive.
fn parse_bool(s: &str) -> Result<bool, EnvVarError> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(EnvVarError::NotBoolean {
            value: s.to_owned(),
        }),
    }
}

impl ConfigBuilder {
    /// Loads the builder from the process environment (see the crate README for the variables).
    /// Further setters may override what was read.
    ///
    /// Unreadable values (a bad boolean, a non-Unicode value, …) never panic: they are kept as
    /// problems and reported by [`build`](Self::build), together with every other problem, each
    /// naming the variable it came from.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(v) => Lookup::Value(v),
            Err(std::env::VarError::NotPresent) => Lookup::Missing,
            Err(std::env::VarError::NotUnicode(_)) => Lookup::NotUnicode,
        })
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (for tests, or
    /// another source of settings).
    ///
    /// ```
    /// use jetstream_bridge_config::ConfigBuilder;
    ///
    /// let config = ConfigBuilder::from_env_with(|name| match name {
    ///     "NATS_ENV" => Some("production".to_owned()),
    ///     "APP_NAME" => Some("orders".to_owned()),
    ///     "DESTINATION_APP" => Some("billing".to_owned()),
    ///     "JETSTREAM_BATCH_SIZE" => Some("50".to_owned()),
    ///     _ => None,
    /// })
    /// .build()?;
    /// assert_eq!(config.batch_size(), 50);
    /// # Ok::<(), jetstream_bridge_config::ConfigError>(())
    /// ```
    pub fn from_env_with<F>(mut lookup: F) -> Self
    where
        F: FnMut(&str) -> Option<String>,
    {
        Self::from_lookup(|name| lookup(name).map_or(Lookup::Missing, Lookup::Value))
    }

    /// Like [`from_env`](Self::from_env), reading variables from `(name, value)` pairs.
    ///
    /// ```
    /// use jetstream_bridge_config::ConfigBuilder;
    ///
    /// let err = ConfigBuilder::from_env_pairs([
    ///     ("NATS_ENV", "production"),
    ///     ("APP_NAME", "orders"),
    ///     ("DESTINATION_APP", "billing"),
    ///     ("JETSTREAM_USE_OUTBOX", "maybe"),
    /// ])
    /// .build()
    /// .unwrap_err();
    /// assert!(err.to_string().contains("JETSTREAM_USE_OUTBOX"));
    /// ```
    pub fn from_env_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map: HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from_env_with(|name| map.get(name).cloned())
    }

    fn from_lookup(lookup: impl FnMut(&str) -> Lookup) -> Self {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
            origins: Vec::new(),
        };
        let env = r.string("NATS_ENV", "env").unwrap_or_default();
        let app = r.string("APP_NAME", "app_name").unwrap_or_default();
        let dest = r
            .string("DESTINATION_APP", "destination_app")
            .unwrap_or_default();
        let mut b = Self::new(env, app, dest);

        if let Some(preset) = r.named::<Preset>("JETSTREAM_PRESET", "preset") {
            b = b.preset(preset);
        }
        if let Some(layout) = r.named::<SubjectLayout>("JETSTREAM_SUBJECT_LAYOUT", "layout") {
            b = b.layout(layout);
        }
        if let Some(urls) = r
            .string("NATS_URLS", "nats_urls")
            .or_else(|| r.string("NATS_URL", "nats_urls"))
        {
            b = b.nats_urls(urls);
        }
        if let Some(v) = r.string("JETSTREAM_STREAM_NAME", "stream_name") {
            b = b.stream_name(v);
        }
        if let Some(v) = r.string("JETSTREAM_DURABLE_NAME", "durable_name") {
            b = b.durable_name(v);
        }
        if let Some(v) = r.string("JETSTREAM_DELIVERY_SUBJECT", "delivery_subject") {
            b = b.delivery_subject(v);
        }
        if let Some(v) = r.string("JETSTREAM_PUSH_CONSUMER_GROUP", "push_consumer_group") {
            b = b.push_consumer_group(v);
        }
        if let Some(v) = r.bool("JETSTREAM_DISABLE_JS_API", "disable_js_api") {
            b = b.disable_js_api(v);
        }
        if let Some(v) = r.string("NATS_INBOX_PREFIX", "inbox_prefix") {
            b = b.inbox_prefix(v);
        }
        if let Some(v) = r.int("JETSTREAM_CONNECT_RETRY_ATTEMPTS", "connect_retry_attempts") {
            b = b.connect_retry_attempts(v);
        }
        if let Some(v) = r.string("JETSTREAM_CONNECT_RETRY_DELAY", "connect_retry_delay") {
            b = b.connect_retry_delay(v);
        }
        if let Some(v) = r.string("JETSTREAM_CONNECT_TIMEOUT", "connect_timeout") {
            b = b.connect_timeout(v);
        }
        if let Some(v) = r.string("JETSTREAM_CONNECTION_NAME", "connection_name") {
            b = b.connection_name(v);
        }
        if let Some(v) = r.bool("JETSTREAM_USE_OUTBOX", "use_outbox") {
            b = b.use_outbox(v);
        }
        if let Some(v) = r.bool("JETSTREAM_USE_INBOX", "use_inbox") {
            b = b.use_inbox(v);
        }
        if let Some(v) = r.bool("JETSTREAM_USE_DLQ", "use_dlq") {
            b = b.use_dlq(v);
        }
        if let Some(v) = r.named::<ConsumerMode>("JETSTREAM_CONSUMER_MODE", "consumer_mode") {
            b = b.consumer_mode(v);
        }
        if let Some(v) = r.int("JETSTREAM_BATCH_SIZE", "batch_size") {
            b = b.batch_size(v);
        }
        if let Some(v) = r.int("JETSTREAM_MAX_DELIVER", "max_deliver") {
            b = b.max_deliver(v);
        }
        if let Some(v) = r.string("JETSTREAM_ACK_WAIT", "ack_wait") {
            b = b.ack_wait(v);
        }
        if let Some(v) = r.string("JETSTREAM_BACKOFF", "backoff") {
            b = b.backoff(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(DurationInput::from),
            );
        }
        if let Some(v) = r.int("JETSTREAM_MAX_ACK_PENDING", "max_ack_pending") {
            b = b.max_ack_pending(v);
        }
        if let Some(v) = r.int("JETSTREAM_HANDLER_CONCURRENCY", "handler_concurrency") {
            b = b.handler_concurrency(v);
        }
        if let Some(v) = r.int("JETSTREAM_MAX_PAYLOAD_BYTES", "max_payload_bytes") {
            b = b.max_payload_bytes(v);
        }
        if let Some(v) = r.int("JETSTREAM_STREAM_REPLICAS", "stream_replicas") {
            b = b.stream_replicas(v);
        }
        if let Some(v) = r.string("JETSTREAM_DUPLICATE_WINDOW", "duplicate_window") {
            b = b.duplicate_window(v);
        }
        if let Some(v) = r.bool("JETSTREAM_TLS_REQUIRED", "tls_required") {
            b = b.tls_required(v);
        }
        if let Some(v) = r.string("JETSTREAM_TLS_CA_FILE", "tls_ca_file") {
            b = b.tls_ca_file(v);
        }
        if let Some(v) = r.string("JETSTREAM_TLS_CLIENT_CERT", "tls_client_cert") {
            b = b.tls_client_cert(v);
        }
        if let Some(v) = r.string("JETSTREAM_TLS_CLIENT_KEY", "tls_client_key") {
            b = b.tls_client_key(v);
        }
        if let Some(v) = r.string("JETSTREAM_CREDS_FILE", "creds_file") {
            b = b.creds_file(v);
        }
        if let Some(v) = r.string("JETSTREAM_NKEY_SEED", "nkey_seed") {
            b = b.nkey_seed(v);
        }
        if let Some(v) = r.string("DATABASE_URL", "database_url") {
            b = b.database_url(v);
        }

        // Required values are attributed to their variable even when it was not set, so that
        // "missing value for `app_name`" names `APP_NAME`.
        for (field, var) in [
            ("env", "NATS_ENV"),
            ("app_name", "APP_NAME"),
            ("destination_app", "DESTINATION_APP"),
        ] {
            if !r.origins.iter().any(|(f, _)| *f == field) {
                r.origins.push((field, var));
            }
        }
        b.env_problems = r.problems;
        b.origins = r.origins;
        b
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::{ConfigError, DurationError, NatsUrlError};

    const BASE: [(&str, &str); 3] = [
        ("NATS_ENV", "production"),
        ("APP_NAME", "orders"),
        ("DESTINATION_APP", "billing"),
    ];

    fn with(extra: &[(&str, &str)]) -> ConfigBuilder {
        ConfigBuilder::from_env_pairs(BASE.iter().chain(extra.iter()).copied())
    }

    fn err(extra: &[(&str, &str)]) -> ConfigError {
        with(extra).build().unwrap_err()
    }

    #[test]
    fn minimal_environment_gives_the_defaults() {
        let c = with(&[]).build().unwrap();
        assert_eq!(c.subjects().source(), "production.orders.sync.billing");
        assert_eq!(c.nats_urls().expose_urls(), ["nats://127.0.0.1:4222"]);
        assert_eq!(c.batch_size(), 25);
        assert!(c.disable_js_api());
        assert_eq!(c.preset(), None);
    }

    #[test]
    fn every_variable_is_read() {
        let c = ConfigBuilder::from_env_pairs([
            ("NATS_URLS", "nats://u:p@n1:4222,tls://n2"),
            ("NATS_URL", "nats://ignored"),
            ("NATS_ENV", "staging"),
            ("JETSTREAM_SUBJECT_LAYOUT", "env-less"),
            ("APP_NAME", "orders"),
            ("DESTINATION_APP", "billing"),
            ("JETSTREAM_STREAM_NAME", "s"),
            ("JETSTREAM_DURABLE_NAME", "d"),
            ("JETSTREAM_DELIVERY_SUBJECT", "deliver.here"),
            ("JETSTREAM_PUSH_CONSUMER_GROUP", "g"),
            ("JETSTREAM_DISABLE_JS_API", "off"),
            ("NATS_INBOX_PREFIX", "$RPC.orders"),
            ("JETSTREAM_CONNECT_RETRY_ATTEMPTS", "7"),
            ("JETSTREAM_CONNECT_RETRY_DELAY", "500ms"),
            ("JETSTREAM_CONNECT_TIMEOUT", "3s"),
            ("JETSTREAM_CONNECTION_NAME", "orders-1"),
            ("JETSTREAM_USE_OUTBOX", "yes"),
            ("JETSTREAM_USE_INBOX", "TRUE"),
            ("JETSTREAM_USE_DLQ", "0"),
            ("JETSTREAM_CONSUMER_MODE", "Push"),
            ("JETSTREAM_BATCH_SIZE", " 50 "),
            ("JETSTREAM_MAX_DELIVER", "10"),
            ("JETSTREAM_ACK_WAIT", "60s"),
            ("JETSTREAM_BACKOFF", "2s, 10s ,30s"),
            ("JETSTREAM_MAX_ACK_PENDING", "100"),
            ("JETSTREAM_HANDLER_CONCURRENCY", "8"),
            ("JETSTREAM_MAX_PAYLOAD_BYTES", "2048"),
            ("JETSTREAM_STREAM_REPLICAS", "3"),
            ("JETSTREAM_DUPLICATE_WINDOW", "5m"),
            ("JETSTREAM_TLS_REQUIRED", "on"),
            ("JETSTREAM_TLS_CA_FILE", "/etc/ca.pem"),
            ("JETSTREAM_TLS_CLIENT_CERT", "/etc/cert.pem"),
            ("JETSTREAM_TLS_CLIENT_KEY", "/etc/key.pem"),
            ("JETSTREAM_NKEY_SEED", "SUABCDEFGH234567"),
            ("DATABASE_URL", "postgres://app:pw@db/app"),
        ])
        .build()
        .unwrap();
        assert_eq!(
            c.nats_urls().expose_urls(),
            ["nats://u:p@n1:4222", "tls://n2:4222"]
        );
        assert_eq!(c.env().unwrap(), "staging");
        assert_eq!(c.layout(), SubjectLayout::EnvLess);
        assert_eq!(c.subjects().source(), "orders.sync.billing");
        assert_eq!(c.stream_name(), "s");
        assert_eq!(c.durable_name(), "d");
        assert_eq!(c.subjects().delivery_subject(), "deliver.here");
        assert_eq!(c.subjects().push_group(), "g");
        assert!(!c.disable_js_api());
        assert_eq!(c.inbox_prefix(), "$RPC.orders");
        assert_eq!(c.connect_retry_attempts(), 7);
        assert_eq!(c.connect_retry_delay(), Duration::from_millis(500));
        assert_eq!(c.connect_timeout(), Duration::from_secs(3));
        assert_eq!(c.connection_name(), Some("orders-1"));
        assert!(c.use_outbox() && c.use_inbox() && !c.use_dlq());
        assert_eq!(c.consumer_mode(), ConsumerMode::Push);
        assert_eq!(c.batch_size(), 50);
        assert_eq!(c.max_deliver(), 10);
        assert_eq!(c.ack_wait(), Duration::from_secs(60));
        assert_eq!(c.backoff(), [2, 10, 30].map(Duration::from_secs).as_slice());
        assert_eq!(c.max_ack_pending(), Some(100));
        assert_eq!(c.handler_concurrency(), 8);
        assert_eq!(c.max_payload_bytes(), 2048);
        assert_eq!(c.stream_replicas(), 3);
        assert_eq!(c.duplicate_window(), Duration::from_secs(300));
        assert!(c.tls_required());
        assert_eq!(c.tls_ca_file().unwrap().to_str(), Some("/etc/ca.pem"));
        assert_eq!(c.tls_client_cert().unwrap().to_str(), Some("/etc/cert.pem"));
        assert_eq!(c.tls_client_key().unwrap().to_str(), Some("/etc/key.pem"));
        assert_eq!(c.nkey_seed().unwrap().expose_secret(), "SUABCDEFGH234567");
        assert_eq!(
            c.database_url().unwrap().expose(),
            "postgres://app:pw@db/app"
        );
    }

    #[test]
    fn creds_file_is_read() {
        let c = with(&[("JETSTREAM_CREDS_FILE", "/run/nats.creds")])
            .build()
            .unwrap();
        assert_eq!(c.creds_file().unwrap().to_str(), Some("/run/nats.creds"));
    }

    #[test]
    fn nats_url_is_the_fallback() {
        let c = with(&[("NATS_URL", "nats://single:1")]).build().unwrap();
        assert_eq!(c.nats_urls().expose_urls(), ["nats://single:1"]);
        let c = with(&[("NATS_URLS", ""), ("NATS_URL", "nats://single:1")])
            .build()
            .unwrap();
        assert_eq!(c.nats_urls().expose_urls(), ["nats://single:1"]);
    }

    #[test]
    fn booleans_accept_every_spelling() {
        for (v, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("On", true),
            (" on ", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("OFF", false),
        ] {
            let c = with(&[("JETSTREAM_USE_OUTBOX", v)]).build().unwrap();
            assert_eq!(c.use_outbox(), expected, "{v}");
        }
    }

    #[test]
    fn bad_boolean_is_a_typed_problem_naming_the_variable() {
        let e = err(&[("JETSTREAM_DISABLE_JS_API", "nope")]);
        assert_eq!(
            e.problems(),
            [ConfigProblem::EnvVar {
                var: "JETSTREAM_DISABLE_JS_API",
                reason: EnvVarError::NotBoolean {
                    value: "nope".into()
                }
            }]
        );
        assert!(e.to_string().contains("JETSTREAM_DISABLE_JS_API"), "{e}");
    }

    #[test]
    fn bad_integers_are_typed_problems() {
        let e = err(&[
            ("JETSTREAM_MAX_DELIVER", "-1"),
            ("JETSTREAM_BATCH_SIZE", "lots"),
            ("JETSTREAM_STREAM_REPLICAS", "99999999999999999999999"),
        ]);
        let vars: Vec<_> = e
            .problems()
            .iter()
            .map(|p| match p {
                ConfigProblem::EnvVar {
                    var,
                    reason: EnvVarError::NotInteger { .. },
                } => *var,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            vars,
            [
                "JETSTREAM_BATCH_SIZE",
                "JETSTREAM_MAX_DELIVER",
                "JETSTREAM_STREAM_REPLICAS"
            ]
        );
    }

    #[test]
    fn unknown_names_are_typed_problems() {
        let e = err(&[
            ("JETSTREAM_PRESET", "turbo"),
            ("JETSTREAM_SUBJECT_LAYOUT", "flat"),
            ("JETSTREAM_CONSUMER_MODE", "poll"),
        ]);
        assert_eq!(e.problems().len(), 3);
        for p in e.problems() {
            assert!(
                matches!(
                    p,
                    ConfigProblem::EnvVar {
                        reason: EnvVarError::Unknown(_),
                        ..
                    }
                ),
                "{p:?}"
            );
        }
        assert!(e.to_string().contains("available: development"), "{e}");
    }

    #[test]
    fn field_problems_name_the_variable_they_came_from() {
        let e = err(&[
            ("JETSTREAM_ACK_WAIT", "30"),
            ("JETSTREAM_BACKOFF", "1s,oops"),
            ("JETSTREAM_BATCH_SIZE", "0"),
            ("NATS_URLS", "http://u:secret@h"),
        ]);
        assert_eq!(e.env_var_for("ack_wait"), Some("JETSTREAM_ACK_WAIT"));
        assert_eq!(e.env_var_for("backoff"), Some("JETSTREAM_BACKOFF"));
        assert_eq!(e.env_var_for("batch_size"), Some("JETSTREAM_BATCH_SIZE"));
        assert_eq!(e.env_var_for("nats_urls"), Some("NATS_URLS"));
        assert!(e.problems().contains(&ConfigProblem::InvalidDuration {
            field: "ack_wait",
            value: "30".into(),
            reason: DurationError::MissingUnit
        }));
        assert!(e
            .problems()
            .iter()
            .any(|p| matches!(p, ConfigProblem::InvalidBackoff { index: 1, .. })));
        assert!(e.problems().iter().any(|p| matches!(
            p,
            ConfigProblem::InvalidNatsUrl {
                reason: NatsUrlError::UnsupportedScheme { .. },
                ..
            }
        )));
        let s = e.to_string();
        assert!(s.contains("(env `JETSTREAM_ACK_WAIT`)"), "{s}");
        assert!(s.contains("(env `NATS_URLS`)"), "{s}");
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn missing_required_variables_are_named() {
        let e = ConfigBuilder::from_env_pairs::<_, &str, &str>([])
            .build()
            .unwrap_err();
        let s = e.to_string();
        for var in ["NATS_ENV", "APP_NAME", "DESTINATION_APP"] {
            assert!(s.contains(var), "{s}");
        }
        assert_eq!(e.problems().len(), 3);
    }

    #[test]
    fn env_less_layout_without_env() {
        let c = ConfigBuilder::from_env_pairs([
            ("JETSTREAM_SUBJECT_LAYOUT", "env-less"),
            ("APP_NAME", "orders"),
            ("DESTINATION_APP", "billing"),
        ])
        .build()
        .unwrap();
        assert_eq!(c.env(), None);
        assert_eq!(c.subjects().source(), "orders.sync.billing");
        assert_eq!(c.stream_name(), "jetstream-bridge-stream");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = with(&[("JETSTREAM_BATCH_SIZE", ""), ("JETSTREAM_USE_DLQ", "")])
            .build()
            .unwrap();
        assert_eq!(c.batch_size(), 25);
        assert!(c.use_dlq());
    }

    #[test]
    fn names_are_not_trimmed() {
        let e = ConfigBuilder::from_env_pairs([
            ("NATS_ENV", "production"),
            ("APP_NAME", " orders"),
            ("DESTINATION_APP", "billing"),
        ])
        .build()
        .unwrap_err();
        assert!(matches!(
            e.problems(),
            [ConfigProblem::InvalidSubjectToken {
                field: "app_name",
                ..
            }]
        ));
        assert_eq!(e.env_var_for("app_name"), Some("APP_NAME"));
    }

    #[test]
    fn preset_is_applied_before_other_variables() {
        let c = with(&[
            ("JETSTREAM_PRESET", "production"),
            ("JETSTREAM_MAX_DELIVER", "7"),
        ])
        .build()
        .unwrap();
        assert_eq!(c.preset(), Some(Preset::Production));
        assert!(c.use_outbox() && c.use_inbox());
        assert_eq!(c.max_deliver(), 7);
    }

    #[test]
    fn setters_override_the_environment_and_its_attribution() {
        let e = with(&[("JETSTREAM_BATCH_SIZE", "0")]).build().unwrap_err();
        assert_eq!(e.env_var_for("batch_size"), Some("JETSTREAM_BATCH_SIZE"));
        let e = with(&[("JETSTREAM_BATCH_SIZE", "5")])
            .batch_size(0)
            .build()
            .unwrap_err();
        assert_eq!(e.env_var_for("batch_size"), None);
        let c = with(&[("JETSTREAM_BATCH_SIZE", "0")])
            .batch_size(3)
            .build()
            .unwrap();
        assert_eq!(c.batch_size(), 3);
    }

    #[test]
    fn env_app_and_destination_setters_override_the_environment() {
        let c = with(&[])
            .env("staging")
            .app_name("shipping")
            .build()
            .unwrap();
        assert_eq!(c.subjects().source(), "staging.shipping.sync.billing");
        let e = with(&[])
            .app_name(" bad")
            .destination_app("")
            .build()
            .unwrap_err();
        assert_eq!(
            e.env_var_for("app_name"),
            None,
            "the setter's value is reported"
        );
        assert_eq!(e.env_var_for("destination_app"), None);
        assert_eq!(e.env_var_for("env"), Some("NATS_ENV"));
        let e = ConfigBuilder::from_env_pairs::<_, &str, &str>([])
            .env("production")
            .app_name("orders")
            .build()
            .unwrap_err();
        assert_eq!(e.problems().len(), 1, "{e}");
        assert_eq!(e.env_var_for("destination_app"), Some("DESTINATION_APP"));
    }

    #[test]
    fn a_lower_max_deliver_with_the_default_backoff_is_reported() {
        let e = err(&[("JETSTREAM_MAX_DELIVER", "3")]);
        assert_eq!(
            e.problems(),
            [ConfigProblem::BackoffTooLong {
                delays: 5,
                max_deliver: 3
            }]
        );
        let e = err(&[
            ("JETSTREAM_MAX_DELIVER", "3"),
            ("JETSTREAM_BACKOFF", "1s,2s,3s,4s"),
        ]);
        assert!(e.to_string().contains("(env `JETSTREAM_BACKOFF`)"), "{e}");
        assert!(with(&[
            ("JETSTREAM_MAX_DELIVER", "3"),
            ("JETSTREAM_BACKOFF", "1s,2s")
        ])
        .build()
        .is_ok());
    }

    #[test]
    fn not_unicode_is_a_problem_not_a_panic() {
        let b = ConfigBuilder::from_lookup(|name| match name {
            "NATS_ENV" => Lookup::Value("p".into()),
            "APP_NAME" => Lookup::Value("a".into()),
            "DESTINATION_APP" => Lookup::Value("b".into()),
            "JETSTREAM_ACK_WAIT" => Lookup::NotUnicode,
            _ => Lookup::Missing,
        });
        let e = b.build().unwrap_err();
        assert_eq!(
            e.problems(),
            [ConfigProblem::EnvVar {
                var: "JETSTREAM_ACK_WAIT",
                reason: EnvVarError::NotUnicode
            }]
        );
    }

    #[test]
    fn secrets_from_the_environment_never_show() {
        let e = err(&[
            ("JETSTREAM_NKEY_SEED", "not-a-seed-hunter2"),
            ("DATABASE_URL", "postgres://app:hunter2@db/app"),
            ("NATS_URLS", "nats://u:hunter2@h:0"),
        ]);
        let s = format!("{e} {e:?}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn from_env_reads_the_process_environment_without_panicking() {
        // Whatever the test process's environment holds, loading never panics.
        let _ = ConfigBuilder::from_env().build();
    }

    #[test]
    fn readme_documents_every_variable() {
        let readme = include_str!("../README.md");
        for (var, field) in ENV_VARS {
            assert!(readme.contains(&format!("`{var}`")), "README lacks {var}");
            assert!(
                readme.contains(&format!("`{field}`")),
                "README lacks {field}"
            );
        }
    }

    #[test]
    fn every_variable_in_the_table_is_actually_read() {
        // Each variable, set alone to a value that cannot parse, must show up in the error or
        // change the result: proves the loader reads it.
        let baseline = with(&[]).build().unwrap();
        for (var, _) in ENV_VARS {
            if BASE.iter().any(|(b, _)| b == var) {
                continue;
            }
            let got = with(&[(var, "\u{1}bad value")]).build();
            match got {
                Err(e) => assert!(e.to_string().contains(&format!("`{var}`")), "{var}: {e}"),
                Ok(c) => assert_ne!(c, baseline, "{var} was not read"),
            }
        }
    }
}
