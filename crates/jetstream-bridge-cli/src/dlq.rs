//! `dlq list | show | replay | purge`: a thin layer over
//! `jetstream_bridge_consumer::admin::DeadLetterQueue`.

use std::time::Duration;

use jetstream_bridge_config::parse_duration;
use jetstream_bridge_consumer::admin::{
    DeadLetter, DeadLetterQueue, DlqErrorKind, DlqFilter, LetterOutcome, Outcome, Progress,
    ReplayOptions,
};
use serde_json::{json, Map, Value};

use crate::connect;
use crate::error::{CliError, CliErrorKind};
use crate::output::{self, Out};
use crate::settings::GlobalArgs;

/// `dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
#[non_exhaustive]
pub enum DlqCommand {
    /// List dead letters, oldest first: sequence, event id, reason, error, deliveries,
    /// original subject, age.
    List(DlqListArgs),
    /// Show one dead letter (by DLQ sequence or event id): headers, context, body.
    Show(DlqShowArgs),
    /// Republish dead letters to their original subjects (original body and headers, less
    /// the DLQ headers, under a replay msg-id), wait for each PubAck, then delete them from
    /// the DLQ.
    Replay(DlqReplayArgs),
    /// Delete dead letters.
    Purge(DlqPurgeArgs),
}

/// Arguments of `dlq list`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct DlqListArgs {
    /// Only this reason (`max_deliver_exceeded`, `unrecoverable`, `malformed_json`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this event type (the body's `event_type`).
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only dead letters younger than this (`1h`, `30m`, `2d`).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Arguments of `dlq show`.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct DlqShowArgs {
    /// A DLQ stream sequence (digits) or an event id.
    #[arg(value_name = "EVENT_ID|SEQ")]
    pub id: String,
}

/// Which dead letters `replay` and `purge` act on (every condition given must hold).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(required = true, multiple = true)]
#[non_exhaustive]
pub struct DlqSelector {
    /// These event ids (repeatable).
    #[arg(long = "event-id", value_name = "ID")]
    pub event_ids: Vec<String>,
    /// These DLQ stream sequences (repeatable).
    #[arg(long = "seq", value_name = "N")]
    pub sequences: Vec<u64>,
    /// Dead letters with this reason.
    #[arg(long)]
    pub reason: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["event_ids", "sequences", "reason"])]
    pub all: bool,
}

impl DlqSelector {
    fn filter(&self) -> DlqFilter {
        let mut filter = DlqFilter::new()
            .event_ids(self.event_ids.iter().cloned())
            .sequences(self.sequences.iter().copied());
        if let Some(reason) = &self.reason {
            filter = filter.reason(reason.clone());
        }
        filter
    }
}

/// Arguments of `dlq replay`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct DlqReplayArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub selector: DlqSelector,
    /// Say what would be replayed; publish and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the dead letters in the DLQ after replaying them.
    #[arg(long)]
    pub keep: bool,
}

/// Arguments of `dlq purge`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct DlqPurgeArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub selector: DlqSelector,
    /// Really delete them (without it, the command lists them and refuses).
    #[arg(long)]
    pub yes: bool,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) async fn run(cmd: DlqCommand, global: &GlobalArgs, out: &Out) -> Result<(), CliError> {
    let dlq = open(global, out).await?;
    match cmd {
        DlqCommand::List(args) => list(&dlq, args, out).await,
        DlqCommand::Show(args) => show(&dlq, &args.id, out).await,
        DlqCommand::Replay(args) => replay(&dlq, &args, out).await,
        DlqCommand::Purge(args) => purge(&dlq, &args, out).await,
    }
}

async fn open(global: &GlobalArgs, out: &Out) -> Result<DeadLetterQueue, CliError> {
    let config = global.config()?;
    let connection = connect::nats(&config, out).await?;
    DeadLetterQueue::open(connection.jetstream(), &config)
        .await
        .map_err(|e| {
            let kind = match e.kind() {
                DlqErrorKind::Disabled => CliErrorKind::Config,
                _ => CliErrorKind::Nats,
            };
            let hint = match e.kind() {
                DlqErrorKind::StreamNotFound { .. } => {
                    " (run `jetstream-bridge ensure-topology` to create it)"
                }
                _ => "",
            };
            CliError::new(kind, format!("{}{hint}", crate::error::chain(&e)))
        })
}

