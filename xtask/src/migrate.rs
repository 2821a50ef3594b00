//! `cargo xtask migrate` and `cargo xtask outbox-retention`: the library's own entry points
//! (`jetstream_bridge_pg::Migrator`, `Outbox::delete_sent_older_than`), so deploy scripts and
//! the library cannot drift.

use anyhow::Context as _;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use jetstream_bridge_config::{parse_duration, redact_url};
use jetstream_bridge_outbox::Outbox;
use jetstream_bridge_pg::{Component, Migrator};

/// Arguments of `cargo xtask migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// PostgreSQL database to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Apply only one component's tables (`outbox` or `inbox`); default: every table.
    #[arg(long)]
    only: Option<Component>,
}

async fn connect(url: &str) -> anyhow::Result<AsyncPgConnection> {
    println!("connecting to {}", redact_url(url));
    AsyncPgConnection::establish(url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(url)))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut conn = connect(&args.database_url).await?;
    let migrator = args.only.map_or_else(Migrator::all, Migrator::only);
    let pending = migrator
        .pending(&mut conn)
        .await
        .context("reading applied migrations")?;
    if pending.is_empty() {
        println!("nothing to apply: the database is up to date");
        return Ok(());
    }
    for name in &pending {
        println!("pending: {name}");
    }
    let applied = migrator
        .run(&mut conn)
        .await
        .context("applying migrations")?;
    for name in &applied {
        println!("applied: {name}");
    }
    if applied.is_empty() {
        println!("nothing applied: another run applied them meanwhile");
    }
    Ok(())
}

/// Arguments of `cargo xtask outbox-retention`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetentionArgs {
    /// PostgreSQL database holding `jetstream_outbox_events`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Delete `sent` rows whose `sent_at` is older than this (`7d`, `12h`, `30m`).
    #[arg(long, default_value = "7d")]
    older_than: String,
    /// Rows deleted per statement (each batch is its own short transaction).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
}

pub(crate) async fn retention(args: RetentionArgs) -> anyhow::Result<()> {
    let older_than = parse_duration(&args.older_than)
        .with_context(|| format!("--older-than {:?}", args.older_than))?;
    let mut conn = connect(&args.database_url).await?;
    println!(
        "deleting sent outbox rows older than {} in batches of {}",
        args.older_than, args.batch_size
    );
    let deleted = Outbox::delete_sent_older_than(&mut conn, older_than, args.batch_size)
        .await
        .context("deleting sent outbox rows")?;
    println!("deleted {deleted} rows");
    Ok(())
}
