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
    /// Fields of `data` the source did not send and that are left out (an unchanged TOASTed value,
    /// with `unchanged_toast = "omit"`), comma-separated (extension `ficusunavailable`).
    #[serde(rename = "ficusunavailable", skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// The payload.
    pub data: Data,
}

/// An event's data: a JSON object whose fields keep the order they were made in. A field may be
/// JSON text kept exactly as the source had it (a `json` column: its duplicate keys, its
/// formatting, its numbers' digits).
#[derive(Clone, Debug, Default)]
pub struct Data(pub Vec<(String, Field)>);

/// One field of an event's data.
#[derive(Clone, Debug)]
pub enum Field {
    /// A JSON value.
    Json(serde_json::Value),
    /// JSON text, written as it is.
    Raw(Box<serde_json::value::RawValue>),
}

impl Data {
    /// The data as a JSON value (a `Raw` field parsed: duplicate keys collapse), for tests and tools.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("data serializes")
    }
}

impl From<serde_json::Value> for Data {
    /// An object's fields; any other value is the field `value`.
    fn from(value: serde_json::Value) -> Data {
        match value {
            serde_json::Value::Object(map) => Data(map.into_iter().map(|(k, v)| (k, Field::Json(v))).collect()),
            other => Data(vec![("value".to_owned(), Field::Json(other))]),
        }
    }
}

impl PartialEq for Data {
    /// Equal when they write the same JSON.
    fn eq(&self, other: &Data) -> bool {
        serde_json::to_string(self).ok() == serde_json::to_string(other).ok()
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, field) in &self.0 {
            match field {
                Field::Json(v) => map.serialize_entry(name, v)?,
                Field::Raw(r) => map.serialize_entry(name, r)?,
            }
        }
        map.end()
    }
}
