//! Scenario 4: a poison event among good ones.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_config::MSG_ID_HEADER;
use jetstream_bridge_faults::vars;

use crate::{client, secured_server, url_with_credentials, Figures, Scenario};

const GOOD: usize = 300;
/// As in the scenario's settings.
const MAX_DELIVER: u32 = 4;
/// Delay after failed delivery `n` is `BACKOFF[n-1]`.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_millis(600),
    Duration::from_millis(900),
];

#[derive(QueryableByName, Debug)]
struct Attempt {
    #[diesel(sql_type = Integer)]
    delivery: i32,
    #[diesel(sql_type = BigInt)]
    at_ms: i64,
}

/// The good events all flow (each applied once) while the poison one is retried with the
/// configured gaps and dead-lettered after `max_deliver` deliveries, without any effect.
#[tokio::test(flavor = "multi_thread")]
async fn poison_event_is_dead_lettered_after_max_deliver_with_backoff() {
    let (server, secret) = secured_server().await;
    let js = client(&[server.client_url()], Some(&secret)).await;
    let s = Scenario::new(
        "poison_event",
        url_with_credentials(&server, &secret),
        js,
        secret,
        1,
        &[
            (vars::MAX_DELIVER, "4"),
            (vars::BACKOFF, "300ms,600ms,900ms"),
            (vars::ACK_WAIT, "5s"),
        ],
    )
    .await;
    let ids = s.enqueue(GOOD + 1, Some(GOOD / 2)).await;
    let poison_id = ids[GOOD / 2].clone();
    let max_deliver = MAX_DELIVER.to_string();
    let _worker = s.worker("both", &[]);
    let flowed = s.wait_count(GOOD as i64, || s.applied()).await;
    let dlq = s.js.get_stream(s.spec.dlq_stream_name()).await.unwrap();
    s.wait_count(1, || async {
        let mut dlq = dlq.clone();
        dlq.info()
            .await
            .map_or(0, |i| i64::try_from(i.state.messages).unwrap())
    })
    .await;

    assert_eq!(s.applied().await, GOOD as i64, "good events applied");
    assert_eq!(s.duplicate_effects().await, 0);
    let poison_effects = s
        .count(&format!(
            "SELECT count(*) AS n FROM effects WHERE event_id = '{poison_id}'"
        ))
        .await;
    assert_eq!(poison_effects, 0);
    let mut conn = s.db.pool().get().await.unwrap();
    let attempts: Vec<Attempt> = diesel::sql_query(
        "SELECT delivery, (extract(epoch FROM at) * 1000)::bigint AS at_ms FROM attempts \
         WHERE event_id = $1 ORDER BY id",
    )
    .bind::<diesel::sql_types::Text, _>(&poison_id)
    .load(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let deliveries: Vec<i32> = attempts.iter().map(|a| a.delivery).collect();
    assert_eq!(deliveries, (1..=MAX_DELIVER as i32).collect::<Vec<_>>());
    let gaps: Vec<i64> = attempts
        .windows(2)
        .map(|w| w[1].at_ms - w[0].at_ms)
        .collect();
    for (gap, backoff) in gaps.iter().zip(BACKOFF) {
        // Roughly at least the backoff (timestamps are taken in the handler, ms precision).
        assert!(
            *gap >= i64::try_from(backoff.as_millis()).unwrap() * 9 / 10,
            "gaps {gaps:?} shorter than the backoff {BACKOFF:?}"
        );
    }

    let mut dlq_info = dlq.clone();
    assert_eq!(dlq_info.info().await.unwrap().state.messages, 1);
    let message = dlq.get_raw_message(1).await.unwrap();
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(MSG_ID_HEADER), format!("dlq:{poison_id}"));
    assert_eq!(header("x-dlq-reason"), "max_deliver_exceeded");
    assert_eq!(header("x-deliveries"), max_deliver);
    // Nothing left in the main stream: the poison message was acked after the DLQ PubAck.
    s.wait_count(1, || async {
        i64::from(s.stream_state().await.is_some_and(|(m, _)| m == 0))
    })
    .await;

    let log_lines = s.assert_no_secret_in_logs();
    println!(
        "  {}: poison deliveries {deliveries:?}, gaps {gaps:?} ms for backoff {BACKOFF:?}",
        s.name
    );
    s.summary(&Figures {
        events: GOOD + 1,
        cycles: 0,
        lost: GOOD as i64 - s.applied().await,
        duplicate_effects: Some(s.duplicate_effects().await),
        duplicate_stream_entries: 0,
        dead_lettered: 1,
        recovery: flowed,
        log_lines,
    });
    s.teardown().await;
}
