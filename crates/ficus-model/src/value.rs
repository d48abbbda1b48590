//! Column values: from Postgres' text form to JSON, keeping their meaning.
//!
//! The source asks Postgres for `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601` and `extra_float_digits=3`, so the text forms here
//! are the ISO ones. The table of conversions is in `docs/types.md`.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Number, Value as Json};

use crate::PgType;

/// Converts a non-NULL value's text form to JSON. Never fails: a text that does
/// not parse as its type (which Postgres does not send) stays a JSON string.
pub fn to_json(ty: &PgType, text: &str) -> Json {
    match ty {
        PgType::Bool => match text {
            "t" => Json::Bool(true),
            "f" => Json::Bool(false),
            _ => string(text),
        },
        PgType::Int | PgType::Int8 => text.parse::<i64>().map(Json::from).unwrap_or_else(|_| string(text)),
        PgType::Float => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Number::from_f64(f).map(Json::Number).unwrap_or_else(|| string(text)),
            _ => string(text),
        },
        PgType::Numeric => exact_number(text).unwrap_or_else(|| string(text)),
        PgType::Text | PgType::Date | PgType::Time | PgType::Interval => string(text),
        PgType::Bytea => match decode_bytea(text) {
            Some(bytes) => Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => string(text),
        },
        PgType::Json => serde_json::from_str(text).unwrap_or_else(|_| string(text)),
        PgType::Timestamptz => match utc_rfc3339(text).or_else(|| parse_timestamptz(text).map(rfc3339)) {
            Some(t) => Json::String(t),
            None => string(text),
        },
        PgType::Timestamp => Json::String(iso_timestamp(text)),
        PgType::Array(elem) => match parse_array(text) {
            Some(array) => array_to_json(elem, &array),
            None => string(text),
        },
    }
}

/// A `json` or `jsonb` value as an event field: its text as it is when it is JSON a strict parser
/// reads (RFC 8259, valid Unicode escapes), keeping duplicate keys, formatting and digits; else
/// (a lone surrogate escape, which Postgres' `json` accepts) a JSON string of the text.
pub fn json_field(text: &str) -> crate::Field {
    if serde_json::from_str::<Json>(text).is_ok()
        && let Ok(raw) = serde_json::value::RawValue::from_string(text.to_owned())
    {
        return crate::Field::Raw(raw);
    }
    crate::Field::Json(string(text))
}

/// A value's text form as an event field: [`json_field`] for `json` and `jsonb`, [`to_json`] else.
pub fn to_field(ty: &PgType, text: &str) -> crate::Field {
    match ty {
        PgType::Json => json_field(text),
        _ => crate::Field::Json(to_json(ty, text)),
    }
}

fn string(text: &str) -> Json {
    Json::String(text.to_owned())
}

/// A decimal's exact JSON number (`12.50` stays `12.50`); `None` for `NaN` and infinities.
fn exact_number(text: &str) -> Option<Json> {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E' | b'+'));
    if !plain || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    serde_json::from_str::<Number>(text).ok().map(Json::Number)
}

