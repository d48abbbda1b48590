//! Domain events, and the one place they are written as CloudEvents 1.0: the structured JSON
//! line ([`Event::write_json`]), and for the binary mode of the protocol bindings, the data alone
//! ([`Event::write_data`]) and the other attributes ([`Event::attributes`]).

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::Lsn;

/// The content type of every event's data but an outbox's text or bytea payload.
pub const JSON: &str = "application/json";

/// Whether data of a media type is JSON, written as JSON in `data` (CloudEvents' JSON format):
/// `application/json`, `text/json` or any `.../...+json`, parameters aside.
pub fn is_json(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    base == JSON || base == "text/json" || (base.contains('/') && base.ends_with("+json"))
}

/// A domain event: a business fact with a name, a version, a key and data.
///
/// The attributes shared by many events (source, type, transaction) are shared
/// strings: an event costs its id, subject and data. Positions and times stay typed until the
/// event is written.
///
/// Serializes to one CloudEvent in structured JSON mode; the extensions
/// `eventversion`, `lsn` and `txid` say which schema version it follows and
/// which commit of the source it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Always `"1.0"`.
    pub specversion: &'static str,
    /// The event id: deterministic, so a repeated event has the same id.
    pub id: String,
    /// The database and table the event comes from.
    pub source: Arc<str>,
    /// The event's name, e.g. `OrderPaid`.
    pub ty: Arc<str>,
    /// The aggregate the event belongs to (the mapping's `aggregate`, default its table); not a
    /// CloudEvents attribute: with the subject, it names the event's stream in the store.
    pub aggregate: Arc<str>,
    /// The key: the aggregate id, as a string.
    pub subject: String,
    /// The commit time (written RFC 3339 in UTC).
    pub time: Time,
    /// `"application/json"` ([`JSON`]), but for an outbox's text or bytea payload (its
    /// `content_type`).
    pub datacontenttype: Cow<'static, str>,
    /// The event's schema version.
    pub eventversion: u32,
    /// The commit LSN (written `X/Y`).
    pub lsn: Lsn,
    /// The source transaction id (written as a string: CloudEvents integers are 32-bit signed).
    pub txid: u32,
    /// For events of rows read by a backfill, the backfill's id (absent for live changes).
    pub backfill: Option<Arc<str>>,
    /// Fields of `data` the source did not send and that are left out (an unchanged TOASTed value,
    /// with `unchanged_toast = "omit"`), comma-separated (extension `ficusunavailable`).
    pub unavailable: Option<String>,
    /// Extensions an outbox row carries in columns of its own (`extensions` of an `[[outbox]]`),
    /// written as strings after ficus's own; usually none.
    pub extensions: Vec<(Arc<str>, String)>,
    /// Data that is not JSON (an outbox's text or bytea payload), written in place of `data`;
    /// usually none.
    pub body: Option<Body>,
    /// The payload (empty when `body` is the payload).
    pub data: Data,
}

/// Data that is not a JSON object: an outbox's text or bytea payload, of its own content type.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Text: `data` is a JSON string; the binary mode's body is the text itself.
    Text(String),
    /// Bytes: `data_base64` holds them in base64; the binary mode's body is the bytes.
    Binary(Vec<u8>),
}

/// The names an extension of an outbox row cannot take: the attributes every event has, and
/// ficus's own extensions.
pub const RESERVED: [&str; 15] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "eventversion",
    "lsn",
    "txid",
    "backfill",
    "ficusunavailable",
    "data",
    "data_base64",
];

/// A number written as a JSON string.
struct AsString(u32);

impl Serialize for AsString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl Serialize for Event {
    /// One CloudEvent in structured JSON mode: the attributes in a fixed order, the extensions,
    /// then `data` (or `data_base64`).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", self.specversion)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("source", &*self.source)?;
        map.serialize_entry("type", &*self.ty)?;
        map.serialize_entry("subject", &self.subject)?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("datacontenttype", &*self.datacontenttype)?;
        map.serialize_entry("eventversion", &self.eventversion)?;
        map.serialize_entry("lsn", &self.lsn)?;
        map.serialize_entry("txid", &AsString(self.txid))?;
        if let Some(backfill) = &self.backfill {
            map.serialize_entry("backfill", &**backfill)?;
        }
        if let Some(unavailable) = &self.unavailable {
            map.serialize_entry("ficusunavailable", unavailable)?;
        }
        for (name, value) in &self.extensions {
            map.serialize_entry(&**name, value)?;
        }
        match &self.body {
            None => map.serialize_entry("data", &self.data)?,
            Some(Body::Text(text)) => map.serialize_entry("data", text)?,
            Some(Body::Binary(bytes)) => {
                map.serialize_entry("data_base64", &base64::engine::general_purpose::STANDARD.encode(bytes))?
            }
        }
        map.end()
    }
}

