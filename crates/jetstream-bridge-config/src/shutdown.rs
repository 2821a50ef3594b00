//! [`Shutdown`]: the one shutdown signal the relay, the consumer, health and the umbrella's
//! supervisor share.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A shared, one-way shutdown signal. Clones share it; once [`trigger`](Self::trigger)ed it
/// stays triggered. The relay and the consumer stop taking new work and drain, health's
/// readiness turns false at once, and the supervisor shuts everything down in order.
///
/// The library installs no signal handler: trigger it from yours (for example on SIGTERM), or
/// use the umbrella crate's `Bridge`, which can do it for you.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use jetstream_bridge_config::Shutdown;
///
/// let shutdown = Shutdown::new();
/// let for_the_handler = shutdown.clone();
/// let waiter = tokio::spawn({
///     let shutdown = shutdown.clone();
///     async move { shutdown.triggered().await }
/// });
/// assert!(!shutdown.is_triggered());
/// for_the_handler.trigger();
/// waiter.await.unwrap();
/// assert!(shutdown.is_triggered());
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal not triggered yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Triggers the signal (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal was triggered.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the signal is triggered (at once if it already was).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// A signal triggered with this one but that can also be triggered on its own (one
    /// component's stop that does not stop the others).
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    /// The underlying token, for code that already speaks `tokio_util`'s `CancellationToken`.
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Self { token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_follows_its_parent_not_the_other_way_round() {
        let parent = Shutdown::new();
        let child = parent.child();
        child.trigger();
        assert!(child.is_triggered());
        assert!(!parent.is_triggered());
        let other = parent.child();
        parent.trigger();
        assert!(other.is_triggered());
    }
}