/// Parses `timestamptz` in ISO style (`2024-03-01 10:00:00.5+00`).
pub fn parse_timestamptz(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The common case of a `timestamptz` as ficus's sessions print it (ISO, UTC:
/// `2024-03-01 10:00:00.5+00`) straight to what `rfc3339` writes
/// (`2024-03-01T10:00:00.500Z`), without parsing a date: a backfill converts
/// millions. `None` for anything else (other offsets, BC, 5-digit years).
fn utc_rfc3339(text: &str) -> Option<String> {
    let body = text.strip_suffix("+00")?.as_bytes();
    if body.len() < 19 {
        return None;
    }
    let (date_time, fraction) = body.split_at(19);
    let shape_ok = date_time.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b' ',
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    let digits = match fraction {
        [] => &[][..],
        [b'.', digits @ ..] if (1..=6).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return None,
    };
    if !shape_ok {
        return None;
    }
    let micros = digits
        .iter()
        .chain(std::iter::repeat_n(&b'0', 6 - digits.len()))
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    let date_time = std::str::from_utf8(date_time).ok()?;
    let fraction = match micros {
        0 => String::new(),
        m if m % 1000 == 0 => format!(".{:03}", m / 1000),
        m => format!(".{m:06}"),
    };
    Some(format!("{}T{}{fraction}Z", &date_time[..10], &date_time[11..]))
}

/// RFC 3339 in UTC, with as many fraction digits as needed (0, 3, 6 or 9).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `2024-03-01 10:00:00` → `2024-03-01T10:00:00`; `infinity` and BC dates stay as they are.
fn iso_timestamp(text: &str) -> String {
    let b = text.as_bytes();
    if b.len() >= 19 && b[10] == b' ' && b[4] == b'-' && !text.ends_with(" BC") {
        let mut s = text.to_owned();
        s.replace_range(10..11, "T");
        s
    } else {
        text.to_owned()
    }
}

/// Decodes `bytea`'s hex form (`\x0a0b`).
pub fn decode_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An element of an array's text form.
#[derive(Debug, PartialEq)]
pub enum ArrayItem {
    /// `NULL`
    Null,
    /// A scalar's text form, unquoted.
    Text(String),
    /// A nested array.
    Array(Vec<ArrayItem>),
}

/// Parses an array's text form: `{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`,
/// with an optional dimension prefix (`[0:1]={1,2}`).
pub fn parse_array(text: &str) -> Option<Vec<ArrayItem>> {
    let text = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let mut chars = text.chars().peekable();
    let items = parse_array_level(&mut chars)?;
    chars.next().is_none().then_some(items)
}

fn parse_array_level(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Vec<ArrayItem>> {
    if chars.next()? != '{' {
        return None;
    }
    let mut items = Vec::new();
    if chars.peek() == Some(&'}') {
        chars.next();
        return Some(items);
    }
    loop {
        let item = match chars.peek()? {
            '{' => ArrayItem::Array(parse_array_level(chars)?),
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                ArrayItem::Text(s)
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' || c == '}' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                if s.eq_ignore_ascii_case("NULL") {
                    ArrayItem::Null
                } else {
                    ArrayItem::Text(s)
                }
            }
        };
        items.push(item);
        match chars.next()? {
            ',' => continue,
            '}' => return Some(items),
            _ => return None,
        }
    }
}

