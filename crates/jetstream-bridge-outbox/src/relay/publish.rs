//! Stage 2: publishing a claimed batch through the shared PubAck window and sorting what
//! JetStream answered (sent, failed for this message, outage, no responders).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;

use super::claim::Batch;
use super::sql::ClaimedRow;
use super::Inner;
use crate::error::publish_is_outage;
use crate::model::{header_pairs, nats_headers};
use crate::window::{publish_windowed, Acked, Outgoing};

/// How one row's publish ended.
pub(super) enum Outcome {
    Sent {
        duplicate: bool,
    },
    /// JetStream (or the client) refused this message: counted against the row (too large
    /// for the stream or the server, wrong expected sequence, unreadable row, ...).
    Failed(String),
    /// NATS or JetStream unavailable (timeout, lost connection, 503): back without a count,
    /// and the relay pauses.
    Outage(String),
    /// "No responders" for the subject: no stream is bound to it yet, or JetStream is not
    /// answering. Back without a count; the subject is muted with a back-off.
    NoResponders,
}

/// How a batch went, for the loop's back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchResult {
    /// Something was published or counted, or nothing was left to do.
    Progress,
    /// Nothing got through, only because of subjects without responders, which are muted now:
    /// go on at once with the other subjects.
    Muted,
    /// Nothing got through because NATS or the database is unavailable: back off for
    /// `pause` (the rows released are deferred a little longer, so the next claim reaches
    /// other rows first).
    Outage { pause: Duration },
}

/// A batch published and sorted, waiting for its bookkeeping ([`Inner::record`]).
pub(super) struct Sorted {
    /// The claim (token and lease); its rows are not needed any more.
    pub(super) batch: Batch,
    pub(super) sent: Vec<i64>,
    pub(super) duplicates: u64,
    pub(super) failed_ids: Vec<i64>,
    pub(super) failed_errs: Vec<String>,
    pub(super) failed_delays: Vec<f64>,
    pub(super) no_responders: Vec<i64>,
    pub(super) outage: Vec<i64>,
    /// When `outage` rows may be claimed again.
    pub(super) outage_delay: Duration,
}

impl Inner {
    /// Publishes a claimed batch and sorts the outcomes; the database is not written (see
    /// [`record`](Self::record)) except to renew a batch that waited.
    #[tracing::instrument(name = "outbox_relay_batch", skip_all, fields(rows = batch.rows.len()))]
    pub(super) async fn publish_claimed(
        &self,
        mut batch: Batch,
        outage_streak: u32,
    ) -> (Option<Sorted>, BatchResult) {
        // The back-off if nothing gets through (jitter included).
        let pause = self.settings.outage.delay(outage_streak + 1);
        // A batch that waited (claimed ahead while the previous one was published, or behind
        // slow bookkeeping) may be close to, or past, its lease: renew it first and publish
        // only the rows still held, so no other relay publishes them concurrently.
        if batch.claimed_at.elapsed() >= self.settings.lease / 2 && !self.renew(&mut batch).await {
            return (None, BatchResult::Outage { pause });
        }
        if batch.rows.is_empty() {
            return (None, BatchResult::Progress);
        }
        let outcomes = self.publish(&mut batch.rows).await;
        let mut p = Sorted {
            sent: Vec::with_capacity(batch.rows.len()),
            duplicates: 0,
            failed_ids: Vec::new(),
            failed_errs: Vec::new(),
            failed_delays: Vec::new(),
            no_responders: Vec::new(),
            outage: Vec::new(),
            // The rows wait out the relay's pause and one base delay more before they can be
            // claimed again, so the claim after the pause reaches other rows first.
            outage_delay: pause.saturating_add(self.settings.outage.base),
            batch: Batch {
                token: String::new(),
                claimed_at: batch.claimed_at,
                rows: Vec::new(),
            },
        };
        let mut outage_reason = None;
        for (row, outcome) in batch.rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent { duplicate } => {
                    p.sent.push(row.id);
                    p.duplicates += u64::from(duplicate);
                    self.unmute(&row.subject);
                }
                Outcome::NoResponders => {
                    p.no_responders.push(row.id);
                    self.mute(&row.subject);
                }
                Outcome::Outage(reason) => {
                    p.outage.push(row.id);
                    outage_reason.get_or_insert(reason);
                }
                Outcome::Failed(error) => {
                    let attempt = u32::try_from(row.attempts.max(0)).unwrap_or(u32::MAX) + 1;
                    tracing::warn!(event_id = %row.event_id, attempt, %error, "outbox relay: publish failed");
                    p.failed_ids.push(row.id);
                    p.failed_errs.push(error);
                    p.failed_delays
                        .push(self.settings.retry.delay(attempt).as_secs_f64());
                }
            }
        }
        let progress = !p.sent.is_empty() || !p.failed_ids.is_empty();
        let muted = !p.no_responders.is_empty();
        if muted {
            tracing::warn!(
                rows = p.no_responders.len(),
                "outbox relay: no responders (no stream captures the subject yet, or JetStream is unavailable); released without counting an attempt, subject muted with back-off"
            );
        }
        if let Some(reason) = outage_reason {
            tracing::warn!(rows = p.outage.len(), error = %reason, "outbox relay: NATS / JetStream unavailable for these rows; released without counting an attempt");
        }
        let result = if progress {
            BatchResult::Progress
        } else if !p.outage.is_empty() {
            BatchResult::Outage { pause }
        } else if muted {
            BatchResult::Muted
        } else {
            BatchResult::Progress
        };
        // Only the token and lease are needed from here on.
        p.batch.token = batch.token;
        (Some(p), result)
    }

    /// Publishes every row through the PubAck window (`max_in_flight`); outcomes in row
    /// order. Once sending itself fails for an outage reason (connection gone, client send
    /// buffer stuck), the remaining rows are not sent and come back as outages.
    async fn publish(&self, rows: &mut [ClaimedRow]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = rows.iter().map(|_| None).collect();
        // Rows that cannot become a message; kept apart from `outcomes`, which the window
        // fills while the iterator below is being pulled.
        let mut unreadable: Vec<(usize, String)> = Vec::new();
        let ruby_header = self.settings.ruby_msg_id_header;
        // A closure without arguments: an iterator adapter whose closure takes `&mut row`
        // would make this future `!Send` (higher-ranked lifetime inference).
        let mut rows = rows.iter_mut().enumerate();
        let messages = std::iter::from_fn(|| {
            for (i, row) in rows.by_ref() {
                match encode_payload(std::mem::take(&mut row.payload)) {
                    Ok(body) => {
                        let extra = header_pairs(&row.headers);
                        let headers = nats_headers(
                            &row.event_id,
                            extra.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                            ruby_header,
                        );
                        let subject = row.subject.clone();
                        let message = Outgoing {
                            subject,
                            headers,
                            body,
                        };
                        return Some((i, message));
                    }
                    Err(reason) => unreadable.push((i, reason)),
                }
            }
            None
        });
        let mut down: Option<String> = None;
        publish_windowed(
            &self.jetstream,
            self.settings.max_in_flight,
            messages,
            is_outage,
            |i, acked| {
                let outcome = classify(acked);
                if let Outcome::Outage(reason) = &outcome {
                    down.get_or_insert_with(|| reason.clone());
                }
                outcomes[i] = Some(outcome);
            },
        )
        .await;
        for (i, reason) in unreadable {
            outcomes[i] = Some(Outcome::Failed(reason));
        }
        let down = down.unwrap_or_else(|| "not published".to_owned());
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Outage(down.clone())))
            .collect()
    }
}

