//! `type = "nats"`: events published to NATS JetStream.
//!
//! Each event is published to its subject (a template: `shop.events.{type}.{subject}`) with the
//! `Nats-Msg-Id` header set to the event id, so the stream's duplicate window drops a repeat
//! (after a crash, or a retried write). Publishes are pipelined; **durable = the server's publish
//! acknowledgement** for every one (the stream stored it, on as many replicas as it has). The
//! CloudEvents NATS binding: binary mode by default (`ce-` headers, data as the body).
//!
//! The client reconnects by itself; a publish that is not acknowledged in `timeout_secs` is a
//! transient error, and the runtime publishes everything not yet acknowledged again.

mod config;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectErrorKind, HeaderMap};
use async_trait::async_trait;
pub use config::{NatsConfig, StreamConfig};

use crate::error::shown_url;
use crate::inflight::InFlight;
use crate::{Outgoing, Sink, SinkError, Template};

impl NatsConfig {
    /// The sink; connects at the first write or health check.
    pub fn build(&self, dir: &Path) -> Result<NatsSink, SinkError> {
        Ok(NatsSink {
            subject: Template::parse("subject", &self.subject)?,
            credentials: self.credentials.as_ref().map(|p| dir.join(p)),
            tls_ca: self.tls_ca.as_ref().map(|p| dir.join(p)),
            config: self.clone(),
            js: None,
            ready: false,
            acks: InFlight::new(),
        })
    }
}

/// A NATS JetStream publisher.
pub struct NatsSink {
    config: NatsConfig,
    subject: Template,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    js: Option<jetstream::Context>,
    /// Whether the stream was checked (or created).
    ready: bool,
    /// Publishes waiting for their acknowledgement, in order.
    acks: InFlight<PublishAckFuture>,
}

