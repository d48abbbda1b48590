//! Domain events, written as CloudEvents 1.0 (structured JSON mode).

use std::sync::Arc;

use serde::Serialize;

/// A domain event: a business fact with a name, a version, a key and data.
///
/// The attributes shared by many events (source, type, transaction) are shared
/// strings: an event costs its id, subject and data.
///
/// Serializes to one CloudEvent in structured JSON mode; the extensions
/// `eventversion`, `lsn` and `txid` say which schema version it follows and
/// which commit of the source it comes from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Always `"1.0"`.
    pub specversion: &'static str,
    /// The event id: deterministic, so a repeated event has the same id.
    pub id: String,
    /// The database and table the event comes from.
    pub source: Arc<str>,
    /// The event's name, e.g. `OrderPaid`.
    #[serde(rename = "type")]
    pub ty: Arc<str>,
    /// The aggregate the event belongs to (the mapping's `aggregate`, default its table); not a
    /// CloudEvents attribute: with the subject, it names the event's stream in the store.
    #[serde(skip)]
    pub aggregate: Arc<str>,
    /// The key: the aggregate id, as a string.
    pub subject: String,
    /// The commit time, RFC 3339 in UTC.
    pub time: Arc<str>,
    /// Always `"application/json"`.
    pub datacontenttype: &'static str,
    /// The event's schema version.
    pub eventversion: u32,
    /// The commit LSN, `X/Y`.
    pub lsn: Arc<str>,
    /// The source transaction id, as a string (CloudEvents integers are 32-bit signed).
    pub txid: Arc<str>,
    /// For events of rows read by a backfill, the backfill's id (absent for live changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Arc<str>>,
    /// The payload.
    pub data: serde_json::Value,
}
