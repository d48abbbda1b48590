//! `[[sink]] type = "kafka"`: settings.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::cloudevents::ContentMode;

/// `[[sink]] type = "kafka"` (docs/sinks.md#kafka).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated (`kafka-1:9092,kafka-2:9092`).
    pub brokers: String,
    /// The topic template, default `ficus.{type}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The message key template, default `{subject}`: an aggregate stays in one partition, in
    /// order.
    #[serde(default = "default_key")]
    pub key: String,
    /// `binary` (default: `ce_` headers, data as the value) or `structured`.
    #[serde(default)]
    pub mode: ContentMode,
    /// `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Create topics that do not exist (with `partitions` and `replication_factor`).
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of a topic ficus creates (default 1).
    #[serde(default = "one")]
    pub partitions: i32,
    /// Replicas of a topic ficus creates (default 1).
    #[serde(default = "one")]
    pub replication_factor: i32,
    /// How long a message may take to be acknowledged, in seconds (default 30); then it is a
    /// transient error and it is sent again.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Any librdkafka setting (`security.protocol`, `sasl.mechanism`, `sasl.username`, ...),
    /// over ficus's own.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "ficus.{type}".into()
}
fn default_key() -> String {
    "{subject}".into()
}
fn one() -> i32 {
    1
}
fn default_timeout() -> u64 {
    30
}
