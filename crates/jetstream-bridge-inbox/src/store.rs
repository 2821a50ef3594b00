//! [`Inbox`]: record, mark and prune rows of `jetstream_inbox_events`.

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use jetstream_bridge_config::Envelope;
use jetstream_bridge_pg::prepared;
use serde_json::Value;

use crate::error::{InboxError, InboxErrorKind, Result};

/// The rest of a claim's `ON CONFLICT (event_id) DO UPDATE SET` (after `status` and
/// `error_message`): one more attempt, the delivery's metadata, and only while the row is not
/// processed yet.
macro_rules! claim_again {
    () => {
        "processing_attempts = i.processing_attempts + 1, \
         deliveries = EXCLUDED.deliveries, \
         subject = coalesce(EXCLUDED.subject, i.subject), \
         headers = EXCLUDED.headers, \
         processed_at = EXCLUDED.processed_at, \
         updated_at = now() \
         WHERE i.status <> 'processed'"
    };
}

/// The single-event upsert (`Inbox::record`, `Inbox::record_processed`) writing `$status` with
/// `processed_at = $processed_at`: fixed texts, so each connection prepares them once.
macro_rules! upsert_sql {
    ($status:literal, $processed_at:literal) => {
        concat!(
            "INSERT INTO jetstream_inbox_events AS i \
               (event_id, event_type, resource_type, resource_id, payload, subject, headers, \
                stream, stream_seq, deliveries, status, processing_attempts, processed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
               CASE WHEN EXISTS (SELECT 1 FROM jetstream_inbox_events o \
                                 WHERE o.stream = $8 AND o.stream_seq = $9 AND o.event_id <> $1) \
                    THEN NULL ELSE $9 END, \
               $10, '", $status, "', 1, ", $processed_at, ") \
             ON CONFLICT (event_id) DO UPDATE SET \
               status = '", $status, "', \
               error_message = CASE WHEN '", $status, "' = 'processed' THEN NULL \
                                    ELSE i.error_message END, ",
            claim_again!(),
            " RETURNING i.id"
        )
    };
}

const UPSERT_PROCESSING: &str = upsert_sql!("processing", "NULL");
const UPSERT_PROCESSED: &str = upsert_sql!("processed", "now()");

/// One received event as the inbox stores it (a wire struct: public fields, one per column).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InboxEntry {
    /// The dedupe key: the envelope's event id (from the msg-id header, else the body).
    pub event_id: String,
    /// The envelope's `event_type`.
    pub event_type: String,
    /// The envelope's `resource_type`.
    pub resource_type: Option<String>,
    /// The envelope's `resource_id`.
    pub resource_id: Option<String>,
    /// The whole envelope as a JSON object: the received body verbatim
    /// ([`from_body`](Self::from_body), what the consumer runtime stores) or a value.
    pub payload: InboxPayload,
    /// The subject the message arrived on.
    pub subject: Option<String>,
    /// The message headers as a JSON object (`{name: value}`).
    pub headers: Value,
    /// The stream that stored the message.
    pub stream: Option<String>,
    /// The message's stream sequence.
    pub stream_seq: Option<u64>,
    /// The delivery count of this delivery (1 for the first).
    pub deliveries: Option<u32>,
}

impl InboxEntry {
    /// An entry for `envelope` with no message metadata (set the public fields to add it); the
    /// payload is the envelope's wire object, built as a JSON value.
    #[must_use]
    pub fn from_envelope(envelope: &Envelope) -> Self {
        // The same object as the wire body (`Envelope`'s `Serialize` writes the wire fields),
        // built directly rather than written and parsed again.
        let payload = serde_json::to_value(envelope).unwrap_or(Value::Null);
        Self::with_payload(envelope, InboxPayload::Value(payload))
    }

    /// An entry for `envelope` as received in the message body `body` (the JSON text the
    /// envelope was parsed from), with no message metadata. The payload column gets the body
    /// itself, parsed by PostgreSQL: every field the producer sent, as the Ruby gem stores it,
    /// and no JSON value built and written again per event.
    #[must_use]
    pub fn from_body(envelope: &Envelope, body: impl Into<Bytes>) -> Self {
        Self::with_payload(envelope, InboxPayload::Json(body.into()))
    }

    fn with_payload(envelope: &Envelope, payload: InboxPayload) -> Self {
        Self {
            event_id: envelope.event_id.as_str().to_owned(),
            event_type: envelope.event_type.clone(),
            resource_type: Some(envelope.resource_type.clone()),
            resource_id: Some(envelope.resource_id.clone()),
            payload,
            subject: None,
            headers: Value::Object(serde_json::Map::new()),
            stream: None,
            stream_seq: None,
            deliveries: None,
        }
    }

