//! `dlq list | show | replay | purge` on dead letters written by the real consumer runtime and
//! by hand in the documented format, with a consumer using the inbox.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use jetstream_bridge_config::{Config, Envelope, MSG_ID_HEADER, REPLAY_OF_HEADER};
use jetstream_bridge_consumer::{
    Consumer, ConsumerHandle, ConsumerStats, Event, HandlerError, InboxHandler,
};
use serde_json::{json, Value};

use crate::{stream_len, Env, WAIT};

/// Writes one `effects` row per applied event (inside the inbox transaction); fails
/// permanently for the event ids in `poison`.
#[derive(Clone, Default)]
struct PoisonHandler {
    poison: Arc<Mutex<HashSet<String>>>,
}

impl InboxHandler for PoisonHandler {
    async fn handle(
        &self,
        event: &Event,
        conn: &mut AsyncPgConnection,
    ) -> Result<(), HandlerError> {
        let id = event.envelope.event_id.as_str();
        if self.poison.lock().unwrap().contains(id) {
            return Err(HandlerError::permanent("bad input").with_class("Validation"));
        }
        diesel::sql_query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind::<diesel::sql_types::Text, _>(id)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn wait(handle: &ConsumerHandle, done: impl FnMut(&ConsumerStats) -> bool) -> ConsumerStats {
    match tokio::time::timeout(WAIT, handle.wait_for(done)).await {
        Ok(stats) => stats.unwrap(),
        Err(_) => panic!("consumer counters stuck at {:?}", *handle.stats().borrow()),
    }
}

async fn effects(env: &Env, id: &str) -> i64 {
    env.db
        .count(&format!(
            "SELECT count(*) AS n FROM effects WHERE event_id = '{id}'"
        ))
        .await
}

fn envelope(n: u64) -> Envelope {
    Envelope::builder("order.created", json!({"id": n}))
        .producer("orders")
        .build()
        .unwrap()
}

/// Publishes `e` as the relay does (both msg-id spellings) to the consumer's subject.
async fn publish(env: &Env, config: &Config, e: &Envelope) {
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, e.event_id.as_str());
    headers.insert("nats-msg-id", e.event_id.as_str());
    env.t
        .jetstream()
        .publish_with_headers(
            config.subjects().destination().as_str().to_owned(),
            headers,
            e.to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A dead letter written by hand in the documented format (as another tool or the Ruby gem
/// would); returns its body.
async fn letter(env: &Env, config: &Config, e: &Envelope, reason: &str, msg_id: &str) -> Vec<u8> {
    let context = json!({
        "event_id": e.event_id.as_str(), "reason": reason, "error_class": "HandlerError",
        "error_message": "boom", "deliveries": 5,
        "original_subject": config.subjects().destination().as_str(),
        "sequence": {"stream": 3, "consumer": 1}, "consumer": config.durable_name().as_str(),
        "stream": config.stream_name().as_str(), "published_at": "2026-12-01T10:01:00Z",
    });
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, msg_id);
    headers.insert("nats-msg-id", msg_id);
    headers.insert("x-dead-letter", "true");
    headers.insert("x-dlq-reason", reason);
    headers.insert("x-deliveries", "5");
    headers.insert("x-dlq-context", context.to_string().as_str());
    let body = e.to_vec();
    let ack = env
        .t
        .jetstream()
        .publish_with_headers(
            config.subjects().dlq().as_str().to_owned(),
            headers,
            body.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!ack.duplicate);
    body
}

fn dlq_stream(config: &Config) -> String {
    format!("{}-dlq", config.stream_name())
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Events dead-lettered by the real consumer are listed and shown; a filtered replay (handler
/// fixed) applies each once and leaves the rest in the DLQ; replaying again, or replaying an
/// event the consumer applied before, applies nothing; `--dry-run` changes nothing; a replay
/// that fails again is dead-lettered again (not dropped as a duplicate).
#[tokio::test(flavor = "multi_thread")]
async fn replayed_events_are_applied_exactly_once() {
    let env = Env::new(&[]).await;
    env.provision().await;
    let config = env.config();
    let mut conn = env.db.conn().await;
    conn.batch_execute("CREATE TABLE effects (id bigserial PRIMARY KEY, event_id text NOT NULL)")
        .await
        .unwrap();
    let events: Vec<Envelope> = (1..=4).map(envelope).collect();
    let id = |i: usize| events[i].event_id.as_str().to_owned();
    let handler = PoisonHandler::default();
    handler.poison.lock().unwrap().extend([id(0), id(1), id(2)]);
    let handle = Consumer::builder(&config, env.t.jetstream().clone())
        .with_inbox(env.db.pool().clone())
        .handler(handler.clone())
        .fetch_wait(std::time::Duration::from_millis(500))
        .concurrency(1)
        .build()
        .unwrap()
        .spawn();
    for e in &events {
        publish(&env, &config, e).await;
    }
    wait(&handle, |s| s.processed >= 1 && s.dead_lettered >= 3).await;

    // list, filters, show
    let list = env.cli(&["dlq", "list", "--json"]).await.json();
    assert_eq!(ids(&list), sorted(vec![id(0), id(1), id(2)]), "{list}");
    let first = &list[0];
    assert_eq!(first["reason"], "unrecoverable");
    assert_eq!(first["error_class"], "Validation");
    assert_eq!(first["error_message"], "bad input");
    assert_eq!(first["deliveries"], 1);
    assert_eq!(
        first["original_subject"],
        config.subjects().destination().as_str()
    );
    assert!(first["age_seconds"].as_u64().unwrap() < 600);
    let none = env
        .cli(&["dlq", "list", "--reason", "max_deliver_exceeded", "--json"])
        .await
        .json();
    assert_eq!(none, json!([]));
    let two = env
        .cli(&["dlq", "list", "--limit", "2", "--json"])
        .await
        .json();
    assert_eq!(two.as_array().unwrap().len(), 2);
    let typed = env
        .cli(&[
            "dlq",
            "list",
            "--event-type",
            "order.created",
            "--since",
            "1h",
            "--json",
        ])
        .await
        .json();
    assert_eq!(typed.as_array().unwrap().len(), 3);
    let table = env.cli(&["dlq", "list"]).await;
    assert!(table.success && table.stdout.contains(&id(0)), "{table:?}");
    let seq = first["sequence"].as_u64().unwrap().to_string();
    let shown = env.cli(&["dlq", "show", &seq, "--json"]).await.json();
    assert_eq!(shown["headers"]["x-dead-letter"], "true");
    assert_eq!(shown["context"]["event_id"], first["event_id"]);
    assert_eq!(shown["body"]["event_id"], first["event_id"]);
    assert!(shown["body"]["payload"]["id"].as_u64().is_some());
    let by_id = env.cli(&["dlq", "show", &id(1), "--json"]).await.json();
    assert_eq!(by_id["event_id"], id(1).as_str());
    let text = env.cli(&["dlq", "show", &id(1)]).await;
    assert!(
        text.success && text.stdout.contains("headers:") && text.stdout.contains("body:"),
        "{text:?}"
    );

    // --dry-run changes nothing
    let dry = env
        .cli(&["dlq", "replay", "--event-id", &id(0), "--dry-run", "--json"])
        .await
        .json();
    assert_eq!(dry["letters"][0]["outcome"], "would_apply", "{dry}");
    assert_eq!(stream_len(&env.t, &dlq_stream(&config)).await, 3);
    let before = *handle.stats().borrow();
    assert_eq!(
        env.cli(&["dlq", "list", "--json"])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // fixed handler: replay two of them (keeping the dead letters), each applied once
    handler.poison.lock().unwrap().retain(|p| p == &id(2));
    let kept = env
        .cli(&[
            "dlq",
            "replay",
            "--event-id",
            &id(0),
            "--event-id",
            &id(1),
            "--keep",
            "--json",
        ])
        .await
        .json();
    assert_eq!(kept["complete"], true, "{kept}");
    for l in kept["letters"].as_array().unwrap() {
        assert_eq!(l["outcome"], "replayed", "{kept}");
        assert_eq!(l["deleted"], false, "{kept}");
    }
    wait(&handle, |s| s.processed >= before.processed + 2).await;
    assert_eq!(
        (effects(&env, &id(0)).await, effects(&env, &id(1)).await),
        (1, 1)
    );
    assert_eq!(stream_len(&env.t, &dlq_stream(&config)).await, 3, "kept");

    // replay them again (deleting this time): still applied once
    let again = env
        .cli(&[
            "dlq",
            "replay",
            "--event-id",
            &id(0),
            "--event-id",
            &id(1),
            "--json",
        ])
        .await
        .json();
    for l in again["letters"].as_array().unwrap() {
        assert_eq!(l["outcome"], "replayed", "{again}");
        assert_eq!(l["deleted"], true, "{again}");
    }
    let left = env.cli(&["dlq", "list", "--json"]).await.json();
    assert_eq!(
        ids(&left),
        vec![id(2)],
        "only the filtered ones left the DLQ"
    );

    // dead letters of events the consumer already applied (written by hand, other msg-ids):
    // replayed, they are inbox duplicates and the handler is not called
    letter(
        &env,
        &config,
        &events[3],
        "max_deliver_exceeded",
        &format!("dlq:manual:{}", id(3)),
    )
    .await;
    letter(
        &env,
        &config,
        &events[0],
        "max_deliver_exceeded",
        &format!("dlq:manual:{}", id(0)),
    )
    .await;
    let dups_before = handle.stats().borrow().duplicates;
    let replayed = env
        .cli(&[
            "dlq",
            "replay",
            "--reason",
            "max_deliver_exceeded",
            "--json",
        ])
        .await
        .json();
    assert_eq!(
        replayed["letters"].as_array().unwrap().len(),
        2,
        "{replayed}"
    );
    wait(&handle, |s| s.duplicates >= dups_before + 2).await;
    assert_eq!(
        (effects(&env, &id(0)).await, effects(&env, &id(3)).await),
        (1, 1)
    );

    // a replay that fails again goes back to the DLQ, under a new sequence
    let old_seq = left[0]["sequence"].as_u64().unwrap();
    let dead_before = handle.stats().borrow().dead_lettered;
    let run = env.cli(&["dlq", "replay", "--event-id", &id(2)]).await;
    assert!(run.success, "{run:?}");
    wait(&handle, |s| s.dead_lettered > dead_before).await;
    let back = env.cli(&["dlq", "list", "--json"]).await.json();
    assert_eq!(ids(&back), vec![id(2)], "{back}");
    assert!(back[0]["sequence"].as_u64().unwrap() > old_seq, "{back}");
    assert_eq!(effects(&env, &id(2)).await, 0);

    handle.shutdown().await.unwrap();
    drop(conn);
    env.teardown().await;
}

/// Purge deletes only what the filter selects and only with `--yes`; a replay republishes the
/// original body to the original subject with the replay headers and without the DLQ ones.
#[tokio::test(flavor = "multi_thread")]
async fn purge_removes_only_the_selected_and_replay_republishes_the_original() {
    let env = Env::new(&[]).await;
    env.provision().await;
    let config = env.config();
    let events: Vec<Envelope> = (1..=3).map(envelope).collect();
    let id = |i: usize| events[i].event_id.as_str().to_owned();
    letter(
        &env,
        &config,
        &events[0],
        "unrecoverable",
        &format!("dlq:{}", id(0)),
    )
    .await;
    letter(
        &env,
        &config,
        &events[1],
        "unrecoverable",
        &format!("dlq:{}", id(1)),
    )
    .await;
    let body = letter(
        &env,
        &config,
        &events[2],
        "max_deliver_exceeded",
        &format!("dlq:{}", id(2)),
    )
    .await;
    let dlq = dlq_stream(&config);

    let refused = env
        .cli(&["dlq", "purge", "--reason", "unrecoverable"])
        .await;
    assert!(refused.failure().contains("--yes"), "{refused:?}");
    let dry = env
        .cli(&[
            "dlq",
            "purge",
            "--reason",
            "unrecoverable",
            "--dry-run",
            "--json",
        ])
        .await
        .json();
    assert_eq!(dry["letters"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(stream_len(&env.t, &dlq).await, 3);

    let purged = env
        .cli(&["dlq", "purge", "--event-id", &id(0), "--yes", "--json"])
        .await
        .json();
    assert_eq!(purged["letters"][0]["outcome"], "deleted", "{purged}");
    let left = env.cli(&["dlq", "list", "--json"]).await.json();
    assert_eq!(ids(&left), sorted(vec![id(1), id(2)]));

    // replay (no consumer running): the message on the original subject
    let seq = left
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["event_id"] == id(2).as_str())
        .unwrap()["sequence"]
        .as_u64()
        .unwrap();
    let run = env.cli(&["dlq", "replay", "--seq", &seq.to_string()]).await;
    assert!(run.success, "{run:?}");
    let stream = env
        .t
        .jetstream()
        .get_stream(config.stream_name().as_str())
        .await
        .unwrap();
    // The work-queue stream allows no second consumer on the durable's subject: read the
    // stored message directly.
    let m = stream
        .get_last_raw_message_by_subject(config.subjects().destination().as_str())
        .await
        .unwrap();
    assert_eq!(&m.payload[..], &body[..], "body byte for byte");
    let h = &m.headers;
    assert_eq!(h.get(REPLAY_OF_HEADER).unwrap().as_str(), id(2));
    assert_eq!(h.get("nats-msg-id").unwrap().as_str(), id(2));
    assert_eq!(
        h.get(MSG_ID_HEADER).unwrap().as_str(),
        format!("replay:{}:{seq}", id(2))
    );
    for gone in [
        "x-dead-letter",
        "x-dlq-reason",
        "x-deliveries",
        "x-dlq-context",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was republished");
    }
    assert_eq!(
        ids(&env.cli(&["dlq", "list", "--json"]).await.json()),
        vec![id(1)]
    );

    let all = env.cli(&["dlq", "purge", "--all", "--yes"]).await;
    assert!(all.success, "{all:?}");
    assert_eq!(stream_len(&env.t, &dlq).await, 0);
    env.teardown().await;
}
