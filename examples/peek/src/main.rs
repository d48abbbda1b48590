//! `peek`: what a broker holds, one message a line — the consumer side of the broker examples.
//!
//! ```text
//! peek nats  nats://127.0.0.1:4222 STREAM
//! peek kafka 127.0.0.1:9092 TOPIC
//! peek amqp  amqp://guest:guest@127.0.0.1:5672/%2f QUEUE     (takes the messages)
//! peek amqp-bind URL EXCHANGE QUEUE PATTERN                   (a queue for the messages to come)
//! peek amqp-delete URL EXCHANGE QUEUE                         (the queue and the exchange, gone)
//! peek redis redis://127.0.0.1:6379 KEY
//! ```
//!
//! Each line: where the message is, its CloudEvents type and id (from the binding's headers or
//! fields), and its body.

use std::time::Duration;

use anyhow::{Context, bail};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [kind, url, exchange, queue, pattern] = args.as_slice()
        && kind == "amqp-bind"
    {
        return amqp_bind(url, exchange, queue, pattern).await;
    }
    if let [kind, url, exchange, queue] = args.as_slice()
        && kind == "amqp-delete"
    {
        return amqp_delete(url, exchange, queue).await;
    }
    let [kind, url, name] = args.as_slice() else {
        bail!(
            "usage: peek nats|kafka|amqp|redis URL STREAM|TOPIC|QUEUE|KEY, or peek amqp-bind URL EXCHANGE QUEUE PATTERN, or peek amqp-delete URL EXCHANGE QUEUE"
        );
    };
    match kind.as_str() {
        "nats" => nats(url, name).await,
        "kafka" => kafka(url, name),
        "amqp" => amqp(url, name).await,
        "redis" => redis(url, name).await,
        other => bail!("unknown broker {other:?}: nats, kafka, amqp or redis"),
    }
}

fn show(place: &str, ty: &str, id: &str, body: &[u8]) {
    println!("{place}  {ty}  {id}  {}", String::from_utf8_lossy(body));
}

async fn nats(url: &str, stream: &str) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let stream = js.get_stream(stream).await.context("the stream")?;
    let last = stream.get_info().await?.state.last_sequence;
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let h = |name: &str| m.headers.get(name).map(|v| v.to_string()).unwrap_or_default();
        show(&m.subject, &h("ce-type"), &h("ce-id"), &m.payload);
    }
    Ok(())
}

fn kafka(brokers: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ficus-peek")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len()) as i32;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut quiet = 0;
    while quiet < 4 {
        let Some(m) = consumer.poll(Duration::from_millis(250)) else {
            quiet += 1;
            continue;
        };
        quiet = 0;
        let m = m?;
        let h = |name: &str| {
            m.headers()
                .and_then(|hs| hs.iter().find(|h| h.key == name))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let place = format!(
            "{topic}/{}@{} key={}",
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.key().unwrap_or_default())
        );
        show(&place, &h("ce_type"), &h("ce_id"), m.payload().unwrap_or_default());
    }
    Ok(())
}

async fn amqp(url: &str, queue: &str) -> anyhow::Result<()> {
    use lapin::options::BasicGetOptions;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await?
    {
        let props = &m.delivery.properties;
        let ty = props.kind().as_ref().map(|s| s.to_string()).unwrap_or_default();
        let id = props.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        show(
            &format!("{queue} ({})", m.delivery.routing_key),
            &ty,
            &id,
            &m.delivery.data,
        );
    }
    Ok(())
}

/// Declares the durable topic exchange (as ficus would) and a queue bound to it.
async fn amqp_bind(url: &str, exchange: &str, queue: &str, pattern: &str) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Durable, as a service's queue would be (persistent messages are written to disk); it goes
    // away by itself ten minutes after it was last used.
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(600_000));
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), durable_queue, arguments).await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes a queue and its exchange.
async fn amqp_delete(url: &str, exchange: &str, queue: &str) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

async fn redis(url: &str, key: &str) -> anyhow::Result<()> {
    use redis::AsyncCommands;
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await?;
    for entry in reply.ids {
        let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
        let body = entry
            .get::<String>("data")
            .or_else(|| entry.get::<String>("event"))
            .unwrap_or_default();
        show(
            &format!("{key} {}", entry.id),
            &field("type"),
            &field("id"),
            body.as_bytes(),
        );
    }
    Ok(())
}
