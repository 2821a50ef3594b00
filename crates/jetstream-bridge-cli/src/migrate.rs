//! `migrate`: every table's migrations, idempotently, under an advisory lock.

use jetstream_bridge_config::redact_url;
use jetstream_bridge_pg::{Component, Migrator};
use serde_json::json;

use crate::connect;
use crate::error::{CliError, CliErrorKind};
use crate::output::Out;
use crate::settings::GlobalArgs;

/// Which tables `migrate --only` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum Only {
    /// `jetstream_outbox_events`.
    Outbox,
    /// `jetstream_inbox_events`.
    Inbox,
}

/// Arguments of `migrate`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct MigrateArgs {
    /// Apply only this table's migrations (default: every table).
    #[arg(long, value_enum)]
    pub only: Option<Only>,
}

fn migrator(only: Option<Only>) -> Migrator {
    match only {
        None => Migrator::all(),
        Some(Only::Outbox) => Migrator::only(Component::Outbox),
        Some(Only::Inbox) => Migrator::only(Component::Inbox),
    }
}

pub(crate) async fn run(args: MigrateArgs, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let url = global.database_url()?;
    let mut conn = connect::database(&url, out).await?;
    let migrator = migrator(args.only);
    let before = migrator
        .pending(&mut conn)
        .await
        .map_err(|e| connect::database_error("reading applied migrations", &e))?;
    for name in &before {
        out.note(format!("pending: {name}"));
    }
    let applied = match migrator.run(&mut conn).await {
        Ok(applied) => applied,
        Err(e) => {
            // Each migration commits on its own: say which ones are in now.
            let still = migrator
                .pending(&mut conn)
                .await
                .unwrap_or_else(|_| before.clone());
            let done: Vec<&str> = before
                .iter()
                .filter(|n| !still.contains(n))
                .map(String::as_str)
                .collect();
            let done = if done.is_empty() {
                "nothing was applied".to_owned()
            } else {
                format!("applied before the failure: {}", done.join(", "))
            };
            return Err(CliError::new(
                CliErrorKind::Partial,
                format!("applying migrations: {} ({done})", crate::error::chain(&e)),
            ));
        }
    };
    if out.json() {
        out.value(&json!({
            "database": redact_url(&url),
            "pending": before,
            "applied": applied,
        }));
    } else if applied.is_empty() {
        out.line(if before.is_empty() {
            "nothing to apply: the database is up to date"
        } else {
            "nothing applied: another run applied them meanwhile"
        });
    } else {
        for name in &applied {
            out.line(format!("applied: {name}"));
        }
    }
    Ok(())
}
