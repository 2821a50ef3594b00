//! [`plan`] (a dry run) and [`ensure_topology`] (plan, apply, verify, repeat until nothing is
//! left to do), with [`TopologyPlan`] and [`TopologyReport`].

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use jetstream_bridge_config::{
    format_duration, subject_matches, subjects_overlap, ConsumerMode, NatsName,
};
use rand::Rng as _;

use crate::api::Api;
use crate::consumer::{self, Existing};
use crate::error::{ConsumerDrift, FieldDrift, Problem, TopologyError, TopologyErrorKind, Warning};
use crate::lock;
use crate::spec::{DlqPlacement, DriftPolicy, EnsureOptions, TopologySpec};
use crate::stream::{self, Applied, StreamState, FILE, LIMITS, WORK_QUEUE};

/// Which of the two streams a stream action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamRole {
    /// The work-queue stream holding the source and destination subjects.
    Main,
    /// The limits-retention DLQ stream ([`DlqPlacement::SeparateStream`]).
    Dlq,
}

/// One change provisioning makes (or, in a [`TopologyPlan`], would make).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlannedAction {
    /// Create a stream.
    CreateStream {
        /// Main or DLQ stream.
        role: StreamRole,
        /// The stream name.
        stream: String,
        /// Its subjects.
        subjects: Vec<String>,
        /// `workqueue` (main) or `limits` (DLQ).
        retention: &'static str,
        /// Always `file`.
        storage: &'static str,
        /// Replicas (`stream_replicas`).
        replicas: usize,
        /// The duplicate window for `Nats-Msg-Id`.
        duplicate_window: Duration,
        /// `max_age` (DLQ stream only; `None` for unlimited).
        max_age: Option<Duration>,
        /// `max_msgs` (DLQ stream only; `None` for unlimited).
        max_msgs: Option<u64>,
    },
    /// Add subjects to an existing stream, keeping the rest of its configuration.
    AddStreamSubjects {
        /// Main or DLQ stream.
        role: StreamRole,
        /// The stream name.
        stream: String,
        /// The subjects to add.
        add: Vec<String>,
        /// The subjects it has now (kept).
        keep: Vec<String>,
    },
    /// Create the durable consumer.
    CreateConsumer {
        /// The stream.
        stream: String,
        /// The durable name.
        durable: String,
        /// Pull or push.
        mode: ConsumerMode,
        /// The filter (the destination subject).
        filter_subject: String,
        /// `max_deliver`.
        max_deliver: u32,
        /// `ack_wait`.
        ack_wait: Duration,
        /// `max_ack_pending` (`None`: the server's default).
        max_ack_pending: Option<u32>,
        /// Push mode: the delivery subject and queue group.
        push: Option<(String, String)>,
    },
    /// Move a DLQ subject that stores no message out of the work-queue stream into the
    /// separate DLQ stream ([`EnsureOptions::move_dlq_subjects`]).
    MoveDlqSubject {
        /// The DLQ subject.
        subject: String,
        /// The work-queue stream it leaves.
        from: String,
        /// The DLQ stream it joins (created if missing).
        to: String,
    },
    /// Update the durable consumer in place ([`DriftPolicy::Update`]).
    UpdateConsumer {
        /// The stream.
        stream: String,
        /// The durable name.
        durable: String,
        /// The fields that change.
        fields: Vec<FieldDrift>,
    },
}

