//! `cargo xtask ensure-topology`: plan, then create or verify the stream, the DLQ stream and the
//! durable consumer of one service, through `jetstream_bridge_topology` (the same calls an
//! application makes), so deploy scripts and the library cannot drift.

use std::collections::HashMap;

use anyhow::Context as _;
use jetstream_bridge_config::ConfigBuilder;
use jetstream_bridge_topology::{DlqPlacement, DriftPolicy, EnsureOptions, TopologySpec};

/// Arguments of `cargo xtask ensure-topology`.
///
/// The configuration is read from the environment exactly as the application reads it
/// (`ConfigBuilder::from_env`: `NATS_URLS`, `NATS_ENV`, `APP_NAME`, `DESTINATION_APP`,
/// `JETSTREAM_*`, credentials and TLS settings); each flag overrides its variable.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// NATS server(s), comma-separated; overrides NATS_URLS / NATS_URL. Credentials in the URL
    /// are used and never printed.
    #[arg(long)]
    nats_url: Option<String>,
    /// Environment token of the env-prefixed layout; overrides NATS_ENV.
    #[arg(long)]
    env: Option<String>,
    /// This application's name; overrides APP_NAME.
    #[arg(long)]
    app: Option<String>,
    /// The peer application's name; overrides DESTINATION_APP.
    #[arg(long)]
    dest: Option<String>,
    /// Subject layout, `env-prefixed` or `env-less`; overrides JETSTREAM_SUBJECT_LAYOUT.
    #[arg(long)]
    layout: Option<String>,
    /// Stream name; overrides JETSTREAM_STREAM_NAME.
    #[arg(long)]
    stream: Option<String>,
    /// Durable consumer name; overrides JETSTREAM_DURABLE_NAME.
    #[arg(long)]
    durable: Option<String>,
    /// Where the DLQ subject lives: `separate-stream` (a browsable `<stream>-dlq` stream) or
    /// `main-stream` (in the work-queue stream, as the Ruby gem does).
    #[arg(
        long,
        env = "JETSTREAM_DLQ_PLACEMENT",
        default_value = "separate-stream"
    )]
    dlq_placement: DlqPlacement,
    /// Update a differing durable consumer in place (never delete and recreate) instead of
    /// failing with a drift report.
    #[arg(long)]
    update_drift: bool,
    /// Move DLQ subjects that store no dead letter out of the work-queue stream into the
    /// separate DLQ stream (where a Ruby consumer's dead letters are not dropped).
    #[arg(long)]
    move_dlq_subjects: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Args {
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
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

fn print_lines(heading: &str, text: &str) {
    println!("{heading}");
    for line in text.lines() {
        println!("  {line}");
    }
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let overrides = args.overrides();
    let config = ConfigBuilder::from_env_with(|name| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
    .build()
    .context("invalid configuration (flags override the variables named)")?;
    let spec = TopologySpec::from_config(&config).with_dlq_placement(args.dlq_placement);
    let drift = if args.update_drift {
        DriftPolicy::Update
    } else {
        DriftPolicy::Report
    };
    println!(
        "config: {} layout, {} -> {}, stream {}, durable {} ({}), DLQ {} ({})",
        config.layout(),
        config.app_name(),
        config.destination_app(),
        spec.stream_name(),
        spec.durable_name().unwrap_or("none"),
        config.consumer_mode(),
        spec.dlq_subject().unwrap_or("off"),
        spec.dlq_placement(),
    );

    println!("connecting to {}", config.nats_urls());
    let connection = jetstream_bridge_topology::connect(&config).await?;
    let options = EnsureOptions::new()
        .drift_policy(drift)
        .move_dlq_subjects(args.move_dlq_subjects);

    println!("planning (reading every stream and the durable)");
    let plan = connection.plan(&spec, &options).await?;
    print_lines("plan:", &plan.to_string());
    plan.check()?;
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    if plan.is_empty() {
        println!("ensure-topology: OK, nothing to change");
        return Ok(());
    }

    println!("applying");
    let report = connection.ensure_topology(&spec, &options).await?;
    print_lines("applied:", &report.to_string());
    println!(
        "ensure-topology: OK ({} change{}, verified)",
        report.applied().len(),
        if report.applied().len() == 1 { "" } else { "s" }
    );
    Ok(())
}