    /// Sets the message metadata: subject, stream, stream sequence and delivery count.
    #[must_use]
    pub fn with_message(
        mut self,
        subject: impl Into<String>,
        stream: impl Into<String>,
        stream_seq: u64,
        deliveries: u32,
    ) -> Self {
        self.subject = Some(subject.into());
        let stream = stream.into();
        // No stream position known (message metadata unavailable: empty stream name or
        // sequence 0, which JetStream never assigns): store NULL for both, so such entries
        // never collide on the unique `(stream, stream_seq)` index.
        if stream.is_empty() || stream_seq == 0 {
            self.stream = None;
            self.stream_seq = None;
        } else {
            self.stream = Some(stream);
            self.stream_seq = Some(stream_seq);
        }
        self.deliveries = Some(deliveries);
        self
    }

    /// Sets the headers from `(name, value)` pairs (the first value of a name wins).
    #[must_use]
    pub fn with_headers<I, K, V>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = serde_json::Map::new();
        for (name, value) in headers {
            map.entry(name.as_ref().to_owned())
                .or_insert_with(|| Value::String(value.as_ref().to_owned()));
        }
        self.headers = Value::Object(map);
        self
    }

    fn stream_seq_i64(&self) -> Result<Option<i64>> {
        self.stream_seq
            .map(i64::try_from)
            .transpose()
            .map_err(|e| InboxError::with_source(InboxErrorKind::InvalidEntry, e))
    }

    fn deliveries_i32(&self) -> Option<i32> {
        self.deliveries
            .map(|d| i32::try_from(d).unwrap_or(i32::MAX))
    }
}

/// What an [`InboxEntry`] stores in the `payload` column (`jsonb`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InboxPayload {
    /// A JSON value, written as JSON text when stored.
    Value(Value),
    /// JSON text (a received message body), sent as it is: PostgreSQL parses it, and rejects
    /// the statement if it is not JSON.
    Json(Bytes),
}

impl From<Value> for InboxPayload {
    fn from(value: Value) -> Self {
        Self::Value(value)
    }
}

impl InboxPayload {
    /// The payload as a JSON value (parsing the text of [`Json`](Self::Json); `None` when
    /// it is not JSON).
    #[must_use]
    pub fn to_value(&self) -> Option<Value> {
        match self {
            Self::Value(v) => Some(v.clone()),
            Self::Json(text) => serde_json::from_slice(text).ok(),
        }
    }
}

impl ToSql<Jsonb, Pg> for InboxPayload {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        // jsonb's binary input: format version 1, then the JSON text.
        out.write_all(&[1])?;
        match self {
            Self::Value(v) => serde_json::to_writer(out, v)?,
            Self::Json(text) => out.write_all(text)?,
        }
        Ok(IsNull::No)
    }
}

/// What [`Inbox::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// The event is not processed yet: its row is now `processing` (inserted, or an earlier
    /// failed attempt claimed again) and locked by the caller's transaction. Run the handler.
    New,
    /// The event was already processed: skip the handler and ack the message.
    Duplicate,
}

/// The `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InboxStatus {
    /// Written by a plain insert (the column default); the runtime never leaves a row here.
    Received,
    /// Claimed by a running attempt (visible only inside its transaction, or after a crash of
    /// a runtime that wrote it some other way).
    Processing,
    /// The handler's writes committed with this row.
    Processed,
    /// The last attempt failed; `error_message`, `failed_at`, `processing_attempts` say how.
    Failed,
}

impl InboxStatus {
    /// The column value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
        }
    }
}

/// The inbox of table `jetstream_inbox_events` (created by `jetstream-bridge migrate`, or
/// `jetstream_bridge_pg::Migrator` in code).
///
/// Stateless: the methods take the connection to use, so [`record`](Self::record) and
/// [`mark_processed`](Self::mark_processed) run inside the caller's transaction together with
/// the handler's writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbox {
    _private: (),
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    #[allow(dead_code)]
    id: i64,
}

