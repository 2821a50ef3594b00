//! Transactional enqueue, batch enqueue, stored shape, retention.

use std::time::Duration;

use diesel::sql_types::{BigInt, Integer, Jsonb, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, RunQueryDsl};
use jetstream_bridge_config::{Config, Envelope, MSG_ID_HEADER, RUBY_MSG_ID_HEADER};
use jetstream_bridge_outbox::{NewEvent, Outbox, OutboxError, OutboxErrorKind, Publisher};
use serde_json::json;

use crate::{stream_ids, stream_len, wait_sent, Env};

/// A rolled-back enqueue publishes nothing; a committed one publishes exactly one message.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_publishes_nothing_commit_publishes_exactly_one() {
    let env = Env::new().await;
    let relay = env.relay().build().unwrap().spawn();
    let mut conn = env.db.conn().await;
    let outbox = env.outbox.clone();
    let rolled_back = conn
        .transaction::<(), Box<dyn std::error::Error + Send + Sync>, _>(async |conn| {
            outbox
                .enqueue(conn, NewEvent::new("user.created", json!({"id": "gone"})))
                .await?;
            Err("the business logic fails after the enqueue".into())
        })
        .await;
    assert!(rolled_back.is_err());
    let committed = conn
        .transaction::<_, OutboxError, _>(async |conn| {
            outbox
                .enqueue(conn, NewEvent::new("user.created", json!({"id": "kept"})))
                .await
        })
        .await
        .unwrap();

    wait_sent(&[&relay], 1).await;
    let report = relay.shutdown().await.unwrap();
    assert_eq!(report.sent, 1);
    assert_eq!(stream_len(&env.stream).await, 1);
    assert_eq!(
        stream_ids(&env.stream, 1).await,
        vec![committed.to_string()]
    );
    assert_eq!(
        crate::status_counts(&env.db).await,
        vec![("sent".into(), 1)]
    );
    drop(conn);
    env.teardown().await;
}

/// An oversized or invalid event is refused before the database is touched: the caller's
/// transaction stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_invalid_events_are_refused_before_the_database() {
    let env = Env::new().await;
    let config = Config::builder(env.t.subject_prefix(), "orders", "billing")
        .max_payload_bytes(1024)
        .build()
        .unwrap();
    let outbox = Outbox::new(&config);
    let mut conn = env.db.conn().await;
    let id = conn
        .transaction::<_, OutboxError, _>(async |conn| {
            let err = outbox
                .enqueue(
                    conn,
                    NewEvent::new("blob.put", json!({"d": "x".repeat(4096)})),
                )
                .await
                .unwrap_err();
            assert!(matches!(
                err.kind(),
                OutboxErrorKind::PayloadTooLarge { max: 1024, .. }
            ));
            let err = outbox
                .enqueue(conn, NewEvent::new("blob.put", json!("not an object")))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
            // The transaction is not aborted: no statement failed.
            outbox
                .enqueue(conn, NewEvent::new("blob.put", json!({"id": 1})))
                .await
        })
        .await
        .unwrap();
    assert_eq!(crate::all_event_ids(&env.db).await.len(), 1);
    assert!(crate::all_event_ids(&env.db).await.contains(id.as_str()));
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Shape {
    #[diesel(sql_type = Text)]
    payload_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    producer: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Text)]
    ordering_key: String,
    #[diesel(sql_type = Text)]
    status: String,
}

