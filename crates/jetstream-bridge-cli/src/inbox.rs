//! `inbox status | cleanup`: a thin layer over `jetstream_bridge_inbox::Inbox`.

use std::time::Duration;

use jetstream_bridge_config::parse_duration;
use jetstream_bridge_inbox::Inbox;
use serde_json::json;

use crate::connect::{self, INBOX_TABLE};
use crate::error::CliError;
use crate::output::{self, Out};
use crate::settings::GlobalArgs;

/// `inbox` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum InboxCommand {
    /// Counts by status, the oldest unprocessed row, the most frequent errors.
    Status(InboxStatusArgs),
    /// Delete processed rows older than `--older-than`, in batches.
    Cleanup(InboxCleanupArgs),
}

/// Arguments of `inbox status`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct InboxStatusArgs {
    /// How many distinct errors to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

/// Arguments of `inbox cleanup`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct InboxCleanupArgs {
    /// Delete processed rows whose `processed_at` is older than this (`30d`). Keep it longer
    /// than any redelivery or replay can arrive: a deleted row no longer deduplicates.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Rows per delete statement.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u32,
}

pub(crate) async fn run(cmd: InboxCommand, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let url = global.database_url()?;
    let mut conn = connect::database(&url, out).await?;
    connect::require_table(&mut conn, INBOX_TABLE).await?;
    let inbox = Inbox::new();
    match cmd {
        InboxCommand::Status(args) => {
            let s = inbox
                .summary(&mut conn, args.top)
                .await
                .map_err(|e| connect::database_error("reading the inbox", &e))?;
            if out.json() {
                out.value(&json!({
                    "received": s.received,
                    "processing": s.processing,
                    "processed": s.processed,
                    "failed": s.failed,
                    "oldest_unprocessed_age_seconds": output::secs(s.oldest_unprocessed_age),
                    "last_processed_age_seconds": output::secs(s.last_processed_age),
                    "top_errors": s.top_errors.iter().map(|(error, count)| json!({
                        "error": error, "count": count,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                out.table(
                    &[
                        "RECEIVED",
                        "PROCESSING",
                        "PROCESSED",
                        "FAILED",
                        "OLDEST UNPROCESSED",
                        "LAST PROCESSED",
                    ],
                    &[vec![
                        s.received.to_string(),
                        s.processing.to_string(),
                        s.processed.to_string(),
                        s.failed.to_string(),
                        output::opt_age(s.oldest_unprocessed_age),
                        s.last_processed_age
                            .map_or_else(|| "-".to_owned(), |d| format!("{} ago", output::age(d))),
                    ]],
                );
                if !s.top_errors.is_empty() {
                    out.line("");
                    let rows: Vec<Vec<String>> = s
                        .top_errors
                        .iter()
                        .map(|(error, count)| vec![count.to_string(), error.clone()])
                        .collect();
                    out.table(&["ROWS", "ERROR"], &rows);
                }
            }
        }
        InboxCommand::Cleanup(args) => {
            connect::cleanup(
                out,
                "processed inbox",
                args.older_than,
                args.batch_size,
                inbox.cleanup_processed(&mut conn, args.older_than, args.batch_size),
            )
            .await?;
        }
    }
    Ok(())
}
