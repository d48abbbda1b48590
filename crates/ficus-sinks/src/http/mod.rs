//! `type = "http"`: events POSTed to a webhook.
//!
//! One event a request (CloudEvents HTTP binding, binary or structured mode) or several
//! (`application/cloudevents-batch+json`), sent in order, one request at a time, so the endpoint
//! sees events in the order of the stream. **Durable = a 2xx answer.** Requests are signed per the
//! Standard Webhooks spec when a secret is configured (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`).
//!
//! A timeout, a refused connection, 408, 429 and 5xx are transient (retried with backoff and
//! jitter, at least as long as a `Retry-After` asks); another 4xx is definite. With a dead-letter
//! file, a request that failed `dead_letter_after` times (or was refused) has its events written
//! there instead, loudly: it is data the consumer did not get.

mod config;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
pub use config::{HttpConfig, HttpMode};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use tracing::error;

use crate::cloudevents::ContentMode;
use crate::error::shown_url;
use crate::{Outgoing, Sink, SinkError};

/// The longest a `Retry-After` is honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl HttpConfig {
    /// The sink; `dir` resolves the dead-letter file. The signing secret is read from the
    /// environment when it is first needed (the health check, or the first request).
    pub fn build(&self, dir: &Path) -> Result<HttpSink, SinkError> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| SinkError::definite(format!("url {:?}: {e}", self.url), "write it like https://host/path"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let bad = |e: String| {
                SinkError::definite(
                    format!("headers: {name}: {e}"),
                    "header names are tokens, values visible ASCII",
                )
            };
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?,
                HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?,
            );
        }
        if self.batch_size == 0 {
            return Err(SinkError::definite(
                "batch_size = 0",
                "give a positive number of events a request",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(self.timeout_secs))
            .connect_timeout(Duration::from_secs(self.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ficus/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| SinkError::definite(format!("cannot make an HTTP client: {e}"), "report this as a bug"))?;
        Ok(HttpSink {
            url,
            shown: shown_url(&self.url),
            client,
            secret: None,
            dead_letter: self.dead_letter.as_ref().map(|p| dir.join(p)),
            config: self.clone(),
            pending: Vec::new(),
            attempts: HashMap::new(),
            dead_lettered: 0,
        })
    }
}

/// The signing key: the secret's base64 (after `whsec_`).
fn secret(var: &str) -> Result<Vec<u8>, SinkError> {
    let value = std::env::var(var).map_err(|_| {
        SinkError::definite(
            format!("secret_env: the environment variable {var} is not set"),
            format!("set {var} to the webhook's signing secret (whsec_...), or leave secret_env out"),
        )
    })?;
    STANDARD
        .decode(value.trim().strip_prefix("whsec_").unwrap_or(value.trim()))
        .map_err(|e| {
            SinkError::definite(
                format!("secret_env: {var} is not a base64 secret: {e}"),
                "a Standard Webhooks secret is whsec_ followed by base64",
            )
        })
}

/// A request ready to send, with the events it carries.
struct Request {
    /// `webhook-id`: the event's id (a batch: its first event's, and how many).
    id: String,
    content_type: Cow<'static, str>,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// The events as JSON lines, for the dead-letter file.
    lines: Vec<Bytes>,
}

/// A webhook client.
pub struct HttpSink {
    config: HttpConfig,
    url: reqwest::Url,
    shown: String,
    client: reqwest::Client,
    /// The signing key, once read.
    secret: Option<Vec<u8>>,
    dead_letter: Option<PathBuf>,
    /// Requests made and not yet answered 2xx.
    pending: Vec<Request>,
    /// Failed attempts per request id.
    attempts: HashMap<String, u32>,
    dead_lettered: u64,
}

impl HttpSink {
    /// Reads the signing key, when requests are signed.
    fn load_secret(&mut self) -> Result<(), SinkError> {
        if self.secret.is_none()
            && let Some(var) = &self.config.secret_env
        {
            self.secret = Some(secret(var)?);
        }
        Ok(())
    }

    /// Sends one request.
    async fn send(&self, r: &Request) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("content-type", &*r.content_type)
            .body(r.body.clone());
        for (name, value) in &r.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(key) = &self.secret {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            request = request
                .header("webhook-id", r.id.as_str())
                .header("webhook-timestamp", timestamp.as_str())
                .header("webhook-signature", sign(key, &r.id, &timestamp, &r.body));
        }
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                format!("no answer in {}s", self.config.timeout_secs)
            } else if e.is_connect() {
                format!("cannot connect: {}", source(&e))
            } else {
                source(&e)
            };
            SinkError::transient(format!("POST {}: {what}", self.shown))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.text().await.unwrap_or_default();
        let excerpt: String = body.chars().take(200).collect();
        let message = format!("POST {} answered {status}: {excerpt}", self.shown);
        if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
        {
            let e = SinkError::transient(message);
            return Err(match retry_after {
                Some(after) => e.with_retry_after(after.min(MAX_RETRY_AFTER)),
                None => e,
            });
        }
        Err(SinkError::definite(
            message,
            if status.is_redirection() {
                "the endpoint redirects: point url at where it redirects to"
            } else {
                "the endpoint refused the event: fix the endpoint (or the mapping), then start ficus again; or set dead_letter to set such events aside"
            },
        ))
    }

    /// Appends a request's events to the dead-letter file, durably.
    fn dead_letter(&mut self, r: &Request, why: &SinkError) -> Result<(), SinkError> {
        let path = self.dead_letter.as_ref().expect("called with a dead-letter file");
        let written = (|| {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            for line in &r.lines {
                file.write_all(line)?;
                file.write_all(b"\n")?;
            }
            file.sync_data()
        })();
        written.map_err(|e| {
            SinkError::definite(
                format!("cannot write the dead-letter file {}: {e}", path.display()),
                "make the dead-letter file writable; nothing was acknowledged",
            )
        })?;
        self.dead_lettered += r.lines.len() as u64;
        error!(
            url = %self.shown,
            events = r.lines.len(),
            first = %r.id,
            file = %path.display(),
            error = %why.message(),
            "DEAD LETTER: the endpoint did not take these events; they are in the dead-letter file, not at the consumer"
        );
        Ok(())
    }
}