impl Event {
    /// Writes the event as one CloudEvent in structured JSON mode, without a newline: the line
    /// every line sink, the store and the structured mode of every binding carry.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("an event always serializes");
    }

    /// Writes the event's data alone: the body of the binary mode of a protocol binding — the
    /// JSON of `data`, or the text or bytes of a `body`.
    pub fn write_data(&self, out: &mut Vec<u8>) {
        match &self.body {
            None => serde_json::to_writer(out, &self.data).expect("data always serializes"),
            Some(Body::Text(text)) => out.extend_from_slice(text.as_bytes()),
            Some(Body::Binary(bytes)) => out.extend_from_slice(bytes),
        }
    }

    /// Every attribute but `data`, in the order of the structured line, as text: what the binary
    /// mode of a protocol binding carries in headers (`ce_id`, `ce-type`, ...). `datacontenttype`
    /// is among them; bindings that map it to their own content type take it from here.
    pub fn attributes(&self) -> Vec<(&str, Cow<'_, str>)> {
        let mut attributes = vec![
            ("specversion", Cow::Borrowed(self.specversion)),
            ("id", Cow::Borrowed(self.id.as_str())),
            ("source", Cow::Borrowed(&*self.source)),
            ("type", Cow::Borrowed(&*self.ty)),
            ("subject", Cow::Borrowed(self.subject.as_str())),
            ("time", Cow::Borrowed(self.time.as_str())),
            ("datacontenttype", Cow::Borrowed(&*self.datacontenttype)),
            ("eventversion", Cow::Owned(self.eventversion.to_string())),
            ("lsn", Cow::Owned(self.lsn.to_string())),
            ("txid", Cow::Owned(self.txid.to_string())),
        ];
        if let Some(backfill) = &self.backfill {
            attributes.push(("backfill", Cow::Borrowed(&**backfill)));
        }
        if let Some(unavailable) = &self.unavailable {
            attributes.push(("ficusunavailable", Cow::Borrowed(unavailable.as_str())));
        }
        for (name, value) in &self.extensions {
            attributes.push((&**name, Cow::Borrowed(value.as_str())));
        }
        attributes
    }
}

/// The data of an event's structured line (what [`Event::write_json`] wrote), as
/// [`Event::write_data`] writes it: the body of a binding's binary mode. `None` when the line
/// holds no data of that content type.
pub fn data_of_line(line: &[u8], datacontenttype: &str) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        #[serde(borrow)]
        data_base64: Option<Cow<'a, str>>,
    }
    let line: Line<'_> = serde_json::from_slice(line).ok()?;
    match (line.data, line.data_base64) {
        (_, Some(base64)) => base64::engine::general_purpose::STANDARD.decode(&*base64).ok(),
        (Some(data), None) if is_json(datacontenttype) => Some(data.get().as_bytes().to_vec()),
        (Some(data), None) => serde_json::from_str::<String>(data.get()).ok().map(String::into_bytes),
        (None, None) => None,
    }
}

/// A string read from a stored line: borrowed from it unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An event as a stored line has it (the store keeps the aggregate apart), its data not read.
#[derive(Default)]
struct Stored<'a> {
    specversion: Option<Text<'a>>,
    id: Option<String>,
    source: Option<Text<'a>>,
    ty: Option<Text<'a>>,
    subject: Option<String>,
    datacontenttype: Option<Text<'a>>,
    eventversion: Option<u32>,
    txid: Option<Text<'a>>,
    backfill: Option<Text<'a>>,
    unavailable: Option<String>,
    extensions: Vec<(Arc<str>, String)>,
    data: Option<&'a RawValue>,
    data_base64: Option<Text<'a>>,
}

