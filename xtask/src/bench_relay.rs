//! `bench relay`: the outbox `Relay` vs a naive hand-written relay, same rows, same stream.

use std::future::IntoFuture;
use std::time::Instant;

use async_nats::jetstream;
use async_nats::HeaderMap;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use jetstream_bridge_config::MSG_ID_HEADER;
use jetstream_bridge_outbox::Relay;
use jetstream_bridge_pg::prepared;

use super::bench_fixture::{envelope, Fixture, PgPool};
use super::{label, progress, repeat, Args, Check, Cmp, Counts, Measurement, Scenario};
use super::{ScenarioReport, WINDOW};

pub(super) async fn relay(args: &Args, fx: &Fixture) -> anyhow::Result<ScenarioReport> {
    let n = args.events;
    let size = envelope(12345)?.1.len();
    progress!("envelope ≈ {size} bytes; {n} outbox rows per run");
    let counts = Counts::default();
    let pairs = repeat(args.repeat, |warmup| {
        let counts = &counts;
        async move {
            let count = if warmup { args.warm_events() } else { n };
            let base = naive_run(fx, count, counts).await?;
            progress!("  naive relay{}: {base:.0} events/s", label(warmup));
            let ours = relay_run(fx, count, counts).await?;
            progress!("  Relay{}: {ours:.0} events/s", label(warmup));
            Ok((base, ours))
        }
    })
    .await?;
    let base: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let ours: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let base = Measurement::new(
        "naive relay (raw diesel-async + async-nats)",
        "events/s",
        base,
    );
    let ours = Measurement::new("jetstream-bridge Relay", "events/s", ours);
    let ratio = Measurement::ratio("Relay / naive", &ours.samples, &base.samples);
    Ok(ScenarioReport {
        scenario: Scenario::Relay,
        events: n,
        runs: args.repeat,
        checks: vec![Check::on(&ratio, Cmp::AtLeast, 1.2)],
        measurements: vec![base, ours, ratio],
        counts: counts.into_vec(),
        notes: vec![format!(
            "naive: claim 500 FOR UPDATE SKIP LOCKED, publish with Nats-Msg-Id, {WINDOW} acks in \
             flight, one UPDATE … = ANY; Relay: default settings; envelope {size} bytes"
        )],
    })
}

/// Checks that `count` rows were marked sent and the stream holds `count` messages.
async fn account(fx: &Fixture, who: &str, count: usize, counts: &Counts) -> anyhow::Result<()> {
    let sent = fx
        .count("jetstream_outbox_events WHERE status = 'sent'")
        .await?;
    counts.record(&format!("{who}: rows sent"), count, sent)?;
    let stored = fx.stream_messages().await?;
    counts.record(&format!("{who}: messages stored"), count, stored)
}

/// Loads `count` rows and drains them with the naive relay; events per second.
async fn naive_run(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<f64> {
    fx.enqueue(count).await?;
    let started = Instant::now();
    naive_relay(&fx.pool, &fx.js).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    account(fx, "naive relay", count, counts).await?;
    Ok(rate)
}

/// Loads `count` rows and drains them with one `Relay` (default settings); events per second,
/// from spawn to the last row marked sent.
async fn relay_run(fx: &Fixture, count: usize, counts: &Counts) -> anyhow::Result<f64> {
    fx.enqueue(count).await?;
    let started = Instant::now();
    let handle = Relay::builder(&fx.producer, fx.js.clone(), fx.pool.clone())
        .build()?
        .spawn();
    let mut stats = handle.stats();
    let waited = stats.wait_for(|s| s.sent >= count as u64).await.map(|_| ());
    let rate = count as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    waited?;
    account(fx, "Relay", count, counts).await?;
    Ok(rate)
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    subject: String,
    #[diesel(sql_type = Text)]
    payload: String,
}

/// The baseline: what a competent hand-written relay does with the raw clients. Claim 500
/// rows with `FOR UPDATE SKIP LOCKED`, publish them with a sliding window of PubAcks in flight
/// and `Nats-Msg-Id`, mark them sent with one `UPDATE … = ANY`; until nothing is left. Its
/// statements are prepared once on its connection, as the relay's are.
async fn naive_relay(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    loop {
        let rows: Vec<Row> = prepared(
            "UPDATE jetstream_outbox_events o SET status = 'publishing', \
               claimed_until = now() + interval '30 seconds', updated_at = now() \
             FROM (SELECT id FROM jetstream_outbox_events WHERE status = 'pending' \
                   ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED) c \
             WHERE o.id = c.id \
             RETURNING o.id, o.event_id, o.subject, o.payload::text AS payload",
        )
        .load(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut in_flight = FuturesUnordered::new();
        for row in &rows {
            while in_flight.len() >= WINDOW {
                if let Some(ack) = in_flight.next().await {
                    let _: jetstream::publish::PublishAck = ack?;
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert(MSG_ID_HEADER, row.event_id.as_str());
            let ack = js
                .publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
                .await?;
            in_flight.push(ack.into_future());
        }
        while let Some(ack) = in_flight.next().await {
            ack?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        prepared(
            "UPDATE jetstream_outbox_events SET status = 'sent', sent_at = now(), \
               updated_at = now(), claimed_until = NULL WHERE id = ANY($1)",
        )
        .bind::<Array<BigInt>, _>(ids)
        .execute(&mut *conn)
        .await?;
    }
}
