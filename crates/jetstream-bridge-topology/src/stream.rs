//! Streams: listing every stream (for the overlap guard), the configurations provisioning
//! creates, and the subject update that keeps the rest of an existing configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use jetstream_bridge_config::{subject_matches, subjects_overlap};
use serde_json::{json, Value};

use crate::api::{Api, ApiError};
use crate::error::{OverlapConflict, TopologyError, TopologyErrorKind};
use crate::spec::TopologySpec;

/// How often a stream listing is restarted when the number of streams changes between pages.
const LIST_RESTARTS: u32 = 5;

/// Work-queue retention as the server spells it.
pub(crate) const WORK_QUEUE: &str = "workqueue";
/// Limits retention as the server spells it.
pub(crate) const LIMITS: &str = "limits";
/// File storage as the server spells it.
pub(crate) const FILE: &str = "file";

/// What provisioning needs to know about one existing stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamState {
    pub(crate) name: String,
    pub(crate) subjects: Vec<String>,
    pub(crate) retention: String,
    pub(crate) storage: String,
    pub(crate) replicas: u64,
    pub(crate) duplicate_window: Option<Duration>,
}

impl StreamState {
    /// Reads a stream info object (`{"config": {...}, "state": {...}, ...}`).
    pub(crate) fn from_info(info: &Value) -> Option<Self> {
        let config = info.get("config")?;
        Some(Self {
            name: config.get("name")?.as_str()?.to_owned(),
            subjects: string_list(config.get("subjects")),
            retention: config
                .get("retention")
                .and_then(Value::as_str)
                .unwrap_or(LIMITS)
                .to_owned(),
            storage: config
                .get("storage")
                .and_then(Value::as_str)
                .unwrap_or(FILE)
                .to_owned(),
            replicas: config
                .get("num_replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1),
            duplicate_window: config
                .get("duplicate_window")
                .and_then(Value::as_u64)
                .map(Duration::from_nanos),
        })
    }

    /// Whether `subject` is matched by one of this stream's subjects (a desired subject already
    /// covered by a wildcard counts as present).
    pub(crate) fn covers(&self, subject: &str) -> bool {
        self.subjects.iter().any(|s| subject_matches(s, subject))
    }
}

/// The strings of a JSON array (anything else: empty).
pub(crate) fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn malformed(what: &str) -> TopologyError {
    TopologyError::new(
        TopologyErrorKind::Api,
        format!("unexpected answer from the JetStream API: {what}"),
    )
}

/// Every stream of the account, read page by page with `$JS.API.STREAM.LIST`.
///
/// Fails closed: any failed page, a malformed answer, or streams the server
/// lists as `missing` (offline in a cluster) make the whole listing an error, never an empty
/// or partial list. When the number of streams changes between pages, the listing starts over
/// (at most a few times).
pub(crate) async fn list_streams(api: &Api) -> Result<Vec<StreamState>, TopologyError> {
    let mut restarts = 0;
    'listing: loop {
        let mut streams: Vec<StreamState> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut total = None;
        let mut offset = 0usize;
        loop {
            let page = api
                .request("STREAM.LIST", &json!({ "offset": offset }))
                .await
                .map_err(ApiError::into_error)?;
            let page_total = page
                .get("total")
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed("stream list without `total`"))?;
            let missing = string_list(page.get("missing"));
            if !missing.is_empty() {
                return Err(TopologyError::new(
                    TopologyErrorKind::Api,
                    format!(
                        "cannot read the subjects of streams {} (offline?); the overlap guard \
                         needs every stream",
                        missing.join(", ")
                    ),
                ));
            }
            match total {
                None => total = Some(page_total),
                Some(t) if t != page_total => {
                    restarts += 1;
                    if restarts > LIST_RESTARTS {
                        return Err(TopologyError::new(
                            TopologyErrorKind::Conflict,
                            "the set of streams kept changing while it was listed",
                        ));
                    }
                    continue 'listing;
                }
                Some(_) => {}
            }
            let page_streams = match page.get("streams") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(a)) => a.as_slice(),
                Some(_) => return Err(malformed("`streams` is not a list")),
            };
            for info in page_streams {
                let state = StreamState::from_info(info)
                    .ok_or_else(|| malformed("stream without a name"))?;
                if seen.insert(state.name.clone()) {
                    streams.push(state);
                }
            }
            offset += page_streams.len();
            if page_streams.is_empty() || offset as u64 >= page_total {
                if (streams.len() as u64) < page_total {
                    // Streams were deleted and created between pages: the pages shifted.
                    restarts += 1;
                    if restarts > LIST_RESTARTS {
                        return Err(TopologyError::new(
                            TopologyErrorKind::Conflict,
                            "the set of streams kept changing while it was listed",
                        ));
                    }
                    continue 'listing;
                }
                return Ok(streams);
            }
        }
    }
}