impl<'de> serde::Deserialize<'de> for Stored<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Stored<'de>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Stored<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CloudEvent as a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Stored<'de>, A::Error> {
                let mut e = Stored::default();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "specversion" => e.specversion = Some(map.next_value()?),
                        "id" => e.id = Some(map.next_value()?),
                        "source" => e.source = Some(map.next_value()?),
                        "type" => e.ty = Some(map.next_value()?),
                        "subject" => e.subject = Some(map.next_value()?),
                        "datacontenttype" => e.datacontenttype = Some(map.next_value()?),
                        "eventversion" => e.eventversion = Some(map.next_value()?),
                        "txid" => e.txid = Some(map.next_value()?),
                        "backfill" => e.backfill = Some(map.next_value()?),
                        "ficusunavailable" => e.unavailable = Some(map.next_value()?),
                        "data" => e.data = Some(map.next_value()?),
                        "data_base64" => e.data_base64 = Some(map.next_value()?),
                        // Kept in the store's columns, and read from there.
                        "time" | "lsn" => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        _ => {
                            let value: Text<'de> = map.next_value()?;
                            e.extensions.push((Arc::from(&*key), value.0.into_owned()));
                        }
                    }
                }
                Ok(e)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl Event {
    /// The event a stored line holds (what [`Event::write_json`] wrote), with what the store
    /// keeps beside it: its aggregate, commit time and LSN. `data` keeps its exact text.
    pub fn from_stored(line: &str, aggregate: &str, time_micros: i64, lsn: Lsn) -> Result<Event, String> {
        let e: Stored<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let (data, base64) = (e.data, e.data_base64.as_ref().map(|t| t.0.clone()));
        let mut event = e.into_event(aggregate.into(), Time::from_micros(time_micros), lsn)?;
        match (data, base64) {
            (_, Some(base64)) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&*base64)
                    .map_err(|e| format!("data_base64: {e}"))?;
                event.body = Some(Body::Binary(bytes));
            }
            (Some(data), None) if is_json(&event.datacontenttype) => {
                event.data = serde_json::from_str(data.get()).map_err(|e| e.to_string())?;
            }
            (Some(data), None) => {
                event.body = Some(Body::Text(
                    serde_json::from_str(data.get()).map_err(|e| format!("data: {e}"))?,
                ));
            }
            (None, None) => unreachable!("into_event checked the data is there"),
        }
        Ok(event)
    }

    /// The attributes of the event a stored line holds, with `data` left empty: what goes out
    /// is the line itself, which holds the data (a sink's binary mode reads it from there). The
    /// line is read whole all the same: one that is not an event is an error. The aggregate and
    /// the commit time come made already: a reader of many events shares them between the
    /// events of a stream and of a transaction.
    pub fn attributes_from_stored(line: &str, aggregate: Arc<str>, time: Time, lsn: Lsn) -> Result<Event, String> {
        let e: Stored<'_> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        e.into_event(aggregate, time, lsn)
    }

    /// The attributes ficus routes and orders a stored event by — its type, aggregate, commit time
    /// and LSN, which the store keeps in columns of their own — and no others: its id, source and
    /// subject are empty, its version and txid 0. Only for a sink that writes the event's line and
    /// reads none of its attributes (`Sink::reads_attributes`), which the line holds as stored.
    pub fn routing_only(ty: Arc<str>, aggregate: Arc<str>, time: Time, lsn: Lsn) -> Event {
        Event {
            specversion: "1.0",
            id: String::new(),
            source: Arc::from(""),
            ty,
            aggregate,
            subject: String::new(),
            time,
            datacontenttype: Cow::Borrowed(JSON),
            eventversion: 0,
            lsn,
            txid: 0,
            backfill: None,
            unavailable: None,
            extensions: Vec::new(),
            body: None,
            data: Data::default(),
        }
    }
}

impl Stored<'_> {
    /// The event's attributes, its data left empty; an error names what a stored event lacks.
    fn into_event(self, aggregate: Arc<str>, time: Time, lsn: Lsn) -> Result<Event, String> {
        let e = self;
        let missing = |name: &str| format!("missing field `{name}`");
        let specversion = e.specversion.ok_or_else(|| missing("specversion"))?;
        if specversion.0 != "1.0" {
            return Err(format!("specversion {:?}: ficus writes 1.0", specversion.0));
        }
        if e.data.is_none() && e.data_base64.is_none() {
            return Err(missing("data"));
        }
        let datacontenttype = match e.datacontenttype.ok_or_else(|| missing("datacontenttype"))?.0 {
            t if t == JSON => Cow::Borrowed(JSON),
            t => Cow::Owned(t.into_owned()),
        };
        let txid = e.txid.ok_or_else(|| missing("txid"))?.0;
        Ok(Event {
            specversion: "1.0",
            id: e.id.ok_or_else(|| missing("id"))?,
            source: e.source.ok_or_else(|| missing("source"))?.0.into(),
            ty: e.ty.ok_or_else(|| missing("type"))?.0.into(),
            aggregate,
            subject: e.subject.ok_or_else(|| missing("subject"))?,
            time,
            datacontenttype,
            eventversion: e.eventversion.ok_or_else(|| missing("eventversion"))?,
            lsn,
            txid: txid.parse().map_err(|_| format!("txid {txid:?} is not a number"))?,
            backfill: e.backfill.map(|b| b.0.into()),
            unavailable: e.unavailable,
            extensions: e.extensions,
            body: None,
            data: Data::default(),
        })
    }
}

