//! `outbox status | retry-failed | cleanup` and `inbox status | cleanup`.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use jetstream_bridge_outbox::{NewEvent, Outbox, Relay};
use serde_json::json;

use crate::{stream_len, Env, WAIT};

/// Quarantined rows are reported by `status`, and `retry-failed` (by event id, then `--all`)
/// puts them back so that a running relay, woken at once, publishes them.
#[tokio::test(flavor = "multi_thread")]
async fn retry_failed_gets_quarantined_rows_published() {
    let env = Env::new(&[]).await;
    env.provision().await;
    let config = env.config();
    let outbox = Outbox::new(&config);
    let mut conn = env.db.conn().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            outbox
                .enqueue(&mut conn, NewEvent::new("order.created", json!({"id": n})))
                .await
                .unwrap()
                .into_string(),
        );
    }
    conn.batch_execute(&format!(
        "UPDATE jetstream_outbox_events SET status = 'failed', attempts = 10, \
           last_error = CASE WHEN event_id = '{}' THEN 'boom B' ELSE 'boom A' END",
        ids[2]
    ))
    .await
    .unwrap();

    let status = env.cli(&["outbox", "status", "--json"]).await.json();
    assert_eq!(status["failed"], 3, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["top_errors"][0]["error"], "boom A", "{status}");
    assert_eq!(status["top_errors"][0]["count"], 2, "{status}");
    let table = env.cli(&["outbox", "status"]).await;
    assert!(
        table.success && table.stdout.contains("boom A"),
        "{table:?}"
    );

    // A relay that would poll only once a minute: only the NOTIFY can wake it in time.
    let relay = Relay::builder(&config, env.t.jetstream().clone(), env.db.pool().clone())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap()
        .spawn();
    let mut stats = relay.stats();
    tokio::time::timeout(WAIT, stats.wait_for(|s| s.listening))
        .await
        .unwrap()
        .unwrap();

    let one = env
        .cli(&[
            "outbox",
            "retry-failed",
            "--event-id",
            &ids[0],
            "--event-id",
            "no-such-id",
            "--json",
        ])
        .await
        .json();
    assert_eq!(one["requeued"], json!([ids[0]]), "{one}");
    assert_eq!(one["not_failed"], json!(["no-such-id"]), "{one}");
    tokio::time::timeout(WAIT, stats.wait_for(|s| s.sent >= 1))
        .await
        .unwrap()
        .unwrap();
    let all = env
        .cli(&["outbox", "retry-failed", "--all", "--json"])
        .await
        .json();
    assert_eq!(all["requeued"].as_array().unwrap().len(), 2, "{all}");
    tokio::time::timeout(WAIT, stats.wait_for(|s| s.sent >= 3))
        .await
        .unwrap()
        .unwrap();
    relay.shutdown().await.unwrap();
    let status = env.cli(&["outbox", "status", "--json"]).await.json();
    assert_eq!(
        (status["sent"].clone(), status["failed"].clone()),
        (json!(3), json!(0))
    );
    assert_eq!(stream_len(&env.t, config.stream_name().as_str()).await, 3);
    drop(conn);
    env.teardown().await;
}

/// `outbox cleanup` deletes only `sent` rows older than the limit.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_cleanup_deletes_only_old_sent_rows() {
    let env = Env::new(&[]).await;
    let config = env.config();
    let outbox = Outbox::new(&config);
    let mut conn = env.db.conn().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            outbox
                .enqueue(&mut conn, NewEvent::new("order.created", json!({"id": n})))
                .await
                .unwrap()
                .into_string(),
        );
    }
    conn.batch_execute(&format!(
        "UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now() - interval '10 days' \
           WHERE event_id = '{a}'; \
         UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now() - interval '1 day' \
           WHERE event_id = '{b}'; \
         UPDATE jetstream_outbox_events SET enqueued_at = now() - interval '10 days' \
           WHERE event_id = '{c}'; \
         UPDATE jetstream_outbox_events SET status = 'failed', \
           updated_at = now() - interval '10 days' WHERE event_id = '{d}'",
        a = ids[0],
        b = ids[1],
        c = ids[2],
        d = ids[3]
    ))
    .await
    .unwrap();
    let v = env
        .cli(&["outbox", "cleanup", "--older-than", "7d", "--json"])
        .await
        .json();
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_outbox_events")
            .await,
        3
    );
    assert_eq!(
        env.db
            .count(&format!(
                "SELECT count(*) AS n FROM jetstream_outbox_events WHERE event_id = '{}'",
                ids[0]
            ))
            .await,
        0
    );
    let status = env.cli(&["outbox", "status", "--json"]).await.json();
    assert!(
        status["oldest_pending_age_seconds"].as_f64().unwrap() > 9.0 * 86_400.0,
        "{status}"
    );
    drop(conn);
    env.teardown().await;
}

/// `inbox status` counts and `inbox cleanup` deletes only processed rows older than the limit.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_status_and_cleanup() {
    let env = Env::new(&[]).await;
    let mut conn = env.db.conn().await;
    conn.batch_execute(
        "INSERT INTO jetstream_inbox_events (event_id, event_type, status, processed_at) VALUES \
           ('old', 'a.b', 'processed', now() - interval '40 days'), \
           ('new', 'a.b', 'processed', now() - interval '1 day'); \
         INSERT INTO jetstream_inbox_events \
           (event_id, event_type, status, error_message, failed_at, received_at) VALUES \
           ('bad', 'a.b', 'failed', 'Validation: bad input', now() - interval '40 days', \
            now() - interval '40 days')",
    )
    .await
    .unwrap();
    let status = env.cli(&["inbox", "status", "--json"]).await.json();
    assert_eq!(status["processed"], 2, "{status}");
    assert_eq!(status["failed"], 1, "{status}");
    assert_eq!(
        status["top_errors"][0]["error"], "Validation: bad input",
        "{status}"
    );
    assert!(status["oldest_unprocessed_age_seconds"].as_f64().unwrap() > 39.0 * 86_400.0);
    let table = env.cli(&["inbox", "status"]).await;
    assert!(
        table.success && table.stdout.contains("PROCESSED"),
        "{table:?}"
    );
    let v = env
        .cli(&["inbox", "cleanup", "--older-than", "30d", "--json"])
        .await
        .json();
    assert_eq!(v["deleted"], 1, "{v}");
    assert_eq!(
        env.db
            .count(
                "SELECT count(*) AS n FROM jetstream_inbox_events WHERE event_id IN ('new', 'bad')"
            )
            .await,
        2
    );
    assert_eq!(
        env.db
            .count("SELECT count(*) AS n FROM jetstream_inbox_events")
            .await,
        2
    );
    drop(conn);
    env.teardown().await;
}
