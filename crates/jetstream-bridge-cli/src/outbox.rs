//! `outbox status | retry-failed | cleanup`: a thin layer over `jetstream_bridge_outbox::Outbox`.

use std::time::Duration;

use jetstream_bridge_config::parse_duration;
use jetstream_bridge_outbox::{FailedRows, Outbox};
use serde_json::json;

use crate::connect::{self, OUTBOX_TABLE};
use crate::error::CliError;
use crate::output::{self, Out};
use crate::settings::GlobalArgs;

/// `outbox` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum OutboxCommand {
    /// Counts by status, the age of the oldest pending row, the most frequent errors.
    Status(OutboxStatusArgs),
    /// Put quarantined (`failed`) rows back to `pending` and wake the relays, which publish
    /// them.
    RetryFailed(OutboxRetryArgs),
    /// Delete `sent` rows older than `--older-than`, in batches.
    Cleanup(OutboxCleanupArgs),
}

/// Arguments of `outbox status`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct OutboxStatusArgs {
    /// How many distinct errors to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// Arguments of `outbox retry-failed`.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(required = true, multiple = false)]
#[non_exhaustive]
pub struct OutboxRetryArgs {
    /// The failed rows of these event ids (repeatable).
    #[arg(long = "event-id", value_name = "ID")]
    pub event_ids: Vec<String>,
    /// Every failed row.
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `outbox cleanup`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct OutboxCleanupArgs {
    /// Delete `sent` rows whose `sent_at` is older than this (`7d`, `12h`).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Rows per delete statement (each its own short transaction).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
}

pub(crate) async fn run(
    cmd: OutboxCommand,
    global: &GlobalArgs,
    out: &Out,
) -> Result<(), CliError> {
    let url = global.database_url()?;
    let mut conn = connect::database(&url, out).await?;
    connect::require_table(&mut conn, OUTBOX_TABLE).await?;
    match cmd {
        OutboxCommand::Status(args) => {
            let status = Outbox::status(&mut conn, args.top)
                .await
                .map_err(|e| connect::database_error("reading the outbox", &e))?;
            if out.json() {
                out.value(&json!({
                    "pending": status.pending,
                    "publishing": status.publishing,
                    "sent": status.sent,
                    "failed": status.failed,
                    "oldest_pending_age_seconds": output::secs(status.oldest_pending_age),
                    "top_errors": status.top_errors.iter().map(|e| json!({
                        "error": e.error, "status": e.status, "count": e.count,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                out.table(
                    &["PENDING", "PUBLISHING", "SENT", "FAILED", "OLDEST PENDING"],
                    &[vec![
                        status.pending.to_string(),
                        status.publishing.to_string(),
                        status.sent.to_string(),
                        status.failed.to_string(),
                        output::opt_age(status.oldest_pending_age),
                    ]],
                );
                if !status.top_errors.is_empty() {
                    out.line("");
                    let rows: Vec<Vec<String>> = status
                        .top_errors
                        .iter()
                        .map(|e| vec![e.count.to_string(), e.status.clone(), e.error.clone()])
                        .collect();
                    out.table(&["ROWS", "STATUS", "LAST ERROR"], &rows);
                }
            }
        }
        OutboxCommand::RetryFailed(args) => {
            let rows = if args.all {
                FailedRows::All
            } else {
                FailedRows::EventIds(args.event_ids)
            };
            let done = Outbox::requeue_failed(&mut conn, &rows)
                .await
                .map_err(|e| {
                    connect::database_error("requeueing failed rows (nothing changed)", &e)
                })?;
            if out.json() {
                out.value(&json!({
                    "requeued": done.requeued,
                    "not_failed": done.not_failed,
                }));
            } else {
                for id in &done.requeued {
                    out.line(format!("requeued: {id}"));
                }
                for id in &done.not_failed {
                    out.line(format!("not a failed row (left alone): {id}"));
                }
                out.line(format!(
                    "{} row(s) back to pending; running relays were woken to publish them",
                    done.requeued.len()
                ));
            }
        }
        OutboxCommand::Cleanup(args) => {
            connect::cleanup(
                out,
                "sent outbox",
                args.older_than,
                args.batch_size,
                Outbox::delete_sent_older_than(&mut conn, args.older_than, args.batch_size),
            )
            .await?;
        }
    }
    Ok(())
}
