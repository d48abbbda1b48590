//! `type = "kafka"`: events produced to Kafka (`rdkafka`, librdkafka).
//!
//! Each event is a record of its topic (a template: `shop.{type}`, or one topic) with the key
//! `{subject}` by default, so an aggregate's events stay in one partition, in order. The producer
//! is idempotent with `acks = all`: **durable = the broker acknowledged the record** (written to
//! every in-sync replica). Records are pipelined; their acknowledgements are awaited at each
//! flush. The CloudEvents Kafka protocol binding: binary mode by default (`ce_` headers and
//! `content-type`, data as the value), or structured.

mod config;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
pub use config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::inflight::InFlight;
use crate::{Outgoing, Sink, SinkError, Template};

impl KafkaConfig {
    /// The sink; the producer is made at the first write or health check.
    pub fn build(&self) -> Result<KafkaSink, SinkError> {
        if let Some(c) = &self.compression
            && !["none", "gzip", "snappy", "lz4", "zstd"].contains(&c.as_str())
        {
            return Err(SinkError::definite(
                format!("compression = {c:?}"),
                "use none, gzip, snappy, lz4 or zstd",
            ));
        }
        Ok(KafkaSink {
            topic: Template::parse("topic", &self.topic)?,
            key: Template::parse("key", &self.key)?,
            config: self.clone(),
            producer: None,
            context: Context::default(),
            ready: false,
            topics: HashSet::new(),
            acks: InFlight::new(),
        })
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "ficus")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", (self.timeout_secs * 1000).to_string())
            .set(
                "socket.timeout.ms",
                (self.timeout_secs.min(60) * 1000).max(10_000).to_string(),
            )
            .set("compression.codec", self.compression.as_deref().unwrap_or("none"))
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "100000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// What librdkafka says on its own: its log lines go to ficus's log (as warnings at most: ficus
/// says itself what a failure means), and the client errors since the last probe are kept, since
/// a metadata request that fails for refused credentials or a failed TLS handshake says only
/// that the brokers are down.
#[derive(Clone, Default)]
struct Context {
    /// The first error that is not "all brokers down", or else the last one.
    error: Arc<Mutex<Option<(bool, String)>>>,
}

impl Context {
    /// The client's error since the last call.
    fn take_error(&self) -> Option<String> {
        let taken = self.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken.map(|(_, said)| said)
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let telling = error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown);
        let mut kept = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*kept, Some((true, _))) {
            *kept = Some((telling, reason.to_owned()));
        }
    }
}

type Producer_ = FutureProducer<Context>;

/// A Kafka producer.
pub struct KafkaSink {
    config: KafkaConfig,
    topic: Template,
    key: Template,
    producer: Option<Producer_>,
    /// The producers' context (one producer at a time).
    context: Context,
    /// Whether the topics were checked (or created).
    ready: bool,
    /// Topics known to exist (made by a template, created when `create_topics`).
    topics: HashSet<String>,
    /// Records waiting for their acknowledgement, in order.
    acks: InFlight<DeliveryFuture>,
}