/// Every overlap between `desired` subjects (meant for stream `target`) and subjects of the
/// streams in `others`.
pub(crate) fn overlaps<'a>(
    target: &str,
    desired: &[&str],
    others: impl IntoIterator<Item = &'a StreamState>,
) -> Vec<OverlapConflict> {
    let mut conflicts = Vec::new();
    for other in others {
        if other.name == target {
            continue;
        }
        for subject in desired {
            for other_subject in &other.subjects {
                if subjects_overlap(subject, other_subject) {
                    conflicts.push(OverlapConflict {
                        stream: target.to_owned(),
                        subject: (*subject).to_owned(),
                        other_stream: other.name.clone(),
                        other_subject: other_subject.clone(),
                    });
                }
            }
        }
    }
    conflicts
}

/// The configuration the main stream is created with.
pub(crate) fn main_stream_config(spec: &TopologySpec, subjects: &[String]) -> Value {
    json!({
        "name": spec.stream,
        "subjects": subjects,
        "retention": WORK_QUEUE,
        "storage": FILE,
        "num_replicas": spec.replicas,
        "duplicate_window": nanos(spec.duplicate_window),
    })
}

/// The configuration the separate DLQ stream is created with.
pub(crate) fn dlq_stream_config(spec: &TopologySpec, subjects: &[String]) -> Value {
    // The server requires duplicate_window <= max_age.
    let window = if spec.dlq_max_age.is_zero() {
        spec.duplicate_window
    } else {
        spec.duplicate_window.min(spec.dlq_max_age)
    };
    json!({
        "name": spec.dlq_stream,
        "subjects": subjects,
        "retention": LIMITS,
        "storage": FILE,
        "discard": "old",
        "num_replicas": spec.replicas,
        "duplicate_window": nanos(window),
        "max_age": nanos(spec.dlq_max_age),
        "max_msgs": spec.dlq_max_msgs.unwrap_or(-1),
    })
}

/// A duration in nanoseconds as JetStream's JSON expects it (saturating).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What happened when a change was sent.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The server made the change.
    Done,
    /// Another deploy got there first (or changed something): plan again.
    Raced,
    /// The stream to change does not exist (any more): plan again.
    Missing,
    /// The server reported a subject overlap (10065): plan again, and if the plan does not show
    /// the conflict, report this error.
    Overlap(TopologyError),
}

fn overlap_error(e: ApiError, stream: &str) -> TopologyError {
    e.into_error_as(TopologyErrorKind::SubjectOverlap, |server| {
        format!("the server refused the subjects of stream `{stream}`: {server}")
    })
}

/// Creates a stream; "already in use" (another deploy created it) is a race, not an error.
pub(crate) async fn create(
    api: &Api,
    name: &str,
    config: &Value,
) -> Result<Applied, TopologyError> {
    match api.request(&format!("STREAM.CREATE.{name}"), config).await {
        Ok(_) => Ok(Applied::Done),
        Err(e) => match e.code() {
            Some(ErrorCode::STREAM_NAME_EXIST) => Ok(Applied::Raced),
            Some(ErrorCode::STREAM_SUBJECT_OVERLAP) => Ok(Applied::Overlap(overlap_error(e, name))),
            _ => Err(e.into_error()),
        },
    }
}

