//! [`GlobalArgs`]: the configuration every command reads, from the environment exactly as the
//! library reads it, each flag overriding its variable.

use std::collections::HashMap;

use jetstream_bridge_config::{Config, ConfigBuilder};
use jetstream_bridge_topology::{DlqPlacement, TopologySpec};

use crate::error::{CliError, CliErrorKind};
use crate::output::Secrets;

/// Options of every command.
///
/// The configuration comes from the environment, read exactly as the library reads it
/// (`ConfigBuilder::from_env`: `NATS_URLS`, `NATS_ENV`, `APP_NAME`, `DESTINATION_APP`,
/// `DATABASE_URL`, `JETSTREAM_*`, credentials and TLS settings); each flag overrides the
/// variable it names.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Global options")]
#[non_exhaustive]
pub struct GlobalArgs {
    /// Print the result as JSON on stdout (progress and notes stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// NATS server(s), comma-separated; overrides NATS_URLS / NATS_URL. Credentials in the
    /// URL are used and never printed.
    #[arg(long, global = true, value_name = "URLS")]
    pub nats_url: Option<String>,
    /// Environment token of the env-prefixed layout; overrides NATS_ENV.
    #[arg(long, global = true, value_name = "ENV")]
    pub env: Option<String>,
    /// This application's name; overrides APP_NAME.
    #[arg(long, global = true, value_name = "APP")]
    pub app: Option<String>,
    /// The peer application's name; overrides DESTINATION_APP.
    #[arg(long, global = true, value_name = "APP")]
    pub dest: Option<String>,
    /// Subject layout, `env-prefixed` or `env-less`; overrides JETSTREAM_SUBJECT_LAYOUT.
    #[arg(long, global = true, value_name = "LAYOUT")]
    pub layout: Option<String>,
    /// Stream name; overrides JETSTREAM_STREAM_NAME.
    #[arg(long, global = true, value_name = "NAME")]
    pub stream: Option<String>,
    /// Durable consumer name; overrides JETSTREAM_DURABLE_NAME.
    #[arg(long, global = true, value_name = "NAME")]
    pub durable: Option<String>,
    /// Where the DLQ subject lives: `separate-stream` (a browsable `<stream>-dlq` stream) or
    /// `main-stream` (in the work-queue stream, as the Ruby gem does).
    #[arg(
        long,
        global = true,
        env = "JETSTREAM_DLQ_PLACEMENT",
        default_value = "separate-stream",
        value_name = "PLACEMENT"
    )]
    pub dlq_placement: DlqPlacement,
    /// PostgreSQL database (outbox and inbox tables); overrides DATABASE_URL. Never printed.
    #[arg(long, global = true, value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl GlobalArgs {
    /// Flag overrides keyed by the environment variable they replace.
    fn overrides(&self) -> HashMap<&'static str, String> {
        [
            ("NATS_URLS", &self.nats_url),
            ("NATS_ENV", &self.env),
            ("APP_NAME", &self.app),
            ("DESTINATION_APP", &self.dest),
            ("JETSTREAM_SUBJECT_LAYOUT", &self.layout),
            ("JETSTREAM_STREAM_NAME", &self.stream),
            ("JETSTREAM_DURABLE_NAME", &self.durable),
            ("DATABASE_URL", &self.database_url),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }

    /// A setting: its flag, else its environment variable; empty counts as unset.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        self.overrides()
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }

    /// The configuration (`ConfigBuilder::from_env` with the flags applied).
    pub(crate) fn config(&self) -> Result<Config, CliError> {
        self.config_with(&[])
    }

    /// [`config`](Self::config) with some variables set to other values.
    pub(crate) fn config_with(&self, extra: &[(&'static str, &str)]) -> Result<Config, CliError> {
        let mut overrides = self.overrides();
        overrides.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        ConfigBuilder::from_env_with(|name| {
            overrides
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
        })
        .build()
        .map_err(|e| {
            CliError::new(
                CliErrorKind::Config,
                format!("invalid configuration (flags override the variables named): {e}"),
            )
        })
    }

    /// The topology of `config` with the chosen DLQ placement.
    pub(crate) fn spec(&self, config: &Config) -> TopologySpec {
        TopologySpec::from_config(config).with_dlq_placement(self.dlq_placement)
    }

    /// `--database-url`, else `DATABASE_URL`.
    pub(crate) fn database_url(&self) -> Result<String, CliError> {
        self.lookup("DATABASE_URL").ok_or_else(|| {
            CliError::new(
                CliErrorKind::Config,
                "no database: set DATABASE_URL or pass --database-url",
            )
        })
    }

    /// Every credential the settings hold, to mask in output.
    pub(crate) fn secrets(&self) -> Secrets {
        let urls: Vec<String> = ["NATS_URLS", "NATS_URL", "DATABASE_URL"]
            .into_iter()
            .filter_map(|name| self.lookup(name))
            .collect();
        let opaque: Vec<String> = ["JETSTREAM_NKEY_SEED"]
            .into_iter()
            .filter_map(|name| self.lookup(name))
            .collect();
        Secrets::from_sources(
            urls.iter().map(String::as_str),
            opaque.iter().map(String::as_str),
        )
    }
}