fn list(subjects: &[String]) -> String {
    subjects
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for PlannedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateStream {
                role,
                stream,
                subjects,
                retention,
                storage,
                replicas,
                duplicate_window,
                max_age,
                max_msgs,
            } => {
                let what = match role {
                    StreamRole::Main => "stream",
                    StreamRole::Dlq => "DLQ stream",
                };
                write!(
                    f,
                    "create {what} `{stream}` ({retention}, {storage}, {replicas} replica{}, \
                     duplicate window {}",
                    if *replicas == 1 { "" } else { "s" },
                    format_duration(*duplicate_window)
                )?;
                if *role == StreamRole::Dlq {
                    match max_age {
                        Some(age) => write!(f, ", max age {}", format_duration(*age))?,
                        None => f.write_str(", no max age")?,
                    }
                    if let Some(n) = max_msgs {
                        write!(f, ", max {n} messages")?;
                    }
                }
                write!(f, ") with subjects {}", list(subjects))
            }
            Self::AddStreamSubjects {
                stream, add, keep, ..
            } => write!(
                f,
                "add subjects {} to stream `{stream}` (keeping {})",
                list(add),
                if keep.is_empty() {
                    "none".to_owned()
                } else {
                    list(keep)
                }
            ),
            Self::MoveDlqSubject { subject, from, to } => write!(
                f,
                "move DLQ subject `{subject}` from stream `{from}` (no dead letters stored on \
                 it) to DLQ stream `{to}`"
            ),
            Self::CreateConsumer {
                stream,
                durable,
                mode,
                filter_subject,
                max_deliver,
                ack_wait,
                max_ack_pending,
                push,
            } => {
                write!(
                    f,
                    "create {mode} consumer `{durable}` on stream `{stream}`: filter \
                     `{filter_subject}`, explicit ack, deliver all, max_deliver {max_deliver}, \
                     ack_wait {}, ",
                    format_duration(*ack_wait)
                )?;
                match max_ack_pending {
                    Some(n) => write!(f, "max_ack_pending {n}, ")?,
                    None => f.write_str("max_ack_pending server default, ")?,
                }
                if let Some((subject, group)) = push {
                    write!(f, "deliver to `{subject}` (queue group `{group}`), ")?;
                }
                f.write_str("no server-side backoff")
            }
            Self::UpdateConsumer {
                stream,
                durable,
                fields,
            } => {
                write!(
                    f,
                    "update consumer `{durable}` on stream `{stream}` in place: "
                )?;
                for (i, d) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{} {} -> {}", d.field, d.actual, d.expected)?;
                }
                Ok(())
            }
        }
    }
}

/// A setting of an existing stream that differs from the configuration but is left alone
/// (provisioning changes only subjects).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Note {
    /// The stream.
    pub stream: String,
    /// `num_replicas` or `duplicate_window`.
    pub field: &'static str,
    /// The configured value.
    pub configured: String,
    /// The server's value (kept).
    pub actual: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream `{}` keeps {} {} (configured {}; only subjects of an existing stream are \
             changed)",
            self.stream, self.field, self.actual, self.configured
        )
    }
}

/// What provisioning would do: the actions in order, the problems that stop it, and notes.
///
/// `Display` prints one line per action, problem (`problem: `), warning (`warning: `) and note
/// (`note: `), or `no changes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopologyPlan {
    actions: Vec<PlannedAction>,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
    notes: Vec<Note>,
}

impl TopologyPlan {
    /// The changes, in the order they are applied (streams first).
    #[must_use]
    pub fn actions(&self) -> &[PlannedAction] {
        &self.actions
    }

    /// The problems that make [`ensure_topology`] fail (overlaps, retention or storage
    /// mismatches, DLQ placement, consumer drift under [`DriftPolicy::Report`]).
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Layouts provisioning leaves as they are but that lose data unless someone acts (e.g. a
    /// Ruby consumer's dead letters dropped as duplicates); they do not make
    /// [`ensure_topology`] fail.
    #[must_use]
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Settings of existing streams that differ from the configuration and are kept.
    #[must_use]
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// Whether the topology is complete and as configured: no actions and no problems.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.problems.is_empty()
    }

    /// `Ok` when the plan has no problems.
    ///
    /// # Errors
    ///
    /// One [`TopologyError`] carrying every problem; its kind is the first problem's.
    pub fn check(&self) -> Result<(), TopologyError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(TopologyError::from_problems(self.problems.clone()))
        }
    }
}

