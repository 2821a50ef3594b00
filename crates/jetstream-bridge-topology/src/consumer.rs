//! Durable consumers: the configuration provisioning creates, the field-by-field comparison
//! with what the server holds, in-place updates, and binding to a pre-provisioned durable
//! without any JetStream API call.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::{self, ErrorCode};
use jetstream_bridge_config::{format_duration, subjects_overlap, ConsumerMode, NatsName};
use serde_json::{json, Value};

use crate::api::{Api, ApiError};
use crate::error::{ConsumerDrift, FieldDrift, TopologyError, TopologyErrorKind};
use crate::spec::ConsumerSpec;
use crate::stream::{nanos, string_list, Applied};

/// The consumer configuration provisioning sends: explicit ack, deliver all, replay instant,
/// the filter, `max_deliver`, `ack_wait`, `max_ack_pending` when configured, push delivery for
/// push mode, and never `backoff` (the server would replace `ack_wait` with
/// `backoff[0]` and rejects `len(backoff) >= max_deliver`).
pub(crate) fn desired_config(spec: &ConsumerSpec) -> Value {
    let mut config = json!({
        "durable_name": spec.durable,
        "ack_policy": "explicit",
        "deliver_policy": "all",
        "replay_policy": "instant",
        "filter_subject": spec.filter,
        "max_deliver": spec.max_deliver,
        "ack_wait": nanos(spec.ack_wait),
    });
    if let Some(max) = spec.max_ack_pending {
        config["max_ack_pending"] = json!(max);
    }
    if spec.mode == ConsumerMode::Push {
        config["deliver_subject"] = json!(spec.deliver_subject);
        config["deliver_group"] = json!(spec.deliver_group);
    }
    config
}

fn text(config: &Value, key: &str) -> String {
    match config.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "none".to_owned(),
    }
}

fn integer(config: &Value, key: &str) -> String {
    config
        .get(key)
        .and_then(Value::as_i64)
        .map_or_else(|| "unset".to_owned(), |n| n.to_string())
}

fn duration(config: &Value, key: &str) -> String {
    config.get(key).and_then(Value::as_u64).map_or_else(
        || "unset".to_owned(),
        |n| format_duration(Duration::from_nanos(n)),
    )
}

fn backoff(config: &Value) -> String {
    let list: Vec<String> = config
        .get("backoff")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|n| format_duration(Duration::from_nanos(n)))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "none".to_owned()
    } else {
        format!("[{}]", list.join(", "))
    }
}

fn filter(config: &Value) -> String {
    let many = string_list(config.get("filter_subjects"));
    if many.is_empty() {
        text(config, "filter_subject")
    } else {
        many.join(",")
    }
}

/// Every field of `actual` (a consumer configuration read from the server) that differs from
/// what `spec` asks for.
pub(crate) fn compare(spec: &ConsumerSpec, actual: &Value) -> Vec<FieldDrift> {
    let push = spec.mode == ConsumerMode::Push;
    let mut expected: Vec<(&'static str, String, String)> = vec![
        ("filter_subject", spec.filter.clone(), filter(actual)),
        ("ack_policy", "explicit".into(), text(actual, "ack_policy")),
        (
            "deliver_policy",
            "all".into(),
            text(actual, "deliver_policy"),
        ),
        (
            "max_deliver",
            spec.max_deliver.to_string(),
            integer(actual, "max_deliver"),
        ),
        (
            "ack_wait",
            format_duration(spec.ack_wait),
            duration(actual, "ack_wait"),
        ),
        ("backoff", "none".into(), backoff(actual)),
        (
            "deliver_subject",
            if push {
                spec.deliver_subject.clone()
            } else {
                "none".into()
            },
            text(actual, "deliver_subject"),
        ),
        (
            "deliver_group",
            if push {
                spec.deliver_group.clone()
            } else {
                "none".into()
            },
            text(actual, "deliver_group"),
        ),
    ];
    if let Some(max) = spec.max_ack_pending {
        expected.push((
            "max_ack_pending",
            max.to_string(),
            integer(actual, "max_ack_pending"),
        ));
    }
    expected
        .into_iter()
        .filter(|(_, e, a)| e != a)
        .map(|(field, expected, actual)| FieldDrift {
            field,
            expected,
            actual,
        })
        .collect()
}

/// What the server holds for a durable.
pub(crate) enum Existing {
    Absent,
    Present(Value),
}

