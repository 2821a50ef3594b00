use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jetstream_bridge_testkit::eventually;

/// A condition that turns true on the third attempt is awaited and its value returned.
#[tokio::test(flavor = "multi_thread")]
async fn returns_once_the_condition_holds() {
    let calls = AtomicU32::new(0);
    let value = eventually(Duration::from_secs(5), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        (n == 3).then_some(n * 10)
    })
    .await;
    assert_eq!(value, 30);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let flag = AtomicU32::new(0);
    eventually(Duration::from_secs(5), || async {
        flag.fetch_add(1, Ordering::SeqCst) >= 1
    })
    .await;
}

/// A condition that never holds panics at the deadline.
#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "condition not met within 200ms")]
async fn panics_when_the_condition_never_holds() {
    eventually(Duration::from_millis(200), || async { false }).await;
}

/// The panic names the caller and shows the last error of a `Result` condition.
#[tokio::test(flavor = "multi_thread")]
async fn panic_reports_the_last_error_and_the_caller() {
    let task = tokio::spawn(async {
        eventually(Duration::from_millis(100), || async {
            Err::<(), _>("broker down")
        })
        .await;
    });
    let panic = task.await.expect_err("eventually must panic").into_panic();
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("last: \"broker down\""), "{message}");
    assert!(message.contains("tests/it/eventually.rs"), "{message}");
}

/// An attempt that never completes is cut off at the deadline instead of hanging the test.
#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "still running at the deadline")]
async fn a_hanging_attempt_is_cut_off() {
    eventually(Duration::from_millis(100), || {
        std::future::pending::<bool>()
    })
    .await;
}
