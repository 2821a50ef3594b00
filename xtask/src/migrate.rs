//! `cargo xtask migrate` and `cargo xtask outbox-retention`: the `jetstream-bridge` command
//! line's own `migrate` and `outbox cleanup` (`jetstream_bridge_cli`), so deploy scripts, the
//! binary and the library cannot drift.

use jetstream_bridge_cli::{Command, GlobalArgs, MigrateArgs, OutboxCleanupArgs, OutboxCommand};

/// Arguments of `cargo xtask migrate` (those of `jetstream-bridge migrate`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    args: MigrateArgs,
    #[command(flatten)]
    global: GlobalArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    Command::Migrate(args.args).run(&args.global).await?;
    Ok(())
}

/// Arguments of `cargo xtask outbox-retention` (those of `jetstream-bridge outbox cleanup`).
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    #[command(flatten)]
    args: OutboxCleanupArgs,
    #[command(flatten)]
    global: GlobalArgs,
}

pub(crate) async fn retention(args: RetentionArgs) -> anyhow::Result<()> {
    Command::Outbox(OutboxCommand::Cleanup(args.args))
        .run(&args.global)
        .await?;
    Ok(())
}
