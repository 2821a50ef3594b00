//! [`check`]: the server's topology against what a service needs, as a typed report (for a
//! `check` command, a deploy gate or a dashboard).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use jetstream_bridge_config::format_duration;
use serde::Serialize;
use serde_json::Value;

use crate::api::Api;
use crate::consumer::{self, Existing};
use crate::ensure::{compute_plan, Note, PlannedAction, StreamRole, Survey};
use crate::error::{FieldDrift, Problem, TopologyError, Warning};
use crate::spec::{DriftPolicy, EnsureOptions, TopologySpec};

/// What [`check`] found: each stream and the durable present or missing, what they lack or
/// how they differ, and whether the durable can work at all.
///
/// Serialise it (serde) for machine-readable output; durations are strings such as `30s` or
/// `1ns`. `Display` prints one line per item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TopologyCheck {
    /// `true` when provisioning has nothing to do and nothing stops it, and the durable can
    /// work: no missing stream, subject or durable, no drift, no problem, no durable issue.
    /// [`warnings`](Self::warnings) do not count here; look at them separately.
    pub ok: bool,
    /// The main work-queue stream.
    pub stream: StreamCheck,
    /// The separate DLQ stream (`None` with
    /// [`DlqPlacement::MainStream`](crate::DlqPlacement::MainStream) or without a DLQ).
    pub dlq_stream: Option<StreamCheck>,
    /// The durable consumer (`None` when the specification provisions none).
    pub durable: Option<DurableCheck>,
    /// What would make [`ensure_topology`](crate::ensure_topology) fail: subject overlaps,
    /// retention or storage mismatches, DLQ placement. (Consumer drift is in
    /// [`DurableCheck::drift`].)
    pub problems: Vec<Problem>,
    /// Layouts that lose data unless someone acts (see [`Warning`]).
    pub warnings: Vec<Warning>,
    /// Settings of existing streams that differ from the configuration and are kept.
    pub notes: Vec<Note>,
}

/// One stream in a [`TopologyCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamCheck {
    /// The stream name.
    pub name: String,
    /// Whether the stream exists.
    pub present: bool,
    /// Its subjects on the server (empty when missing).
    pub subjects: Vec<String>,
    /// The subjects provisioning would add (all of them when the stream is missing).
    pub missing_subjects: Vec<String>,
}

/// The durable consumer in a [`TopologyCheck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DurableCheck {
    /// The stream it belongs to.
    pub stream: String,
    /// The durable name.
    pub name: String,
    /// Whether it exists.
    pub present: bool,
    /// Every field that differs from the configuration.
    pub drift: Vec<FieldDrift>,
    /// Why its configuration cannot work with the bridge's runtime, whatever the configuration
    /// says.
    pub issues: Vec<DurableIssue>,
}

/// A durable configuration the bridge's runtime cannot work with.
///
/// Serialised with `"kind"` (`server_backoff`, `ack_wait_below_progress_interval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DurableIssue {
    /// The durable has a server-side `backoff`: the server then redelivers on that schedule
    /// (the bridge applies its own retry delays) and replaces `ack_wait` with the first step.
    /// The Ruby gem creates durables like this, with its backoff in nanoseconds where it meant
    /// seconds, so the server redelivers after 1 ns.
    ServerBackoff {
        /// The server's backoff steps.
        backoff: Vec<String>,
        /// The server's `ack_wait`.
        ack_wait: String,
    },
    /// The shortest ack wait of the durable (`ack_wait`, or a `backoff` step) is shorter than
    /// the runtime's in-progress ack interval: a message is redelivered while its handler still
    /// runs.
    AckWaitBelowProgressInterval {
        /// The shortest ack wait.
        ack_wait: String,
        /// The in-progress ack interval.
        progress_interval: String,
    },
}

impl fmt::Display for DurableIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerBackoff { backoff, ack_wait } => write!(
                f,
                "server-side backoff [{}] (ack_wait {ack_wait}): the server redelivers on its \
                 own schedule and the bridge's retry delays do not apply; remove it \
                 (`DriftPolicy::Update` does)",
                backoff.join(", ")
            ),
            Self::AckWaitBelowProgressInterval {
                ack_wait,
                progress_interval,
            } => write!(
                f,
                "ack wait {ack_wait} is shorter than the in-progress ack interval \
                 {progress_interval}: messages are redelivered while their handler runs"
            ),
        }
    }
}