impl Inbox {
    /// The inbox.
    #[must_use]
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Records the start of an attempt to process `entry`, inside the caller's transaction.
    ///
    /// One statement: `INSERT … ON CONFLICT (event_id) DO UPDATE … WHERE status <> 'processed'`.
    /// A new or not-yet-processed event becomes `processing` (attempts + 1) and its row stays
    /// locked until the transaction ends, so a concurrent attempt on the same event (another
    /// instance, or a second copy of the message) waits and then sees
    /// [`Recorded::Duplicate`] if this one committed. `stream_seq` is stored only when no other
    /// event already holds the same `(stream, stream_seq)` (a recreated stream restarts its
    /// sequences).
    ///
    /// # Errors
    ///
    /// [`Database`](InboxErrorKind::Database) when the statement fails (the transaction is then
    /// aborted); [`InvalidEntry`](InboxErrorKind::InvalidEntry) for a stream sequence above
    /// `i64::MAX`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe on its own: cancel the surrounding transaction instead (it rolls back).
    pub async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        entry: &InboxEntry,
    ) -> Result<Recorded> {
        self.upsert(conn, entry, UPSERT_PROCESSING).await
    }

    /// [`record`](Self::record) and [`mark_processed`](Self::mark_processed) in one statement:
    /// the row is written as `processed` right away (clearing `error_message` like
    /// `mark_processed`; `failed_at` is kept). Use it only inside a transaction that
    /// commits exactly when the handler's writes commit (as the consumer runtime does): a
    /// rollback removes the claim with everything else, and other sessions never see the row
    /// before the commit. Saves one round trip per event.
    ///
    /// # Errors
    ///
    /// As [`record`](Self::record).
    ///
    /// # Cancel safety
    ///
    /// As [`record`](Self::record).
    pub async fn record_processed(
        &self,
        conn: &mut AsyncPgConnection,
        entry: &InboxEntry,
    ) -> Result<Recorded> {
        self.upsert(conn, entry, UPSERT_PROCESSED).await
    }

    /// [`record_processed`](Self::record_processed) for many entries in **one** statement
    /// (a multi-row `INSERT … SELECT FROM unnest(…) ON CONFLICT (event_id) DO UPDATE … WHERE
    /// status <> 'processed' RETURNING event_id`): the result says, per entry and in the
    /// order given, whether its event is new (now written `processed`, locked by the caller's
    /// transaction) or a duplicate. Same contract as `record_processed`: use it only inside a
    /// transaction that commits exactly when the handler's writes for the new entries commit.
    ///
    /// An event id given more than once is claimed once: its first entry gets the answer of
    /// the database, the later ones [`Recorded::Duplicate`]. Rows are claimed in event-id
    /// order, so two transactions claiming overlapping batches lock in the same order.
    /// `DO UPDATE … WHERE status <> 'processed'` (not `DO NOTHING`) so that an event whose
    /// earlier attempt failed (a `failed` row) is claimed again rather than taken for a
    /// duplicate; as on every path to `processed`, its `error_message` is cleared and its
    /// `failed_at` kept.
    ///
    /// # Errors
    ///
    /// As [`record`](Self::record).
    ///
    /// # Cancel safety
    ///
    /// As [`record`](Self::record).
    pub async fn record_processed_batch(
        &self,
        conn: &mut AsyncPgConnection,
        entries: &[InboxEntry],
    ) -> Result<Vec<Recorded>> {
        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = Text)]
            event_id: String,
        }
        // The first entry of each event id, in event-id order.
        let mut first: Vec<usize> = Vec::with_capacity(entries.len());
        {
            let mut seen = HashSet::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                if seen.insert(entry.event_id.as_str()) {
                    first.push(i);
                }
            }
        }
        if first.is_empty() {
            return Ok(Vec::new());
        }
        first.sort_by(|a, b| entries[*a].event_id.cmp(&entries[*b].event_id));
        let rows = first.iter().map(|i| &entries[*i]);
        let stream_seqs = rows
            .clone()
            .map(InboxEntry::stream_seq_i64)
            .collect::<Result<Vec<_>>>()?;
        let claimed: Vec<Claimed> = prepared(concat!(
            "INSERT INTO jetstream_inbox_events AS i \
               (event_id, event_type, resource_type, resource_id, payload, subject, headers, \
                stream, stream_seq, deliveries, status, processing_attempts, processed_at) \
             SELECT u.event_id, u.event_type, u.resource_type, u.resource_id, u.payload, \
               u.subject, u.headers, u.stream, \
               CASE WHEN EXISTS (SELECT 1 FROM jetstream_inbox_events o \
                                 WHERE o.stream = u.stream AND o.stream_seq = u.stream_seq \
                                   AND o.event_id <> u.event_id) \
                    THEN NULL ELSE u.stream_seq END, \
               u.deliveries, 'processed', 1, now() \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], \
                         $6::text[], $7::jsonb[], $8::text[], $9::bigint[], $10::integer[]) \
                  WITH ORDINALITY AS u(event_id, event_type, resource_type, resource_id, \
                    payload, subject, headers, stream, stream_seq, deliveries, ord) \
             ORDER BY u.ord \
             ON CONFLICT (event_id) DO UPDATE SET \
               status = 'processed', \
               error_message = NULL, ",
            claim_again!(),
            " RETURNING i.event_id"
        ))
        .bind::<Array<Text>, _>(
            rows.clone()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            rows.clone()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            rows.clone()
                .map(|e| e.resource_type.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Text>>, _>(
            rows.clone()
                .map(|e| e.resource_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Jsonb>, _>(rows.clone().map(|e| &e.payload).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            rows.clone()
                .map(|e| e.subject.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Jsonb>, _>(rows.clone().map(|e| &e.headers).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(
            rows.clone()
                .map(|e| e.stream.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<BigInt>>, _>(stream_seqs)
        .bind::<Array<Nullable<Integer>>, _>(
            rows.map(InboxEntry::deliveries_i32).collect::<Vec<_>>(),
        )
        .load(conn)
        .await?;
        let fresh: HashSet<&str> = claimed.iter().map(|c| c.event_id.as_str()).collect();
        let mut answered = HashSet::with_capacity(entries.len());
        Ok(entries
            .iter()
            .map(|entry| {
                let id = entry.event_id.as_str();
                if answered.insert(id) && fresh.contains(id) {
                    Recorded::New
                } else {
                    Recorded::Duplicate
                }
            })
            .collect())
    }

    async fn upsert(
        &self,
        conn: &mut AsyncPgConnection,
        entry: &InboxEntry,
        sql: &'static str,
    ) -> Result<Recorded> {
        let rows: Vec<Id> = prepared(sql)
            .bind::<Text, _>(&entry.event_id)
            .bind::<Text, _>(&entry.event_type)
            .bind::<Nullable<Text>, _>(entry.resource_type.as_deref())
            .bind::<Nullable<Text>, _>(entry.resource_id.as_deref())
            .bind::<Jsonb, _>(&entry.payload)
            .bind::<Nullable<Text>, _>(entry.subject.as_deref())
            .bind::<Jsonb, _>(&entry.headers)
            .bind::<Nullable<Text>, _>(entry.stream.as_deref())
            .bind::<Nullable<BigInt>, _>(entry.stream_seq_i64()?)
            .bind::<Nullable<Integer>, _>(entry.deliveries_i32())
            .load(conn)
            .await?;
        Ok(if rows.is_empty() {
            Recorded::Duplicate
        } else {
            Recorded::New
        })
    }

    /// Marks `event_id` processed (`processed_at = now()`), inside the transaction that ran
    /// [`record`](Self::record) and the handler.
    ///
    /// Every path to `processed` (this, [`record_processed`](Self::record_processed),
    /// [`record_processed_batch`](Self::record_processed_batch)) clears `error_message` (a
    /// processed row has no current error) and keeps `failed_at`, the time of the last failed
    /// attempt (`NULL` when none failed): together with `processing_attempts` it tells that
    /// the event needed retries, and when.
    ///
    /// # Errors
    ///
    /// [`Database`](InboxErrorKind::Database) when the statement fails.
    ///
    /// # Cancel safety
    ///
    /// As [`record`](Self::record).
    pub async fn mark_processed(&self, conn: &mut AsyncPgConnection, event_id: &str) -> Result<()> {
        prepared(
            "UPDATE jetstream_inbox_events SET status = 'processed', processed_at = now(), \
             error_message = NULL, updated_at = now() WHERE event_id = $1",
        )
        .bind::<Text, _>(event_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Records a failed attempt: `status = 'failed'`, `error_message`, `failed_at = now()`,
    /// `processing_attempts + 1`. Call it **outside** the rolled-back transaction of the
    /// attempt (it inserts the row when that transaction's insert was rolled back). A row
    /// already `processed` is left alone.
    ///
    /// # Errors
    ///
    /// [`Database`](InboxErrorKind::Database) when the statement fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: one statement, committed or not.
    pub async fn record_failure(
        &self,
        conn: &mut AsyncPgConnection,
        entry: &InboxEntry,
        error: &str,
    ) -> Result<()> {
        prepared(
            "INSERT INTO jetstream_inbox_events AS i \
               (event_id, event_type, resource_type, resource_id, payload, subject, headers, \
                stream, stream_seq, deliveries, status, processing_attempts, error_message, \
                failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
               CASE WHEN EXISTS (SELECT 1 FROM jetstream_inbox_events o \
                                 WHERE o.stream = $8 AND o.stream_seq = $9 AND o.event_id <> $1) \
                    THEN NULL ELSE $9 END, \
               $10, 'failed', 1, $11, now()) \
             ON CONFLICT (event_id) DO UPDATE SET \
               status = 'failed', \
               processing_attempts = i.processing_attempts + 1, \
               deliveries = EXCLUDED.deliveries, \
               error_message = EXCLUDED.error_message, \
               failed_at = now(), \
               updated_at = now() \
             WHERE i.status <> 'processed'",
        )
        .bind::<Text, _>(&entry.event_id)
        .bind::<Text, _>(&entry.event_type)
        .bind::<Nullable<Text>, _>(entry.resource_type.as_deref())
        .bind::<Nullable<Text>, _>(entry.resource_id.as_deref())
        .bind::<Jsonb, _>(&entry.payload)
        .bind::<Nullable<Text>, _>(entry.subject.as_deref())
        .bind::<Jsonb, _>(&entry.headers)
        .bind::<Nullable<Text>, _>(entry.stream.as_deref())
        .bind::<Nullable<BigInt>, _>(entry.stream_seq_i64()?)
        .bind::<Nullable<Integer>, _>(entry.deliveries_i32())
        .bind::<Text, _>(error)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Deletes processed rows whose `processed_at` is older than `older_than`, `batch_size`
    /// rows per statement until none is left; returns how many were deleted.
    ///
    /// # Errors
    ///
    /// [`Database`](InboxErrorKind::Database) when a statement fails (earlier batches stay
    /// deleted).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: each batch commits on its own.
    pub async fn cleanup_processed(
        &self,
        conn: &mut AsyncPgConnection,
        older_than: Duration,
        batch_size: u32,
    ) -> Result<u64> {
        jetstream_bridge_pg::delete_in_batches(
            conn,
            jetstream_bridge_pg::Retention {
                table: "jetstream_inbox_events",
                status: "processed",
                timestamp_column: "processed_at",
            },
            older_than,
            usize::try_from(batch_size.max(1)).unwrap_or(usize::MAX),
        )
        .await
        .map_err(InboxError::pg)
    }

    /// The status of `event_id`'s row, `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`Database`](InboxErrorKind::Database) when the query fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (read only).
    pub async fn status(
        &self,
        conn: &mut AsyncPgConnection,
        event_id: &str,
    ) -> Result<Option<InboxStatus>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            status: String,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT status FROM jetstream_inbox_events WHERE event_id = $1")
                .bind::<Text, _>(event_id)
                .load(conn)
                .await?;
        Ok(rows.as_slice().first().map(|r| match r.status.as_str() {
            "processing" => InboxStatus::Processing,
            "processed" => InboxStatus::Processed,
            "failed" => InboxStatus::Failed,
            _ => InboxStatus::Received,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_from_envelope_and_message() {
        let envelope = Envelope::builder("user.created", serde_json::json!({"id": 7}))
            .producer("a")
            .build()
            .unwrap();
        let entry = InboxEntry::from_envelope(&envelope)
            .with_message("a.sync.b", "s", 42, 2)
            .with_headers([("nats-msg-id", "x"), ("nats-msg-id", "y")]);
        assert_eq!(entry.event_id, envelope.event_id.as_str());
        let payload = entry.payload.to_value().unwrap();
        assert_eq!(payload["payload"]["id"], 7);
        let wire: Value = serde_json::from_slice(&envelope.to_vec()).unwrap();
        assert_eq!(payload, wire);
        let received = InboxEntry::from_body(&envelope, envelope.to_vec());
        assert_eq!(received.payload.to_value(), Some(wire));
        assert_eq!(received.event_id, entry.event_id);
        assert_eq!(entry.headers, serde_json::json!({"nats-msg-id": "x"}));
        assert_eq!(entry.stream_seq_i64().unwrap(), Some(42));
        assert_eq!(entry.deliveries_i32(), Some(2));
        assert_eq!(InboxStatus::Processed.as_str(), "processed");
    }

    /// Without message metadata (empty stream, sequence 0) the position is NULL, not `("", 0)`,
    /// so two such entries cannot collide on the `(stream, stream_seq)` unique index.
    #[test]
    fn unknown_stream_position_is_null() {
        let envelope = Envelope::builder("user.created", serde_json::json!({"id": 7}))
            .producer("a")
            .build()
            .unwrap();
        for (stream, seq) in [("", 0), ("", 5), ("s", 0)] {
            let entry =
                InboxEntry::from_envelope(&envelope).with_message("a.sync.b", stream, seq, 1);
            assert_eq!((entry.stream.as_deref(), entry.stream_seq), (None, None));
            assert_eq!(entry.subject.as_deref(), Some("a.sync.b"));
        }
    }
}