impl NatsSink {
    async fn connect(&mut self) -> Result<&jetstream::Context, SinkError> {
        if self.js.is_none() {
            let timeout = Duration::from_secs(self.config.timeout_secs);
            let mut options = async_nats::ConnectOptions::new()
                .name("ficus")
                .connection_timeout(timeout)
                .request_timeout(Some(timeout))
                .require_tls(self.config.tls || self.tls_ca.is_some());
            if let Some(ca) = &self.tls_ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some(creds) = &self.credentials {
                options = options.credentials_file(creds).await.map_err(|e| {
                    SinkError::definite(
                        format!("credentials {}: {e}", creds.display()),
                        "point credentials at a NATS .creds file",
                    )
                })?;
            }
            let client = options.connect(self.config.url.as_str()).await.map_err(|e| {
                let message = format!("cannot connect to {}: {e}", shown_url(&self.config.url));
                match e.kind() {
                    ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                        SinkError::definite(message, "check the user and password in url, or credentials")
                    }
                    ConnectErrorKind::ServerParse => {
                        SinkError::definite(message, "write url like nats://host:4222 (several: comma-separated)")
                    }
                    ConnectErrorKind::Tls => {
                        SinkError::definite(message, "check tls and tls_ca, and the server's certificate")
                    }
                    _ => SinkError::transient(message),
                }
            })?;
            let mut js = jetstream::new(client);
            js.set_timeout(timeout);
            self.js = Some(js);
        }
        Ok(self.js.as_ref().expect("connected above"))
    }

    /// Connects, and checks the stream once: created when `create`, else it must exist (or,
    /// without `[sink.stream]`, some stream must capture the subjects).
    async fn ready(&mut self) -> Result<(), SinkError> {
        if self.ready {
            return Ok(());
        }
        let wildcard = self.subject.render_with(|_| Cow::Borrowed("*"));
        let stream_config = self.config.stream.clone();
        let js = self.connect().await?;
        match stream_config {
            Some(s) if s.create => {
                let config = stream::Config {
                    name: s.name.clone(),
                    subjects: s.subjects.clone().unwrap_or_else(|| vec![wildcard.clone()]),
                    retention: s.retention,
                    num_replicas: s.replicas,
                    duplicate_window: Duration::from_secs(s.duplicate_window_secs),
                    max_age: Duration::from_secs(s.max_age_secs.unwrap_or(0)),
                    ..Default::default()
                };
                js.get_or_create_stream(config).await.map_err(|e| {
                    SinkError::definite(
                        format!("cannot create stream {}: {e}", s.name),
                        "check the stream's settings, and that no other stream takes its subjects",
                    )
                })?;
            }
            Some(s) => {
                js.get_stream(&s.name).await.map_err(|e| {
                    SinkError::definite(
                        format!("stream {}: {e}", s.name),
                        format!(
                            "create it (nats stream add {}), or set create = true under [sink.stream]",
                            s.name
                        ),
                    )
                })?;
            }
            None => {
                js.stream_by_subject(wildcard.clone()).await.map_err(|e| {
                    SinkError::definite(
                        format!("no stream captures {wildcard}: {e}"),
                        format!(
                            "create one (nats stream add --subjects '{wildcard}'), or let ficus: [sink.stream] name = \"...\", create = true"
                        ),
                    )
                })?;
            }
        }
        self.ready = true;
        Ok(())
    }

    /// An acknowledgement, checked.
    fn acknowledged(&mut self, ack: Result<PublishAck, PublishError>) -> Result<(), SinkError> {
        ack.map(drop).map_err(|e| self.publish_error(e.kind(), &e.to_string()))
    }

    fn publish_error(&mut self, kind: PublishErrorKind, e: &str) -> SinkError {
        match kind {
            PublishErrorKind::StreamNotFound => {
                SinkError::transient(format!("no stream captures the subject ({e}); waiting for one"))
            }
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                SinkError::transient(format!("publish not acknowledged: {e}"))
            }
            PublishErrorKind::MaxPayloadExceeded => SinkError::definite(
                format!("an event is larger than the server's max_payload: {e}"),
                "raise max_payload on the NATS server, or make the event's data smaller",
            ),
            _ => SinkError::definite(
                format!("the server refused a publish: {e}"),
                "see the stream's limits and permissions (nats stream info)",
            ),
        }
    }
}

/// A subject token from an attribute's value: no `.`, `*`, `>` or white space (each becomes `_`);
/// an empty value is `_`.
fn token(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("_");
    }
    if value.chars().any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace()) {
        Cow::Owned(
            value
                .chars()
                .map(|c| {
                    if matches!(c, '.' | '*' | '>') || c.is_whitespace() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        for o in events {
            if self.acks.is_full()
                && let Some(ack) = self.acks.oldest().await
            {
                self.acknowledged(ack)?;
            }
            let message = self.config.mode.message(o, "ce-");
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", o.event.id.as_str());
            headers.insert("Content-Type", message.content_type);
            for (name, value) in &message.headers {
                headers.insert(name.as_str(), value.as_ref());
            }
            let subject = self.subject.render(&o.event, token);
            let body = bytes::Bytes::copy_from_slice(&message.body);
            self.ready().await?;
            let js = self.connect().await?;
            let ack = js
                .publish_with_headers(subject, headers, body)
                .await
                .map_err(|e| SinkError::transient(format!("publish failed: {e}")))?;
            self.acks.push(ack);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.acks.take().settle(|a| self.acknowledged(a)).await
    }

    /// Checks the connection and the stream again.
    async fn health(&mut self) -> Result<(), SinkError> {
        self.ready = false;
        self.ready().await
    }

    async fn close(&mut self) {
        if let Some(js) = self.js.take() {
            let _ = js.client().drain().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens() {
        assert_eq!(token("public.orders"), "public_orders");
        assert_eq!(token("a b>*"), "a_b__");
        assert_eq!(token(""), "_");
        assert_eq!(token("42"), "42");
    }
}
