//! `type = "amqp"`: events published to a RabbitMQ (AMQP 0-9-1) exchange.
//!
//! Each event is published to the exchange with its routing key (a template: `shop.{type}`),
//! persistent (`delivery_mode` 2), `message_id` = the event id, on a channel in **publisher
//! confirm** mode: **durable = the broker confirmed it** (for a durable queue, written to disk;
//! for a quorum queue, on a majority of nodes). Publishes are pipelined and their confirms awaited
//! at each flush. The CloudEvents AMQP binding: binary mode by default (`cloudEvents:` headers,
//! data as the body, `content_type`), or structured.

mod config;

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
pub use config::{AmqpConfig, ExchangeType};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio::time::Timeout;
use tokio::time::error::Elapsed;

use crate::error::shown_url;
use crate::inflight::InFlight;
use crate::{Outgoing, Sink, SinkError, Template};

impl AmqpConfig {
    /// The sink; connects at the first write or health check.
    pub fn build(&self) -> Result<AmqpSink, SinkError> {
        Ok(AmqpSink {
            routing_key: Template::parse("routing_key", &self.routing_key)?,
            config: self.clone(),
            conn: None,
            ready: false,
            confirms: InFlight::new(),
        })
    }
}

/// A RabbitMQ publisher.
pub struct AmqpSink {
    config: AmqpConfig,
    routing_key: Template,
    conn: Option<(Connection, Channel)>,
    /// Whether the exchange was checked (or declared).
    ready: bool,
    /// Publishes waiting for their confirm, in order.
    confirms: InFlight<Timeout<lapin::PublisherConfirm>>,
}

impl AmqpSink {
    async fn channel(&mut self) -> Result<Channel, SinkError> {
        if let Some((conn, channel)) = &self.conn {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
            self.conn = None;
            self.ready = false;
        }
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let connect = Connection::connect(&self.config.url, ConnectionProperties::default());
        let conn = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| SinkError::transient(format!("{}: no answer in {timeout:?}", shown_url(&self.config.url))))?
            .map_err(|e| self.error("cannot connect", e))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| self.error("cannot open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.error("cannot turn on publisher confirms", e))?;
        self.conn = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Connects, and checks (or declares) the exchange once.
    async fn ready(&mut self) -> Result<Channel, SinkError> {
        let channel = self.channel().await?;
        if self.ready {
            return Ok(channel);
        }
        let exchange = self.config.exchange.clone();
        let (kind, options) = match self.config.declare {
            Some(ty) => (
                match ty {
                    ExchangeType::Topic => ExchangeKind::Topic,
                    ExchangeType::Direct => ExchangeKind::Direct,
                    ExchangeType::Fanout => ExchangeKind::Fanout,
                    ExchangeType::Headers => ExchangeKind::Headers,
                },
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
            ),
            None => (
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
            ),
        };
        if !exchange.is_empty() {
            let declared = channel
                .exchange_declare(exchange.as_str().into(), kind, options, FieldTable::default())
                .await;
            if let Err(e) = declared {
                self.conn = None;
                return Err(match e.kind() {
                    ErrorKind::ProtocolError(p) if p.get_id() == 404 => SinkError::definite(
                        format!("exchange {exchange:?} does not exist"),
                        "declare it, or set declare = \"topic\" (or direct, fanout, headers) to let ficus declare it",
                    ),
                    ErrorKind::ProtocolError(p) if p.get_id() == 406 => SinkError::definite(
                        format!("exchange {exchange:?} exists with other settings: {}", p.get_message()),
                        "make declare match the exchange's type (ficus declares it durable), or leave declare out",
                    ),
                    _ => self.error(&format!("exchange {exchange:?}"), e),
                });
            }
        }
        self.ready = true;
        Ok(channel)
    }

    fn error(&mut self, what: &str, e: lapin::Error) -> SinkError {
        let message = format!("{what} ({}): {e}", shown_url(&self.config.url));
        match e.kind() {
            ErrorKind::ProtocolError(p) if matches!(p.get_id(), 403 | 530) => {
                self.conn = None;
                SinkError::definite(
                    message,
                    "check the user, the password and the vhost in url, and the user's permissions on the vhost",
                )
            }
            ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_) => {
                SinkError::definite(message, "check url")
            }
            _ => {
                self.conn = None;
                SinkError::transient(message)
            }
        }
    }

    /// A confirm (or its time running out), checked.
    fn confirmed(&mut self, confirm: Result<lapin::Result<Confirmation>, Elapsed>) -> Result<(), SinkError> {
        let confirmed = confirm
            .map_err(|_| SinkError::transient(format!("no publisher confirm in {}s", self.config.timeout_secs)))?;
        match confirmed.map_err(|e| self.error("publish failed", e))? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(SinkError::definite(
                format!(
                    "a message with routing key {:?} was returned: no queue is bound to take it (mandatory = true)",
                    returned.delivery.routing_key.as_str()
                ),
                "bind a queue to the exchange for that routing key, or set mandatory = false to let the broker drop what nobody listens to",
            )),
            Confirmation::Nack(_) => Err(SinkError::transient(
                "the broker refused a message (nack: a disk or memory alarm, or a queue at its limit with overflow = reject-publish)",
            )),
            Confirmation::NotRequested => Err(SinkError::definite(
                "publisher confirms are off on the channel",
                "report this as a bug",
            )),
        }
    }
}

#[async_trait]
impl Sink for AmqpSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        let channel = self.ready().await?;
        for o in events {
            if self.confirms.is_full()
                && let Some(confirm) = self.confirms.oldest().await
            {
                self.confirmed(confirm)?;
            }
            let message = self.config.mode.message(o, "cloudEvents:");
            let mut headers = FieldTable::default();
            for (name, value) in &message.headers {
                headers.insert(
                    ShortString::from(name.as_str()),
                    AMQPValue::LongString(LongString::from(value.as_bytes())),
                );
            }
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(o.event.id.as_str().into())
                .with_content_type(message.content_type.into())
                .with_type(ShortString::from(&*o.event.ty))
                .with_timestamp((o.event.time.micros() / 1_000_000).max(0) as u64)
                .with_app_id("ficus".into())
                .with_headers(headers);
            let routing_key = self.routing_key.render(&o.event, |v| Cow::Borrowed(v));
            let confirm = channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: self.config.mandatory,
                        ..Default::default()
                    },
                    &message.body,
                    properties,
                )
                .await
                .map_err(|e| self.error("publish failed", e))?;
            // No confirm in time from the publish on: a transient failure.
            self.confirms.push(tokio::time::timeout(
                Duration::from_secs(self.config.timeout_secs),
                confirm,
            ));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.confirms.take().settle(|a| self.confirmed(a)).await
    }

    /// Connects, and checks (or declares) the exchange.
    async fn health(&mut self) -> Result<(), SinkError> {
        self.ready = false;
        self.ready().await.map(drop)
    }

    async fn close(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            let _ = conn.close(200, "ficus stops".into()).await;
        }
    }
}
