//! `type = "redis"`: events appended to Redis Streams with `XADD`.
//!
//! Each event is one stream entry under its key (a template: `shop:{type}`), its attributes as
//! fields and its data in `data` (binary mode), or `id` and the whole event in `event`
//! (structured). Entries are pipelined at each flush; **durable = Redis's reply** to every
//! `XADD`: the entry is in the server's memory, and on disk as far as its persistence says (with
//! `appendonly yes` and `appendfsync always`, before the reply; with the default `everysec`, up to
//! a second later; without persistence, not at all). Redis Streams cannot drop a repeat: after a
//! crash an entry may appear twice, with the same `id` field.

mod config;

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
pub use config::RedisConfig;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError};

use crate::cloudevents::ContentMode;
use crate::error::shown_url;
use crate::{Outgoing, Sink, SinkError, Template};

/// `XADD`s sent in one pipeline at most.
const PIPELINE: usize = 1_000;

impl RedisConfig {
    /// The sink; connects at the first flush or health check.
    pub fn build(&self) -> Result<RedisSink, SinkError> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| {
            SinkError::definite(
                format!("url {}: {e}", shown_url(&self.url)),
                "write it like redis://user:password@host:6379/0 (rediss:// for TLS)",
            )
        })?;
        Ok(RedisSink {
            key: Template::parse("key", &self.key)?,
            config: self.clone(),
            client,
            conn: None,
            pending: Vec::new(),
        })
    }
}

/// An attribute's name as a field: every event's own attributes without an allocation, only an
/// outbox's extensions owned.
fn field_name(name: &str) -> Cow<'static, str> {
    match ficus_model::event::RESERVED.iter().find(|r| **r == name) {
        Some(own) => Cow::Borrowed(own),
        None => Cow::Owned(name.to_owned()),
    }
}

/// A stream entry to add: its key and its fields.
type Entry = (String, Vec<(Cow<'static, str>, Vec<u8>)>);

/// A Redis Streams writer.
pub struct RedisSink {
    config: RedisConfig,
    key: Template,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// Entries written and not yet sent: key and fields.
    pending: Vec<Entry>,
}

impl RedisSink {
    async fn connect(&mut self) -> Result<MultiplexedConnection, SinkError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.error("cannot connect", e))?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// A Redis error, classified; a connection that failed is dropped (the next try connects).
    fn error(&mut self, what: &str, e: RedisError) -> SinkError {
        let message = format!("{what} ({}): {e}", shown_url(&self.config.url));
        let code = e.code().unwrap_or("");
        let definite = |hint: &str| SinkError::definite(message.clone(), hint);
        match e.kind() {
            ErrorKind::AuthenticationFailed => definite("check the user and password in url"),
            ErrorKind::InvalidClientConfig => definite("check url"),
            _ if matches!(code, "NOAUTH" | "WRONGPASS") => definite("check the user and password in url"),
            _ if code == "NOPERM" => definite("give the user +xadd on the stream keys (ACL SETUSER ...)"),
            _ if code == "WRONGTYPE" => {
                definite("a key the template names holds something else than a stream: change key, or remove it")
            }
            _ if code == "OOM" => SinkError::transient(format!(
                "{message} (Redis is at maxmemory: trim the streams (maxlen) or give it memory)"
            )),
            ErrorKind::Io | ErrorKind::Parse => {
                self.conn = None;
                SinkError::transient(message)
            }
            _ if matches!(
                code,
                "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN"
            ) =>
            {
                self.conn = None;
                SinkError::transient(message)
            }
            _ if e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() => {
                self.conn = None;
                SinkError::transient(message)
            }
            _ => definite("see the Redis error; the events not acknowledged are written again at the next start"),
        }
    }
}

#[async_trait]
impl Sink for RedisSink {
    async fn write(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        for o in events {
            let key = self.key.render(&o.event, |v| Cow::Borrowed(v));
            let fields = match self.config.mode {
                ContentMode::Binary => {
                    let mut fields: Vec<(Cow<'static, str>, Vec<u8>)> = o
                        .event
                        .attributes()
                        .into_iter()
                        .map(|(name, value)| (field_name(name), value.as_bytes().to_vec()))
                        .collect();
                    fields.push((Cow::Borrowed("data"), o.data()));
                    fields
                }
                ContentMode::Structured => vec![
                    (Cow::Borrowed("id"), o.event.id.as_bytes().to_vec()),
                    (Cow::Borrowed("event"), o.line.to_vec()),
                ],
            };
            self.pending.push((key, fields));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(PIPELINE);
            let mut pipe = redis::pipe();
            for (key, fields) in &self.pending[..n] {
                let cmd = pipe.cmd("XADD").arg(key);
                if let Some(maxlen) = self.config.maxlen {
                    cmd.arg("MAXLEN").arg("~").arg(maxlen);
                }
                cmd.arg("*");
                for (name, value) in fields {
                    cmd.arg(name.as_ref()).arg(value.as_slice());
                }
            }
            let mut conn = self.connect().await?;
            let sent: Result<Vec<String>, RedisError> = pipe.query_async(&mut conn).await;
            match sent {
                Ok(_) => {
                    self.pending.drain(..n);
                }
                Err(e) => {
                    // Sent again with the rest (the runtime writes them again too).
                    self.pending.clear();
                    return Err(self.error("XADD failed", e));
                }
            }
        }
        Ok(())
    }

    /// Connects and pings; a fixed key must be a stream or absent.
    async fn health(&mut self) -> Result<(), SinkError> {
        let mut conn = self.connect().await?;
        let pong: Result<String, RedisError> = redis::cmd("PING").query_async(&mut conn).await;
        pong.map_err(|e| self.error("PING failed", e))?;
        if self.key.is_fixed() {
            let key = self.key.render_with(|_| Cow::Borrowed(""));
            let ty: Result<String, RedisError> = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await;
            let ty = ty.map_err(|e| self.error("TYPE failed", e))?;
            if ty != "stream" && ty != "none" {
                return Err(SinkError::definite(
                    format!("key {key} holds a {ty}, not a stream"),
                    "change key, or remove the key",
                ));
            }
        }
        Ok(())
    }
}
