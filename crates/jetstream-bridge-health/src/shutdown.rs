//! [`ShutdownSignal`]: tells the readiness probe that the process is shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared flag: once [`set_shutting_down`](Self::set_shutting_down) is called, readiness
/// reports not-ready (so Kubernetes stops routing before the runtimes drain). Clones share the
/// flag; it never goes back.
///
/// The library installs no signal handler: call it from yours, before shutting the consumer
/// and relay down.
///
/// ```
/// use jetstream_bridge_health::ShutdownSignal;
///
/// let signal = ShutdownSignal::new();
/// let for_handler = signal.clone();
/// assert!(!signal.is_shutting_down());
/// for_handler.set_shutting_down();
/// assert!(signal.is_shutting_down());
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal {
    flag: Arc<AtomicBool>,
}

impl ShutdownSignal {
    /// A signal not set yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process as shutting down (idempotent).
    pub fn set_shutting_down(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether [`set_shutting_down`](Self::set_shutting_down) was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}