impl fmt::Display for TopologyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            f.write_str("no changes")?;
        }
        let mut first = !self.is_empty();
        let mut line = |f: &mut fmt::Formatter<'_>, prefix: &str, item: &dyn fmt::Display| {
            if !std::mem::take(&mut first) {
                writeln!(f)?;
            }
            write!(f, "{prefix}{item}")
        };
        for a in &self.actions {
            line(f, "", a)?;
        }
        for p in &self.problems {
            line(f, "problem: ", p)?;
        }
        for w in &self.warnings {
            line(f, "warning: ", w)?;
        }
        for n in &self.notes {
            line(f, "note: ", n)?;
        }
        Ok(())
    }
}

/// What [`ensure_topology`] did.
///
/// `Display` prints one line per applied action (or `no changes`), then one `warning: ` line
/// per warning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopologyReport {
    applied: Vec<PlannedAction>,
    warnings: Vec<Warning>,
    notes: Vec<Note>,
    rounds: u32,
}

impl TopologyReport {
    /// The changes made, in order. A create that found an identical stream or consumer made by
    /// a concurrent deploy counts as made (the server answers both the same).
    #[must_use]
    pub fn applied(&self) -> &[PlannedAction] {
        &self.applied
    }

    /// Whether nothing had to change.
    #[must_use]
    pub fn is_unchanged(&self) -> bool {
        self.applied.is_empty()
    }

    /// What the final plan warned about (see [`TopologyPlan::warnings`]); each is also logged
    /// at `warn` level.
    #[must_use]
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Settings of existing streams that differ from the configuration and were kept.
    #[must_use]
    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// How many plan-and-apply rounds it took (1 when nothing had to change).
    #[must_use]
    pub fn rounds(&self) -> u32 {
        self.rounds
    }
}

impl fmt::Display for TopologyReport {
    /// One line per applied action (or `no changes`), then one `warning: ` line per warning.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            f.write_str("no changes")?;
        }
        for (i, a) in self.applied.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{a}")?;
        }
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

fn check_names(spec: &TopologySpec) -> Result<(), TopologyError> {
    if spec.uses_dlq_stream() {
        NatsName::new(spec.dlq_stream.as_str()).map_err(|e| {
            TopologyError::new(
                TopologyErrorKind::InvalidSpec,
                format!("invalid DLQ stream name {:?}: {e}", spec.dlq_stream),
            )
        })?;
        if spec.dlq_stream == spec.stream {
            return Err(TopologyError::new(
                TopologyErrorKind::InvalidSpec,
                format!(
                    "the DLQ stream must differ from the main stream `{}`",
                    spec.stream
                ),
            ));
        }
    }
    Ok(())
}

fn stream_problems(state: &StreamState, retention: &str, problems: &mut Vec<Problem>) {
    for (field, expected, actual) in [
        ("retention", retention, state.retention.as_str()),
        ("storage", FILE, state.storage.as_str()),
    ] {
        if expected != actual {
            problems.push(Problem::StreamMismatch {
                stream: state.name.clone(),
                field,
                expected: expected.to_owned(),
                actual: actual.to_owned(),
            });
        }
    }
}

fn stream_notes(spec: &TopologySpec, state: &StreamState, notes: &mut Vec<Note>) {
    let replicas = u64::try_from(spec.replicas).unwrap_or(u64::MAX);
    if state.replicas != replicas {
        notes.push(Note {
            stream: state.name.clone(),
            field: "num_replicas",
            configured: spec.replicas.to_string(),
            actual: state.replicas.to_string(),
        });
    }
    if let Some(window) = state.duplicate_window {
        if window != spec.duplicate_window {
            notes.push(Note {
                stream: state.name.clone(),
                field: "duplicate_window",
                configured: format_duration(spec.duplicate_window),
                actual: format_duration(window),
            });
        }
    }
}

