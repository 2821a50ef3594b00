//! `migrate`: every table's migrations, idempotently, under an advisory lock.

use jetstream_bridge_config::redact_url;
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

type Names = Vec<String>;

async fn pending(
    conn: &mut diesel_async::AsyncPgConnection,
    only: Option<Only>,
) -> Result<Names, CliError> {
    let mut names = Vec::new();
    if only != Some(Only::Inbox) {
        names.extend(
            jetstream_bridge_outbox::migrations::pending(conn)
                .await
                .map_err(|e| connect::database_error("reading applied migrations", &e))?,
        );
    }
    if only != Some(Only::Outbox) {
        names.extend(
            jetstream_bridge_inbox::migrations::pending(conn)
                .await
                .map_err(|e| connect::database_error("reading applied migrations", &e))?,
        );
    }
    Ok(names)
}

/// Every migration not applied yet (outbox and inbox), for `check`.
pub(crate) async fn pending_all(
    conn: &mut diesel_async::AsyncPgConnection,
) -> Result<Names, CliError> {
    pending(conn, None).await
}

async fn apply(
    conn: &mut diesel_async::AsyncPgConnection,
    only: Option<Only>,
    applied: &mut Names,
) -> Result<(), CliError> {
    if only != Some(Only::Inbox) {
        applied.extend(
            jetstream_bridge_outbox::migrations::run_pending(conn)
                .await
                .map_err(|e| connect::database_error("applying the outbox migrations", &e))?,
        );
    }
    if only != Some(Only::Outbox) {
        applied.extend(
            jetstream_bridge_inbox::migrations::run_pending(conn)
                .await
                .map_err(|e| connect::database_error("applying the inbox migrations", &e))?,
        );
    }
    Ok(())
}

pub(crate) async fn run(args: MigrateArgs, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let url = global.database_url()?;
    let mut conn = connect::database(&url, out).await?;
    let before = pending(&mut conn, args.only).await?;
    for name in &before {
        out.note(format!("pending: {name}"));
    }
    let mut applied = Vec::new();
    if let Err(e) = apply(&mut conn, args.only, &mut applied).await {
        let done = if applied.is_empty() {
            "nothing was applied".to_owned()
        } else {
            format!("applied before the failure: {}", applied.join(", "))
        };
        return Err(CliError::new(
            CliErrorKind::Partial,
            format!("{e} ({done})"),
        ));
    }
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
