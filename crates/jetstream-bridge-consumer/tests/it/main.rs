//! Integration tests of the consumer runtime against the shared NATS and PostgreSQL
//! (`bash .ci/services.sh`), provisioned with the topology crate under unique names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch;
mod delivery;
mod dlq;
mod fault_nats;
mod fault_pg;
mod gem_durable;
mod least_privilege;
mod middleware;
mod recovery;
mod shutdown;
mod trace;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::{Context, Message};
use async_nats::HeaderMap;
use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use jetstream_bridge_config::{Config, ConfigBuilder, Envelope, SubjectLayout};
use jetstream_bridge_consumer::{
    Consumer, ConsumerBuilder, ConsumerHandle, ConsumerStats, Event, HandlerError, InboxHandler,
    WithInbox,
};
use jetstream_bridge_testkit::{TestDb, TestNats};
use jetstream_bridge_topology::{ensure_topology, EnsureOptions, TopologySpec};
use serde_json::json;

/// Generous bound for awaited events; a healthy run takes a fraction of it.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A per-test database and NATS namespace with the consumer's topology provisioned.
pub(crate) struct Env {
    pub(crate) t: TestNats,
    pub(crate) db: TestDb,
    pub(crate) config: Config,
    pub(crate) spec: TopologySpec,
    base: ConfigBuilder,
}

impl Env {
    /// Env-prefixed names (env = a unique token); `tune` adjusts the config. Test defaults:
    /// max_deliver 3, backoff 200ms/400ms, ack_wait 5s, inbox on, JS API allowed.
    pub(crate) async fn new(tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        Self::with_layout(SubjectLayout::EnvPrefixed, tune).await
    }

    pub(crate) async fn with_layout(
        layout: SubjectLayout,
        tune: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
    ) -> Self {
        let t = TestNats::shared().await;
        let db = TestDb::new().await;
        let stream = t.name("stream");
        t.track_stream(stream.clone());
        t.track_stream(format!("{stream}-dlq"));
        let builder = match layout {
            SubjectLayout::EnvLess => Config::builder("", t.name("orders"), t.name("billing")),
            _ => Config::builder(t.name("env"), "orders", "billing"),
        };
        let base = tune(
            builder
                .layout(layout)
                .nats_urls(t.url())
                .stream_name(stream.as_str())
                .use_inbox(true)
                .disable_js_api(false)
                .max_deliver(3)
                .ack_wait("5s")
                .backoff(["200ms", "400ms"]),
        );
        let config = base.clone().build().unwrap();
        let spec = TopologySpec::from_config(&config);
        ensure_topology(t.jetstream(), &spec, &EnsureOptions::new())
            .await
            .unwrap();
        let mut conn = db.conn().await;
        conn.batch_execute(
            "CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)",
        )
        .await
        .unwrap();
        Self {
            t,
            db,
            config,
            spec,
            base,
        }
    }

    /// The provisioning config's builder, to derive a differing runtime config from.
    pub(crate) fn config_builder(&self) -> ConfigBuilder {
        self.base.clone()
    }

    pub(crate) fn js(&self) -> Context {
        self.t.jetstream().clone()
    }

    /// A builder with the inbox on the test database and test timings (short fetch wait and
    /// recovery backoff, 5 s shutdown).
    pub(crate) fn consumer(&self) -> ConsumerBuilder<WithInbox> {
        test_timings(Consumer::builder(&self.config, self.js()).with_inbox(self.db.pool().clone()))
    }

    /// A builder without the inbox, with test timings (the config must have `use_inbox`
    /// off).
    pub(crate) fn consumer_without_inbox(&self) -> ConsumerBuilder {
        test_timings(Consumer::builder(&self.config, self.js()))
    }

    /// Publishes `body` to the consumer's subject with `headers`; returns the stream sequence.
    pub(crate) async fn publish_raw(&self, headers: HeaderMap, body: Vec<u8>) -> u64 {
        self.publish_to(self.config.subjects().destination().as_str(), headers, body)
            .await
    }