fn dlq_error(e: &jetstream_bridge_consumer::admin::DlqError) -> CliError {
    CliError::from_error(CliErrorKind::Nats, e)
}

fn progress(out: &Out) -> impl FnMut(Progress) + '_ {
    move |p: Progress| {
        let what = match p.stage {
            "scan" => "reading the DLQ",
            "replay" => "replaying",
            _ => "deleting",
        };
        out.progress(what, p.done, p.total);
    }
}

fn error_text(letter: &DeadLetter) -> String {
    match (letter.error_class(), letter.error_message()) {
        (Some(class), Some(message)) => format!("{class}: {message}"),
        (Some(one), None) | (None, Some(one)) => one.to_owned(),
        (None, None) => "-".to_owned(),
    }
}

fn summary_json(letter: &DeadLetter) -> Value {
    json!({
        "sequence": letter.sequence,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "reason": letter.reason,
        "error_class": letter.error_class(),
        "error_message": letter.error_message(),
        "deliveries": letter.deliveries,
        "original_subject": letter.original_subject(),
        "stored_at": letter.stored_at.map(|t| t.to_string()),
        "age_seconds": letter.age().map(|d| d.as_secs()),
    })
}

async fn list(dlq: &DeadLetterQueue, args: DlqListArgs, out: &Out) -> Result<(), CliError> {
    let mut filter = DlqFilter::new();
    if let Some(reason) = args.reason {
        filter = filter.reason(reason);
    }
    if let Some(event_type) = args.event_type {
        filter = filter.event_type(event_type);
    }
    if let Some(since) = args.since {
        filter = filter.since(since);
    }
    if let Some(limit) = args.limit {
        filter = filter.limit(limit);
    }
    let letters = dlq
        .list_with_progress(&filter, progress(out))
        .await
        .map_err(|e| dlq_error(&e))?;
    if out.json() {
        out.value(&Value::Array(letters.iter().map(summary_json).collect()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            vec![
                l.sequence.to_string(),
                l.event_id.clone().unwrap_or_else(|| "-".into()),
                l.reason.clone().unwrap_or_else(|| "-".into()),
                error_text(l),
                l.deliveries.map_or_else(|| "-".into(), |d| d.to_string()),
                l.original_subject().unwrap_or("-").to_owned(),
                output::opt_age(l.age()),
            ]
        })
        .collect();
    out.table(
        &[
            "SEQ",
            "EVENT ID",
            "REASON",
            "ERROR",
            "DELIVERIES",
            "ORIGINAL SUBJECT",
            "AGE",
        ],
        &rows,
    );
    out.note(format!(
        "{} dead letter{} in {} ({})",
        letters.len(),
        if letters.len() == 1 { "" } else { "s" },
        dlq.stream_name(),
        dlq.subject()
    ));
    Ok(())
}

fn headers_json(letter: &DeadLetter) -> Value {
    let mut map = Map::new();
    for (name, value) in &letter.headers {
        match map.get_mut(name) {
            Some(Value::Array(values)) => values.push(Value::from(value.as_str())),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::from(value.as_str())]);
            }
            None => {
                map.insert(name.clone(), Value::from(value.as_str()));
            }
        }
    }
    Value::Object(map)
}

fn body_json(letter: &DeadLetter) -> Value {
    serde_json::from_slice(&letter.payload)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&letter.payload).into_owned()))
}

fn detail_json(letter: &DeadLetter) -> Value {
    let mut value = summary_json(letter);
    if let Some(map) = value.as_object_mut() {
        map.insert("subject".into(), Value::from(letter.subject.as_str()));
        map.insert("headers".into(), headers_json(letter));
        map.insert(
            "context".into(),
            serde_json::to_value(&letter.context).unwrap_or(Value::Null),
        );
        if let Some(e) = &letter.context_error {
            map.insert("context_error".into(), Value::from(e.as_str()));
        }
        map.insert("body".into(), body_json(letter));
    }
    value
}

