//! `[[sink]] type = "amqp"`: settings.

use serde::Deserialize;

use crate::cloudevents::ContentMode;

/// `[[sink]] type = "amqp"` (docs/sinks.md#amqp-rabbitmq).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The broker: `amqp://user:password@host:5672/vhost` (`%2f` is the default vhost `/`),
    /// `amqps://` for TLS.
    pub url: String,
    /// The exchange events are published to.
    pub exchange: String,
    /// Declare the exchange (durable) when it does not exist, of this type: `topic`, `direct`,
    /// `fanout` or `headers`; without it, the exchange must exist.
    #[serde(default)]
    pub declare: Option<ExchangeType>,
    /// The routing key template, default `{type}`.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Publish as `mandatory`: a message no queue takes is returned, and ficus stops instead of
    /// letting the broker drop it. Default false (an exchange drops what nobody listens to).
    #[serde(default)]
    pub mandatory: bool,
    /// `binary` (default: `cloudEvents:` headers, data as the body) or `structured`.
    #[serde(default)]
    pub mode: ContentMode,
    /// How long to wait for a connection or a confirm, in seconds (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

/// An exchange's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// Routing keys matched against binding patterns (`shop.#`).
    Topic,
    /// Routing keys matched exactly.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Headers matched.
    Headers,
}

fn default_routing_key() -> String {
    "{type}".into()
}
fn default_timeout() -> u64 {
    10
}
