//! [`Bridge`]: runs a service's relay, consumer and health server under one [`Shutdown`]
//! signal and one deadline, and returns one [`BridgeReport`].

use std::time::Duration;

use jetstream_bridge_config::Shutdown;

#[cfg(feature = "consumer")]
use jetstream_bridge_consumer::{ConsumerError, ConsumerHandle, ShutdownReport};
#[cfg(feature = "outbox")]
use jetstream_bridge_outbox::{OutboxError, RelayHandle, RelayReport};

/// The default time [`Bridge::run`] gives the runtimes to drain after the signal: 30 s, below
/// Kubernetes' default 30 s grace period minus the readiness propagation it needs.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// Supervises the parts of one service process: the outbox relay, the consumer and the health
/// server, started by the caller, stopped here in order.
///
/// [`run`](Self::run) waits until the [`Shutdown`] is triggered (by the caller, or on SIGTERM /
/// Ctrl-C with [`stop_on_signals`](Self::stop_on_signals)) or until a part ends on its own.
/// Then, in this order:
///
/// 1. readiness turns false at once (health's `/health/ready` answers 503), so the load
///    balancer stops routing while the runtimes drain;
/// 2. the consumer stops fetching and finishes the messages it holds (their effects commit, or
///    they are left unacked for redelivery);
/// 3. the relay publishes what the consumer's handlers enqueued and stops;
/// 4. the health server stops.
///
/// Steps 2 and 3 share one deadline ([`shutdown_timeout`](Self::shutdown_timeout)): past it,
/// what is left is abandoned (nothing is lost: unacked messages are redelivered and unsent
/// outbox rows stay pending), and the report says so.
///
/// ```no_run
/// # #[cfg(all(feature = "outbox", feature = "consumer"))]
/// # async fn run(relay: jetstream_bridge::outbox::RelayHandle,
/// #              consumer: jetstream_bridge::consumer::ConsumerHandle) {
/// use jetstream_bridge::{Bridge, Shutdown};
///
/// let report = Bridge::new(Shutdown::new())
///     .relay(relay)
///     .consumer(consumer)
///     .stop_on_signals()
///     .run()
///     .await;
/// assert!(report.is_clean());
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a Bridge does nothing until `run` is awaited"]
pub struct Bridge {
    shutdown: Shutdown,
    timeout: Duration,
    on_signals: bool,
    #[cfg(feature = "outbox")]
    relay: Option<RelayHandle>,
    #[cfg(feature = "consumer")]
    consumer: Option<ConsumerHandle>,
    #[cfg(feature = "health")]
    health: Option<jetstream_bridge_health::Health>,
    #[cfg(feature = "http")]
    server: Option<tokio::net::TcpListener>,
}

/// Why [`Bridge::run`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// The [`Shutdown`] was triggered (by the caller or a signal).
    Signal,
    /// The relay ended on its own (its task panicked or failed).
    RelayEnded,
    /// The consumer ended on its own (its task panicked or failed).
    ConsumerEnded,
    /// The health server ended on its own (it could not serve).
    HealthServerEnded,
}

/// What [`Bridge::run`] did: why it stopped, and each part's own report.
#[derive(Debug)]
#[non_exhaustive]
pub struct BridgeReport {
    /// Why it stopped.
    pub cause: StopCause,
    /// Whether the deadline passed before the runtimes finished draining.
    pub timed_out: bool,
    /// The relay's report, when a relay ran and finished within the deadline.
    #[cfg(feature = "outbox")]
    pub relay: Option<Result<RelayReport, OutboxError>>,
    /// The consumer's report, when a consumer ran and finished within the deadline.
    #[cfg(feature = "consumer")]
    pub consumer: Option<Result<ShutdownReport, ConsumerError>>,
    /// The health server's error, when it failed.
    pub health_server_error: Option<std::io::Error>,
}

impl BridgeReport {
    /// Whether the process stopped because it was asked to, within the deadline, and every
    /// part shut down without an error.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        #[cfg(feature = "outbox")]
        let relay_ok = !matches!(self.relay, Some(Err(_)));
        #[cfg(not(feature = "outbox"))]
        let relay_ok = true;
        #[cfg(feature = "consumer")]
        let consumer_ok = !matches!(self.consumer, Some(Err(_)));
        #[cfg(not(feature = "consumer"))]
        let consumer_ok = true;
        self.cause == StopCause::Signal
            && !self.timed_out
            && relay_ok
            && consumer_ok
            && self.health_server_error.is_none()
    }
}