fn array_to_json(elem: &PgType, items: &[ArrayItem]) -> Json {
    Json::Array(
        items
            .iter()
            .map(|item| match item {
                ArrayItem::Null => Json::Null,
                ArrayItem::Text(s) => to_json(elem, s),
                ArrayItem::Array(inner) => array_to_json(elem, inner),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_numeric_stays_exact() {
        let v = to_json(&PgType::Numeric, "12345678901234567890.1234567890");
        assert_eq!(serde_json::to_string(&v).unwrap(), "12345678901234567890.1234567890");
        assert_eq!(
            serde_json::to_string(&to_json(&PgType::Numeric, "12.50")).unwrap(),
            "12.50"
        );
        assert_eq!(to_json(&PgType::Numeric, "NaN"), json!("NaN"));
        assert_eq!(to_json(&PgType::Numeric, "-Infinity"), json!("-Infinity"));
    }

    #[test]
    fn types_float_and_int8() {
        assert_eq!(to_json(&PgType::Float, "1.5"), json!(1.5));
        assert_eq!(to_json(&PgType::Float, "NaN"), json!("NaN"));
        assert_eq!(to_json(&PgType::Float, "Infinity"), json!("Infinity"));
        assert_eq!(
            serde_json::to_string(&to_json(&PgType::Int8, "9223372036854775807")).unwrap(),
            "9223372036854775807"
        );
    }

    #[test]
    fn types_time() {
        assert_eq!(
            to_json(&PgType::Timestamptz, "2024-03-01 10:00:00.5+00"),
            json!("2024-03-01T10:00:00.500Z")
        );
        assert_eq!(
            to_json(&PgType::Timestamptz, "2024-03-01 12:00:00+02"),
            json!("2024-03-01T10:00:00Z")
        );
        assert_eq!(to_json(&PgType::Timestamptz, "infinity"), json!("infinity"));
        assert_eq!(
            to_json(&PgType::Timestamp, "2024-03-01 10:00:00.123456"),
            json!("2024-03-01T10:00:00.123456")
        );
    }

    #[test]
    fn the_utc_fast_path_writes_what_chrono_writes() {
        let mut seed = 7u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut samples = vec![
            "2024-03-01 10:00:00+00".to_owned(),
            "2024-03-01 10:00:00.5+00".to_owned(),
            "2024-03-01 10:00:00.000001+00".to_owned(),
            "2024-03-01 10:00:00.12+00".to_owned(),
            "0001-01-01 00:00:00+00".to_owned(),
        ];
        for _ in 0..2000 {
            // Postgres trims the fraction's trailing zeros, and leaves it out when zero.
            let micros = if next(4) == 0 { 0 } else { next(1_000_000) };
            let fraction = match micros {
                0 => String::new(),
                m => format!(".{m:06}").trim_end_matches('0').to_owned(),
            };
            samples.push(format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{fraction}+00",
                next(9999) + 1,
                next(12) + 1,
                next(28) + 1,
                next(24),
                next(60),
                next(60)
            ));
        }
        for text in &samples {
            let slow = parse_timestamptz(text).map(rfc3339);
            assert!(slow.is_some(), "{text}");
            assert_eq!(utc_rfc3339(text), slow, "{text}");
        }
        for other in [
            "2024-03-01 12:00:00+02",
            "infinity",
            "0044-03-15 12:00:00+00 BC",
            "12024-03-01 10:00:00+00",
            "2024-03-01 10:00:00.1234567+00",
        ] {
            assert_eq!(utc_rfc3339(other), None, "{other}");
        }
    }

    #[test]
    fn json_keeps_its_text_or_says_it_as_a_string() {
        let written = |text: &str| {
            let data = crate::Data(vec![("doc".into(), json_field(text))]);
            serde_json::to_string(&data).unwrap()
        };
        // Duplicate keys, formatting and digits stay as Postgres' json has them.
        assert_eq!(written(r#"{"a": 1, "a": 2}"#), r#"{"doc":{"a": 1, "a": 2}}"#);
        assert_eq!(written(r#"  [1.10,   2e3]  "#), r#"{"doc":[1.10,   2e3]}"#);
        // A lone surrogate: JSON syntax, but no strict parser reads it: its text, as a string.
        assert_eq!(written(r#"{"x": "\ud800"}"#), r#"{"doc":"{\"x\": \"\\ud800\"}"}"#);
        // Every event stays readable by a strict parser.
        for text in [r#"{"a": 1, "a": 2}"#, r#"{"x": "\ud800"}"#, "null", r#""é""#] {
            serde_json::from_str::<Json>(&written(text)).unwrap();
        }
    }

    #[test]
    fn types_bytea_json_arrays() {
        assert_eq!(to_json(&PgType::Bytea, "\\x00ff10"), json!("AP8Q"));
        let doc = to_json(&PgType::Json, r#"{"a": [1, 2.50]}"#);
        assert_eq!(serde_json::to_string(&doc).unwrap(), r#"{"a":[1,2.50]}"#);
        let ints = PgType::Array(Box::new(PgType::Int));
        assert_eq!(to_json(&ints, "{{1,2},{3,NULL}}"), json!([[1, 2], [3, null]]));
        let texts = PgType::Array(Box::new(PgType::Text));
        assert_eq!(
            to_json(&texts, r#"{"a b","c\"d",NULL,"NULL",e}"#),
            json!(["a b", "c\"d", null, "NULL", "e"])
        );
        assert_eq!(to_json(&texts, "{}"), json!([]));
        assert_eq!(to_json(&ints, "[0:1]={1,2}"), json!([1, 2]));
    }
}
