//! The shutdown signal readiness follows: the workspace's one [`Shutdown`] type.

/// The signal readiness follows: once triggered, `/health/ready` answers 503 (so Kubernetes
/// stops routing before the runtimes drain). It is the same [`Shutdown`] the relay's and the
/// consumer's `run_until(shutdown.triggered())` and the umbrella's `Bridge` take, so one
/// `trigger()` stops everything.
///
/// ```
/// use jetstream_bridge_health::ShutdownSignal;
///
/// let signal = ShutdownSignal::new();
/// let for_handler = signal.clone();
/// assert!(!signal.is_triggered());
/// for_handler.trigger();
/// assert!(signal.is_triggered());
/// ```
pub type ShutdownSignal = Shutdown;

pub use jetstream_bridge_config::Shutdown;
