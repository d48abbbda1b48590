//! `[[sink]] type = "redis"`: settings.

use serde::Deserialize;

use crate::cloudevents::ContentMode;

/// `[[sink]] type = "redis"` (docs/sinks.md#redis-redis-streams).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server: `redis://[user:password@]host:6379/db`, `rediss://` for TLS.
    pub url: String,
    /// The stream key template, default `ficus:{type}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// `MAXLEN ~ n` on every `XADD` (the stream is trimmed to about n entries); default none.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// `binary` (default: each attribute a field, `data` the data) or `structured` (fields `id`
    /// and `event`, the whole event).
    #[serde(default)]
    pub mode: ContentMode,
    /// How long to wait for a connection or a reply, in seconds (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_key() -> String {
    "ficus:{type}".into()
}
fn default_timeout() -> u64 {
    10
}
