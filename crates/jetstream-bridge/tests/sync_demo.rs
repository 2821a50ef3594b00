//! Runs the README's main job (`examples/sync_demo.rs`) against the real servers, so the demo
//! cannot rot: it checks its own end state and fails on any mismatch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "../examples/sync_demo.rs"]
mod demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_stay_in_sync() {
    let mut options = demo::Options::from_env().unwrap();
    options.orders = 60;
    options.keep = false;
    let summary = demo::run(options).await.unwrap();
    assert_eq!(summary.orders, 61);
    assert_eq!(summary.invoices, 60);
    assert_eq!(summary.published, 61);
    assert_eq!(summary.dead_lettered, 1);
    assert!(summary.republish_deduplicated);
}