/// Reads `$JS.API.CONSUMER.INFO.<stream>.<durable>` and returns its `config`.
pub(crate) async fn read(
    api: &Api,
    stream: &str,
    durable: &str,
) -> Result<Existing, TopologyError> {
    match api
        .request(&format!("CONSUMER.INFO.{stream}.{durable}"), &json!({}))
        .await
    {
        Ok(info) => info
            .get("config")
            .cloned()
            .map(Existing::Present)
            .ok_or_else(|| {
                TopologyError::new(
                    TopologyErrorKind::Api,
                    "unexpected answer from the JetStream API: consumer info without `config`",
                )
            }),
        Err(e)
            if matches!(
                e.code(),
                Some(ErrorCode::CONSUMER_NOT_FOUND | ErrorCode::STREAM_NOT_FOUND)
            ) =>
        {
            Ok(Existing::Absent)
        }
        Err(e) => Err(e.into_error()),
    }
}

fn create_subject(stream: &str, spec: &ConsumerSpec) -> String {
    format!("CONSUMER.CREATE.{stream}.{}.{}", spec.durable, spec.filter)
}

/// Creates the durable with `action: create`. A server ≥ 2.10 answers "already exists"
/// (10148) when a racing deploy created it with another configuration; 2.9 ignores the action
/// and would update an existing durable, which is why the plan reads consumer info first and
/// re-reads it afterwards.
pub(crate) async fn create(
    api: &Api,
    stream: &str,
    spec: &ConsumerSpec,
) -> Result<Applied, TopologyError> {
    let request = json!({
        "stream_name": stream,
        "config": desired_config(spec),
        "action": "create",
    });
    match api.request(&create_subject(stream, spec), &request).await {
        Ok(_) => Ok(Applied::Done),
        Err(e) => match e.code() {
            Some(
                ErrorCode::CONSUMER_ALREADY_EXISTS
                | ErrorCode::CONSUMER_NAME_EXIST
                | ErrorCode::STREAM_NOT_FOUND,
            ) => Ok(Applied::Raced),
            Some(ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE) => {
                Err(work_queue_conflict(api, stream, spec, e).await)
            }
            _ => Err(e.into_error()),
        },
    }
}

/// Names the other consumers whose filters overlap ours on a work-queue stream (10100).
async fn work_queue_conflict(
    api: &Api,
    stream: &str,
    spec: &ConsumerSpec,
    error: ApiError,
) -> TopologyError {
    let mut others = Vec::new();
    let mut offset = 0usize;
    // Best effort: the error is reported either way; the names make it actionable.
    while let Ok(page) = api
        .request(
            &format!("CONSUMER.LIST.{stream}"),
            &json!({ "offset": offset }),
        )
        .await
    {
        let consumers = page
            .get("consumers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for info in &consumers {
            let name = info.get("name").and_then(Value::as_str).unwrap_or_default();
            let config = info.get("config").cloned().unwrap_or(Value::Null);
            let filters = match string_list(config.get("filter_subjects")) {
                f if !f.is_empty() => f,
                _ => vec![config
                    .get("filter_subject")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or(">")
                    .to_owned()],
            };
            if name != spec.durable && filters.iter().any(|f| subjects_overlap(f, &spec.filter)) {
                others.push(format!("`{name}` (filter {})", filters.join(", ")));
            }
        }
        offset += consumers.len();
        let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
        if consumers.is_empty() || offset as u64 >= total {
            break;
        }
    }
    let names = if others.is_empty() {
        "another consumer".to_owned()
    } else {
        others.join(", ")
    };
    error.into_error_as(TopologyErrorKind::ConsumerConflict, |server| {
        format!(
            "cannot create durable `{}` with filter `{}` on work-queue stream `{stream}`: {names} \
             already receives that subject, and a work-queue stream delivers each subject to one \
             consumer only ({server})",
            spec.durable, spec.filter
        )
    })
}

