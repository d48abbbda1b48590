//! Events the application states itself: logical decoding messages
//! (`pg_logical_emit_message(true, prefix, payload)`), mapped by `[[message]]`.

use std::sync::Arc;

use cel::Value as Cel;
use ficus_model::{Event, Field, Lsn, PgType, Time, TxMeta};

use crate::apply::{EventContext, MapError, MessageError};
use crate::cel_value::{cel_to_json, cel_to_subject, map, to_cel};
use crate::compile::{Compiled, MessageMapping};
use crate::tx::Transaction;

/// A logical decoding message, as the stream gives it.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Its prefix.
    pub prefix: &'a str,
    /// Its content.
    pub content: &'a [u8],
    /// Its own LSN.
    pub lsn: Lsn,
    /// Whether it was emitted in a transaction (`pg_logical_emit_message(true, ...)`), and so
    /// comes with that transaction's commit, if it commits.
    pub transactional: bool,
    /// Its transaction (for a non-transactional message: none; its LSN stands for the commit).
    pub tx: &'a TxMeta,
}

impl Compiled {
    /// Whether some `[[message]]` maps messages of the prefix.
    pub fn maps_prefix(&self, prefix: &str) -> bool {
        self.messages.iter().any(|m| m.prefix == prefix)
    }

    /// The events of a message: none when no `[[message]]` maps its prefix. A message of a mapped
    /// prefix that is not transactional, whose payload is not JSON, or that no mapping of its
    /// prefix takes (every `when` false) is an error: it is never dropped quietly. Events wait in
    /// `tx` behind what waits there already, so that the transaction's events keep their order.
    pub fn apply_message(
        &self,
        msg: &Message<'_>,
        ctx: &EventContext,
        tx: &mut Transaction,
    ) -> Result<Vec<Event>, MapError> {
        let mappings: Vec<&Arc<MessageMapping>> = self.messages.iter().filter(|m| m.prefix == msg.prefix).collect();
        let Some(first) = mappings.first() else {
            return Ok(Vec::new());
        };
        let fail = |m: &MessageMapping, what: &str, message: String| {
            MapError::Message(Box::new(MessageError {
                origin: m.origin.clone(),
                prefix: msg.prefix.to_owned(),
                lsn: msg.lsn.to_string(),
                what: what.to_owned(),
                message,
            }))
        };
        if !msg.transactional {
            if mappings.iter().all(|m| m.skip_non_transactional) {
                return Ok(Vec::new());
            }
            return Err(fail(
                first,
                "transactional",
                "the message was emitted outside a transaction (pg_logical_emit_message(false, ...)): Postgres sends such a message when it is written, whether its transaction commits or not, and outside the commit order ficus acknowledges by, so it can be neither held to its transaction's fate nor delivered exactly once".into(),
            ));
        }
        let text = std::str::from_utf8(msg.content)
            .map_err(|_| fail(first, "payload", "its payload is not UTF-8 text".into()))?;
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            return Err(fail(first, "payload", "its payload is not JSON".into()));
        }
        let mut cel_ctx = cel::Context::with_env(self.env.clone());
        cel_ctx.add_variable_from_value("payload", to_cel(&PgType::Json, text));
        cel_ctx.add_variable_from_value("prefix", msg.prefix.to_owned());
        let commit_time = chrono::DateTime::from_timestamp_micros(msg.tx.commit_time_micros).unwrap_or_default();
        cel_ctx.add_variable_from_value(
            "tx",
            map([
                ("xid".to_owned(), Cel::Int(i64::from(msg.tx.xid))),
                ("lsn".to_owned(), Cel::from(msg.tx.commit_lsn.to_string())),
                ("commit_time".to_owned(), Cel::Timestamp(commit_time.fixed_offset())),
            ]),
        );
        let source: Arc<str> = ctx.message_source(msg.prefix).into();
        let mut events: Vec<Event> = Vec::new();
        for m in &mappings {
            if let Some(when) = &m.when {
                match when.execute(&cel_ctx) {
                    Ok(Cel::Bool(true)) => {}
                    Ok(Cel::Bool(false) | Cel::Null) => continue,
                    Ok(other) => return Err(fail(m, "when", format!("when gave {other:?}, not a bool"))),
                    Err(e) => return Err(fail(m, "when", format!("when failed: {e}"))),
                }
            }
            let key = m
                .key
                .execute(&cel_ctx)
                .map_err(|e| fail(m, "key", format!("key failed: {e}")))?;
            let subject =
                cel_to_subject(&key).ok_or_else(|| fail(m, "key", format!("key gave {key:?}, not a scalar")))?;
            let data = match &m.fields {
                None => serde_json::from_str::<ficus_model::Data>(text).map_err(|_| {
                    fail(
                        m,
                        "data",
                        "data = \"payload\" needs a JSON object; map its fields instead (data = { value = \"payload\" })"
                            .into(),
                    )
                })?,
                Some(fields) => {
                    let mut out = Vec::with_capacity(fields.len());
                    for (name, p) in fields {
                        let what = format!("data.{name}");
                        let v = p
                            .execute(&cel_ctx)
                            .map_err(|e| fail(m, &what, format!("{what} failed: {e}")))?;
                        let json = cel_to_json(&v)
                            .ok_or_else(|| fail(m, &what, format!("{what} gave a value with no JSON form")))?;
                        out.push((name.clone(), Field::Json(json)));
                    }
                    ficus_model::Data(out)
                }
            };
            let nth = events
                .iter()
                .filter(|e| e.ty == m.name && e.eventversion == m.version)
                .count();
            let id = format!("{}/{}/0/{}/{}/{nth}", msg.tx.commit_lsn, msg.lsn, m.name, m.version);
            events.push(Event {
                specversion: "1.0",
                id: ctx.event_id(&id),
                source: source.clone(),
                ty: m.name.clone(),
                aggregate: m.aggregate.clone(),
                subject,
                time: Time::from_micros(msg.tx.commit_time_micros),
                datacontenttype: ficus_model::event::JSON.into(),
                extensions: Vec::new(),
                body: None,
                eventversion: m.version,
                lsn: msg.tx.commit_lsn,
                txid: msg.tx.xid,
                backfill: None,
                unavailable: None,
                data,
            });
        }
        if events.is_empty() {
            return Err(fail(
                first,
                "when",
                format!(
                    "no [[message]] of prefix {:?} took it (each when was false): the application stated an event no mapping makes",
                    msg.prefix
                ),
            ));
        }
        tx.after(events, first, msg)
    }
}
