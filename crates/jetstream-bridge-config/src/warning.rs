//! [`ConfigWarning`]: settings of a valid [`Config`] that cannot work as written, listed by
//! [`Config::warnings`].

use std::fmt;

use crate::config::Config;
use crate::duration::format_duration;

/// A setting of a valid [`Config`] that cannot work as written. Never an error: the
/// configuration builds and runs; part of it just has no effect. Listed by [`Config::warnings`],
/// for a start-up log line or a configuration check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigWarning {
    /// The delays of `backoff` from position `first_unused` on never apply: a message is
    /// redelivered at most `max_deliver - 1` times, and the delay after failed delivery `n` is
    /// `backoff[n-1]`. The gem's defaults (5 deliveries, 5 delays) carry one such delay.
    UnusedBackoff {
        /// Zero-based position of the first delay that never applies (`max_deliver - 1`).
        first_unused: usize,
        /// The delays that never apply, formatted (`1m`).
        unused: Vec<String>,
        /// The configured `max_deliver`.
        max_deliver: u32,
    },
    /// `handler_concurrency` is above `max_ack_pending`: the server never has more than
    /// `max_ack_pending` messages unacknowledged, so the extra handler slots stay idle.
    ConcurrencyAboveMaxAckPending {
        /// The configured `handler_concurrency`.
        handler_concurrency: usize,
        /// The configured `max_ack_pending`.
        max_ack_pending: u32,
    },
    /// A CA file or client certificate is set, but neither `tls_required` nor a `tls://` URL asks
    /// for TLS: the files are used only when the server itself demands TLS; otherwise the
    /// connection is plain text.
    TlsFilesWithoutTls,
}

impl ConfigWarning {
    /// The option the warning is about.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::UnusedBackoff { .. } => "backoff",
            Self::ConcurrencyAboveMaxAckPending { .. } => "handler_concurrency",
            Self::TlsFilesWithoutTls => "tls_required",
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnusedBackoff {
                first_unused,
                unused,
                max_deliver,
            } => write!(
                f,
                "`backoff` delays from position {first_unused} on ({}) never apply: with \
                 `max_deliver` {max_deliver} a message is redelivered at most {first_unused} \
                 time{}",
                unused.join(", "),
                if *first_unused == 1 { "" } else { "s" }
            ),
            Self::ConcurrencyAboveMaxAckPending {
                handler_concurrency,
                max_ack_pending,
            } => write!(
                f,
                "`handler_concurrency` {handler_concurrency} is above `max_ack_pending` \
                 {max_ack_pending}: at most {max_ack_pending} messages are handled at once"
            ),
            Self::TlsFilesWithoutTls => f.write_str(
                "TLS files are set but neither `tls_required` nor a `tls://` URL asks for TLS: \
                 they are used only if the server demands TLS, otherwise the connection is plain \
                 text",
            ),
        }
    }
}

