//! Trace propagation: the producer's `traceparent` reaches the consumer's span and the handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::HeaderMap;
use jetstream_bridge_config::TraceParent;
use jetstream_bridge_consumer::{Event, Handler, HandlerError};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::Layer;

use crate::{envelope, wait, Env};

/// Fields of every `jetstream_bridge.handle` span of this test binary (filter by subject).
#[derive(Clone, Default)]
struct HandleSpans(Arc<Mutex<Vec<HashMap<String, String>>>>);

/// Subjects whose next `jetstream_bridge.handle` span panics as it is made (once each): a
/// tracing layer that panics, as user code in the runtime's path.
static PANIC_ONCE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The process-wide capturing subscriber, installed once: the runtime's worker threads must
/// all see it, so a thread-local default will not do.
fn handle_spans() -> &'static HandleSpans {
    static SPANS: OnceLock<HandleSpans> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = HandleSpans::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .expect("no other global subscriber in this test binary");
        spans
    })
}

impl<S: tracing::Subscriber> Layer<S> for HandleSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() != "jetstream_bridge.handle" {
            return;
        }
        struct Fields(HashMap<String, String>);
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
        }
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        let subject = fields.0.get("subject").cloned().unwrap_or_default();
        self.0.lock().unwrap().push(fields.0);
        let mut panic_once = PANIC_ONCE.lock().unwrap();
        if let Some(i) = panic_once.iter().position(|s| *s == subject) {
            panic_once.remove(i);
            drop(panic_once);
            panic!("a tracing layer panics");
        }
    }
}

/// Records the traceparent current while it runs.
#[derive(Clone, Default)]
struct SeesTrace(Arc<Mutex<Vec<Seen>>>);

/// Resource id, `Metadata::traceparent`, `TraceParent::current()` in the handler.
type Seen = (String, Option<TraceParent>, Option<TraceParent>);

impl Handler for SeesTrace {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((
            event.envelope.resource_id.clone(),
            event.metadata.traceparent,
            TraceParent::current(),
        ));
        Ok(())
    }
}

/// A trace id set on publish appears on the consumer's `jetstream_bridge.handle` span (with
/// the producer's span as parent id) and the handler runs in a child of it; a message without
/// a traceparent (or with an invalid one) is processed with none.
#[tokio::test(flavor = "multi_thread")]
async fn the_producers_trace_reaches_the_handle_span_and_the_handler() {
    let spans = handle_spans();

    let env = Env::new(|c| c.use_inbox(false)).await;
    let sent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    for (n, traceparent) in [
        (1, Some(sent.to_string())),
        (2, None),
        (3, Some("garbage".to_owned())),
    ] {
        let envelope = envelope(n);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.event_id.as_str());
        if let Some(tp) = traceparent {
            headers.insert("traceparent", tp.as_str());
        }
        env.publish_raw(headers, envelope.to_vec()).await;
    }
    let handler = SeesTrace::default();
    let handle = env
        .consumer_without_inbox()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 3).await;
    handle.shutdown().await.unwrap();

    let mut seen = handler.0.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.len(), 3);
    let (_, received, current) = &seen[0];
    assert_eq!(*received, Some(sent));
    let current = current.expect("a child of the producer's trace is current in the handler");
    assert_eq!(current.trace_id(), sent.trace_id());
    assert_ne!(current.parent_id(), sent.parent_id());
    assert_eq!((seen[1].1, seen[1].2), (None, None));
    assert_eq!(
        (seen[2].1, seen[2].2),
        (None, None),
        "invalid traceparent ignored"
    );

    let subject = env.config.subjects().destination().as_str().to_owned();
    let spans: Vec<_> = spans
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.get("subject") == Some(&subject))
        .cloned()
        .collect();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let traced: Vec<_> = spans
        .iter()
        .filter(|f| f.contains_key("trace_id"))
        .collect();
    assert_eq!(traced.len(), 1, "{spans:?}");
    assert_eq!(traced[0]["trace_id"], sent.trace_id());
    assert_eq!(traced[0]["parent_span_id"], sent.parent_id());
    env.teardown().await;
}

/// Counts its calls.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<Vec<u32>>>);

impl Handler for Counts {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(event.metadata.deliveries);
        Ok(())
    }
}

/// A panic while the runtime prepares a message (here: a tracing layer panicking as the
/// message's span is made, before the handler's future exists) is caught like a handler's: the
/// message is NAKed and processed on its redelivery, and the consumer keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_while_a_message_is_prepared_is_caught() {
    let _spans = handle_spans();
    let env = Env::new(|c| c.use_inbox(false)).await;
    let subject = env.config.subjects().destination().as_str().to_owned();
    PANIC_ONCE.lock().unwrap().push(subject);
    env.publish_gem(&envelope(1)).await;
    let handler = Counts::default();
    let handle = env
        .consumer_without_inbox()
        .handler(handler.clone())
        .build()
        .unwrap()
        .spawn();
    let stats = wait(&handle, |s| s.processed >= 1).await;
    assert_eq!((stats.panics, stats.in_flight), (1, 0));
    assert_eq!(
        *handler.0.lock().unwrap(),
        [2],
        "handled once, on the redelivery"
    );
    handle.shutdown().await.unwrap();
    env.teardown().await;
}
