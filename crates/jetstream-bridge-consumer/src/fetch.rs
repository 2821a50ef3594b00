//! [`Fetcher`]: takes messages from the server (pull requests, or the push subscription) and
//! hands them to the [`Dispatcher`]; on failures it backs off and recovers the durable.

use std::future::ready;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures_util::{FutureExt, StreamExt};
use jetstream_bridge_config::{Config, ConsumerMode};
use jetstream_bridge_topology::{ensure_topology, lookup_durable, EnsureOptions, TopologySpec};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::attempt::Apply;
use crate::dispatch::{Dispatcher, Work};
use crate::error::{ConsumerError, ConsumerErrorKind};
use crate::progress::tick;
use crate::retry::Doubling;
use crate::stats::{health_log, Stats};

/// How long after its expiry the runtime stops waiting for a pull request to end.
const PULL_GRACE: Duration = Duration::from_secs(1);

/// The fetching side of a consumer: where messages come from and how failures are retried.
pub(crate) struct Fetcher {
    pub(crate) config: Config,
    pub(crate) js: jetstream::Context,
    pub(crate) pull: PullConsumer,
    pub(crate) stats: Stats,
    pub(crate) fetch_wait: Duration,
    pub(crate) recovery: Doubling,
    pub(crate) health_log_interval: Duration,
}

impl Fetcher {
    /// Feeds `d` until the token is cancelled (pull or push, as configured).
    pub(crate) async fn run<A: Apply>(
        &self,
        d: &mut Dispatcher<A>,
        token: &CancellationToken,
        started: Instant,
    ) {
        if !self.config.disable_js_api() {
            self.refresh_max_deliver(&d.processor.max_deliver).await;
        }
        match self.config.consumer_mode() {
            ConsumerMode::Push => self.push_loop(d, token, started).await,
            _ => self.pull_loop(d, token, started).await,
        }
    }