/// The durable's issues: server-side backoff, and an ack wait below the progress interval.
pub(crate) fn durable_issues(
    config: &Value,
    progress_interval: Option<Duration>,
) -> Vec<DurableIssue> {
    let nanos = |v: &Value| v.as_u64().map(Duration::from_nanos);
    let ack_wait = config.get("ack_wait").and_then(nanos);
    let backoff: Vec<Duration> = config
        .get("backoff")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(nanos).collect())
        .unwrap_or_default();
    let mut issues = Vec::new();
    if !backoff.is_empty() {
        issues.push(DurableIssue::ServerBackoff {
            backoff: backoff.iter().map(|d| format_duration(*d)).collect(),
            ack_wait: ack_wait.map_or_else(|| "unset".to_owned(), format_duration),
        });
    }
    let shortest = ack_wait.into_iter().chain(backoff.iter().copied()).min();
    if let (Some(shortest), Some(every)) = (shortest, progress_interval) {
        if shortest < every {
            issues.push(DurableIssue::AckWaitBelowProgressInterval {
                ack_wait: format_duration(shortest),
                progress_interval: format_duration(every),
            });
        }
    }
    issues
}

impl TopologyCheck {
    fn from_plan(
        spec: &TopologySpec,
        options: &EnsureOptions,
        plan: &crate::TopologyPlan,
        survey: &Survey,
    ) -> Self {
        let stream_check = |role: StreamRole, name: &str| {
            let server = survey.stream(name);
            let mut missing_subjects = Vec::new();
            for action in plan.actions() {
                match action {
                    PlannedAction::CreateStream {
                        role: r, subjects, ..
                    }
                    | PlannedAction::AddStreamSubjects {
                        role: r,
                        add: subjects,
                        ..
                    } if *r == role => missing_subjects.extend(subjects.iter().cloned()),
                    _ => {}
                }
            }
            StreamCheck {
                name: name.to_owned(),
                present: server.is_some(),
                subjects: server.map(|s| s.subjects.clone()).unwrap_or_default(),
                missing_subjects,
            }
        };
        let stream = stream_check(StreamRole::Main, &spec.stream);
        let dlq_stream = spec
            .uses_dlq_stream()
            .then(|| stream_check(StreamRole::Dlq, &spec.dlq_stream));
        let durable = spec.consumer.as_ref().map(|c| {
            let progress = options
                .progress_interval
                .unwrap_or_else(|| Some(c.ack_wait / 2).filter(|d| !d.is_zero()));
            match &survey.consumer {
                Some(Existing::Present(config)) => DurableCheck {
                    stream: spec.stream.clone(),
                    name: c.durable.clone(),
                    present: true,
                    drift: consumer::compare(c, config),
                    issues: durable_issues(config, progress),
                },
                _ => DurableCheck {
                    stream: spec.stream.clone(),
                    name: c.durable.clone(),
                    present: false,
                    drift: Vec::new(),
                    issues: Vec::new(),
                },
            }
        });
        let problems: Vec<Problem> = plan
            .problems()
            .iter()
            .filter(|p| !matches!(p, Problem::ConsumerDrift(_)))
            .cloned()
            .collect();
        let ok = plan.actions().is_empty()
            && problems.is_empty()
            && durable
                .as_ref()
                .is_none_or(|d| d.present && d.drift.is_empty() && d.issues.is_empty());
        Self {
            ok,
            stream,
            dlq_stream,
            durable,
            problems,
            warnings: plan.warnings().to_vec(),
            notes: plan.notes().to_vec(),
        }
    }
}

fn stream_line(f: &mut fmt::Formatter<'_>, what: &str, s: &StreamCheck) -> fmt::Result {
    write!(f, "{what} `{}`: ", s.name)?;
    if !s.present {
        return f.write_str("missing");
    }
    if s.missing_subjects.is_empty() {
        f.write_str("present")
    } else {
        let list: Vec<String> = s
            .missing_subjects
            .iter()
            .map(|s| format!("`{s}`"))
            .collect();
        write!(f, "present, lacks {}", list.join(", "))
    }
}