/// How often [`add_subjects`] re-reads and rewrites a stream whose subjects a concurrent writer
/// dropped.
const VERIFY_ROUNDS: usize = 4;

/// `STREAM.INFO.<name>` (with `subjects_filter` when given, so that `state.subjects` counts the
/// stored messages per matching subject); `None` when the stream does not exist.
async fn info(
    api: &Api,
    name: &str,
    subjects_filter: Option<&str>,
) -> Result<Option<Value>, TopologyError> {
    let request = match subjects_filter {
        Some(filter) => json!({ "subjects_filter": filter }),
        None => json!({}),
    };
    match api.request(&format!("STREAM.INFO.{name}"), &request).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.code() == Some(ErrorCode::STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(e.into_error()),
    }
}

/// Sends `config` (a stream's full configuration) back with `subjects`.
async fn update_subjects(
    api: &Api,
    name: &str,
    info: &Value,
    subjects: &[String],
) -> Result<Applied, TopologyError> {
    let mut config = info
        .get("config")
        .cloned()
        .ok_or_else(|| malformed("stream info without `config`"))?;
    config["subjects"] = json!(subjects);
    match api.request(&format!("STREAM.UPDATE.{name}"), &config).await {
        Ok(_) => Ok(Applied::Done),
        Err(e) => match e.code() {
            Some(ErrorCode::STREAM_NOT_FOUND) => Ok(Applied::Missing),
            Some(ErrorCode::STREAM_SUBJECT_OVERLAP) => Ok(Applied::Overlap(overlap_error(e, name))),
            _ => Err(e.into_error()),
        },
    }
}

/// Adds the subjects of `add` the stream does not cover yet. Reads the stream's full current
/// configuration and sends it back with only `subjects` changed, so limits, replicas and any
/// other setting an admin chose are kept.
///
/// Then verifies: the stream is read again, and every subject it held when read before or that
/// was added must still be covered. A writer that does not hold the stream lock (an older
/// deploy, the Ruby gem) may have written a list read before this update; whatever it
/// dropped is added back, up to a few times. Returns [`Applied::Raced`] when nothing had to
/// be written, [`Applied::Missing`] when the stream is gone.
pub(crate) async fn add_subjects(
    api: &Api,
    name: &str,
    add: &[String],
) -> Result<Applied, TopologyError> {
    let mut expected: Vec<String> = add.to_vec();
    let mut wrote = false;
    for _ in 0..VERIFY_ROUNDS {
        let Some(info) = info(api, name, None).await? else {
            return Ok(Applied::Missing);
        };
        let state = StreamState::from_info(&info).ok_or_else(|| malformed("stream info"))?;
        let missing: Vec<String> = expected
            .iter()
            .filter(|s| !state.subjects.contains(s) && !state.covers(s))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(if wrote { Applied::Done } else { Applied::Raced });
        }
        if wrote {
            tracing::warn!(
                stream = %name,
                missing = ?missing,
                "a concurrent update dropped subjects of the stream; adding them again"
            );
        }
        for s in &state.subjects {
            if !expected.contains(s) {
                expected.push(s.clone());
            }
        }
        let mut subjects = state.subjects.clone();
        subjects.extend(missing);
        match update_subjects(api, name, &info, &subjects).await? {
            Applied::Done => wrote = true,
            other => return Ok(other),
        }
    }
    Ok(Applied::Raced)
}

/// How many messages stream `name` stores on `subject` (0 when the stream does not exist).
pub(crate) async fn stored_on(api: &Api, name: &str, subject: &str) -> Result<u64, TopologyError> {
    Ok(info(api, name, Some(subject))
        .await?
        .map_or(0, |info| stored_count(&info, subject)))
}

