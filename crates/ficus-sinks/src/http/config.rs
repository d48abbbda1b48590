//! `[[sink]] type = "http"`: settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[[sink]] type = "http"` (docs/sinks.md#http-webhooks).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The endpoint events are POSTed to.
    pub url: String,
    /// `binary` (default: one event a request, `ce-` headers, data as the body), `structured`
    /// (one event a request, the whole event) or `batch` (`application/cloudevents-batch+json`).
    #[serde(default)]
    pub mode: HttpMode,
    /// Events a request at most, in batch mode (default 100).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a request may take, in seconds (default 10).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The environment variable that holds the signing secret (`whsec_...`, base64): requests
    /// are signed per the Standard Webhooks spec. Unset: not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Headers added to every request (`Authorization = "Bearer ..."`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A file that takes a request's events once it failed `dead_letter_after` times, or was
    /// refused (4xx); off by default: a dead letter is data the consumer did not get.
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
    /// Attempts before a failing request's events go to the dead-letter file (default 5).
    #[serde(default = "default_dead_letter_after")]
    pub dead_letter_after: u32,
}

/// How events are put in requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// One event a request: `ce-` headers, the data as the body.
    #[default]
    Binary,
    /// One event a request: the whole event (`application/cloudevents+json`).
    Structured,
    /// Several events a request: a JSON array of whole events
    /// (`application/cloudevents-batch+json`).
    Batch,
}

fn default_batch_size() -> usize {
    100
}
fn default_timeout() -> u64 {
    10
}
fn default_dead_letter_after() -> u32 {
    5
}