/// The row holds the envelope as a real JSON object; the relay publishes it in wire key order
/// with both msg-id headers and the traceparent.
#[tokio::test(flavor = "multi_thread")]
async fn stored_shape_and_published_headers() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let id = env
        .outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", json!({"id": "u-1", "zeta": 1, "alpha": 2}))
                .traceparent(tp),
        )
        .await
        .unwrap();
    let shape: Shape = diesel::sql_query(
        "SELECT json_typeof(payload) AS payload_type, payload->>'producer' AS producer, \
         headers->>'traceparent' AS traceparent, subject, ordering_key, status \
         FROM jetstream_outbox_events",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(shape.payload_type, "object");
    assert_eq!(shape.producer.as_deref(), Some("orders"));
    assert_eq!(shape.traceparent.as_deref(), Some(tp));
    assert_eq!(shape.subject, env.config.subjects().source().as_str());
    assert_eq!(shape.ordering_key, "user:u-1");
    assert_eq!(shape.status, "pending");

    let relay = env.relay().build().unwrap().spawn();
    wait_sent(&[&relay], 1).await;
    relay.shutdown().await.unwrap();
    let stream = env.stream.clone();
    let message = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        message.headers.get(MSG_ID_HEADER).unwrap().as_str(),
        id.as_str()
    );
    assert_eq!(
        message.headers.get(RUBY_MSG_ID_HEADER).unwrap().as_str(),
        id.as_str()
    );
    assert_eq!(message.headers.get("traceparent").unwrap().as_str(), tp);
    let envelope = Envelope::from_slice(&message.payload).unwrap();
    assert_eq!(envelope.event_id, id);
    assert_eq!(message.payload.as_ref(), envelope.to_vec().as_slice());
    assert!(message.payload.starts_with(br#"{"event_id":""#));
    drop(conn);
    env.teardown().await;
}

/// A batch enqueue writes every event in one statement; a repeated event id is a typed error.
#[tokio::test(flavor = "multi_thread")]
async fn batch_enqueue_and_duplicate_event_id() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let ids = env
        .outbox
        .enqueue_batch(
            &mut conn,
            (0..3).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(crate::all_event_ids(&env.db).await.len(), 3);
    let again = NewEvent::new("user.created", json!({"id": 9}))
        .envelope_with(|b| b.event_id(ids[0].clone()));
    let err = env.outbox.enqueue(&mut conn, again).await.unwrap_err();
    assert_eq!(err.kind(), OutboxErrorKind::DuplicateEventId);
    assert_eq!(err.event_id(), Some(&ids[0]));
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Retention deletes only sent rows older than the cut-off, in bounded batches.
#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_sent_rows_only() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..7).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    // 5 sent two days ago, 1 sent now, 1 pending.
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now() - interval '2 days' \
         WHERE id IN (SELECT id FROM jetstream_outbox_events ORDER BY id LIMIT 5)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now() \
         WHERE id = (SELECT max(id) - 1 FROM jetstream_outbox_events)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let deleted = Outbox::delete_sent_older_than(&mut conn, Duration::from_secs(24 * 3600), 2)
        .await
        .unwrap();
    assert_eq!(deleted, 5);
    let left: Count = diesel::sql_query("SELECT count(*) AS n FROM jetstream_outbox_events")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(left.n, 2);
    drop(conn);
    env.teardown().await;
}

/// The backlog reports unsent and quarantined counts and the age of the oldest unsent row.
#[tokio::test(flavor = "multi_thread")]
async fn backlog_counts_and_ages() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let empty = Outbox::backlog(&mut conn).await.unwrap();
    assert_eq!(
        (empty.unsent, empty.failed, empty.oldest_unsent_age),
        (0, 0, None)
    );
    env.outbox
        .enqueue_batch(
            &mut conn,
            (0..4).map(|i| NewEvent::new("user.created", json!({ "id": i }))),
        )
        .await
        .unwrap();
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET enqueued_at = now() - interval '90 seconds' \
         WHERE id = (SELECT min(id) FROM jetstream_outbox_events)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "UPDATE jetstream_outbox_events SET status = 'failed' \
         WHERE id = (SELECT max(id) FROM jetstream_outbox_events)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let backlog = Outbox::backlog(&mut conn).await.unwrap();
    assert_eq!((backlog.unsent, backlog.failed), (3, 1));
    let age = backlog.oldest_unsent_age.unwrap();
    assert!(
        age >= Duration::from_secs(90) && age < Duration::from_secs(120),
        "{age:?}"
    );
    drop(conn);
    env.teardown().await;
}