fn stored_count(info: &Value, subject: &str) -> u64 {
    info.get("state")
        .and_then(|s| s.get("subjects"))
        .and_then(|s| s.get(subject))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Removes `subject` (listed as it is) from stream `name` if the stream stores no message on
/// it. Returns whether it was removed. A message stored between the check and the update
/// (counted again afterwards) puts the subject back, so no dead letter is stranded in a
/// stream that no longer lists its subject.
pub(crate) async fn remove_empty_subject(
    api: &Api,
    name: &str,
    subject: &str,
) -> Result<bool, TopologyError> {
    let Some(info) = info(api, name, Some(subject)).await? else {
        return Ok(false);
    };
    let state = StreamState::from_info(&info).ok_or_else(|| malformed("stream info"))?;
    if !state.subjects.iter().any(|s| s == subject) || stored_count(&info, subject) > 0 {
        return Ok(false);
    }
    let kept: Vec<String> = state
        .subjects
        .iter()
        .filter(|s| *s != subject)
        .cloned()
        .collect();
    if !matches!(
        update_subjects(api, name, &info, &kept).await?,
        Applied::Done
    ) {
        return Ok(false);
    }
    match info_after_removal(api, name, subject).await? {
        Some((after, stored)) if stored > 0 => {
            tracing::warn!(%subject, stream = %name, stored, "a dead letter arrived while the DLQ subject was moved; putting the subject back");
            let mut subjects = StreamState::from_info(&after)
                .map(|s| s.subjects)
                .unwrap_or_default();
            subjects.push(subject.to_owned());
            update_subjects(api, name, &after, &subjects).await?;
            Ok(false)
        }
        _ => Ok(true),
    }
}

async fn info_after_removal(
    api: &Api,
    name: &str,
    subject: &str,
) -> Result<Option<(Value, u64)>, TopologyError> {
    Ok(info(api, name, Some(subject)).await?.map(|info| {
        let stored = stored_count(&info, subject);
        (info, stored)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str, subjects: &[&str]) -> StreamState {
        StreamState {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            retention: WORK_QUEUE.to_owned(),
            storage: FILE.to_owned(),
            replicas: 1,
            duplicate_window: None,
        }
    }

    #[test]
    fn overlaps_lists_every_conflict_and_skips_the_target() {
        let streams = [
            stream("mine", &["a.>"]),
            stream("x", &["a.sync.*", "zzz"]),
            stream("y", &["*.sync.b", "a.sync.b.deeper"]),
        ];
        let conflicts = overlaps("mine", &["a.sync.b", "b.sync.a"], &streams);
        let pairs: Vec<_> = conflicts
            .iter()
            .map(|c| {
                (
                    c.subject.as_str(),
                    c.other_stream.as_str(),
                    c.other_subject.as_str(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [("a.sync.b", "x", "a.sync.*"), ("a.sync.b", "y", "*.sync.b")]
        );
    }

    #[test]
    fn coverage_uses_nats_wildcards() {
        let s = stream("s", &["a.sync.*", "b.>"]);
        assert!(s.covers("a.sync.b"));
        assert!(s.covers("b.sync.a"));
        assert!(!s.covers("b"));
        assert!(!s.covers("a.sync.b.c"));
    }

    #[test]
    fn reads_stream_info_json() {
        let info = json!({"config": {"name": "s", "subjects": ["a", "b"], "retention": "workqueue",
            "storage": "memory", "num_replicas": 3, "duplicate_window": 120_000_000_000u64}});
        let s = StreamState::from_info(&info).unwrap();
        assert_eq!(s.subjects, ["a", "b"]);
        assert_eq!(s.storage, "memory");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.duplicate_window, Some(Duration::from_secs(120)));
        let bare = StreamState::from_info(&json!({"config": {"name": "m"}})).unwrap();
        assert!(bare.subjects.is_empty());
        assert!(StreamState::from_info(&json!({})).is_none());
    }
}
