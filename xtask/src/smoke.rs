//! `cargo xtask smoke`: one envelope through JetStream and back.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt as _;
use jetstream_bridge_config::{Config, Envelope, SubjectLayout, MSG_ID_HEADER, RUBY_MSG_ID_HEADER};

/// Arguments of `cargo xtask smoke`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// NATS server(s) to use (comma-separated).
    #[arg(
        long,
        env = "NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Producing application.
    #[arg(long, default_value = "orders")]
    app: String,
    /// Consuming application.
    #[arg(long, default_value = "billing")]
    dest: String,
    /// Keep the stream afterwards (it is deleted by default).
    #[arg(long)]
    keep: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    // A unique env token keeps the subjects of this run apart from every other stream.
    let env = format!("smoke{}", nuid::next().to_string().to_lowercase());
    let producer = Config::builder(env.as_str(), args.app.as_str(), args.dest.as_str())
        .layout(SubjectLayout::EnvPrefixed)
        .nats_urls(args.nats_url.as_str())
        .build()
        .context("building the producer's configuration")?;
    let consumer_side = Config::builder(env.as_str(), args.dest.as_str(), args.app.as_str())
        .layout(SubjectLayout::EnvPrefixed)
        .nats_urls(args.nats_url.as_str())
        .build()
        .context("building the consumer's configuration")?;
    let subjects = producer.subjects();
    println!(
        "config: layout {:?}, {} → {} (source {}, destination {}, DLQ {})",
        producer.layout(),
        producer.app_name(),
        producer.destination_app(),
        subjects.source(),
        subjects.destination(),
        subjects.dlq(),
    );

    println!("connecting to {}", producer.nats_urls());
    // The library's connect: credentials, TLS, inbox prefix and retries from the config.
    let connection = jetstream_bridge_topology::connect(&producer)
        .await
        .context("connecting to NATS (is it running? `bash .ci/services.sh`)")?;
    let js = connection.jetstream();

    let stream_name = subjects.stream_name().as_str().to_owned();
    let stream_subjects: Vec<String> = subjects
        .all_stream_subjects(true)
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    println!("creating stream {stream_name} with subjects {stream_subjects:?}");
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: stream_subjects,
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: producer.duplicate_window(),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .context("creating the smoke stream")?;

    let result = exchange(&js, &stream, &producer, &consumer_side).await;
    if args.keep {
        println!("keeping stream {stream_name}");
    } else {
        println!("deleting stream {stream_name}");
        js.delete_stream(&stream_name).await?;
    }
    result?;
    println!("smoke: OK");
    Ok(())
}

async fn exchange(
    js: &jetstream::Context,
    stream: &stream::Stream,
    producer: &Config,
    consumer_side: &Config,
) -> anyhow::Result<()> {
    let envelope = Envelope::builder(
        "order.created",
        serde_json::json!({"id": 42, "total": "19.99", "note": "ünïcødé </script> & more"}),
    )
    .producer(producer.app_name().as_str())
    .build()?;
    let body = envelope.to_vec();
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, envelope.event_id.as_str());
    headers.insert(RUBY_MSG_ID_HEADER, envelope.event_id.as_str());

    let subject = producer.subjects().source().as_str().to_owned();
    println!(
        "publishing {} to {subject} ({} bytes)",
        envelope.event_id,
        body.len()
    );
    let ack = js
        .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
        .await?
        .await?;
    println!("  stored as {}#{}", ack.stream, ack.sequence);
    ensure!(!ack.duplicate, "first publish was reported as a duplicate");

    println!("publishing the same event id again (the stream must deduplicate it)");
    let again = js
        .publish_with_headers(subject.clone(), headers, body.clone().into())
        .await?
        .await?;
    ensure!(
        again.duplicate,
        "second publish of {} was stored again",
        envelope.event_id
    );
    ensure!(
        again.sequence == ack.sequence,
        "duplicate got a new sequence"
    );

    let durable = consumer_side.subjects().durable_name().as_str().to_owned();
    println!("reading back through durable {durable}");
    let pull = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable),
            filter_subject: consumer_side.subjects().destination().as_str().to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: consumer_side.ack_wait(),
            max_deliver: i64::from(consumer_side.max_deliver()),
            ..Default::default()
        })
        .await?;
    let mut batch = pull
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let Some(message) = batch.next().await else {
        bail!("no message came back from the stream");
    };
    let message = message.map_err(|e| anyhow::anyhow!(e))?;
    ensure!(
        message.subject.as_str() == subject,
        "unexpected subject {}",
        message.subject
    );
    ensure!(
        message.payload.as_ref() == body.as_slice(),
        "body changed in transit"
    );
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    let received = Envelope::from_message(headers, &message.payload)?;
    ensure!(received == envelope, "envelope changed in transit");
    message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "  received {} ({}, resource {} #{}), body identical, acked",
        received.event_id, received.event_type, received.resource_type, received.resource_id
    );
    Ok(())
}