/// PostgreSQL's jsonb (the `headers` column, the consumers' inbox, any `payload::jsonb` query)
/// cannot hold NUL: written raw as jsonb, the insert fails on the server and aborts the
/// transaction. `enqueue` refuses it before any I/O, as `InvalidEvent`, and the caller's
/// transaction stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn nul_in_a_payload_string_is_refused_before_the_database() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    // What the server does with it: it rejects the value (22P05), not transiently.
    let raw = diesel::sql_query(
        "INSERT INTO jetstream_outbox_events (event_id, subject, payload) VALUES ('raw', 's', $1)",
    )
    .bind::<Jsonb, _>(json!({"note": "a\u{0}b"}))
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        raw.to_string()
            .contains("unsupported Unicode escape sequence"),
        "{raw}"
    );
    let classified = OutboxError::from(raw);
    assert_eq!(classified.kind(), OutboxErrorKind::Database);
    assert!(!classified.is_transient());

    let outbox = env.outbox.clone();
    let kept = conn
        .transaction::<_, OutboxError, _>(async |conn| {
            for event in [
                NewEvent::new("note.added", json!({"id": 1, "text": "a\u{0}b"})),
                NewEvent::new("note.added", json!({"id": 1, "nested": [{"k\u{0}": 1}]})),
                NewEvent::new("note.added", json!({"id": 1})).ordering_key("k\u{0}"),
            ] {
                let err = outbox.enqueue(conn, event).await.unwrap_err();
                assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
                assert!(err.event_id().is_some());
                assert!(!err.is_transient());
            }
            let err = outbox
                .enqueue_batch(
                    conn,
                    [
                        NewEvent::new("note.added", json!({"id": 2})),
                        NewEvent::new("note.added", json!({"id": 3, "t": "\u{0}"})),
                    ],
                )
                .await
                .unwrap_err();
            assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent);
            // Nothing failed on the server: the transaction goes on.
            outbox
                .enqueue(conn, NewEvent::new("note.added", json!({"id": 4})))
                .await
        })
        .await
        .unwrap();
    let ids = crate::all_event_ids(&env.db).await;
    assert_eq!(ids.len(), 1);
    assert!(ids.contains(kept.as_str()));
    drop(conn);
    env.teardown().await;
}

/// A `traceparent` that is not W3C is refused at enqueue (and at publish), before any I/O.
#[tokio::test(flavor = "multi_thread")]
async fn traceparent_must_be_w3c() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    for bad in [
        "not-a-traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
    ] {
        let err = env
            .outbox
            .enqueue(
                &mut conn,
                NewEvent::new("user.created", json!({"id": 1})).traceparent(bad),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent, "{bad:?}");
        let published = Publisher::new(&env.config, env.js())
            .publish(NewEvent::new("user.created", json!({"id": 1})).traceparent(bad))
            .await
            .unwrap_err();
        assert_eq!(published.kind(), OutboxErrorKind::InvalidEvent, "{bad:?}");
    }
    assert!(crate::all_event_ids(&env.db).await.is_empty());
    assert_eq!(stream_len(&env.stream).await, 0);
    env.outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", json!({"id": 1}))
                .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        )
        .await
        .unwrap();
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct TraceId {
    #[diesel(sql_type = Nullable<Text>)]
    trace_id: Option<String>,
}

