//! Domain events, and the one place they are written as CloudEvents 1.0: the structured JSON
//! line ([`Event::write_json`]), and for the binary mode of the protocol bindings, the data alone
//! ([`Event::write_data`]) and the other attributes ([`Event::attributes`]).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::Lsn;

/// A domain event: a business fact with a name, a version, a key and data.
///
/// The attributes shared by many events (source, type, transaction) are shared
/// strings: an event costs its id, subject and data. Positions and times stay typed until the
/// event is written.
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
    /// The commit time (written RFC 3339 in UTC).
    pub time: Time,
    /// Always `"application/json"`.
    pub datacontenttype: &'static str,
    /// The event's schema version.
    pub eventversion: u32,
    /// The commit LSN (written `X/Y`).
    pub lsn: Lsn,
    /// The source transaction id (written as a string: CloudEvents integers are 32-bit signed).
    #[serde(serialize_with = "as_string")]
    pub txid: u32,
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

fn as_string<S: Serializer>(n: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(n)
}

impl Event {
    /// Writes the event as one CloudEvent in structured JSON mode, without a newline: the line
    /// every line sink, the store and the structured mode of every binding carry.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("an event always serializes");
    }

    /// Writes the event's `data` alone: the body of the binary mode of a protocol binding.
    pub fn write_data(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, &self.data).expect("data always serializes");
    }

    /// Every attribute but `data`, in the order of the structured line, as text: what the binary
    /// mode of a protocol binding carries in headers (`ce_id`, `ce-type`, ...). `datacontenttype`
    /// is among them; bindings that map it to their own content type take it from here.
    pub fn attributes(&self) -> Vec<(&'static str, Cow<'_, str>)> {
        let mut attributes = vec![
            ("specversion", Cow::Borrowed(self.specversion)),
            ("id", Cow::Borrowed(self.id.as_str())),
            ("source", Cow::Borrowed(&*self.source)),
            ("type", Cow::Borrowed(&*self.ty)),
            ("subject", Cow::Borrowed(self.subject.as_str())),
            ("time", Cow::Borrowed(self.time.as_str())),
            ("datacontenttype", Cow::Borrowed(self.datacontenttype)),
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
        attributes
    }
}

/// An event as a stored line has it (the store keeps the aggregate apart); its data read as `D`
/// ([`Data`], or skipped).
#[derive(serde::Deserialize)]
struct Stored<'a, D> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    id: String,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    subject: String,
    #[serde(borrow)]
    datacontenttype: Cow<'a, str>,
    eventversion: u32,
    #[serde(borrow)]
    txid: Cow<'a, str>,
    #[serde(default, borrow)]
    backfill: Option<Cow<'a, str>>,
    #[serde(default, rename = "ficusunavailable")]
    unavailable: Option<String>,
    data: D,
}

impl Event {
    /// The event a stored line holds (what [`Event::write_json`] wrote), with what the store
    /// keeps beside it: its aggregate, commit time and LSN. `data` keeps its exact text.
    pub fn from_stored(line: &str, aggregate: &str, time_micros: i64, lsn: Lsn) -> Result<Event, String> {
        let e: Stored<'_, Data> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        e.into_event(aggregate.into(), Time::from_micros(time_micros), lsn, |data| data)
    }

    /// The attributes of the event a stored line holds, with `data` left empty: what goes out
    /// is the line itself, which holds the data (a sink's binary mode reads it from there). The
    /// line is read whole all the same: one that is not an event is an error. The aggregate and
    /// the commit time come made already: a reader of many events shares them between the
    /// events of a stream and of a transaction.
    pub fn attributes_from_stored(line: &str, aggregate: Arc<str>, time: Time, lsn: Lsn) -> Result<Event, String> {
        let e: Stored<'_, serde::de::IgnoredAny> = serde_json::from_str(line).map_err(|e| e.to_string())?;
        e.into_event(aggregate, time, lsn, |_| Data::default())
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
            datacontenttype: "application/json",
            eventversion: 0,
            lsn,
            txid: 0,
            backfill: None,
            unavailable: None,
            data: Data::default(),
        }
    }
}

impl<D> Stored<'_, D> {
    /// The event, its data made of what was read.
    fn into_event(
        self,
        aggregate: Arc<str>,
        time: Time,
        lsn: Lsn,
        data: impl FnOnce(D) -> Data,
    ) -> Result<Event, String> {
        let e = self;
        if e.specversion != "1.0" || e.datacontenttype != "application/json" {
            return Err(format!(
                "specversion {:?} and datacontenttype {:?}: ficus writes 1.0 and application/json",
                e.specversion, e.datacontenttype
            ));
        }
        Ok(Event {
            specversion: "1.0",
            id: e.id,
            source: e.source.into(),
            ty: e.ty.into(),
            aggregate,
            subject: e.subject,
            time,
            datacontenttype: "application/json",
            eventversion: e.eventversion,
            lsn,
            txid: e
                .txid
                .parse()
                .map_err(|_| format!("txid {:?} is not a number", e.txid))?,
            backfill: e.backfill.map(Into::into),
            unavailable: e.unavailable,
            data: data(e.data),
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
