//! Graceful shutdown and several instances on one durable.

use std::collections::HashSet;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use crate::{envelope, wait, Behaviour, Env, TestHandler};

/// Shutdown during a batch: in-flight messages finish and are acked, unstarted ones are
/// released, and a second consumer processes the rest; every event's effects exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_mid_batch_loses_nothing() {
    let env = Env::new(|c| c.batch_size(10).ack_wait("2s")).await;
    for n in 0..10 {
        env.publish_gem(&envelope(n)).await;
    }
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_millis(300)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .concurrency(2)
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.processed >= 2 && s.in_flight == 2).await;
    let report = handle.shutdown().await.unwrap();
    assert_eq!(report.abandoned, 0, "{report:?}");
    // Two were running when the wait returned; a slot freed just before the signal may not
    // have been refilled yet.
    assert!((1..=2).contains(&report.drained), "{report:?}");
    assert_eq!(report.stats.in_flight, 0);
    assert!(report.stats.shutting_down);
    let first = report.stats.processed;
    assert!(first >= 3, "{report:?}");
    assert!(first < 10, "shutdown stopped the batch early: {report:?}");
    assert_eq!(env.effects().await, i64::try_from(first).unwrap());

    let rest = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    wait(&rest, |s| s.processed + s.duplicates >= 10 - first).await;
    let second = rest.shutdown().await.unwrap();
    assert_eq!(first + second.stats.processed, 10, "{second:?}");
    assert_eq!(env.effects().await, 10);
    assert_eq!(
        env.db
            .count("SELECT count(DISTINCT event_id) AS n FROM effects")
            .await,
        10
    );
    env.wait_stream_drained().await;
    env.teardown().await;
}

/// Work still running at the shutdown timeout is abandoned unacked and rolled back; JetStream
/// redelivers it.
#[tokio::test(flavor = "multi_thread")]
async fn work_past_the_shutdown_timeout_is_abandoned_unacked() {
    let env = Env::new(|c| c.ack_wait("1s")).await;
    env.publish_gem(&envelope(1)).await;
    let handler = TestHandler::new(Behaviour::Sleep(Duration::from_secs(3)));
    let handle = env
        .consumer()
        .handler(handler.clone())
        .progress_interval(None)
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    wait(&handle, |s| s.in_flight == 1).await;
    let report = handle.shutdown().await.unwrap();
    assert_eq!((report.drained, report.abandoned), (0, 1), "{report:?}");
    assert_eq!(report.stats.processed, 0);
    assert_eq!(env.effects().await, 0, "rolled back");
    let again = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap()
        .spawn();
    wait(&again, |s| s.processed >= 1).await;
    again.shutdown().await.unwrap();
    assert_eq!(env.effects().await, 1);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Dup {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Two instances on one durable, every event stored twice: each event's effects happen once.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_durable_apply_each_event_once() {
    let env = Env::new(|c| c.batch_size(5)).await;
    let mut ids = HashSet::new();
    for n in 0..20 {
        let e = envelope(n);
        ids.insert(e.event_id.as_str().to_owned());
        env.publish_gem(&e).await;
        env.publish_gem(&e).await;
    }
    let (h1, h2) = (
        TestHandler::new(Behaviour::Succeed),
        TestHandler::new(Behaviour::Succeed),
    );
    let a = env
        .consumer()
        .handler(h1.clone())
        .concurrency(4)
        .build()
        .unwrap()
        .spawn();
    let b = env
        .consumer()
        .handler(h2.clone())
        .concurrency(4)
        .build()
        .unwrap()
        .spawn();
    tokio::time::timeout(crate::WAIT, async {
        loop {
            let (sa, sb) = (*a.stats().borrow(), *b.stats().borrow());
            if sa.processed + sa.duplicates + sb.processed + sb.duplicates >= 40 {
                break;
            }
            let mut ra = a.stats();
            let mut rb = b.stats();
            tokio::select! {
                _ = ra.changed() => {}
                _ = rb.changed() => {}
            }
        }
    })
    .await
    .unwrap();
    let (ra, rb) = (a.shutdown().await.unwrap(), b.shutdown().await.unwrap());
    assert_eq!(ra.stats.processed + rb.stats.processed, 20, "{ra:?} {rb:?}");
    assert_eq!(ra.stats.duplicates + rb.stats.duplicates, 20);
    assert!(
        ra.stats.fetched > 0 && rb.stats.fetched > 0,
        "both instances worked"
    );
    assert_eq!(env.effects().await, 20);
    let mut conn = env.db.conn().await;
    let dup: Dup = diesel::sql_query(
        "SELECT count(*) AS n FROM (SELECT event_id FROM effects GROUP BY event_id \
         HAVING count(*) > 1) d",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(dup.n, 0);
    drop(conn);
    env.teardown().await;
}

/// `run_until` runs in place until the caller's signal, then drains and reports.
#[tokio::test(flavor = "multi_thread")]
async fn run_until_stops_on_the_callers_signal() {
    let env = Env::new(|c| c).await;
    let consumer = env
        .consumer()
        .handler(TestHandler::new(Behaviour::Succeed))
        .build()
        .unwrap();
    let mut stats = consumer.stats();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run_until(async move {
        let _ = signal.await;
    }));
    env.publish_gem(&envelope(1)).await;
    tokio::time::timeout(crate::WAIT, stats.wait_for(|s| s.processed >= 1))
        .await
        .unwrap()
        .unwrap();
    stop.send(()).unwrap();
    let report = tokio::time::timeout(crate::WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.stats.processed, 1);
    assert_eq!((report.abandoned, report.released), (0, 0));
    assert!(report.stats.shutting_down);
    env.teardown().await;
}