/// Updates the durable in place: its current configuration with the configured fields set
/// (and `backoff`, and for pull mode the push-only fields, removed), sent as an update. Verifies the answer; a refusal or a
/// value the server did not take is reported as drift. Never deletes the consumer.
pub(crate) async fn update(
    api: &Api,
    stream: &str,
    spec: &ConsumerSpec,
    drift: &[FieldDrift],
) -> Result<Applied, TopologyError> {
    let current = match read(api, stream, &spec.durable).await? {
        Existing::Present(config) => config,
        Existing::Absent => return Ok(Applied::Raced),
    };
    let mut config = current;
    if let (Value::Object(target), Value::Object(desired)) = (&mut config, desired_config(spec)) {
        target.remove("backoff");
        if spec.mode == ConsumerMode::Pull {
            for push_only in [
                "deliver_subject",
                "deliver_group",
                "flow_control",
                "idle_heartbeat",
            ] {
                target.remove(push_only);
            }
        }
        for (key, value) in desired {
            target.insert(key, value);
        }
    }
    let request = json!({ "stream_name": stream, "config": config, "action": "update" });
    let refused = |reason: String| {
        TopologyError::from_problems(vec![crate::Problem::ConsumerDrift(ConsumerDrift {
            stream: stream.to_owned(),
            durable: spec.durable.clone(),
            fields: drift.to_vec(),
            update_refused: Some(reason),
        })])
    };
    match api.request(&create_subject(stream, spec), &request).await {
        Ok(info) => {
            let stored = info.get("config").cloned().unwrap_or(Value::Null);
            let left = compare(spec, &stored);
            if left.is_empty() {
                Ok(Applied::Done)
            } else {
                let fields: Vec<String> = left.iter().map(ToString::to_string).collect();
                Err(refused(format!(
                    "it accepted the update but kept {}",
                    fields.join(", ")
                )))
            }
        }
        Err(e) if e.code() == Some(ErrorCode::CONSUMER_NOT_FOUND) => Ok(Applied::Raced),
        Err(ApiError::JetStream { error, .. }) => {
            let code = error.error_code().0;
            Err(refused(error.to_string())
                .with_jetstream_code(code)
                .with_source(error))
        }
        Err(other) => Err(other.into_error()),
    }
}

/// A durable as the server holds it, read by [`lookup_durable`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableInfo {
    /// The server's `max_deliver` (`None` when unlimited or unset): the delivery on which a
    /// consumer runtime dead-letters a failing message.
    pub max_deliver: Option<u32>,
    /// The server's `ack_wait` (`None` when unset).
    pub ack_wait: Option<Duration>,
}