impl Bridge {
    /// A supervisor that stops when `shutdown` is triggered.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            on_signals: false,
            #[cfg(feature = "outbox")]
            relay: None,
            #[cfg(feature = "consumer")]
            consumer: None,
            #[cfg(feature = "health")]
            health: None,
            #[cfg(feature = "http")]
            server: None,
        }
    }

    /// The time the consumer and the relay get, together, to drain after the signal
    /// (default [`DEFAULT_SHUTDOWN_TIMEOUT`]). Keep Kubernetes'
    /// `terminationGracePeriodSeconds` above it.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Triggers the shutdown on SIGTERM or SIGINT (Ctrl-C) too.
    pub fn stop_on_signals(mut self) -> Self {
        self.on_signals = true;
        self
    }

    /// The relay to supervise (from `Relay::spawn`).
    #[cfg(feature = "outbox")]
    #[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
    pub fn relay(mut self, relay: RelayHandle) -> Self {
        self.relay = Some(relay);
        self
    }

    /// The consumer to supervise (from `Consumer::spawn`).
    #[cfg(feature = "consumer")]
    #[cfg_attr(docsrs, doc(cfg(feature = "consumer")))]
    pub fn consumer(mut self, consumer: ConsumerHandle) -> Self {
        self.consumer = Some(consumer);
        self
    }

    /// The health checks whose readiness turns false the moment the shutdown starts.
    #[cfg(feature = "health")]
    #[cfg_attr(docsrs, doc(cfg(feature = "health")))]
    pub fn health(mut self, health: jetstream_bridge_health::Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Serves the health router (`/health/jetstream`, `/health/live`, `/health/ready`,
    /// `/metrics`) on `listener` until the runtimes have drained. Implies
    /// [`health`](Self::health).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn serve_health(
        mut self,
        listener: tokio::net::TcpListener,
        health: jetstream_bridge_health::Health,
    ) -> Self {
        self.health = Some(health);
        self.server = Some(listener);
        self
    }

    /// Runs until the shutdown signal or until a part ends on its own, then stops every part
    /// in order (see [`Bridge`]) and reports.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future leaves the parts stopping in the background
    /// without a report. Trigger the [`Shutdown`] instead.
    pub async fn run(self) -> BridgeReport {
        let Self {
            shutdown,
            timeout,
            on_signals,
            #[cfg(feature = "outbox")]
            relay,
            #[cfg(feature = "consumer")]
            consumer,
            #[cfg(feature = "health")]
            health,
            #[cfg(feature = "http")]
            server,
        } = self;

        if on_signals {
            tokio::spawn(trigger_on_signals(shutdown.clone()));
        }

        // The health server lives until the runtimes drained, so probes keep answering (503).
        let server_stop = Shutdown::new();
        #[cfg(feature = "http")]
        let mut server_task = match (server, health.clone()) {
            (Some(listener), Some(health)) => {
                let stop = server_stop.triggered();
                Some(tokio::spawn(async move {
                    axum::serve(listener, jetstream_bridge_health::router(health))
                        .with_graceful_shutdown(stop)
                        .await
                }))
            }
            _ => None,
        };
        #[cfg(not(feature = "http"))]
        let _ = &server_stop;

        #[cfg(feature = "outbox")]
        let mut relay_watch = relay.as_ref().map(RelayHandle::stats);
        #[cfg(feature = "consumer")]
        let mut consumer_watch = consumer.as_ref().map(ConsumerHandle::stats);
        let mut health_server_error = None;

        #[cfg(feature = "outbox")]
        let relay_ended = ended(relay_watch.as_mut());
        #[cfg(not(feature = "outbox"))]
        let relay_ended = std::future::pending::<()>();
        #[cfg(feature = "consumer")]
        let consumer_ended = ended(consumer_watch.as_mut());
        #[cfg(not(feature = "consumer"))]
        let consumer_ended = std::future::pending::<()>();
        #[cfg(feature = "http")]
        let health_server_ended = server_ended(server_task.as_mut());
        #[cfg(not(feature = "http"))]
        let health_server_ended = std::future::pending::<std::io::Error>();

        let cause = tokio::select! {
            () = shutdown.triggered() => StopCause::Signal,
            () = relay_ended => StopCause::RelayEnded,
            () = consumer_ended => StopCause::ConsumerEnded,
            error = health_server_ended => {
                health_server_error = Some(error);
                StopCause::HealthServerEnded
            }
        };
        shutdown.trigger();
        #[cfg(feature = "health")]
        if let Some(health) = &health {
            health.set_shutting_down();
        }
        tracing::info!(?cause, ?timeout, "shutting down");

        #[cfg(feature = "outbox")]
        let mut relay_report = None;
        #[cfg(feature = "consumer")]
        let mut consumer_report = None;
        let drain = async {
            #[cfg(feature = "consumer")]
            if let Some(consumer) = consumer {
                consumer_report = Some(consumer.shutdown().await);
            }
            #[cfg(feature = "outbox")]
            if let Some(relay) = relay {
                relay_report = Some(relay.shutdown().await);
            }
        };
        let timed_out = tokio::time::timeout(timeout, drain).await.is_err();
        if timed_out {
            tracing::warn!(
                ?timeout,
                "shutdown deadline passed: what was still running is left for redelivery"
            );
        }

        server_stop.trigger();
        #[cfg(feature = "http")]
        if let Some(task) = server_task {
            match task.await {
                Ok(Err(e)) => health_server_error = health_server_error.or(Some(e)),
                Err(join) => {
                    health_server_error = health_server_error.or(Some(std::io::Error::other(join)))
                }
                Ok(Ok(())) => {}
            }
        }

        BridgeReport {
            cause,
            timed_out,
            #[cfg(feature = "outbox")]
            relay: relay_report,
            #[cfg(feature = "consumer")]
            consumer: consumer_report,
            health_server_error,
        }
    }
}

/// Completes when the watched task dropped its stats sender (it ended); never without one.
async fn ended<T>(watch: Option<&mut tokio::sync::watch::Receiver<T>>) {
    match watch {
        Some(rx) => while rx.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

/// Completes when the health server task ended on its own, with its error.
#[cfg(feature = "http")]
async fn server_ended(
    task: Option<&mut tokio::task::JoinHandle<std::io::Result<()>>>,
) -> std::io::Error {
    match task {
        Some(task) => match task.await {
            Ok(Ok(())) => std::io::Error::other("health server stopped"),
            Ok(Err(e)) => e,
            Err(join) => std::io::Error::other(join),
        },
        None => std::future::pending().await,
    }
}

/// Triggers `shutdown` on SIGTERM or SIGINT.
async fn trigger_on_signals(shutdown: Shutdown) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                    () = shutdown.triggered() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
                tokio::select! {
                    _ = ctrl_c => {}
                    () = shutdown.triggered() => return,
                }
            }
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = ctrl_c => {}
        () = shutdown.triggered() => return,
    }
    tracing::info!("termination signal received");
    shutdown.trigger();
}
