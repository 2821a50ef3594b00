//! `cargo xtask ensure-topology`: the `jetstream-bridge ensure-topology` command
//! (`jetstream_bridge_cli`), so deploy scripts, the binary and the library cannot drift.

use jetstream_bridge_cli::{Command, EnsureTopologyArgs, GlobalArgs};

/// Arguments of `cargo xtask ensure-topology` (those of `jetstream-bridge ensure-topology`):
/// the configuration is read from the environment exactly as the application reads it, each
/// flag overriding its variable.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    args: EnsureTopologyArgs,
    #[command(flatten)]
    global: GlobalArgs,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    Command::EnsureTopology(args.args).run(&args.global).await?;
    Ok(())
}