/// Plans one stream: create it, or add what it lacks, checking retention and storage.
fn plan_stream(
    spec: &TopologySpec,
    role: StreamRole,
    existing: Option<&StreamState>,
    desired: &[&str],
    plan: &mut TopologyPlan,
) {
    let (name, retention) = match role {
        StreamRole::Main => (&spec.stream, WORK_QUEUE),
        StreamRole::Dlq => (&spec.dlq_stream, LIMITS),
    };
    match existing {
        None => {
            let dlq = role == StreamRole::Dlq;
            plan.actions.push(PlannedAction::CreateStream {
                role,
                stream: name.clone(),
                subjects: desired.iter().map(|s| (*s).to_owned()).collect(),
                retention,
                storage: FILE,
                replicas: spec.replicas,
                duplicate_window: if dlq && !spec.dlq_max_age.is_zero() {
                    spec.duplicate_window.min(spec.dlq_max_age)
                } else {
                    spec.duplicate_window
                },
                max_age: (dlq && !spec.dlq_max_age.is_zero()).then_some(spec.dlq_max_age),
                max_msgs: if dlq {
                    spec.dlq_max_msgs.and_then(|n| u64::try_from(n).ok())
                } else {
                    None
                },
            });
        }
        Some(state) => {
            stream_problems(state, retention, &mut plan.problems);
            if role == StreamRole::Main {
                stream_notes(spec, state, &mut plan.notes);
            }
            let add: Vec<String> = desired
                .iter()
                .filter(|s| !state.covers(s))
                .map(|s| (*s).to_owned())
                .collect();
            if !add.is_empty() {
                plan.actions.push(PlannedAction::AddStreamSubjects {
                    role,
                    stream: name.clone(),
                    add,
                    keep: state.subjects.clone(),
                });
            }
        }
    }
}

/// What the server holds that provisioning looks at.
pub(crate) struct Survey {
    /// Every stream of the account.
    pub(crate) streams: Vec<StreamState>,
    /// The durable's configuration (`None`: the spec provisions no consumer).
    pub(crate) consumer: Option<Existing>,
}

