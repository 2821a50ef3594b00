//! Polling for a condition that has no event to await.

use std::fmt::Debug;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

/// How long [`eventually`] sleeps between attempts.
pub const EVENTUALLY_INTERVAL: Duration = Duration::from_millis(20);

/// What a condition passed to [`eventually`] may return.
///
/// - `bool`: done when `true`;
/// - `Option<T>`: done when `Some`, and `eventually` returns the `T`;
/// - `Result<T, E>`: done when `Ok`, and the last `Err` is shown if the deadline passes.
pub trait Outcome {
    /// What [`eventually`] returns once the condition holds.
    type Value;

    /// `Ok(value)` when the condition holds, else `Err` with an optional description of why not.
    ///
    /// # Errors
    ///
    /// Returns `Err` while the condition does not hold yet.
    fn into_outcome(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();

    fn into_outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn into_outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;

    fn into_outcome(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Re-runs `condition` every [`EVENTUALLY_INTERVAL`] until it holds, and returns its value;
/// panics at the deadline with the caller's location, the attempt count and the last error.
///
/// **Use this only where no event can be awaited.** Prefer awaiting the thing itself: a
/// PubAck, a `JoinHandle`, a watch channel, a handle's `wait_processed(n)`. For pure timer
/// logic, use `tokio::time::pause()` and `advance()` instead. A single attempt that hangs is
/// cut off at the deadline too.
///
/// # Panics
///
/// When `condition` has not held by `timeout`.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use jetstream_bridge_testkit::eventually;
///
/// let calls = AtomicU32::new(0);
/// let n = eventually(Duration::from_secs(5), || async {
///     let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
///     (n >= 3).then_some(n)
/// })
/// .await;
/// assert_eq!(n, 3);
/// # }
/// ```
#[track_caller]
pub fn eventually<F, Fut, O>(timeout: Duration, mut condition: F) -> impl Future<Output = O::Value>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Outcome,
{
    let caller = Location::caller();
    async move {
        let deadline = Instant::now() + timeout;
        let mut attempts = 0_u32;
        let mut last = None;
        loop {
            attempts += 1;
            match tokio::time::timeout_at(deadline, condition()).await {
                Ok(outcome) => match outcome.into_outcome() {
                    Ok(value) => return value,
                    Err(why) => last = why.or(last),
                },
                Err(_elapsed) => {
                    last = Some("the last attempt was still running at the deadline".into());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "eventually (called at {caller}): condition not met within {timeout:?} \
                     after {attempts} attempt(s){}",
                    last.map(|l| format!("; last: {l}")).unwrap_or_default()
                );
            }
            tokio::time::sleep_until((now + EVENTUALLY_INTERVAL).min(deadline)).await;
        }
    }
}
