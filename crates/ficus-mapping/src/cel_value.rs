//! Column values into CEL, and CEL results into JSON.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use cel::Value as Cel;
use cel::objects::{Key, Map};
use ficus_model::PgType;
use ficus_model::value::{ArrayItem, decode_bytea, parse_array, parse_timestamptz, rfc3339};
use serde_json::Value as Json;

/// A column value in CEL: numbers as numbers (`numeric` as a double, for
/// comparisons; a plain reference like `new.total` keeps it exact),
/// `timestamptz` as a timestamp, `json` as maps and lists, the rest as strings.
pub(crate) fn to_cel(ty: &PgType, text: &str) -> Cel {
    match ty {
        PgType::Bool => Cel::Bool(text == "t"),
        PgType::Int | PgType::Int8 => text.parse().map(Cel::Int).unwrap_or_else(|_| string(text)),
        PgType::Float | PgType::Numeric => text.parse().map(Cel::Float).unwrap_or_else(|_| string(text)),
        PgType::Bytea => decode_bytea(text)
            .map(|b| Cel::Bytes(Arc::new(b)))
            .unwrap_or_else(|| string(text)),
        PgType::Json => serde_json::from_str::<Json>(text)
            .map(|j| json_to_cel(&j))
            .unwrap_or_else(|_| string(text)),
        PgType::Timestamptz => match parse_timestamptz(text) {
            Some(t) => Cel::Timestamp(t.fixed_offset()),
            None => string(text),
        },
        PgType::Timestamp => string(ficus_model::value::to_json(ty, text).as_str().unwrap_or(text)),
        PgType::Text | PgType::Date | PgType::Time | PgType::Interval => string(text),
        PgType::Array(elem) => match parse_array(text) {
            Some(items) => array_to_cel(elem, &items),
            None => string(text),
        },
    }
}

fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_owned()))
}

fn array_to_cel(elem: &PgType, items: &[ArrayItem]) -> Cel {
    Cel::List(Arc::new(
        items
            .iter()
            .map(|item| match item {
                ArrayItem::Null => Cel::Null,
                ArrayItem::Text(s) => to_cel(elem, s),
                ArrayItem::Array(inner) => array_to_cel(elem, inner),
            })
            .collect(),
    ))
}

pub(crate) fn json_to_cel(j: &Json) -> Cel {
    match j {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => string(s),
        Json::Array(a) => Cel::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => map(o.iter().map(|(k, v)| (k.clone(), json_to_cel(v)))),
    }
}

pub(crate) fn map(entries: impl IntoIterator<Item = (String, Cel)>) -> Cel {
    let map: HashMap<Key, Cel> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k)), v))
        .collect();
    Cel::Map(Map { map: Arc::new(map) })
}

/// A CEL result as JSON: `NaN` and infinities as strings, bytes as base64,
/// timestamps as RFC 3339 UTC. `None` for what has no JSON form (functions).
pub(crate) fn cel_to_json(v: &Cel) -> Option<Json> {
    Some(match v {
        Cel::Null => Json::Null,
        Cel::Bool(b) => Json::Bool(*b),
        Cel::Int(i) => Json::from(*i),
        Cel::UInt(u) => Json::from(*u),
        Cel::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None if f.is_nan() => Json::String("NaN".into()),
            None if *f > 0.0 => Json::String("Infinity".into()),
            None => Json::String("-Infinity".into()),
        },
        Cel::String(s) => Json::String(s.to_string()),
        Cel::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice())),
        Cel::Timestamp(t) => Json::String(rfc3339(t.to_utc())),
        Cel::Duration(d) => Json::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0)),
        Cel::List(items) => Json::Array(items.iter().map(cel_to_json).collect::<Option<_>>()?),
        Cel::Map(m) => {
            let mut entries: Vec<(String, Json)> = m
                .map
                .iter()
                .map(|(k, v)| Some((key_string(k), cel_to_json(v)?)))
                .collect::<Option<_>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(entries.into_iter().collect())
        }
        _ => return None,
    })
}

/// A scalar CEL value as an event's subject; `None` for null, lists, maps.
pub(crate) fn cel_to_subject(v: &Cel) -> Option<String> {
    match v {
        Cel::String(s) => Some(s.to_string()),
        Cel::Int(i) => Some(i.to_string()),
        Cel::UInt(u) => Some(u.to_string()),
        Cel::Bool(b) => Some(b.to_string()),
        Cel::Float(f) => Some(f.to_string()),
        Cel::Timestamp(t) => Some(rfc3339(t.to_utc())),
        Cel::Bytes(b) => Some(base64::engine::general_purpose::STANDARD.encode(b.as_slice())),
        _ => None,
    }
}

fn key_string(k: &Key) -> String {
    match k {
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
        Key::String(s) => s.to_string(),
    }
}

/// A value of the type, for checking expressions against a schema. Arrays and
/// json are empty: their shape is not in the schema, and reading into an empty
/// one fails with a missing key or index, which the check does not count as a
/// type error.
pub(crate) fn sample(ty: &PgType) -> Cel {
    match ty {
        PgType::Bool => Cel::Bool(true),
        PgType::Int | PgType::Int8 => Cel::Int(1),
        PgType::Float | PgType::Numeric => Cel::Float(1.0),
        PgType::Bytea => Cel::Bytes(Arc::new(vec![1])),
        PgType::Json => map([]),
        PgType::Timestamptz => Cel::Timestamp(chrono::DateTime::UNIX_EPOCH.fixed_offset()),
        PgType::Array(_) => Cel::List(Arc::new(vec![])),
        _ => string("a"),
    }
}