/// Sorts a publish result: acknowledged, refused for this message (counted against the row),
/// or an outage (not counted); see [`publish_is_outage`].
fn classify(acked: Acked) -> Outcome {
    match acked {
        Ok(ack) => Outcome::Sent {
            duplicate: ack.duplicate,
        },
        Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Outcome::NoResponders,
        Err(e) if is_outage(&e) => Outcome::Outage(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// An [`Outcome::Outage`]: NATS or JetStream unavailable, other than "no responders".
fn is_outage(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.kind() != PublishErrorKind::StreamNotFound && publish_is_outage(e)
}

/// The message body for a row's `payload` text: an envelope object is sent exactly as it was
/// stored (the bytes serialized at enqueue: key order, number formatting and escapes kept); a
/// gem-written row that holds the envelope as a JSON string is sent as that string's content.
/// The envelope itself is not parsed again (enqueue checked it).
fn encode_payload(payload: String) -> std::result::Result<Vec<u8>, String> {
    match payload.trim_start().as_bytes().first() {
        Some(b'{') => Ok(payload.into_bytes()),
        Some(b'"') => serde_json::from_str::<String>(&payload)
            .map(String::into_bytes)
            .map_err(|e| format!("unreadable JSON string in outbox payload: {e}")),
        other => Err(format!(
            "outbox payload is not an envelope object but {}",
            match other {
                Some(b'[') => "an array",
                Some(b'n') => "null",
                None => "empty",
                _ => "a scalar",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_sent_as_stored_and_gem_strings_unwrapped() {
        // Key order and number formatting jsonb would change, a Ruby-style float, `/`.
        let stored = r#"{"event_id":"e1","payload":{"id":6,"big":12345678901234567890,"f":1.0e+20,"sym":"a/b"}}"#;
        assert_eq!(
            encode_payload(stored.to_owned()).unwrap(),
            stored.as_bytes()
        );
        let gem = serde_json::to_string(stored).unwrap();
        assert!(gem.starts_with('"'));
        assert_eq!(encode_payload(gem).unwrap(), stored.as_bytes());
        assert!(encode_payload(r#""unterminated"#.to_owned()).is_err());
        for (text, what) in [
            ("[1]", "an array"),
            ("null", "null"),
            (" 42", "a scalar"),
            ("", "empty"),
        ] {
            let err = encode_payload(text.to_owned()).unwrap_err();
            assert!(err.ends_with(what), "{text}: {err}");
        }
    }
}