    /// Pull mode: `batch_size` per pull request until the token is cancelled; no pull request
    /// while the database is down. Messages received but not started yet (waiting for a slot
    /// or the database; in batch mode, collected while the pull stays open) get in-progress
    /// acks meanwhile.
    async fn pull_loop<A: Apply>(
        &self,
        d: &mut Dispatcher<A>,
        token: &CancellationToken,
        started: Instant,
    ) {
        let mut failures = 0u32;
        let mut last_health = Instant::now();
        let batch_size = self.config.batch_size().max(1);
        let processor = d.processor.clone();
        let outage = &processor.outage;
        let mut progress = progress_ticker(d.processor.progress_interval);
        'fetch: loop {
            if token.is_cancelled() {
                break;
            }
            if last_health.elapsed() >= self.health_log_interval {
                last_health = Instant::now();
                health_log(&self.stats, started);
            }
            if outage.is_down() {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = outage.until_up() => {}
                }
            }
            self.stats.update(|s| s.iterations += 1);
            let request = self
                .pull
                .batch()
                .max_messages(batch_size)
                .expires(self.fetch_wait)
                .messages();
            let fetched_at = Instant::now();
            let batch = tokio::select! {
                biased;
                () = token.cancelled() => break,
                batch = request => batch,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    failures += 1;
                    self.on_fetch_error(&e.to_string(), failures, d, token)
                        .await;
                    continue;
                }
            };
            let mut received = 0usize;
            let mut collected = Vec::new();
            let mut ended = false;
            let mut failed = None;
            // The runtime's own end of this pull, counted from when the request went out: the
            // server sends nothing after the request expired, but the client may not learn of
            // it (its 408 lost or late) and would wait seconds more before ending the pull.
            // Deliveries already received are taken first (the branch below comes after
            // theirs), and what arrives later is taken after the loop.
            // One timer per pull (not one per loop pass: that would register and drop a timer
            // entry for every message).
            let deadline = tokio::time::sleep_until(
                tokio::time::Instant::now() + self.fetch_wait + PULL_GRACE,
            );
            let mut deadline = std::pin::pin!(deadline);
            let mut cut = false;
            loop {
                let down = outage.is_down();
                tokio::select! {
                    biased;
                    () = token.cancelled() => {
                        // Received but not started: release them for another instance.
                        d.release_buffered(collected, received_messages(&mut batch)).await;
                        break 'fetch;
                    }
                    () = d.started(), if d.has_waiting() && !down => {}
                    () = outage.until_up(), if d.has_waiting() && down => d.start_waiting(),
                    mut next = batch.next(), if !ended => {
                        // What the client already holds is taken in this pass, not one pass
                        // through this `select!` per message (its checks take locks).
                        loop {
                            match next {
                                None => ended = true,
                                Some(Err(e)) => {
                                    ended = true;
                                    failed = Some(e.to_string());
                                }
                                Some(Ok(message)) => {
                                    received += 1;
                                    if A::BATCH {
                                        // Published by the dispatcher's driver, polled next.
                                        self.stats.record(|s| s.fetched += 1);
                                        collected.push(message);
                                    } else {
                                        d.offer(Work::one(message));
                                    }
                                }
                            }
                            if ended {
                                break;
                            }
                            match batch.next().now_or_never() {
                                Some(more) => next = more,
                                None => break,
                            }
                        }
                    }
                    () = &mut deadline, if !ended => {
                        ended = true;
                        cut = true;
                    }
                    () = tick(&mut progress), if d.has_waiting() || !collected.is_empty() => {
                        let collecting: Vec<&jetstream::Message> = collected.iter().collect();
                        d.processor.progress_ack(&collecting).await;
                        d.progress_ack_waiting().await;
                    }
                }
                if ended {
                    if !collected.is_empty() {
                        d.offer(Work::Batch(std::mem::take(&mut collected)));
                    }
                    if !d.has_waiting() {
                        break;
                    }
                }
            }
            // Deliveries that arrived after this pull's end was decided are valid all the same:
            // take what the client holds (it is dropped with the pull otherwise, and would come
            // back only after `ack_wait`, a delivery spent).
            let mut late = Vec::new();
            if cut {
                while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                    late.push(message);
                }
            }
            if !late.is_empty() {
                received += late.len();
                if A::BATCH {
                    self.stats.update(|s| s.fetched += late.len() as u64);
                    d.offer(Work::Batch(late));
                } else {
                    for message in late {
                        d.offer(Work::one(message));
                    }
                }
            }
            if let Some(e) = failed {
                failures += 1;
                self.on_fetch_error(&e, failures, d, token).await;
                continue;
            }
            failures = 0;
            if received == 0 && fetched_at.elapsed() < Duration::from_millis(50) {
                // The server answered at once with nothing: do not spin.
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }

    /// Push mode: a core queue subscription on the delivery subject with the push group (no
    /// JetStream API call); heartbeats are skipped and flow-control requests answered. What the
    /// server pushes while no slot is free or the database is down waits, in progress.
    async fn push_loop<A: Apply>(
        &self,
        d: &mut Dispatcher<A>,
        token: &CancellationToken,
        started: Instant,
    ) {
        let client = self.js.client();
        let subject = self
            .config
            .subjects()
            .delivery_subject()
            .as_str()
            .to_owned();
        let group = self.config.subjects().push_group().as_str().to_owned();
        let mut failures = 0u32;
        let mut last_health = Instant::now();
        let processor = d.processor.clone();
        let outage = &processor.outage;
        let mut progress = progress_ticker(d.processor.progress_interval);
        'subscribe: loop {
            if token.is_cancelled() {
                break;
            }
            let mut subscriber = tokio::select! {
                biased;
                () = token.cancelled() => break,
                sub = client.queue_subscribe(subject.clone(), group.clone()) => match sub {
                    Ok(sub) => sub,
                    Err(e) => {
                        failures += 1;
                        self.on_fetch_error(&e.to_string(), failures, d, token).await;
                        continue;
                    }
                },
            };
            // An idle subscription still logs its health on time: one timer, reset after each
            // log line (not a new one per message).
            let health_due = tokio::time::Instant::from_std(last_health) + self.health_log_interval;
            let mut health_timer = std::pin::pin!(tokio::time::sleep_until(health_due));
            loop {
                if last_health.elapsed() >= self.health_log_interval || health_timer.is_elapsed() {
                    last_health = Instant::now();
                    health_log(&self.stats, started);
                    health_timer.as_mut().reset(
                        tokio::time::Instant::from_std(last_health) + self.health_log_interval,
                    );
                }
                let down = outage.is_down();
                let message = tokio::select! {
                    biased;
                    // Shutdown: stop the subscription, release what it already buffered.
                    () = token.cancelled() => {
                        let _ = subscriber.unsubscribe().await;
                        d.release_buffered([], self.deliveries(&mut subscriber)).await;
                        break 'subscribe;
                    }
                    () = outage.until_up(), if d.has_waiting() && down => {
                        d.start_waiting();
                        continue;
                    }
                    next = subscriber.next() => match next {
                        Some(message) => message,
                        None => {
                            failures += 1;
                            self.on_fetch_error("push subscription closed", failures, d, token)
                                .await;
                            continue 'subscribe;
                        }
                    },
                    () = tick(&mut progress), if d.has_waiting() => {
                        d.progress_ack_waiting().await;
                        continue;
                    }
                    () = &mut health_timer => continue,
                };
                failures = 0;
                if message.status.is_some() {
                    // Idle heartbeat (no reply) or flow-control request (reply): answer the latter.
                    if let Some(reply) = message.reply {
                        let _ = client.publish(reply, Default::default()).await;
                    }
                    continue;
                }
                let Some(message) = self.delivery(message) else {
                    continue;
                };
                self.stats.update(|s| s.iterations += 1);
                d.offer(Work::one(message));
            }
        }
    }

    /// A push subscription's message as a JetStream message; `None` for a status message
    /// (heartbeat, flow control) or one without a reply subject (nothing to ack).
    fn delivery(&self, message: async_nats::Message) -> Option<jetstream::Message> {
        (message.status.is_none() && message.reply.is_some()).then(|| jetstream::Message {
            message,
            context: self.js.clone(),
        })
    }

    /// The deliveries of a push subscription.
    fn deliveries<'a>(
        &'a self,
        subscriber: &'a mut async_nats::Subscriber,
    ) -> impl futures_util::Stream<Item = jetstream::Message> + Unpin + 'a {
        subscriber.filter_map(|message| ready(self.delivery(message)))
    }

    /// Reads the durable's `max_deliver` from the server (JS API allowed): the server's value
    /// decides when the last delivery happens.
    async fn refresh_max_deliver(&self, max_deliver: &AtomicU32) {
        match self.lookup().await {
            Ok(Some(info)) => {
                if let Some(n) = info.max_deliver {
                    max_deliver.store(n, Ordering::Relaxed);
                }
            }
            Ok(None) => warn!("the durable does not exist yet; using the config's max_deliver"),
            Err(e) => {
                warn!(error = %e, "cannot read the durable's max_deliver; using the config's")
            }
        }
    }

    async fn lookup(
        &self,
    ) -> jetstream_bridge_topology::Result<Option<jetstream_bridge_topology::DurableInfo>> {
        lookup_durable(
            &self.js,
            self.config.stream_name().as_str(),
            self.config.durable_name().as_str(),
        )
        .await
    }

    /// A failed pull: recover the durable when allowed, then back off (cancellable).
    async fn on_fetch_error<A: Apply>(
        &self,
        error: &str,
        failures: u32,
        d: &Dispatcher<A>,
        token: &CancellationToken,
    ) {
        self.stats.update(|s| s.fetch_errors += 1);
        warn!(error, failures, "pull request failed");
        if self.config.disable_js_api() {
            if failures >= 3 {
                let e = ConsumerError::new(ConsumerErrorKind::ConsumerNotFound);
                error!(error = %e, durable = self.config.durable_name().as_str(),
                    "pull requests keep failing; with disable_js_api the durable is not recreated (run ensure-topology)");
            }
        } else if matches!(self.lookup().await, Ok(None)) {
            let spec = TopologySpec::from_config(&self.config);
            match ensure_topology(&self.js, &spec, &EnsureOptions::new()).await {
                Ok(report) => {
                    info!(%report, "durable recreated");
                    self.stats.update(|s| s.recoveries += 1);
                    self.refresh_max_deliver(&d.processor.max_deliver).await;
                }
                Err(e) => error!(error = %e, "recreating the durable failed; retrying"),
            }
        }
        tokio::select! {
            () = token.cancelled() => {}
            () = tokio::time::sleep(self.recovery.delay(failures)) => {}
        }
    }
}

/// The ticker of in-progress acks for work that waits; none when they are disabled.
fn progress_ticker(every: Option<Duration>) -> Option<tokio::time::Interval> {
    every.map(|every| {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    })
}

/// The messages a pull request has received (errors skipped).
fn received_messages(
    batch: &mut jetstream::consumer::pull::Batch,
) -> impl futures_util::Stream<Item = jetstream::Message> + Unpin + '_ {
    batch.filter_map(|message| ready(message.ok()))
}