/// A commit time: microseconds since the Unix epoch, with its RFC 3339 text in UTC, made once
/// (the events of a transaction share one).
#[derive(Clone, Debug)]
pub struct Time {
    micros: i64,
    text: Arc<str>,
}

impl Time {
    /// The time `micros` microseconds after the Unix epoch.
    pub fn from_micros(micros: i64) -> Time {
        let text = chrono::DateTime::from_timestamp_micros(micros)
            .map(crate::value::rfc3339)
            .unwrap_or_default();
        Time {
            micros,
            text: text.into(),
        }
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(&self) -> i64 {
        self.micros
    }

    /// RFC 3339 in UTC, with as many fraction digits as needed.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Time {
    fn eq(&self, other: &Time) -> bool {
        self.micros == other.micros
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
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

/// Each field as its exact JSON text.
impl<'de> serde::Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Data, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Data;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let mut fields = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Box<serde_json::value::RawValue>>()? {
                    fields.push((name, Field::Raw(value)));
                }
                Ok(Data(fields))
            }
        }
        deserializer.deserialize_map(Fields)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_line_reads_back_into_the_same_event_and_line() {
        let line = r#"{"specversion":"1.0","id":"e1","source":"/ficus/shop/public.orders","type":"OrderPaid","subject":"7","time":"2026-11-22T08:20:50.888272Z","datacontenttype":"application/json","eventversion":2,"lsn":"0/1962798","txid":"735","backfill":"b1","data":{"total":120.50,"raw":{"a":1, "a":2},"n":null}}"#;
        let lsn: Lsn = "0/1962798".parse().unwrap();
        let e = Event::from_stored(line, "public.orders", 1_795_335_650_888_272, lsn).unwrap();
        assert_eq!(e.time.as_str(), "2026-11-22T08:20:50.888272Z");
        assert_eq!(e.txid, 735);
        let mut again = Vec::new();
        e.write_json(&mut again);
        assert_eq!(String::from_utf8(again).unwrap(), line);
        let mut data = Vec::new();
        e.write_data(&mut data);
        assert_eq!(
            String::from_utf8(data).unwrap(),
            r#"{"total":120.50,"raw":{"a":1, "a":2},"n":null}"#
        );
        let names: Vec<&str> = e.attributes().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "specversion",
                "id",
                "source",
                "type",
                "subject",
                "time",
                "datacontenttype",
                "eventversion",
                "lsn",
                "txid",
                "backfill"
            ]
        );
    }

    #[test]
    fn a_stored_lines_attributes_read_back_without_its_data_and_a_line_that_is_no_event_does_not() {
        let line = r#"{"specversion":"1.0","id":"e1","source":"/ficus/shop/public.orders","type":"OrderPaid","subject":"7","time":"2026-11-22T08:20:50.888272Z","datacontenttype":"application/json","eventversion":2,"lsn":"0/1962798","txid":"735","data":{"total":120.50}}"#;
        let lsn: Lsn = "0/1962798".parse().unwrap();
        let time = Time::from_micros(1_795_335_650_888_272);
        let e = Event::attributes_from_stored(line, "public.orders".into(), time.clone(), lsn).unwrap();
        let full = Event::from_stored(line, "public.orders", time.micros(), lsn).unwrap();
        assert_eq!(
            e.attributes(),
            full.attributes(),
            "the same attributes as the whole event's"
        );
        assert!(e.data.0.is_empty(), "the data stays in the line");
        for damaged in [
            &line[..line.len() - 1],
            r#"{"specversion":"1.0","id":"e1","source":"s","type":"T","subject":"7","datacontenttype":"application/json","eventversion":2,"txid":"735"}"#,
            r#"{"specversion":"1.0","id":"e1","source":"s","type":"T","subject":"7","datacontenttype":"application/json","eventversion":2,"txid":"735","data":{"a":}}"#,
        ] {
            let err = Event::attributes_from_stored(damaged, "a".into(), time.clone(), lsn).unwrap_err();
            assert!(!err.is_empty(), "{damaged}");
        }
    }
}
