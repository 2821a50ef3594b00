//! `ensure-topology`: plan, then create or verify the stream, the DLQ stream and the durable
//! consumer through `jetstream_bridge_topology` (the calls an application makes).

use jetstream_bridge_topology::{DriftPolicy, EnsureOptions};
use serde_json::json;

use crate::connect;
use crate::error::{CliError, CliErrorKind};
use crate::output::Out;
use crate::settings::GlobalArgs;

/// Arguments of `ensure-topology`.
#[derive(Debug, Clone, Default, clap::Args)]
#[non_exhaustive]
pub struct EnsureTopologyArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Update a differing durable consumer in place (never delete and recreate) instead of
    /// failing with a drift report.
    #[arg(long)]
    pub update_drift: bool,
    /// Move DLQ subjects that store no dead letter out of the work-queue stream into the
    /// separate DLQ stream (where a Ruby consumer's dead letters are not dropped).
    #[arg(long)]
    pub move_dlq_subjects: bool,
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

pub(crate) async fn run(
    args: EnsureTopologyArgs,
    global: &GlobalArgs,
    out: &Out,
) -> Result<(), CliError> {
    let config = global.config()?;
    let spec = global.spec(&config);
    let drift = if args.update_drift {
        DriftPolicy::Update
    } else {
        DriftPolicy::Report
    };
    out.note(format!(
        "config: {} layout, {} -> {}, stream {}, durable {} ({}), DLQ {} ({})",
        config.layout(),
        config.app_name(),
        config.destination_app(),
        spec.stream_name(),
        spec.durable_name().unwrap_or("none"),
        config.consumer_mode(),
        spec.dlq_subject().unwrap_or("off"),
        spec.dlq_placement(),
    ));
    let connection = connect::nats(&config, out).await?;
    let options = EnsureOptions::new()
        .drift_policy(drift)
        .move_dlq_subjects(args.move_dlq_subjects);
    out.note("planning (reading every stream and the durable)");
    let plan = connection
        .plan(&spec, &options)
        .await
        .map_err(|e| CliError::from_error(CliErrorKind::Nats, &e))?;
    let plan_text = plan.to_string();
    if let Err(e) = plan.check() {
        if out.json() {
            out.value(&json!({"plan": lines(&plan_text), "applied": [], "ok": false}));
        } else {
            out.line("plan:");
            for line in plan_text.lines() {
                out.line(format!("  {line}"));
            }
        }
        return Err(CliError::from_error(CliErrorKind::Problems, &e));
    }
    if args.dry_run || plan.is_empty() {
        if out.json() {
            out.value(&json!({
                "plan": lines(&plan_text),
                "applied": [],
                "dry_run": args.dry_run,
                "ok": true,
            }));
        } else {
            out.line("plan:");
            for line in plan_text.lines() {
                out.line(format!("  {line}"));
            }
            out.line(if args.dry_run {
                "dry run: nothing changed"
            } else {
                "ensure-topology: OK, nothing to change"
            });
        }
        return Ok(());
    }
    out.note("applying");
    let report = connection
        .ensure_topology(&spec, &options)
        .await
        .map_err(|e| {
            let kind = if e.problems().is_empty() {
                CliErrorKind::Nats
            } else {
                CliErrorKind::Problems
            };
            CliError::from_error(kind, &e)
        })?;
    let n = report.applied().len();
    if out.json() {
        out.value(&json!({
            "plan": lines(&plan_text),
            "applied": lines(&report.to_string()),
            "dry_run": false,
            "ok": true,
        }));
    } else {
        out.line("applied:");
        for line in report.to_string().lines() {
            out.line(format!("  {line}"));
        }
        out.line(format!(
            "ensure-topology: OK ({n} change{}, verified)",
            if n == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}
