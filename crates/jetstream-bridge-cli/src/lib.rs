#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
mod connect;
mod dlq;
mod error;
mod health;
mod inbox;
mod migrate;
mod outbox;
mod output;
mod settings;
mod topology;

use clap::{Parser, Subcommand};

pub use error::{CliError, CliErrorKind};
pub use settings::GlobalArgs;

pub use check::CheckArgs;
pub use dlq::{DlqCommand, DlqListArgs, DlqPurgeArgs, DlqReplayArgs, DlqSelector, DlqShowArgs};
pub use health::HealthArgs;
pub use inbox::{InboxCleanupArgs, InboxCommand, InboxStatusArgs};
pub use migrate::{MigrateArgs, Only};
pub use outbox::{OutboxCleanupArgs, OutboxCommand, OutboxRetryArgs, OutboxStatusArgs};
pub use topology::EnsureTopologyArgs;

/// The `jetstream-bridge` command line: parse it with [`Cli::parse`] (or
/// [`Cli::parse_from`]) and [`run`](Self::run) it.
#[derive(Debug, Clone, Parser)]
#[command(name = "jetstream-bridge", version, about, long_about = None)]
#[non_exhaustive]
pub struct Cli {
    /// Options every command takes (connection and naming overrides, `--json`).
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Runs the command. Results go to stdout (a table, or JSON with `--json`); progress and
    /// notes to stderr.
    ///
    /// # Errors
    ///
    /// A [`CliError`] whose message says what failed, what was done before it, and never
    /// contains a credential; its [`kind`](CliError::kind) tells a failed check
    /// ([`Problems`](CliErrorKind::Problems)) from an operational error.
    pub async fn run(self) -> Result<(), CliError> {
        self.command.run(&self.global).await
    }
}

/// The commands, as a [`clap::Subcommand`] a workspace `xtask` can flatten into its own
/// command enum (`#[command(flatten)]`), then run with [`Command::run`].
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Create or upgrade every table (outbox and inbox) in DATABASE_URL: idempotent, safe to
    /// run from several deploys at once (advisory lock).
    Migrate(MigrateArgs),
    /// Create or verify the stream, the DLQ stream and the durable consumer of this service
    /// (idempotent; `--dry-run` prints the plan and changes nothing).
    EnsureTopology(EnsureTopologyArgs),
    /// Validate the configuration, connect to NATS and PostgreSQL, report the stream, DLQ
    /// stream, durable and tables, and settings that cannot work as written; non-zero exit on
    /// a problem.
    Check(CheckArgs),
    /// Print the health report once; exit 0 only when healthy.
    Health(HealthArgs),
    /// Browse, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Outbox status, requeue quarantined rows, retention.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Inbox status and retention.
    #[command(subcommand)]
    Inbox(InboxCommand),
}

impl Command {
    /// Runs the command with `global` options; see [`Cli::run`].
    ///
    /// # Errors
    ///
    /// As [`Cli::run`].
    pub async fn run(self, global: &GlobalArgs) -> Result<(), CliError> {
        let out = output::Out::new(global);
        let result = match self {
            Self::Migrate(args) => migrate::run(args, global, &out).await,
            Self::EnsureTopology(args) => topology::run(args, global, &out).await,
            Self::Check(args) => check::run(args, global, &out).await,
            Self::Health(args) => health::run(args, global, &out).await,
            Self::Dlq(cmd) => dlq::run(cmd, global, &out).await,
            Self::Outbox(cmd) => outbox::run(cmd, global, &out).await,
            Self::Inbox(cmd) => inbox::run(cmd, global, &out).await,
        };
        result.map_err(|e| e.scrubbed(out.secrets()))
    }
}

/// Runs the `jetstream-bridge` command line `args` (the first item is the program name), as
/// the binary does: [`Cli::parse_from`] then [`Cli::run`].
///
/// # Errors
///
/// As [`Cli::run`]; a command line clap rejects exits the process with clap's message (as
/// `Cli::parse_from` does).
pub async fn run_from<I, T>(args: I) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::parse_from(args).run().await
}
