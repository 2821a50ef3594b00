//! Helpers for testing a service built on jetstream-bridge: wait for what the relay published,
//! and read what a consumer applied.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Message;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;

use crate::{eventually, TestDb, TestNats};

/// A row of `jetstream_inbox_events` as a test reads it (see [`TestDb::inbox_events`]).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct InboxRow {
    /// The event id (the dedupe key).
    #[diesel(sql_type = Text)]
    pub event_id: String,
    /// The envelope's `event_type`.
    #[diesel(sql_type = Text)]
    pub event_type: String,
    /// `received`, `processing`, `processed` or `failed`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// The subject the message arrived on.
    #[diesel(sql_type = Nullable<Text>)]
    pub subject: Option<String>,
    /// The last handler error, for `failed` rows.
    #[diesel(sql_type = Nullable<Text>)]
    pub error_message: Option<String>,
}

impl TestNats {
    /// Waits until `stream` holds `count` messages on `subject` (wildcards allowed) and returns
    /// them in stream order, with headers and bodies, for asserting on what a relay or a
    /// publisher sent. Reads with a throw-away ephemeral consumer from the first message, so it
    /// sees messages published before the call too, and leaves no state behind.
    ///
    /// # Panics
    ///
    /// When the stream does not exist, or fewer than `count` messages arrived by `timeout`.
    pub async fn wait_for_messages(
        &self,
        stream: &str,
        subject: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Message> {
        let mut messages = self.read_from_start(stream, subject).await;
        let mut out = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < count {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => out.push(message),
                Ok(Some(Err(e))) => panic!("wait_for_messages: reading {stream:?}: {e}"),
                Ok(None) | Err(_) => panic!(
                    "wait_for_messages: {} of {count} message(s) on {subject:?} in {stream:?} \
                     within {timeout:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Waits until `stream` holds the message whose `Nats-Msg-Id` is `event_id` (what the relay
    /// and the publisher set) and returns it.
    ///
    /// # Panics
    ///
    /// When the stream does not exist or no such message arrived by `timeout`.
    pub async fn wait_for_event(&self, stream: &str, event_id: &str, timeout: Duration) -> Message {
        let mut messages = self.read_from_start(stream, ">").await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.as_str().to_owned());
                    if id.as_deref() == Some(event_id) {
                        return message;
                    }
                }
                Ok(Some(Err(e))) => panic!("wait_for_event: reading {stream:?}: {e}"),
                Ok(None) | Err(_) => {
                    panic!(
                        "wait_for_event: no message {event_id:?} in {stream:?} within {timeout:?}"
                    )
                }
            }
        }
    }

    /// Every message of `stream` on `subject`, from the first one on, then new ones as they
    /// arrive (an ephemeral consumer without acks that the server removes when idle).
    async fn read_from_start(&self, stream: &str, subject: &str) -> pull::Stream {
        let handle = self
            .jetstream()
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("no stream {stream:?}: {e}"));
        let consumer = handle
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                filter_subject: subject.to_owned(),
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("cannot read {stream:?}: {e}"));
        consumer
            .messages()
            .await
            .unwrap_or_else(|e| panic!("cannot pull from {stream:?}: {e}"))
    }
}

/// The one column a [`TestDb::count`] query selects.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

impl TestDb {
    /// Runs `sql`, a query selecting one `bigint` column named `n` (e.g.
    /// `SELECT count(*) AS n FROM effects`), and returns it.
    ///
    /// # Panics
    ///
    /// When the query fails.
    pub async fn count(&self, sql: &str) -> i64 {
        let mut conn = self.conn().await;
        let row: Count = diesel::sql_query(sql)
            .get_result(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.n
    }

    /// Every row of `jetstream_inbox_events`, oldest first: what a consumer with the inbox has
    /// received and applied.
    ///
    /// # Panics
    ///
    /// When the query fails (for example the table is missing).
    pub async fn inbox_events(&self) -> Vec<InboxRow> {
        let mut conn = self.conn().await;
        diesel::sql_query(
            "SELECT event_id, event_type, status, subject, error_message \
             FROM jetstream_inbox_events ORDER BY id",
        )
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("reading jetstream_inbox_events: {e}"))
    }

    /// Waits until the consumer has applied `event_id` (its inbox row is `processed`).
    ///
    /// # Panics
    ///
    /// When it is not processed by `timeout`; the message says its last status.
    pub async fn wait_processed(&self, event_id: &str, timeout: Duration) {
        eventually(timeout, || async {
            let rows = self.inbox_events().await;
            match rows.iter().find(|r| r.event_id == event_id) {
                Some(row) if row.status == "processed" => Ok(()),
                Some(row) => Err(format!("{event_id} is {}", row.status)),
                None => Err(format!("{event_id} not received yet")),
            }
        })
        .await;
    }
}