impl DurableInfo {
    fn from_config(config: &Value) -> Self {
        Self {
            max_deliver: config
                .get("max_deliver")
                .and_then(Value::as_i64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            ack_wait: config
                .get("ack_wait")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .map(Duration::from_nanos),
        }
    }
}

/// Reads durable `durable` of stream `stream` from the server (one `CONSUMER.INFO` request):
/// `Ok(None)` when the durable or its stream does not exist (JetStream errors 10014 and
/// 10059), so a runtime can tell a missing durable from a failed request.
///
/// Needs the JetStream API: restricted users (`disable_js_api`) usually may not send it.
///
/// # Errors
///
/// [`TopologyErrorKind::InvalidSpec`] when `stream` or `durable` is not a valid NATS name;
/// [`Timeout`](TopologyErrorKind::Timeout),
/// [`JetStreamUnavailable`](TopologyErrorKind::JetStreamUnavailable) or
/// [`Api`](TopologyErrorKind::Api) when the request fails or the server refuses it.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_config::Config;
/// use jetstream_bridge_topology::{connect, lookup_durable};
///
/// let config = Config::from_env()?;
/// let connection = connect(&config).await?;
/// let js = connection.jetstream();
/// match lookup_durable(&js, config.stream_name().as_str(), config.durable_name().as_str()).await? {
///     Some(info) => println!("max_deliver {:?}", info.max_deliver),
///     None => println!("the durable is missing: run ensure-topology"),
/// }
/// # Ok(()) }
/// ```
pub async fn lookup_durable(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<Option<DurableInfo>, TopologyError> {
    validate_names(stream, durable)?;
    match read(&Api::new(js, None, None), stream, durable).await? {
        Existing::Present(config) => Ok(Some(DurableInfo::from_config(&config))),
        Existing::Absent => Ok(None),
    }
}

/// `stream` and `durable` as valid NATS names, else [`TopologyErrorKind::InvalidSpec`].
fn validate_names(stream: &str, durable: &str) -> Result<(), TopologyError> {
    for (what, name) in [("stream", stream), ("durable", durable)] {
        NatsName::new(name).map_err(|e| {
            TopologyError::new(
                TopologyErrorKind::InvalidSpec,
                format!("invalid {what} name {name:?}: {e}"),
            )
        })?;
    }
    Ok(())
}

/// A pull consumer handle for a durable that already exists, built from the names alone: **no**
/// JetStream API call is made (no `CONSUMER.INFO`), so it works for restricted users whose only
/// JetStream permissions are `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` and
/// `$JS.ACK.<stream>.<durable>.>` (plus subscribe on the reply inbox).
///
/// Use [`fetch`](async_nats::jetstream::consumer::PullConsumer::fetch) or
/// [`batch`](async_nats::jetstream::consumer::PullConsumer::batch) on it: each is one request
/// to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`. Do not use
/// [`messages`](async_nats::jetstream::consumer::PullConsumer::messages) /
/// [`stream`](async_nats::jetstream::consumer::PullConsumer::stream) in restricted mode:
/// async-nats 0.51 sends `CONSUMER.INFO` from them after every reconnect.
/// [`cached_info`](async_nats::jetstream::consumer::Consumer::cached_info) of the handle holds
/// placeholders (zero counters, the Unix epoch as creation time), not server data.
///
/// If the durable does not exist, fetches get `404`/`409` status answers (not found) from the
/// server: the runtime should report that as missing topology.
///
/// # Errors
///
/// [`TopologyErrorKind::InvalidSpec`] when `stream` or `durable` is not a valid NATS name.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use jetstream_bridge_config::Config;
/// use jetstream_bridge_topology::{bind_pull_consumer, connect};
///
/// let config = Config::from_env()?;
/// let connection = connect(&config).await?;
/// let consumer = bind_pull_consumer(
///     &connection.jetstream(),
///     config.stream_name().as_str(),
///     config.durable_name().as_str(),
/// )?;
/// let batch = consumer.fetch().max_messages(config.batch_size()).messages().await?;
/// # let _ = batch; Ok(()) }
/// ```
pub fn bind_pull_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<PullConsumer, TopologyError> {
    validate_names(stream, durable)?;
    let info = json!({
        "stream_name": stream,
        "name": durable,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "durable_name": durable,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "replay_policy": "instant",
        },
        "delivered": { "consumer_seq": 0, "stream_seq": 0 },
        "ack_floor": { "consumer_seq": 0, "stream_seq": 0 },
        "num_ack_pending": 0,
        "num_redelivered": 0,
        "num_waiting": 0,
        "num_pending": 0,
    });
    let info: jetstream::consumer::Info = serde_json::from_value(info).map_err(|e| {
        TopologyError::new(
            TopologyErrorKind::Api,
            "cannot build a consumer handle with this async-nats version",
        )
        .with_source(e)
    })?;
    let config = pull::Config {
        durable_name: Some(durable.to_owned()),
        ..pull::Config::default()
    };
    Ok(PullConsumer::new(config, info, js.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: ConsumerMode) -> ConsumerSpec {
        ConsumerSpec {
            durable: "orders-workers".into(),
            filter: "billing.sync.orders".into(),
            mode,
            deliver_subject: "billing.sync.orders.worker".into(),
            deliver_group: "orders-workers".into(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: Some(100),
        }
    }

    #[test]
    fn desired_config_never_has_backoff() {
        let pull = desired_config(&spec(ConsumerMode::Pull));
        assert!(pull.get("backoff").is_none());
        assert!(pull.get("deliver_subject").is_none());
        assert_eq!(pull["ack_wait"], json!(30_000_000_000u64));
        let push = desired_config(&spec(ConsumerMode::Push));
        assert_eq!(push["deliver_group"], json!("orders-workers"));
    }

    #[test]
    fn compare_reports_each_differing_field() {
        let s = spec(ConsumerMode::Pull);
        let mut actual = desired_config(&s);
        assert!(compare(&s, &actual).is_empty());
        actual["max_deliver"] = json!(9);
        actual["backoff"] = json!([1_000_000_000u64]);
        actual["ack_wait"] = json!(1_000_000_000u64);
        let drift = compare(&s, &actual);
        let fields: Vec<_> = drift.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["max_deliver", "ack_wait", "backoff"]);
        assert_eq!(drift[0].expected, "5");
        assert_eq!(drift[0].actual, "9");
        assert_eq!(drift[1].actual, "1s");
        assert_eq!(drift[2].actual, "[1s]");
        // Push vs pull is drift too.
        let push = spec(ConsumerMode::Push);
        let fields: Vec<_> = compare(&push, &actual).iter().map(|d| d.field).collect();
        assert!(fields.contains(&"deliver_subject"));
    }

    #[test]
    fn durable_info_reads_max_deliver_and_ack_wait() {
        let info = DurableInfo::from_config(&desired_config(&spec(ConsumerMode::Pull)));
        assert_eq!(info.max_deliver, Some(5));
        assert_eq!(info.ack_wait, Some(Duration::from_secs(30)));
        let unlimited = DurableInfo::from_config(&json!({"max_deliver": -1}));
        assert_eq!((unlimited.max_deliver, unlimited.ack_wait), (None, None));
    }

    #[tokio::test]
    async fn binds_without_a_server_call() {
        // A client that never connected: binding must not need the server.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let js = jetstream::new(client);
        let consumer = bind_pull_consumer(&js, "s", "d").unwrap();
        assert_eq!(consumer.cached_info().name, "d");
        assert_eq!(consumer.cached_info().stream_name, "s");
        let err = bind_pull_consumer(&js, "s", "a.b").unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::InvalidSpec);
    }
}