impl fmt::Display for TopologyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        stream_line(f, "stream", &self.stream)?;
        if let Some(dlq) = &self.dlq_stream {
            f.write_str("\n")?;
            stream_line(f, "DLQ stream", dlq)?;
        }
        if let Some(d) = &self.durable {
            write!(f, "\ndurable `{}` on stream `{}`: ", d.name, d.stream)?;
            if !d.present {
                f.write_str("missing")?;
            } else if d.drift.is_empty() {
                f.write_str("present")?;
            } else {
                let fields: Vec<String> = d.drift.iter().map(ToString::to_string).collect();
                write!(f, "differs: {}", fields.join(", "))?;
            }
            for issue in &d.issues {
                write!(f, "\ndurable `{}` cannot work: {issue}", d.name)?;
            }
        }
        for p in &self.problems {
            write!(f, "\nproblem: {p}")?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

/// Compares what the server holds with what `spec` needs, changing nothing: each stream
/// present or missing and the subjects it lacks, the durable present or missing with every
/// drifting field, a durable whose configuration cannot work ([`DurableIssue`]: a server-side
/// `backoff`, or an ack wait shorter than the in-progress ack interval, which
/// [`EnsureOptions::progress_interval`] sets and which defaults to the consumer runtime's
/// `ack_wait / 2`), the problems that would stop provisioning, and [`Warning`]s such as a
/// Ruby consumer's dead letters being dropped.
///
/// Makes the read calls of [`plan`](crate::plan) only, so a user allowed to list streams and
/// read consumer info can run it. [`EnsureOptions::drift_policy`] is ignored (drift is always
/// reported); with [`EnsureOptions::move_dlq_subjects`] the DLQ subjects to move count as
/// work left.
///
/// # Errors
///
/// As [`plan`](crate::plan): when the server cannot be asked (timeout, missing permission,
/// JetStream unavailable, an API error) or a name in `spec` is invalid.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_config::Config;
/// use jetstream_bridge_topology::{connect, EnsureOptions, TopologySpec};
///
/// let config = Config::from_env()?;
/// let connection = connect(&config).await?;
/// let check = connection
///     .check(&TopologySpec::from_config(&config), &EnsureOptions::new())
///     .await?;
/// println!("{}", serde_json::to_string_pretty(&check)?);
/// if !check.ok || !check.warnings.is_empty() {
///     eprintln!("{check}");
/// }
/// # Ok(()) }
/// ```
pub async fn check(
    js: &jetstream::Context,
    spec: &TopologySpec,
    options: &EnsureOptions,
) -> Result<TopologyCheck, TopologyError> {
    let options = options.clone().drift_policy(DriftPolicy::Report);
    let api = Api::new(js, options.violations.clone(), options.request_timeout);
    let (plan, survey) = compute_plan(&api, spec, &options).await?;
    Ok(TopologyCheck::from_plan(spec, &options, &plan, &survey))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_gems_durable_cannot_work() {
        // What gem 7.x stores: backoff sent in seconds, read as nanoseconds; ack_wait replaced.
        let gem = json!({"ack_wait": 1, "backoff": [1, 5, 15, 30], "max_deliver": 5});
        let issues = durable_issues(&gem, Some(Duration::from_secs(15)));
        assert_eq!(
            issues,
            [
                DurableIssue::ServerBackoff {
                    backoff: vec!["1ns".into(), "5ns".into(), "15ns".into(), "30ns".into()],
                    ack_wait: "1ns".into(),
                },
                DurableIssue::AckWaitBelowProgressInterval {
                    ack_wait: "1ns".into(),
                    progress_interval: "15s".into(),
                },
            ]
        );
        let value = serde_json::to_value(&issues[1]).unwrap();
        assert_eq!(value["kind"], "ack_wait_below_progress_interval");
    }

    #[test]
    fn a_durable_as_provisioned_has_no_issue_and_short_ack_waits_are_caught() {
        let ours = json!({"ack_wait": 30_000_000_000u64, "max_deliver": 5});
        assert!(durable_issues(&ours, Some(Duration::from_secs(15))).is_empty());
        assert!(durable_issues(&ours, None).is_empty());
        let short = json!({"ack_wait": 10_000_000_000u64});
        assert_eq!(
            durable_issues(&short, Some(Duration::from_secs(15))),
            [DurableIssue::AckWaitBelowProgressInterval {
                ack_wait: "10s".into(),
                progress_interval: "15s".into(),
            }]
        );
        // In-progress acks off: any ack wait works.
        assert!(durable_issues(&short, None).is_empty());
    }
}