/// A Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(wait)
}

/// The innermost cause of a request error (reqwest's own message is only "error sending request").
fn source(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        match self.config.mode {
            HttpMode::Binary | HttpMode::Structured => {
                let mode = if self.config.mode == HttpMode::Binary {
                    ContentMode::Binary
                } else {
                    ContentMode::Structured
                };
                for o in events {
                    let m = mode.message(o, "ce-");
                    self.pending.push(Request {
                        id: o.event.id.clone(),
                        content_type: Cow::Owned(m.content_type.to_owned()),
                        headers: m.headers.into_iter().map(|(n, v)| (n, v.into_owned())).collect(),
                        body: Bytes::copy_from_slice(&m.body),
                        lines: vec![o.line.clone()],
                    });
                }
            }
            HttpMode::Batch => {
                for chunk in events.chunks(self.config.batch_size) {
                    let mut body = Vec::with_capacity(chunk.iter().map(|o| o.line.len() + 1).sum::<usize>() + 2);
                    body.push(b'[');
                    for (i, o) in chunk.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(&o.line);
                    }
                    body.push(b']');
                    self.pending.push(Request {
                        id: format!("{}+{}", chunk[0].event.id, chunk.len()),
                        content_type: Cow::Borrowed("application/cloudevents-batch+json"),
                        headers: vec![],
                        body: body.into(),
                        lines: chunk.iter().map(|o| o.line.clone()).collect(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.load_secret()?;
        let pending = std::mem::take(&mut self.pending);
        for r in &pending {
            let Err(e) = self.send(r).await else {
                self.attempts.remove(&r.id);
                continue;
            };
            let attempts = self.attempts.entry(r.id.clone()).or_default();
            *attempts += 1;
            let give_up = !e.is_transient() || *attempts >= self.config.dead_letter_after;
            if self.dead_letter.is_some() && give_up {
                self.attempts.remove(&r.id);
                self.dead_letter(r, &e)?;
                continue;
            }
            // What is not answered is written again by the runtime, and sent again.
            return Err(e);
        }
        Ok(())
    }

    /// The secret is there, and the endpoint answers (any status: a HEAD may well be refused);
    /// nothing is sent.
    async fn health(&mut self) -> Result<(), SinkError> {
        self.load_secret()?;
        let answer = self.client.head(self.url.clone()).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                format!("no answer in {}s", self.config.timeout_secs)
            } else {
                source(&e)
            };
            SinkError::transient(format!("cannot reach {}: {what}", self.shown))
        })?;
        // Any answer shows the endpoint is there (many take POST only), but one that refuses
        // who asks would refuse every event.
        let status = answer.status();
        if matches!(status.as_u16(), 401 | 403) {
            return Err(SinkError::definite(
                format!("{} refuses ficus: {status}", self.shown),
                "check the credentials the endpoint wants in [sink.headers] (an Authorization header)",
            ));
        }
        Ok(())
    }

    fn summary(&self) -> Option<String> {
        (self.dead_lettered > 0).then(|| {
            format!(
                "{} events went to the dead-letter file {}: the endpoint did not take them, the consumer does not have them",
                self.dead_lettered,
                self.dead_letter.as_ref().map_or(String::new(), |p| p.display().to_string())
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks spec's reference implementation.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