    pub(crate) async fn publish_to(&self, subject: &str, headers: HeaderMap, body: Vec<u8>) -> u64 {
        self.js()
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Publishes an envelope as the Ruby gem does: only the lowercase `nats-msg-id` header
    /// (which the server does not deduplicate on).
    pub(crate) async fn publish_gem(&self, envelope: &Envelope) -> u64 {
        let mut headers = HeaderMap::new();
        headers.insert("nats-msg-id", envelope.event_id.as_str());
        self.publish_raw(headers, envelope.to_vec()).await
    }

    /// Messages of the DLQ stream, in order (exactly `n` expected).
    pub(crate) async fn dlq_messages(&self, n: usize) -> Vec<Message> {
        let stream = self
            .js()
            .get_stream(self.spec.dlq_stream_name())
            .await
            .unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap().take(n);
        let mut out = Vec::new();
        while let Some(m) = tokio::time::timeout(WAIT, messages.next()).await.unwrap() {
            out.push(m.unwrap());
        }
        assert_eq!(out.len(), n);
        let mut info = stream.clone();
        assert_eq!(
            info.info().await.unwrap().state.messages,
            n as u64,
            "DLQ size"
        );
        out
    }

    /// Messages still stored in the main (work-queue) stream.
    pub(crate) async fn main_stream_len(&self) -> u64 {
        let mut stream = self.js().get_stream(self.spec.stream_name()).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Awaits an empty main stream: acks are sent without waiting for the server, which
    /// removes work-queue messages when it processes them, so a check right after a shutdown
    /// could race it.
    pub(crate) async fn wait_stream_drained(&self) {
        jetstream_bridge_testkit::eventually(WAIT, || async {
            match self.main_stream_len().await {
                0 => Ok(()),
                n => Err(format!("{n} message(s) still in the stream")),
            }
        })
        .await;
    }

    pub(crate) async fn effects(&self) -> i64 {
        self.db.count("SELECT count(*) AS n FROM effects").await
    }

    pub(crate) async fn teardown(self) {
        self.t.teardown().await;
        self.db.teardown().await;
    }
}

#[derive(QueryableByName)]
pub(crate) struct N {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

/// An envelope from the `orders` producer.
pub(crate) fn envelope(n: u64) -> Envelope {
    Envelope::builder("user.created", json!({"id": n}))
        .producer("orders")
        .build()
        .unwrap()
}

/// What the test handler does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Behaviour {
    Succeed,
    FailAlways,
    Permanent,
    PanicFirst,
    Sleep(Duration),
}

/// One handler call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) event_id: String,
    pub(crate) deliveries: u32,
    pub(crate) stream_sequence: u64,
    pub(crate) at: Instant,
}

/// Writes one `effects` row per call (inside the inbox transaction), records the call, then
/// behaves as told.
#[derive(Clone)]
pub(crate) struct TestHandler {
    pub(crate) behaviour: Behaviour,
    pub(crate) calls: Arc<Mutex<Vec<Call>>>,
    pub(crate) running: Arc<Mutex<(usize, usize)>>,
}

impl TestHandler {
    pub(crate) fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            calls: Arc::default(),
            running: Arc::default(),
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The most handler calls that ran at once.
    pub(crate) fn max_running(&self) -> usize {
        self.running.lock().unwrap().1
    }
}

impl InboxHandler for TestHandler {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                event_id: event.envelope.event_id.as_str().to_owned(),
                deliveries: event.metadata.deliveries,
                stream_sequence: event.metadata.stream_sequence,
                at: Instant::now(),
            });
            calls.len() == 1
        };
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<diesel::sql_types::Text, _>(event.envelope.event_id.as_str())
            .execute(conn)
            .await?;
        match self.behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::FailAlways => Err(HandlerError::retry("boom")),
            Behaviour::Permanent => {
                Err(HandlerError::permanent("bad input").with_class("Validation"))
            }
            Behaviour::PanicFirst => {
                assert!(!first, "first call panics");
                Ok(())
            }
            Behaviour::Sleep(d) => {
                {
                    let mut r = self.running.lock().unwrap();
                    r.0 += 1;
                    r.1 = r.1.max(r.0);
                }
                tokio::time::sleep(d).await;
                self.running.lock().unwrap().0 -= 1;
                Ok(())
            }
        }
    }
}

/// Waits until `handle`'s counters satisfy `done` (bounded by [`WAIT`]).
pub(crate) async fn wait(
    handle: &ConsumerHandle,
    done: impl FnMut(&ConsumerStats) -> bool,
) -> ConsumerStats {
    match tokio::time::timeout(WAIT, handle.wait_for(done)).await {
        Ok(stats) => stats.unwrap(),
        Err(_) => panic!(
            "consumer counters did not reach the condition in {WAIT:?}: {:?}",
            *handle.stats().borrow()
        ),
    }
}

/// The value of header `name` (exact spelling).
pub(crate) fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// Short fetch wait and recovery backoff, 5 s shutdown.
pub(crate) fn test_timings<I, H>(builder: ConsumerBuilder<I, H>) -> ConsumerBuilder<I, H> {
    builder
        .fetch_wait(Duration::from_millis(500))
        .recovery_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(5))
}