impl Config {
    /// Settings that build but cannot work as written, in a stable order; empty when there are
    /// none. Never fails. Log them at start-up, or fail a configuration check on them.
    ///
    /// ```
    /// use jetstream_bridge_config::{Config, ConfigWarning};
    ///
    /// // The gem's defaults: 5 deliveries, 5 delays; the last delay never applies.
    /// let config = Config::builder("production", "orders", "billing").build()?;
    /// assert!(matches!(
    ///     config.warnings()[..],
    ///     [ConfigWarning::UnusedBackoff { first_unused: 4, .. }]
    /// ));
    /// assert_eq!(
    ///     config.warnings()[0].to_string(),
    ///     "`backoff` delays from position 4 on (1m) never apply: with `max_deliver` 5 a message \
    ///      is redelivered at most 4 times"
    /// );
    ///
    /// let tuned = Config::builder("production", "orders", "billing")
    ///     .backoff(["1s", "5s", "15s", "30s"])
    ///     .build()?;
    /// assert!(tuned.warnings().is_empty());
    /// # Ok::<(), jetstream_bridge_config::ConfigError>(())
    /// ```
    #[must_use]
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        let redeliveries =
            usize::try_from(self.max_deliver.saturating_sub(1)).unwrap_or(usize::MAX);
        if let Some(unused) = self.backoff.get(redeliveries..).filter(|u| !u.is_empty()) {
            warnings.push(ConfigWarning::UnusedBackoff {
                first_unused: redeliveries,
                unused: unused.iter().map(|d| format_duration(*d)).collect(),
                max_deliver: self.max_deliver,
            });
        }
        if let Some(max_ack_pending) = self.max_ack_pending {
            let limit = usize::try_from(max_ack_pending).unwrap_or(usize::MAX);
            if self.handler_concurrency > limit {
                warnings.push(ConfigWarning::ConcurrencyAboveMaxAckPending {
                    handler_concurrency: self.handler_concurrency,
                    max_ack_pending,
                });
            }
        }
        let tls_files = self.tls_ca_file.is_some() || self.tls_client_cert.is_some();
        if tls_files && !self.tls_required && !self.nats_urls.any_tls() {
            warnings.push(ConfigWarning::TlsFilesWithoutTls);
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::Preset;

    fn base() -> crate::ConfigBuilder {
        Config::builder("production", "orders", "billing")
    }

    #[test]
    fn presets_carry_one_unused_delay_like_the_gem_defaults() {
        for preset in Preset::ALL {
            let config = base().preset(preset).build().unwrap();
            let warnings = config.warnings();
            assert_eq!(warnings.len(), 1, "{preset}: {warnings:?}");
            assert_eq!(warnings[0].field(), "backoff");
            assert!(matches!(
                &warnings[0],
                ConfigWarning::UnusedBackoff { unused, .. } if unused.len() == 1
            ));
        }
    }

    #[test]
    fn one_delivery_uses_no_delay() {
        let config = base().max_deliver(1).backoff(["2s"]).build().unwrap();
        assert_eq!(
            config.warnings(),
            [ConfigWarning::UnusedBackoff {
                first_unused: 0,
                unused: vec!["2s".into()],
                max_deliver: 1
            }]
        );
        assert!(config.warnings()[0]
            .to_string()
            .ends_with("redelivered at most 0 times"));
        let config = base().max_deliver(2).backoff(["2s"]).build().unwrap();
        assert!(config.warnings().is_empty());
        assert!(
            config.warnings().is_empty(),
            "calling twice changes nothing"
        );
        let config = base().max_deliver(100).backoff(["2s"]).build().unwrap();
        assert!(config.warnings().is_empty(), "the last delay repeats");
    }

    #[test]
    fn concurrency_above_max_ack_pending() {
        let config = base()
            .backoff(["1s"])
            .batch_size(2)
            .max_ack_pending(2)
            .handler_concurrency(3)
            .build()
            .unwrap();
        let warnings = config.warnings();
        assert_eq!(
            warnings,
            [ConfigWarning::ConcurrencyAboveMaxAckPending {
                handler_concurrency: 3,
                max_ack_pending: 2
            }]
        );
        assert_eq!(warnings[0].field(), "handler_concurrency");
        assert_eq!(
            warnings[0].to_string(),
            "`handler_concurrency` 3 is above `max_ack_pending` 2: at most 2 messages are \
             handled at once"
        );
        let config = base()
            .backoff(["1s"])
            .batch_size(2)
            .max_ack_pending(3)
            .handler_concurrency(3)
            .build()
            .unwrap();
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn tls_files_without_tls() {
        let quiet = |b: crate::ConfigBuilder| b.backoff(["1s"]).build().unwrap().warnings();
        assert_eq!(
            quiet(base().tls_ca_file("/ca.pem")),
            [ConfigWarning::TlsFilesWithoutTls]
        );
        assert_eq!(
            quiet(base().tls_client_cert("/c.pem").tls_client_key("/k.pem")),
            [ConfigWarning::TlsFilesWithoutTls]
        );
        assert_eq!(ConfigWarning::TlsFilesWithoutTls.field(), "tls_required");
        assert!(quiet(base().tls_ca_file("/ca.pem").tls_required(true)).is_empty());
        assert!(quiet(base().tls_ca_file("/ca.pem").nats_urls("nats://a,tls://b")).is_empty());
        assert!(quiet(base().tls_required(true)).is_empty());
    }
}