async fn show(dlq: &DeadLetterQueue, id: &str, out: &Out) -> Result<(), CliError> {
    let mut letters = Vec::new();
    if let Ok(seq) = id.parse::<u64>() {
        if let Some(letter) = dlq.get(seq).await.map_err(|e| dlq_error(&e))? {
            letters.push(letter);
        }
    }
    if letters.is_empty() {
        letters = dlq
            .list_with_progress(&DlqFilter::new().event_ids([id]), progress(out))
            .await
            .map_err(|e| dlq_error(&e))?;
    }
    if letters.is_empty() {
        return Err(CliError::new(
            CliErrorKind::Refused,
            format!(
                "no dead letter with sequence or event id {id:?} in {}",
                dlq.stream_name()
            ),
        ));
    }
    if out.json() {
        let values: Vec<Value> = letters.iter().map(detail_json).collect();
        out.value(&match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        });
        return Ok(());
    }
    for (i, letter) in letters.iter().enumerate() {
        if i > 0 {
            out.line("");
        }
        out.fields(&[
            ("sequence", letter.sequence.to_string()),
            (
                "event id",
                letter.event_id.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "event type",
                letter.event_type.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "reason",
                letter.reason.clone().unwrap_or_else(|| "-".into()),
            ),
            ("error", error_text(letter)),
            (
                "deliveries",
                letter
                    .deliveries
                    .map_or_else(|| "-".into(), |d| d.to_string()),
            ),
            (
                "original subject",
                letter.original_subject().unwrap_or("-").to_owned(),
            ),
            (
                "stored at",
                letter
                    .stored_at
                    .map_or_else(|| "-".into(), |t| t.to_string()),
            ),
            ("age", output::opt_age(letter.age())),
        ]);
        out.line("headers:");
        for (name, value) in &letter.headers {
            out.line(format!("  {name}: {value}"));
        }
        out.line("context:");
        match (&letter.context, &letter.context_error) {
            (Some(context), _) => {
                let text = serde_json::to_string_pretty(context).unwrap_or_default();
                for line in text.lines() {
                    out.line(format!("  {line}"));
                }
            }
            (None, Some(e)) => out.line(format!("  (unreadable: {e})")),
            (None, None) => out.line("  (none)"),
        }
        out.line("body:");
        let body = match serde_json::from_slice::<Value>(&letter.payload) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(&letter.payload).into_owned(),
        };
        for line in body.lines() {
            out.line(format!("  {line}"));
        }
    }
    Ok(())
}

fn outcome_json(line: &LetterOutcome) -> Value {
    let mut value = json!({
        "sequence": line.sequence,
        "event_id": line.event_id,
        "subject": line.subject,
    });
    let extra = match &line.outcome {
        Outcome::WouldApply => json!({"outcome": "would_apply"}),
        Outcome::Replayed {
            stream,
            sequence,
            duplicate,
            deleted,
            delete_error,
        } => json!({
            "outcome": "replayed",
            "stream": stream,
            "stream_sequence": sequence,
            "duplicate": duplicate,
            "deleted": deleted,
            "delete_error": delete_error,
        }),
        Outcome::Deleted => json!({"outcome": "deleted"}),
        Outcome::AlreadyGone => json!({"outcome": "already_gone"}),
        Outcome::Skipped { reason } => json!({"outcome": "skipped", "reason": reason}),
        Outcome::Failed { error } => json!({"outcome": "failed", "error": error}),
        Outcome::NotAttempted => json!({"outcome": "not_attempted"}),
        _ => json!({"outcome": "unknown"}),
    };
    if let (Some(map), Value::Object(extra)) = (value.as_object_mut(), extra) {
        map.extend(extra);
    }
    value
}

fn outcome_text(line: &LetterOutcome, dry_verb: &str) -> String {
    match &line.outcome {
        Outcome::WouldApply => format!("would {dry_verb}"),
        Outcome::Replayed {
            stream,
            sequence,
            duplicate,
            deleted,
            delete_error,
        } => {
            let mut text = format!("replayed as {stream} #{sequence}");
            if *duplicate {
                text.push_str(" (duplicate of an earlier replay)");
            }
            match (deleted, delete_error) {
                (true, _) => text.push_str(", deleted from the DLQ"),
                (false, Some(e)) => text.push_str(&format!(", NOT deleted from the DLQ: {e}")),
                (false, None) => text.push_str(", kept in the DLQ"),
            }
            text
        }
        Outcome::Deleted => "deleted".into(),
        Outcome::AlreadyGone => "already gone".into(),
        Outcome::Skipped { reason } => format!("skipped: {reason}"),
        Outcome::Failed { error } => format!("FAILED: {error}"),
        Outcome::NotAttempted => "not attempted".into(),
        _ => "unknown".into(),
    }
}