/// The gem accepts any string as a trace id (`"trace-abc-123"`): so do enqueue and publish, and
/// the id reaches the row and the stream unchanged. Ids that are not header-safe are refused
/// before any I/O.
#[tokio::test(flavor = "multi_thread")]
async fn gem_trace_ids_are_accepted_and_unsafe_ones_refused() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    let publisher = Publisher::new(&env.config, env.js());
    let gem_style = "trace-abc-123";
    let event =
        || NewEvent::new("user.created", json!({"id": 1})).envelope_with(|b| b.trace_id(gem_style));
    env.outbox.enqueue(&mut conn, event()).await.unwrap();
    let row: TraceId =
        diesel::sql_query("SELECT payload->>'trace_id' AS trace_id FROM jetstream_outbox_events")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(row.trace_id.as_deref(), Some(gem_style));
    let published = publisher.publish(event()).await.unwrap();
    let message = env
        .stream
        .get_raw_message(published.sequence)
        .await
        .unwrap();
    assert_eq!(
        Envelope::from_slice(&message.payload).unwrap().trace_id,
        gem_style
    );

    for bad in ["", "trace\r\nx-evil: 1", "nul\u{0}", &"t".repeat(129)] {
        let event =
            || NewEvent::new("user.created", json!({"id": 2})).envelope_with(|b| b.trace_id(bad));
        let err = env.outbox.enqueue(&mut conn, event()).await.unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent, "{bad:?}");
        let err = publisher.publish(event()).await.unwrap_err();
        assert_eq!(err.kind(), OutboxErrorKind::InvalidEvent, "{bad:?}");
    }
    assert_eq!(crate::all_event_ids(&env.db).await.len(), 1);
    assert_eq!(stream_len(&env.stream).await, 1);
    drop(conn);
    env.teardown().await;
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// Database errors are classified on a real server: only the `event_id` unique index means a
/// duplicate; another unique index is a non-transient rejection; a connection the server
/// terminated is transient.
#[tokio::test(flavor = "multi_thread")]
async fn database_errors_are_classified() {
    let env = Env::new().await;
    let mut conn = env.db.conn().await;
    // One row per ordering key: a unique constraint that is not the event id's.
    diesel::sql_query(
        "CREATE UNIQUE INDEX test_one_row_per_key ON jetstream_outbox_events (ordering_key)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let first = env
        .outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", json!({"id": 1})).ordering_key("k"),
        )
        .await
        .unwrap();
    let err = env
        .outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", json!({"id": 2})).ordering_key("k"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), OutboxErrorKind::Database);
    assert!(!err.is_transient());
    let again = NewEvent::new("user.created", json!({"id": 3}))
        .ordering_key("other")
        .envelope_with(|b| b.event_id(first.clone()));
    let err = env.outbox.enqueue(&mut conn, again).await.unwrap_err();
    assert_eq!(err.kind(), OutboxErrorKind::DuplicateEventId);
    assert!(!err.is_transient());

    // The server ends the session (as on a fail-over or restart).
    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result(&mut conn)
        .await
        .unwrap();
    let mut admin = env.db.conn().await;
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(pid.pid)
        .execute(&mut admin)
        .await
        .unwrap();
    let err = env
        .outbox
        .enqueue(
            &mut conn,
            NewEvent::new("user.created", json!({"id": 4})).ordering_key("new"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), OutboxErrorKind::DatabaseUnavailable, "{err:?}");
    assert!(err.is_transient());
    drop((conn, admin));
    env.teardown().await;
}

/// Trace context captured at enqueue time: inside a `TraceParent::scope` (what the consumer
/// runtime sets while a handler runs) an event without its own traceparent carries a child of
/// the current one — same trace id, new parent id — through the relay to the stream; an
/// explicit traceparent wins; outside any scope no header is invented.
#[tokio::test(flavor = "multi_thread")]
async fn the_current_trace_is_captured_at_enqueue_and_relayed() {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures_util::StreamExt as _;
    use jetstream_bridge_config::TraceParent;

    let env = Env::new().await;
    let current: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let explicit = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut conn = env.db.conn().await;
    let outbox = env.outbox.clone();
    current
        .scope(async {
            outbox
                .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 1})))
                .await
                .unwrap();
            outbox
                .enqueue(
                    &mut conn,
                    NewEvent::new("user.created", json!({"id": 2})).traceparent(explicit),
                )
                .await
                .unwrap();
        })
        .await;
    outbox
        .enqueue(&mut conn, NewEvent::new("user.created", json!({"id": 3})))
        .await
        .unwrap();
    drop(conn);

    let relay = env.relay().build().unwrap().spawn();
    wait_sent(&[&relay], 3).await;
    relay.shutdown().await.unwrap();

    let consumer = env
        .stream
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap().take(3);
    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(crate::WAIT, messages.next())
        .await
        .expect("stream messages")
    {
        let message = message.unwrap();
        let envelope = Envelope::from_slice(&message.payload).unwrap();
        let tp = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().parse::<TraceParent>().unwrap());
        seen.push((envelope.resource_id, tp));
    }
    assert_eq!(seen.len(), 3);
    seen.sort_by(|a, b| a.0.cmp(&b.0)); // resource ids "1", "2", "3"
    let (_, captured) = &seen[0];
    let captured = captured.expect("traceparent captured from the scope");
    assert_eq!(captured.trace_id(), current.trace_id());
    assert_ne!(captured.parent_id(), current.parent_id());
    assert_eq!(
        seen[1].1.map(|tp| tp.to_string()).as_deref(),
        Some(explicit)
    );
    assert_eq!(seen[2].1, None);
    env.teardown().await;
}
