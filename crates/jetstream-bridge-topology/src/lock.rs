//! The stream lock: a lease in a JetStream key-value bucket that serialises the
//! read-modify-write of one stream's subjects between concurrent deploys.
//!
//! JetStream has no compare-and-set for stream updates: two deploys that read a stream's
//! subjects at the same moment and each add their own would keep only the last write. The
//! lease is a key-value entry `stream.<stream name>` created with
//! `Nats-Expected-Last-Subject-Sequence` (0, or the sequence of the delete marker a previous
//! holder left), which the server accepts for exactly one writer (nats-server 2.9 supports it).
//! The holder deletes it with its own sequence as the expected one, so a holder whose lease
//! expired cannot delete its successor's. The bucket's `max_age` is the lease time: the entry
//! of a deploy that crashed disappears by itself.
//!
//! The bucket is an ordinary key-value bucket (`KV_<bucket>` stream), so `nats kv get
//! jetstream-bridge-locks stream.<stream>` shows who holds a lock.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::api::{Api, ApiError};
use crate::error::{TopologyError, TopologyErrorKind};
use crate::stream::nanos;

/// The default key-value bucket holding stream locks.
pub const DEFAULT_LOCK_BUCKET: &str = "jetstream-bridge-locks";

/// The default lease time of a stream lock (the lock bucket's `max_age`): 30 seconds.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

/// The header JetStream checks before storing a message: the sequence of the last message on
/// the same subject (0: none).
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// The key-value operation header of a delete marker.
const KV_OPERATION: &str = "KV-Operation";

/// How long to wait between attempts while another deploy holds the lock, at most.
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// How the lock is used: from [`EnsureOptions`](crate::EnsureOptions).
#[derive(Debug, Clone)]
pub(crate) struct LockSettings {
    pub(crate) enabled: bool,
    pub(crate) bucket: String,
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
}

impl Default for LockSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            bucket: DEFAULT_LOCK_BUCKET.to_owned(),
            ttl: DEFAULT_LOCK_TTL,
            wait: None,
        }
    }
}

impl LockSettings {
    /// How long to wait for a lock another deploy holds: as set, else the lease time plus 15 s
    /// (a crashed holder's lease has expired by then).
    fn wait(&self) -> Duration {
        self.wait
            .unwrap_or_else(|| self.ttl.saturating_add(Duration::from_secs(15)))
    }

    /// Checks the bucket name: `[A-Za-z0-9_-]+`, as key-value buckets require.
    pub(crate) fn check(&self) -> Result<(), TopologyError> {
        if !self.enabled {
            return Ok(());
        }
        let valid = !self.bucket.is_empty()
            && self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(())
        } else {
            Err(TopologyError::new(
                TopologyErrorKind::InvalidSpec,
                format!(
                    "invalid lock bucket name {:?}: use letters, digits, `_` and `-`",
                    self.bucket
                ),
            ))
        }
    }

    /// The subject of the lock entry of `stream`: `$KV.<bucket>.stream.<encoded name>`.
    pub(crate) fn subject(&self, stream: &str) -> String {
        format!("$KV.{}.{}", self.bucket, lock_key(stream))
    }
}

