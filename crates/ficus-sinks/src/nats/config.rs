//! `[[sink]] type = "nats"`: settings.

use std::path::PathBuf;

use async_nats::jetstream::stream::RetentionPolicy;
use serde::Deserialize;

use crate::cloudevents::ContentMode;

/// `[[sink]] type = "nats"` (docs/sinks.md#nats-jetstream).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, comma-separated (`nats://user:password@host:4222`).
    pub url: String,
    /// The subject template, default `ficus.{type}`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// CloudEvents content mode: `binary` (default: `ce-` headers, data as the body) or
    /// `structured` (the whole event as the body).
    #[serde(default)]
    pub mode: ContentMode,
    /// A credentials file (`.creds`), relative to the config's directory.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// A CA certificate (PEM) to trust; setting it requires TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
    /// How long to wait for a connection or an acknowledgement, in seconds (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The stream that captures the subjects: checked at start, or created (`create = true`).
    #[serde(default)]
    pub stream: Option<StreamConfig>,
}

/// `[sink.stream]`
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// The stream's name.
    pub name: String,
    /// Create it when it does not exist.
    #[serde(default)]
    pub create: bool,
    /// Its subjects, when created; default the subject template with each attribute a `*`.
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
    /// `limits` (default), `interest` or `workqueue`, when created.
    #[serde(default)]
    #[schemars(schema_with = "retention_schema")]
    pub retention: RetentionPolicy,
    /// Replicas, when created (default 1).
    #[serde(default = "one")]
    pub replicas: usize,
    /// The duplicate window in seconds, when created (default 120): a repeat of an event within
    /// it is dropped by the server.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_secs: u64,
    /// How long messages are kept, in seconds, when created (default: for ever).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

fn default_subject() -> String {
    "ficus.{type}".into()
}
fn default_timeout() -> u64 {
    10
}
fn one() -> usize {
    1
}
fn default_duplicate_window() -> u64 {
    120
}

/// The schema of `retention` (async-nats' type has none).
fn retention_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "enum": ["limits", "interest", "workqueue"] })
}