impl Survey {
    pub(crate) fn stream(&self, name: &str) -> Option<&StreamState> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// The warning for a peer DLQ subject the main stream captures along with the source subject.
fn dead_letter_warning(spec: &TopologySpec, main: &StreamState) -> Option<Warning> {
    let peer = spec.peer_dlq.as_deref()?;
    if !main.covers(&spec.source) {
        return None;
    }
    let stream_subject = main
        .subjects
        .iter()
        .find(|s| subject_matches(s, peer))?
        .clone();
    Some(Warning::DeadLettersDropped {
        stream: main.name.clone(),
        source_subject: spec.source.clone(),
        dlq_subject: peer.to_owned(),
        stream_subject,
        dlq_stream: spec.uses_dlq_stream().then(|| spec.dlq_stream.clone()),
    })
}

/// Computes the plan from the current server state. Makes only read calls: `STREAM.LIST`
/// (all pages), `CONSUMER.INFO.<stream>.<durable>`, and with
/// [`EnsureOptions::move_dlq_subjects`] `STREAM.INFO.<stream>` to count stored dead letters.
pub(crate) async fn compute_plan(
    api: &Api,
    spec: &TopologySpec,
    options: &EnsureOptions,
) -> Result<(TopologyPlan, Survey), TopologyError> {
    check_names(spec)?;
    options.lock.check()?;
    let streams = stream::list_streams(api).await?;
    let find = |name: &str| streams.iter().find(|s| s.name == name);
    let main = find(&spec.stream);
    let dlq_stream = spec
        .uses_dlq_stream()
        .then(|| find(&spec.dlq_stream))
        .flatten();
    let mut plan = TopologyPlan::default();
    // DLQ subjects to move out of the main stream (`move_dlq_subjects`).
    let mut moves: Vec<&str> = Vec::new();

    // Overlap guard: every desired subject against every subject of every other stream.
    let main_desired = spec.main_stream_subjects();
    let mut overlaps = Vec::new();
    let mut placement = Vec::new();
    for conflict in stream::overlaps(&spec.stream, &main_desired, &streams) {
        let is_dlq = Some(conflict.subject.as_str()) == spec.dlq.as_deref();
        if is_dlq && conflict.other_stream == spec.dlq_stream {
            placement.push(Problem::DlqPlacement {
                subject: conflict.subject,
                stream: conflict.other_stream,
                stream_subject: conflict.other_subject,
                placement: DlqPlacement::MainStream,
            });
        } else {
            overlaps.push(Problem::SubjectOverlap(conflict));
        }
    }
    let mut dlq_desired: Vec<&str> = Vec::new();
    if let (Some(dlq), true) = (spec.dlq.as_deref(), spec.uses_dlq_stream()) {
        let (in_main, elsewhere): (Vec<_>, Vec<_>) =
            stream::overlaps(&spec.dlq_stream, &[dlq], &streams)
                .into_iter()
                .partition(|c| c.other_stream == spec.stream);
        overlaps.extend(elsewhere.into_iter().map(Problem::SubjectOverlap));
        if in_main.is_empty() {
            dlq_desired.push(dlq);
        } else if options.move_dlq_subjects && in_main.iter().all(|c| c.other_subject == dlq) {
            moves.push(dlq);
        } else {
            placement.extend(in_main.into_iter().map(|conflict| Problem::DlqPlacement {
                subject: conflict.subject,
                stream: conflict.other_stream,
                stream_subject: conflict.other_subject,
                placement: DlqPlacement::SeparateStream,
            }));
        }
    }
    if let Some(peer) = spec.claimed_peer_dlq() {
        let holders: Vec<(&str, &str)> = streams
            .iter()
            .flat_map(|s| {
                s.subjects
                    .iter()
                    .filter(|x| subjects_overlap(x, peer))
                    .map(move |x| (s.name.as_str(), x.as_str()))
            })
            .collect();
        if holders.is_empty() {
            dlq_desired.push(peer);
        } else if options.move_dlq_subjects
            && holders
                .iter()
                .all(|(name, x)| *name == spec.stream && *x == peer)
        {
            moves.push(peer);
        }
        // Held by another stream (the DLQ stream, or a stream of the operator's): left alone.
    }
    plan.problems.extend(overlaps);

    plan_stream(spec, StreamRole::Main, main, &main_desired, &mut plan);
    if spec.uses_dlq_stream() && (dlq_stream.is_some() || !dlq_desired.is_empty()) {
        plan_stream(spec, StreamRole::Dlq, dlq_stream, &dlq_desired, &mut plan);
    }
    // Order: overlaps, stream mismatches (pushed by plan_stream), DLQ placement, drift.
    plan.problems.extend(placement);

    for subject in moves {
        let messages = stream::stored_on(api, &spec.stream, subject).await?;
        if messages == 0 {
            plan.actions.push(PlannedAction::MoveDlqSubject {
                subject: subject.to_owned(),
                from: spec.stream.clone(),
                to: spec.dlq_stream.clone(),
            });
        } else {
            plan.problems.push(Problem::DlqNotEmpty {
                subject: subject.to_owned(),
                stream: spec.stream.clone(),
                messages,
            });
        }
    }
    if let Some(warning) = main.and_then(|m| dead_letter_warning(spec, m)) {
        let moving = plan.actions.iter().any(|a| {
            matches!(a, PlannedAction::MoveDlqSubject { subject, .. }
                if Some(subject.as_str()) == spec.peer_dlq.as_deref())
        });
        if !moving {
            plan.warnings.push(warning);
        }
    }

    let mut consumer_state = None;
    if let Some(c) = &spec.consumer {
        let existing = match main {
            Some(_) => consumer::read(api, &spec.stream, &c.durable).await?,
            None => Existing::Absent,
        };
        match &existing {
            Existing::Absent => plan.actions.push(PlannedAction::CreateConsumer {
                stream: spec.stream.clone(),
                durable: c.durable.clone(),
                mode: c.mode,
                filter_subject: c.filter.clone(),
                max_deliver: c.max_deliver,
                ack_wait: c.ack_wait,
                max_ack_pending: c.max_ack_pending,
                push: (c.mode == ConsumerMode::Push)
                    .then(|| (c.deliver_subject.clone(), c.deliver_group.clone())),
            }),
            Existing::Present(config) => {
                let fields = consumer::compare(c, config);
                if !fields.is_empty() {
                    match options.drift {
                        DriftPolicy::Update => plan.actions.push(PlannedAction::UpdateConsumer {
                            stream: spec.stream.clone(),
                            durable: c.durable.clone(),
                            fields,
                        }),
                        DriftPolicy::Report => {
                            plan.problems.push(Problem::ConsumerDrift(ConsumerDrift {
                                stream: spec.stream.clone(),
                                durable: c.durable.clone(),
                                fields,
                                update_refused: None,
                            }));
                        }
                    }
                }
            }
        }
        consumer_state = Some(existing);
    }
    Ok((
        plan,
        Survey {
            streams,
            consumer: consumer_state,
        },
    ))
}

/// Computes what [`ensure_topology`] would do, changing nothing (a dry run).
///
/// Reads every stream (`$JS.API.STREAM.LIST`, all pages) and the durable
/// (`$JS.API.CONSUMER.INFO.<stream>.<durable>`). Overlaps, retention or storage mismatches, a
/// DLQ placement mismatch and (under [`DriftPolicy::Report`]) consumer drift are listed in
/// [`TopologyPlan::problems`], not returned as errors, so a dry run shows all of them.
///
/// # Errors
///
/// When the server cannot be asked: [`Timeout`](TopologyErrorKind::Timeout),
/// [`PermissionDenied`](TopologyErrorKind::PermissionDenied),
/// [`JetStreamUnavailable`](TopologyErrorKind::JetStreamUnavailable),
/// [`Api`](TopologyErrorKind::Api) (including a stream listing that cannot be completed: the
/// overlap guard never fails open), and [`InvalidSpec`](TopologyErrorKind::InvalidSpec) for an
/// invalid DLQ stream name.
pub async fn plan(
    js: &jetstream::Context,
    spec: &TopologySpec,
    options: &EnsureOptions,
) -> Result<TopologyPlan, TopologyError> {
    let api = Api::new(js, options.violations.clone(), options.request_timeout);
    compute_plan(&api, spec, options)
        .await
        .map(|(plan, _)| plan)
}

/// Creates or extends the streams and creates (or, with [`DriftPolicy::Update`], updates) the
/// durable consumer so that the server holds exactly what `spec` asks for; idempotent.
///
/// Each round computes a [`plan`] from the server's current state, fails on its problems, and
/// applies its actions. It repeats until a plan has nothing left to do, which also verifies the
/// result: the consumer is read back and compared field by field. Concurrent deploys are
/// expected: a create answered with "already in use / already exists", a subject lost to a
/// concurrent update, or a stream that disappeared all lead to another round (with a short
/// random pause), up to [`EnsureOptions::max_rounds`].
///
/// Only subjects of existing streams are changed (from the stream's full current
/// configuration), never retention or storage, and a consumer is never deleted.
///
/// # Errors
///
/// Everything [`plan`] returns, plus: a [`TopologyError`] carrying the plan's problems
/// ([`SubjectOverlap`](TopologyErrorKind::SubjectOverlap) with every conflict,
/// [`StreamMismatch`](TopologyErrorKind::StreamMismatch),
/// [`DlqPlacement`](TopologyErrorKind::DlqPlacement),
/// [`ConsumerDrift`](TopologyErrorKind::ConsumerDrift)); `ConsumerDrift` also when the server
/// refuses an in-place update; [`ConsumerConflict`](TopologyErrorKind::ConsumerConflict) when
/// another consumer of the work-queue stream filters the same subject;
/// [`Conflict`](TopologyErrorKind::Conflict) when concurrent changes outlast the rounds.
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
/// let report = jetstream_bridge_topology::ensure_topology(
///     &connection.jetstream(),
///     &TopologySpec::from_config(&config),
///     &EnsureOptions::new().permission_violations(connection.violations().clone()),
/// )
/// .await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
pub async fn ensure_topology(
    js: &jetstream::Context,
    spec: &TopologySpec,
    options: &EnsureOptions,
) -> Result<TopologyReport, TopologyError> {
    let api = Api::new(js, options.violations.clone(), options.request_timeout);
    let mut report = TopologyReport::default();
    let mut server_overlap: Option<TopologyError> = None;
    for round in 1..=options.max_rounds {
        report.rounds = round;
        let (plan, _) = compute_plan(&api, spec, options).await?;
        plan.check()?;
        if let Some(e) = server_overlap.take() {
            // The server refused subjects for an overlap the guard did not see (e.g. a stream
            // created since): report the server's word rather than retrying blindly.
            return Err(e);
        }
        report.notes = plan.notes.clone();
        report.warnings = plan.warnings.clone();
        if plan.actions.is_empty() {
            for warning in &report.warnings {
                tracing::warn!(%warning, "topology warning");
            }
            return Ok(report);
        }
        for action in plan.actions {
            let applied = apply(&api, spec, options, &action).await?;
            match applied {
                Applied::Done => {
                    tracing::info!(%action, "topology changed");
                    report.applied.push(action);
                }
                Applied::Raced | Applied::Missing => {
                    tracing::debug!(%action, "concurrent change, planning again");
                    pause(round).await;
                    break;
                }
                Applied::Overlap(e) => {
                    server_overlap = Some(e);
                    break;
                }
            }
        }
    }
    Err(TopologyError::new(
        TopologyErrorKind::Conflict,
        format!(
            "stream `{}` still needed changes after {} rounds: concurrent deploys kept changing \
             it; try again",
            spec.stream, options.max_rounds
        ),
    ))
}

/// A short random pause before planning again, growing with the round.
async fn pause(round: u32) {
    let base = 10 * u64::from(round.min(10));
    let ms = rand::rng().random_range(base..=base * 3);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn apply(
    api: &Api,
    spec: &TopologySpec,
    options: &EnsureOptions,
    action: &PlannedAction,
) -> Result<Applied, TopologyError> {
    match action {
        PlannedAction::CreateStream {
            role,
            stream,
            subjects,
            ..
        } => {
            let config = match role {
                StreamRole::Main => stream::main_stream_config(spec, subjects),
                StreamRole::Dlq => stream::dlq_stream_config(spec, subjects),
            };
            stream::create(api, stream, &config).await
        }
        PlannedAction::AddStreamSubjects { stream, add, .. } => {
            lock::locked(
                api,
                &options.lock,
                stream,
                spec.replicas,
                stream::add_subjects(api, stream, add),
            )
            .await
        }
        PlannedAction::MoveDlqSubject { subject, from, to } => {
            let removal = lock::locked(
                api,
                &options.lock,
                from,
                spec.replicas,
                stream::remove_empty_subject(api, from, subject),
            )
            .await?;
            if !removal {
                return Ok(Applied::Raced);
            }
            tracing::info!(%subject, stream = %from, "DLQ subject removed from the work-queue stream");
            let add = std::slice::from_ref(subject);
            let added = lock::locked(
                api,
                &options.lock,
                to,
                spec.replicas,
                stream::add_subjects(api, to, add),
            )
            .await?;
            match added {
                Applied::Missing => {
                    match stream::create(api, to, &stream::dlq_stream_config(spec, add)).await? {
                        Applied::Raced => Ok(Applied::Raced),
                        other => Ok(other),
                    }
                }
                Applied::Raced => Ok(Applied::Done),
                other => Ok(other),
            }
        }
        PlannedAction::CreateConsumer { stream, .. } => match &spec.consumer {
            Some(c) => consumer::create(api, stream, c).await,
            None => Ok(Applied::Done),
        },
        PlannedAction::UpdateConsumer { stream, fields, .. } => match &spec.consumer {
            Some(c) => consumer::update(api, stream, c, fields).await,
            None => Ok(Applied::Done),
        },
    }
}
