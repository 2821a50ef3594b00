//! Byte-exact payloads: the relay publishes exactly the bytes serialized at enqueue, which are
//! the bytes a direct `Publisher` sends for the same envelope, and a row another writer (the
//! Ruby gem) stored is published exactly as stored.

use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use jetstream_bridge_config::{Envelope, MSG_ID_HEADER};
use jetstream_bridge_outbox::{NewEvent, Publisher};
use serde_json::json;

use crate::{wait_sent, Env};

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    text: String,
    #[diesel(sql_type = Text)]
    via_jsonb: String,
}

/// A payload jsonb would not give back as written: keys out of jsonb's order (shorter keys
/// first), a big unsigned integer, floats, escapes, `/` and non-ASCII text.
fn tricky_payload() -> serde_json::Value {
    json!({
        "id": 6,
        "big": 12_345_678_901_234_567_890_u64,
        "sym": "a/b </script> & \"q\" \\ tab\t",
        "float": 1.0e20,
        "tiny": -5.0e-8,
        "ratio": 0.1,
        "text": "Zoë 東京 😀",
        "nested": {"zeta": [1.5, 2, {"b": true, "a": null}], "alpha": "x"},
    })
}

/// The same envelope published directly and through the outbox: the relayed message's body is
/// byte for byte the direct one (and the envelope's own encoding). The old jsonb path would
/// have re-ordered the payload's keys, so the comparison can fail.
#[tokio::test(flavor = "multi_thread")]
async fn relayed_bytes_equal_the_direct_publish() {
    let env = Env::new().await;
    // A second stream for the relayed copy: the event id is the same, so one stream would drop
    // the second publish as a duplicate.
    let relayed_stream = env.t.create_stream(env.t.stream_config("relayed")).await;
    let relayed_subject = env.t.subject("relayed.events");
    let envelope = Envelope::builder("user.created", tricky_payload())
        .producer("orders")
        .build()
        .unwrap();
    let direct = Publisher::new(&env.config, env.js())
        .publish(envelope.clone())
        .await
        .unwrap();
    let mut conn = env.db.conn().await;
    env.outbox
        .enqueue(
            &mut conn,
            NewEvent::from(envelope.clone()).subject(relayed_subject.as_str()),
        )
        .await
        .unwrap();
    let stored: Stored = diesel::sql_query(
        "SELECT payload::text AS text, payload::jsonb::text AS via_jsonb \
         FROM jetstream_outbox_events",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(stored.text.as_bytes(), envelope.to_vec().as_slice());
    // What a relay reading jsonb could at best have sent: other bytes.
    let via_jsonb = Envelope::from_slice(stored.via_jsonb.as_bytes()).unwrap();
    assert_ne!(via_jsonb.to_vec(), envelope.to_vec());

    let relay = env.relay().build().unwrap().spawn();
    wait_sent(&[&relay], 1).await;
    relay.shutdown().await.unwrap();
    let direct_message = env.stream.get_raw_message(direct.sequence).await.unwrap();
    let relayed_message = relayed_stream.get_raw_message(1).await.unwrap();
    assert_eq!(relayed_message.payload, direct_message.payload);
    assert_eq!(
        direct_message.payload.as_ref(),
        envelope.to_vec().as_slice()
    );
    for message in [&direct_message, &relayed_message] {
        assert_eq!(
            message.headers.get(MSG_ID_HEADER).unwrap().as_str(),
            envelope.event_id.as_str()
        );
    }
    drop(conn);
    env.teardown().await;
}

/// Rows written by the Ruby gem: its own formatting (`1.0e+20`, key order, unescaped `/`) is
/// published exactly as stored, whether the row holds the envelope as a JSON object or, as
/// older gem versions write it, as a JSON string.
#[tokio::test(flavor = "multi_thread")]
async fn gem_written_rows_are_published_as_stored() {
    let env = Env::new().await;
    let subject = env.config.subjects().source().as_str().to_owned();
    let body = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","schema_version":1,"event_type":"user.created","producer":"ruby-app","resource_id":"6","occurred_at":"2026-12-04T10:00:00Z","trace_id":"free form/trace","resource_type":"user","payload":{{"id":6,"big":12345678901234567890,"ratio":1.0e+20,"path":"a/b","name":"Zoë"}}}}"#
        )
    };
    let (object_id, string_id) = ("gem-object-1", "gem-string-2");
    let mut conn = env.db.conn().await;
    for (id, sql) in [
        (
            object_id,
            "INSERT INTO jetstream_outbox_events (event_id, subject, payload) \
             VALUES ($1, $2, $3::json)",
        ),
        (
            string_id,
            "INSERT INTO jetstream_outbox_events (event_id, subject, payload) \
             VALUES ($1, $2, to_json($3::text))",
        ),
    ] {
        diesel::sql_query(sql)
            .bind::<Text, _>(id)
            .bind::<Text, _>(&subject)
            .bind::<Text, _>(body(id))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let relay = env.relay().build().unwrap().spawn();
    wait_sent(&[&relay], 2).await;
    relay.shutdown().await.unwrap();
    for (sequence, id) in [(1, object_id), (2, string_id)] {
        let message = env.stream.get_raw_message(sequence).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&message.payload).unwrap(),
            body(id),
            "{id}"
        );
        assert_eq!(message.headers.get(MSG_ID_HEADER).unwrap().as_str(), id);
    }
    drop(conn);
    env.teardown().await;
}
