//! Middleware against real events: order, the inbox connection passed through, metrics hook,
//! timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetstream_bridge_config::{DlqContext, DLQ_CONTEXT_HEADER};
use jetstream_bridge_consumer::{
    BoxFuture, Event, HandlerError, LoggingMiddleware, MetricsMiddleware, Middleware, Next,
    TimeoutMiddleware,
};

use crate::{envelope, header, wait, Behaviour, Env, TestHandler};

struct Mark(&'static str, Arc<Mutex<Vec<String>>>);

impl Middleware for Mark {
    fn call<'a>(
        &'a self,
        event: &'a Event,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.1.lock().unwrap().push(format!("{}>", self.0));
            let r = next.run(event).await;
            self.1.lock().unwrap().push(format!("<{}", self.0));
            r
        })
    }
}

/// Middlewares run in registration order around the handler, which still gets the inbox
/// connection; the metrics hook sees the real event and outcome.
#[tokio::test(flavor = "multi_thread")]
async fn middleware_runs_in_order_around_the_handler() {
    let env = Env::new(|c| c).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .middleware(LoggingMiddleware)
        .middleware(Mark("a", order.clone()))
        .middleware(Mark("b", order.clone()))
        .middleware(MetricsMiddleware::new(
            move |event: &Event, outcome: Result<(), &HandlerError>, _elapsed: Duration| {
                hook_seen.lock().unwrap().push((
                    event.envelope.event_id.as_str().to_owned(),
                    event.metadata.deliveries,
                    outcome.is_ok(),
                ));
            },
        ))
        .build()
        .unwrap()
        .spawn();
    let e = envelope(1);
    env.publish_gem(&e).await;
    wait(&handle, |s| s.processed >= 1).await;
    handle.shutdown().await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["a>", "b>", "<b", "<a"]);
    assert_eq!(
        *seen.lock().unwrap(),
        [(e.event_id.as_str().to_owned(), 1, true)]
    );
    assert_eq!(env.effects().await, 1);
    env.teardown().await;
}

/// The timeout middleware fails a slow handler (retryable, class `Timeout`, rolled back) until
/// it is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn timeout_middleware_fails_a_slow_handler() {
    let env = Env::new(|c| c.max_deliver(2)).await;
    let handle = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Sleep(Duration::from_secs(2))))
        .middleware(TimeoutMiddleware::new(Duration::from_millis(100)))
        .build()
        .unwrap()
        .spawn();
    env.publish_gem(&envelope(1)).await;
    let stats = wait(&handle, |s| s.dead_lettered >= 1).await;
    assert_eq!(stats.retried, 1);
    handle.shutdown().await.unwrap();
    let dlq = env.dlq_messages(1).await;
    let context = DlqContext::from_json(header(&dlq[0], DLQ_CONTEXT_HEADER).unwrap()).unwrap();
    assert_eq!(context.error_class.as_deref(), Some("Timeout"));
    assert_eq!(env.effects().await, 0);
    env.teardown().await;
}