fn print_outcomes(lines: &[LetterOutcome], dry_verb: &str, out: &Out) {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.sequence.to_string(),
                l.event_id.clone().unwrap_or_else(|| "-".into()),
                l.subject.clone().unwrap_or_else(|| "-".into()),
                outcome_text(l, dry_verb),
            ]
        })
        .collect();
    out.table(&["SEQ", "EVENT ID", "SUBJECT", "OUTCOME"], &rows);
}

/// The error of an operation that did not complete: what was done, what failed, what is left.
/// A replay's or purge's outcome: JSON (`stream`, `dry_run`, `complete`, `letters`), or one line
/// per dead letter.
fn print_report(
    out: &Out,
    (stream, dry_run, complete): (&str, bool, bool),
    letters: &[LetterOutcome],
    dry_verb: &str,
) {
    if out.json() {
        out.value(&json!({
            "stream": stream,
            "dry_run": dry_run,
            "complete": complete,
            "letters": letters.iter().map(outcome_json).collect::<Vec<_>>(),
        }));
    } else {
        print_outcomes(letters, dry_verb, out);
    }
}

fn partial(what: &str, lines: &[LetterOutcome], done: usize) -> CliError {
    let failed = lines.iter().find_map(|l| match &l.outcome {
        Outcome::Failed { error } => {
            Some(format!("failed at DLQ sequence {}: {error}", l.sequence))
        }
        _ => None,
    });
    let skipped = lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Skipped { .. }))
        .count();
    let undeleted = lines
        .iter()
        .filter(|l| {
            matches!(
                &l.outcome,
                Outcome::Replayed {
                    delete_error: Some(_),
                    ..
                }
            )
        })
        .count();
    let not_attempted = lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::NotAttempted))
        .count();
    let mut parts = vec![format!(
        "{what} did not complete: {done} of {} done",
        lines.len()
    )];
    parts.extend(failed);
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    if undeleted > 0 {
        parts.push(format!("{undeleted} replayed but not deleted from the DLQ"));
    }
    if not_attempted > 0 {
        parts.push(format!("{not_attempted} not attempted"));
    }
    parts.push("running the same command again is safe".into());
    CliError::new(CliErrorKind::Partial, parts.join("; "))
}

async fn replay(dlq: &DeadLetterQueue, args: &DlqReplayArgs, out: &Out) -> Result<(), CliError> {
    let options = ReplayOptions::new().dry_run(args.dry_run).keep(args.keep);
    let report = dlq
        .replay(&args.selector.filter(), options, progress(out))
        .await
        .map_err(|e| dlq_error(&e))?;
    print_report(
        out,
        (&report.stream, report.dry_run, report.is_complete()),
        &report.letters,
        "replay",
    );
    let total = report.letters.len();
    if !report.is_complete() {
        return Err(partial("replay", &report.letters, report.replayed()));
    }
    out.note(if args.dry_run {
        format!("dry run: {total} dead letter(s) would be replayed; nothing changed")
    } else {
        format!("replayed {} of {total} dead letter(s)", report.replayed())
    });
    Ok(())
}

async fn purge(dlq: &DeadLetterQueue, args: &DlqPurgeArgs, out: &Out) -> Result<(), CliError> {
    let dry_run = args.dry_run || !args.yes;
    let report = dlq
        .purge(&args.selector.filter(), dry_run, progress(out))
        .await
        .map_err(|e| dlq_error(&e))?;
    print_report(
        out,
        (&report.stream, report.dry_run, report.is_complete()),
        &report.letters,
        "delete",
    );
    let total = report.letters.len();
    if !args.yes && !args.dry_run {
        return Err(CliError::new(
            CliErrorKind::Refused,
            format!("would delete {total} dead letter(s): add --yes to delete them"),
        ));
    }
    if !report.is_complete() {
        return Err(partial("purge", &report.letters, report.deleted()));
    }
    out.note(if dry_run {
        format!("dry run: {total} dead letter(s) would be deleted; nothing changed")
    } else {
        format!("deleted {} dead letter(s)", report.deleted())
    });
    Ok(())
}