/// The key of a stream's lock: `stream.` and the name with every byte outside
/// `[A-Za-z0-9_-]` written as `=XX` (hex), so any stream name gives a valid, distinct key.
pub(crate) fn lock_key(stream: &str) -> String {
    let mut key = String::with_capacity(stream.len() + 7);
    key.push_str("stream.");
    for b in stream.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(char::from(b));
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// A lock this deploy holds: the entry's subject and sequence.
#[derive(Debug)]
struct Held {
    subject: String,
    seq: u64,
}

/// The last entry of a lock key.
struct Entry {
    seq: u64,
    /// A delete or purge marker (no data): the lock is free.
    released: bool,
    /// When it was written (RFC 3339, as the server reports it).
    time: String,
}

/// Runs `work` while holding the lock of `stream` (when locking is enabled), releasing it
/// afterwards whatever `work` returned.
///
/// # Errors
///
/// [`Conflict`](TopologyErrorKind::Conflict) when another deploy holds the lock longer than
/// the lock wait; the errors of the key-value requests (e.g.
/// [`PermissionDenied`](TopologyErrorKind::PermissionDenied) naming the lock subject); and
/// whatever `work` returns.
pub(crate) async fn locked<T>(
    api: &Api,
    settings: &LockSettings,
    stream: &str,
    replicas: usize,
    work: impl Future<Output = Result<T, TopologyError>>,
) -> Result<T, TopologyError> {
    if !settings.enabled {
        return work.await;
    }
    let held = acquire(api, settings, stream, replicas).await?;
    let result = work.await;
    release(api, &held).await;
    result
}

async fn acquire(
    api: &Api,
    settings: &LockSettings,
    stream: &str,
    replicas: usize,
) -> Result<Held, TopologyError> {
    let subject = settings.subject(stream);
    let value = json!({
        "owner": "jetstream-bridge ensure-topology",
        "pid": std::process::id(),
        "stream": stream,
        "token": format!("{:016x}", rand::rng().random::<u64>()),
    })
    .to_string();
    let deadline = Instant::now() + settings.wait();
    let mut expected = 0u64;
    let mut created = false;
    let mut pause = Duration::from_millis(5);
    let mut holder: Option<Entry> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(busy(stream, &subject, settings, holder.as_ref()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        match api
            .publish(&subject, headers, value.clone().into_bytes())
            .await
        {
            Ok(ack) => {
                let seq = ack.get("seq").and_then(Value::as_u64).ok_or_else(|| {
                    TopologyError::new(
                        TopologyErrorKind::Api,
                        format!("unexpected answer to a publish to `{subject}`: no sequence"),
                    )
                })?;
                tracing::debug!(%stream, %subject, seq, "stream lock acquired");
                return Ok(Held { subject, seq });
            }
            Err(ApiError::NoStream(_)) if !created => {
                create_bucket(api, settings, replicas).await?;
                created = true;
            }
            Err(e) if e.code() == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE) => {
                match last_entry(api, settings, &subject).await? {
                    // The entry expired meanwhile: the lock is free.
                    None => expected = 0,
                    Some(entry) if entry.released => expected = entry.seq,
                    Some(entry) => {
                        tracing::debug!(%stream, since = %entry.time, "stream lock held by another deploy, waiting");
                        holder = Some(entry);
                        expected = 0;
                        let jitter = rand::rng().random_range(0..=pause.as_millis());
                        let jitter = Duration::from_millis(u64::try_from(jitter).unwrap_or(0));
                        tokio::time::sleep(pause + jitter).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                }
            }
            Err(e) => return Err(lock_error(e, &subject)),
        }
    }
}

fn busy(
    stream: &str,
    subject: &str,
    settings: &LockSettings,
    holder: Option<&Entry>,
) -> TopologyError {
    let since = holder
        .map(|h| format!(" since {}", h.time))
        .unwrap_or_default();
    TopologyError::new(
        TopologyErrorKind::Conflict,
        format!(
            "stream `{stream}` is locked by another deploy{since} (lock entry `{subject}` in \
             key-value bucket `{}`); waited {}: try again, or delete a stale lock with `nats kv \
             del {} {}` (it also expires {} after it was taken)",
            settings.bucket,
            jetstream_bridge_config::format_duration(settings.wait()),
            settings.bucket,
            lock_key(stream),
            jetstream_bridge_config::format_duration(settings.ttl),
        ),
    )
}

fn lock_error(e: ApiError, subject: &str) -> TopologyError {
    match e {
        ApiError::JetStream { .. } => e.into_error_as(TopologyErrorKind::Api, |server| {
            format!("cannot take the stream lock `{subject}`: {server}")
        }),
        other => other.into_error(),
    }
}

/// Deletes the lock entry, expecting it to be ours. A lease that expired (and maybe went to
/// another deploy) is left alone; any failure only logs: the entry expires by itself.
async fn release(api: &Api, held: &Held) {
    let mut headers = HeaderMap::new();
    headers.insert(
        EXPECTED_LAST_SUBJECT_SEQUENCE,
        held.seq.to_string().as_str(),
    );
    headers.insert(KV_OPERATION, "DEL");
    match api.publish(&held.subject, headers, Vec::new()).await {
        Ok(_) => tracing::debug!(subject = %held.subject, "stream lock released"),
        Err(e) if e.code() == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE) => tracing::warn!(
            subject = %held.subject,
            "the stream lock's lease expired before it was released; the changes were \
             verified after writing, but consider a longer lock TTL"
        ),
        Err(e) => tracing::warn!(
            subject = %held.subject,
            error = %e.into_error(),
            "cannot release the stream lock; it expires by itself"
        ),
    }
}

/// The last message of the lock key (`$JS.API.STREAM.MSG.GET.KV_<bucket>`), `None` when there
/// is none.
async fn last_entry(
    api: &Api,
    settings: &LockSettings,
    subject: &str,
) -> Result<Option<Entry>, TopologyError> {
    let answer = api
        .request(
            &format!("STREAM.MSG.GET.KV_{}", settings.bucket),
            &json!({ "last_by_subj": subject }),
        )
        .await;
    match answer {
        Ok(answer) => {
            let message = answer.get("message");
            let seq = message
                .and_then(|m| m.get("seq"))
                .and_then(Value::as_u64)
                .ok_or_else(|| {
                    TopologyError::new(
                        TopologyErrorKind::Api,
                        "unexpected answer from the JetStream API: message without a sequence",
                    )
                })?;
            let data = message
                .and_then(|m| m.get("data"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let time = message
                .and_then(|m| m.get("time"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Ok(Some(Entry {
                seq,
                released: data.is_empty(),
                time,
            }))
        }
        Err(e) if e.code() == Some(ErrorCode::NO_MESSAGE_FOUND) => Ok(None),
        Err(e) => Err(e.into_error()),
    }
}

/// Creates the lock bucket: a key-value bucket (history 1) whose `max_age` is the lease time.
/// A bucket that exists with another configuration is used as it is.
async fn create_bucket(
    api: &Api,
    settings: &LockSettings,
    replicas: usize,
) -> Result<(), TopologyError> {
    let name = format!("KV_{}", settings.bucket);
    let ttl = settings.ttl.max(Duration::from_secs(1));
    let config = json!({
        "name": name,
        "description": "jetstream-bridge stream locks (ensure-topology)",
        "subjects": [format!("$KV.{}.>", settings.bucket)],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "num_replicas": replicas.max(1),
        "max_msgs_per_subject": 1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_age": nanos(ttl),
        "duplicate_window": nanos(ttl.min(Duration::from_secs(120))),
        "deny_delete": true,
        "deny_purge": false,
        "allow_rollup_hdrs": true,
        "allow_direct": true,
    });
    match api.request(&format!("STREAM.CREATE.{name}"), &config).await {
        Ok(_) => {
            tracing::info!(bucket = %settings.bucket, "created the stream lock bucket");
            Ok(())
        }
        Err(e) if e.code() == Some(ErrorCode::STREAM_NAME_EXIST) => Ok(()),
        Err(e) => Err(e.into_error_as(TopologyErrorKind::Api, |server| {
            format!(
                "cannot create the stream lock bucket `{}` (stream `{name}`): {server}; create \
                 it beforehand (`nats kv add {} --history 1 --ttl {}`) or grant publish \
                 permission on `$JS.API.STREAM.CREATE.{name}`",
                settings.bucket,
                settings.bucket,
                jetstream_bridge_config::format_duration(ttl)
            )
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_valid_and_distinct() {
        assert_eq!(lock_key("orders-stream_1"), "stream.orders-stream_1");
        assert_eq!(lock_key("a$b"), "stream.a=24b");
        assert_eq!(lock_key("a=24b"), "stream.a=3D24b");
        assert_eq!(lock_key("ä"), "stream.=C3=A4");
        let settings = LockSettings::default();
        assert_eq!(settings.subject("s"), "$KV.jetstream-bridge-locks.stream.s");
    }

    #[test]
    fn bucket_names_are_checked_and_wait_defaults_to_ttl_plus_margin() {
        let mut settings = LockSettings::default();
        assert!(settings.check().is_ok());
        assert_eq!(settings.wait(), Duration::from_secs(45));
        settings.bucket = "a.b".into();
        assert_eq!(
            settings.check().unwrap_err().kind(),
            TopologyErrorKind::InvalidSpec
        );
        settings.enabled = false;
        assert!(settings.check().is_ok());
    }
}