impl KafkaSink {
    fn producer(&mut self) -> Result<Producer_, SinkError> {
        if let Some(p) = &self.producer {
            // A fatal error (the idempotent producer lost its sequence): start a new one.
            match p.client().fatal_error() {
                None => return Ok(p.clone()),
                Some((code, reason)) => {
                    tracing::warn!(%code, %reason, "kafka producer failed; starting a new one");
                    self.producer = None;
                }
            }
        }
        let producer: Producer_ = self
            .config
            .client_config()
            .create_with_context(self.context.clone())
            .map_err(|e| {
                SinkError::definite(
                    format!("cannot make a producer: {e}"),
                    "check brokers and the librdkafka settings under [sink.properties]",
                )
            })?;
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Checks the topics once (a fixed topic must exist, or is created with `create_topics`).
    async fn ready(&mut self) -> Result<Producer_, SinkError> {
        let producer = self.producer()?;
        if self.ready {
            return Ok(producer);
        }
        let timeout = Duration::from_secs(self.config.timeout_secs.min(30));
        let topic = self
            .topic
            .is_fixed()
            .then(|| self.topic.render_with(|_| Cow::Borrowed("")));
        self.context.take_error();
        let probe = producer.clone();
        let wanted = topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            probe.client().fetch_metadata(wanted.as_deref(), timeout).map(|m| {
                m.topics()
                    .iter()
                    .map(|t| (t.name().to_owned(), t.error().is_none(), t.partitions().len()))
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| SinkError::transient(format!("reading metadata: {e}")))?
        .map_err(|e| self.unreachable(e, self.context.take_error()))?;
        if let Some(topic) = topic {
            let exists = metadata
                .iter()
                .any(|(name, ok, partitions)| *name == topic && *ok && *partitions > 0);
            if !exists {
                if !self.config.create_topics {
                    return Err(SinkError::definite(
                        format!("topic {topic} does not exist"),
                        "create it, or set create_topics = true (with partitions and replication_factor)",
                    ));
                }
                self.create_topic(&topic).await?;
            }
        }
        self.ready = true;
        Ok(producer)
    }

    /// The brokers did not give their metadata: refused credentials and failed TLS handshakes
    /// are definite, anything else (not there yet, a network down) transient.
    fn unreachable(&self, e: KafkaError, last: Option<String>) -> SinkError {
        let brokers = &self.config.brokers;
        let Some(last) = last else {
            return SinkError::transient(format!("brokers {brokers} do not answer: {e}")).with_hint(
                "check brokers (host:port, comma-separated), that this machine reaches them, and security.protocol",
            );
        };
        let said = last.to_ascii_lowercase();
        if said.contains("sasl") || said.contains("authentication") {
            SinkError::definite(
                format!("brokers {brokers} refused the credentials: {last}"),
                "check sasl.username, sasl.password and sasl.mechanism under [sink.properties] (and security.protocol)",
            )
        } else if said.contains("ssl") {
            SinkError::definite(
                format!("brokers {brokers}: TLS failed: {last}"),
                "check security.protocol and ssl.ca.location under [sink.properties], and that the brokers speak TLS",
            )
        } else {
            SinkError::transient(format!("brokers {brokers} do not answer: {last}")).with_hint(
                "check brokers (host:port, comma-separated), that this machine reaches them, and security.protocol",
            )
        }
    }

    async fn create_topic(&self, topic: &str) -> Result<(), SinkError> {
        let admin: AdminClient<DefaultClientContext> = self.config.client_config().create().map_err(|e| {
            SinkError::definite(
                format!("cannot make an admin client: {e}"),
                "check brokers and [sink.properties]",
            )
        })?;
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let results = admin
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .map_err(|e| SinkError::transient(format!("creating topic {topic}: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(SinkError::definite(
                        format!("cannot create topic {name}: {code}"),
                        "create it yourself, or give the user the right to (CREATE on the cluster)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// A delivery report, checked.
    fn acknowledged(&mut self, ack: <DeliveryFuture as std::future::Future>::Output) -> Result<(), SinkError> {
        match ack {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(self.error(e)),
            Err(_) => {
                self.producer = None;
                Err(SinkError::transient(
                    "the producer went away before the record was acknowledged",
                ))
            }
        }
    }

    fn error(&mut self, e: KafkaError) -> SinkError {
        let code = e.rdkafka_error_code();
        let message = format!("producing failed: {e}");
        use RDKafkaErrorCode as C;
        match code {
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => SinkError::definite(
                message,
                "raise message.max.bytes (and the topic's max.message.bytes), or make the event smaller",
            ),
            Some(
                C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::TransactionalIdAuthorizationFailed,
            ) => SinkError::definite(
                message,
                "give the user WRITE on the topics (and IDEMPOTENT_WRITE on the cluster)",
            ),
            Some(C::SaslAuthenticationFailed | C::Authentication) => SinkError::definite(
                message,
                "check sasl.username, sasl.password and sasl.mechanism under [sink.properties]",
            ),
            Some(C::InvalidTopic) => SinkError::definite(
                message,
                "the topic template makes a name Kafka refuses: letters, digits, . _ - only",
            ),
            // The idempotent producer lost its place (its epoch or sequence, after a timeout):
            // a new producer starts over, and what was not acknowledged is produced again.
            Some(
                C::Fatal
                | C::ProducerFenced
                | C::InvalidProducerEpoch
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::InvalidProducerIdMapping,
            ) => {
                self.producer = None;
                SinkError::transient(format!("{message}; starting a new producer"))
            }
            Some(C::UnknownTopicOrPartition | C::UnknownTopic) => SinkError::transient(format!(
                "{message}: the topic does not exist (create it, or set create_topics = true); waiting for it"
            )),
            _ => SinkError::transient(message),
        }
    }
}

/// A topic from an attribute's value: Kafka takes letters, digits, `.`, `_` and `-`; anything else
/// becomes `_`.
fn topic_part(value: &str) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.chars().all(ok) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(value.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        let producer = self.ready().await?;
        for o in events {
            let message = self.config.mode.message(o, "ce_");
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1).insert(Header {
                key: "content-type",
                value: Some(message.content_type),
            });
            for (name, value) in &message.headers {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_bytes()),
                });
            }
            let topic = self.topic.render(&o.event, topic_part);
            if self.config.create_topics && !self.topics.contains(&topic) {
                self.create_topic(&topic).await?;
                self.topics.insert(topic.clone());
            }
            let key = self.key.render(&o.event, |v| Cow::Borrowed(v));
            let mut record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&message.body[..])
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(ack) => {
                        self.acks.push(ack);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: wait for acknowledgements, then try again.
                        record = back;
                        match self.acks.oldest().await {
                            Some(ack) => self.acknowledged(ack)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => return Err(self.error(e)),
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.acks.take().settle(|a| self.acknowledged(a)).await
    }

    /// Reaches the brokers, and checks (or creates) a fixed topic.
    async fn health(&mut self) -> Result<(), SinkError> {
        self.ready = false;
        self.ready().await.map(drop)
    }

    async fn close(&mut self) {
        if let Some(p) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_keep_what_kafka_takes() {
        assert_eq!(topic_part("public.orders"), "public.orders");
        assert_eq!(topic_part("Ordér Lines"), "Ord_r_Lines");
    }
}
