//! The mapping file format: TOML with `[[event]]` tables.
//!
//! ```toml
//! [[event]]
//! name    = "OrderPaid"
//! version = 1
//! table   = "public.orders"
//! on      = ["update"]
//! when    = "old.status != 'paid' && new.status == 'paid'"
//! key     = "new.id"
//! data    = { order_id = "new.id", total = "new.total" }
//! ```

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, SourceText};

/// A parsed mapping file, before checking.
#[derive(Debug)]
pub struct MappingFile {
    pub(crate) source: SourceText,
    pub(crate) events: Vec<RawEvent>,
    pub(crate) messages: Vec<RawMessage>,
    pub(crate) outboxes: Vec<RawOutbox>,
}

/// One `[[outbox]]` table as written: an outbox table, with the Debezium outbox event router's
/// columns (each name can be changed).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutbox {
    /// The outbox table: `public.outbox`.
    #[schemars(with = "String")]
    pub table: Spanned<String>,
    /// The column of the event's id, used as the CloudEvents `id` when it is not null; default
    /// `id` (`""`: none, ficus derives the id).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub id: Option<Spanned<String>>,
    /// The column of the aggregate's type (the event's aggregate), default `aggregatetype`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub aggregate_type: Option<Spanned<String>>,
    /// The column of the aggregate's id (the event's `subject`), default `aggregateid`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub aggregate_id: Option<Spanned<String>>,
    /// The column of the event's type (CloudEvents `type`), default `type`.
    #[serde(default)]
    #[schemars(rename = "type", with = "Option<String>")]
    #[serde(rename = "type")]
    pub ty: Option<Spanned<String>>,
    /// The column of the event's data, default `payload`: a `jsonb` or `json` object (the event's
    /// `data`), or `text` or `bytea` of the `content_type`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub payload: Option<Spanned<String>>,
    /// The payload's media type (CloudEvents `datacontenttype`): default `application/json` for a
    /// `jsonb` or `json` payload, `text/plain` for `text`, `application/octet-stream` for
    /// `bytea`. A JSON type (`application/json`, `...+json`) makes a `text` or `bytea` payload a
    /// JSON object, as `jsonb` is.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub content_type: Option<Spanned<String>>,
    /// Columns of the row carried as CloudEvents extensions, by extension name:
    /// `{ tenantid = "tenant_id" }` (names of lower-case letters and digits; a null is left out).
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, String>>")]
    pub extensions: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    /// The event types the application writes (`["LoyaltyPointsGranted"]`): the catalog and the
    /// lock list them, and a row of another type stops ficus. Default: any type, none listed.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub types: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[message]]` table as written: events the application states itself, with
/// `pg_logical_emit_message(true, prefix, payload)`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMessage {
    /// The prefix of the messages it maps: `pg_logical_emit_message(true, 'shop.refunds', ...)`.
    #[schemars(with = "String")]
    pub prefix: Spanned<String>,
    /// The event's type, default the prefix.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// The event's version, default 1.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub version: Option<Spanned<i64>>,
    /// A CEL condition over `payload` (the message's JSON), `prefix` and `tx`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// A CEL expression: the aggregate's key (`payload.order_id`).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// The aggregate's name, default the prefix.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub aggregate: Option<Spanned<String>>,
    /// The event's data: `"payload"` (the default: the payload as it is, a JSON object), or a
    /// table of field = CEL expression.
    #[serde(default)]
    #[schemars(with = "Option<RawData>")]
    pub data: Option<Spanned<RawData>>,
    /// What a message of the prefix emitted outside a transaction does: `"stop"` (the default:
    /// ficus stops before it) or `"skip"` (ficus logs it and goes on: it cannot be delivered
    /// exactly once).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub non_transactional: Option<Spanned<String>>,
}

/// One `[[event]]` table as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvent {
    /// The event's type, named after what the business says happened: `OrderPaid`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The event's version (`eventversion`), default 1: a new version is a new contract.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub version: Option<Spanned<i64>>,
    /// The table whose row changes make it: `public.orders`, or `orders` in `public`.
    #[schemars(with = "String")]
    pub table: Spanned<String>,
    /// The operations that make it: `insert`, `update`, `delete`, `truncate`, `snapshot` (rows a
    /// backfill reads).
    #[schemars(with = "Vec<Op>")]
    pub on: Spanned<Vec<Spanned<String>>>,
    /// A CEL condition over `new`, `old`, `changed`, `op`, `table`, `tx`: the event is made only
    /// when it is true.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// A CEL expression: the aggregate's key, the event's `subject` (`new.id`).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// The aggregate's name, default the table's.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub aggregate: Option<Spanned<String>>,
    /// The event's data: `"new"` or `"old"` (the whole row), or a table of field = CEL
    /// expression.
    #[serde(default)]
    #[schemars(with = "Option<RawData>")]
    pub data: Option<Spanned<RawData>>,
    /// Columns left out of `data = "new"`/`"old"`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub exclude: Option<Spanned<Vec<Spanned<String>>>>,
    /// What an update whose TOASTed value was not sent does: `stop` (default), `reselect`
    /// (read it from the table), `omit` (leave the field out and name it in
    /// `ficusunavailable`).
    #[serde(default)]
    #[schemars(with = "Option<crate::UnchangedToast>")]
    pub unchanged_toast: Option<Spanned<String>>,
    /// How often it is made: `"change"` (the default: of every row change it matches) or
    /// `"transaction"` (at most once per transaction and key, of the net change of the row in it).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub per: Option<Spanned<String>>,
    /// Rows of other tables written in the same transaction, collected into fields of the event:
    /// `[event.collect.lines]`, one table per field (docs/mappings.md, "Collected rows").
    #[serde(default)]
    #[schemars(with = "Option<std::collections::BTreeMap<String, RawCollect>>")]
    pub collect: Option<Spanned<RawCollects>>,
}

/// The collected rows of an event, by field, in file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawCollects(pub Vec<(String, Spanned<RawCollect>)>);

impl<'de> Deserialize<'de> for RawCollects {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CollectsVisitor;
        impl<'de> Visitor<'de> for CollectsVisitor {
            type Value = RawCollects;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("tables of collected rows: [event.collect.field]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCollects, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    fields.push((key, map.next_value::<Spanned<RawCollect>>()?));
                }
                Ok(RawCollects(fields))
            }
        }
        deserializer.deserialize_map(CollectsVisitor)
    }
}

/// `[event.collect.field]`: rows of a table written in the event's transaction, each mapped to
/// an element of the array `field`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCollect {
    /// The table whose rows are collected: `public.order_lines`.
    #[schemars(with = "String")]
    pub table: Spanned<String>,
    /// The operations whose rows are collected, default `["insert"]` (`insert`, `update`,
    /// `delete`).
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub on: Option<Spanned<Vec<Spanned<String>>>>,
    /// A CEL condition over the collected row (`new`, `old`, `op`, ...): collected only when true.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// A CEL expression over the collected row: the key of the event it belongs to
    /// (`new.order_id` for the lines of the order whose key is `new.id`).
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// Each collected row's data: `"new"`, `"old"`, or a table of field = CEL expression.
    #[serde(default)]
    #[schemars(with = "Option<RawData>")]
    pub data: Option<Spanned<RawData>>,
    /// Columns left out of `data = "new"`/`"old"`.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub exclude: Option<Spanned<Vec<Spanned<String>>>>,
    /// A CEL expression over the collected row that orders the array (`new.line_no`); default:
    /// the rows' order in the transaction.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub order_by: Option<Spanned<String>>,
    /// What rows whose event did not fire in their transaction make (a line added to an order
    /// placed before): `"ignore"` (the default: nothing), or
    /// `{ event = "OrderLinesAdded", version = 1, per = "aggregate" | "row" }`.
    #[serde(default)]
    #[schemars(with = "Option<RawWithoutParentSchema>")]
    pub without_parent: Option<Spanned<RawWithoutParent>>,
    /// What an update whose TOASTed value was not sent does: as the event's `unchanged_toast`.
    #[serde(default)]
    #[schemars(with = "Option<crate::UnchangedToast>")]
    pub unchanged_toast: Option<Spanned<String>>,
}

/// `without_parent` as written: `"ignore"` or a table naming the event.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawWithoutParent {
    Word(String),
    Event(RawParentEvent),
}

/// `without_parent = { event = "...", version = 1, per = "aggregate" }`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawParentEvent {
    /// The event's name.
    pub event: String,
    /// Its version, default 1.
    #[serde(default)]
    pub version: Option<i64>,
    /// `"aggregate"` (default: one event per transaction and key, carrying the rows in the
    /// collect's field) or `"row"` (one event per row, its data the row's).
    #[serde(default)]
    pub per: Option<String>,
}

/// `without_parent`, for the schema of mapping files.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RawWithoutParentSchema {
    /// `"ignore"`: such rows make no event here.
    Ignore(IgnoreWord),
    /// An event of the parent's aggregate.
    Event(RawParentEvent),
}

#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum IgnoreWord {
    Ignore,
}

/// An operation, as `on` names it (for the schema of mapping files).
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Snapshot,
}

/// A mapping file (for its schema): `[[event]]` tables.
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ficus mapping file")]
#[allow(dead_code)]
struct FileSchema {
    /// The events of row changes, each an `[[event]]` table.
    #[serde(default)]
    event: Vec<RawEvent>,
    /// The events of logical decoding messages, each a `[[message]]` table.
    #[serde(default)]
    message: Vec<RawMessage>,
    /// Outbox tables, each an `[[outbox]]` table.
    #[serde(default)]
    outbox: Vec<RawOutbox>,
}

/// The JSON Schema (2020-12) of mapping files, for editors: keys completed and checked as they
/// are typed. What only the engine can check (CEL, tables, columns) is `ficus check`'s.
pub fn mapping_file_schema() -> serde_json::Value {
    schemars::schema_for!(FileSchema).to_value()
}

/// `data = "new"` or `data = { field = "expr", ... }`.
#[derive(Debug, Clone)]
pub(crate) enum RawData {
    Row(String),
    Fields(Vec<(String, Spanned<String>)>),
}

impl schemars::JsonSchema for RawData {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Data".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The event's data: `\"new\"` or `\"old\"` (the whole row), or a table of field = CEL expression.",
            "oneOf": [
                { "enum": ["new", "old"] },
                { "type": "object", "additionalProperties": { "type": "string" } }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for RawData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = RawData;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""new", "old" or a table of field = "expression""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawData, E> {
                Ok(RawData::Row(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawData, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    fields.push((key, map.next_value::<Spanned<String>>()?));
                }
                Ok(RawData::Fields(fields))
            }
        }
        deserializer.deserialize_any(DataVisitor)
    }
}

/// Parses one mapping file. `path` is only used in messages. Every `[[event]]`
/// is read on its own, so one broken event does not hide the errors of the
/// others: the events that parse are returned with the errors of the rest (an
/// unknown key is reported, and the event is read on without it).
pub fn parse_file(path: &str, text: &str) -> (MappingFile, Vec<Diagnostic>) {
    let source = SourceText {
        path: path.to_owned(),
        text: text.to_owned(),
    };
    let diag = |e: &toml::de::Error| {
        let (message, hint) = toml_message(e.message());
        source.error_at(&e.span().unwrap_or(0..0), message, hint)
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let errors = vec![diag(&e)];
            return (
                MappingFile {
                    source,
                    events: vec![],
                    messages: vec![],
                    outboxes: vec![],
                },
                errors,
            );
        }
    };
    let mut errors = Vec::new();
    let mut events = Vec::new();
    let mut messages = Vec::new();
    let mut outboxes = Vec::new();
    for (key, value) in root.get_ref().iter() {
        if key.get_ref() == "outbox" {
            outboxes.extend(tables_of::<RawOutbox>(
                &source,
                value,
                "outbox",
                "an [[outbox]] takes table, id, aggregate_type, aggregate_id, type, payload (column names) and types",
                &mut errors,
            ));
            continue;
        }
        if key.get_ref() == "message" {
            messages.extend(tables_of::<RawMessage>(
                &source,
                value,
                "message",
                "a [[message]] takes prefix, name, version, when, key, aggregate, data and non_transactional",
                &mut errors,
            ));
            continue;
        }
        if key.get_ref() != "event" {
            errors.push(source.error_at(
                &key.span(),
                format!("unknown key `{}`", key.get_ref()),
                Some("a mapping file holds [[event]], [[message]] and [[outbox]] tables".into()),
            ));
            continue;
        }
        let DeValue::Array(items) = value.get_ref() else {
            errors.push(source.error_at(
                &value.span(),
                "`event` is not an array of tables",
                Some("write each mapping as an [[event]] table".into()),
            ));
            continue;
        };
        for item in items.iter() {
            let DeValue::Table(table) = item.get_ref() else {
                errors.push(source.error_at(
                    &item.span(),
                    "an event is not a table",
                    Some("write each mapping as an [[event]] table".into()),
                ));
                continue;
            };
            let mut table = table.clone();
            // Report an unknown key and read on without it, so that the event's other errors show too.
            for _ in 0..16 {
                match RawEvent::deserialize(toml::de::Deserializer::from(Spanned::new(item.span(), table.clone()))) {
                    Ok(event) => {
                        events.push(event);
                        break;
                    }
                    Err(e) => {
                        errors.push(diag(&e));
                        let unknown = e.message().starts_with("unknown field");
                        let removed = match (unknown, e.span()) {
                            (true, Some(span)) => remove_key(&mut table, &span),
                            _ => false,
                        };
                        if !removed {
                            break;
                        }
                    }
                }
            }
        }
    }
    (
        MappingFile {
            source,
            events,
            messages,
            outboxes,
        },
        errors,
    )
}

/// The tables of an array of tables (`[[message]]`, `[[outbox]]`) read as `T`; each that does
/// not read is an error at its place, with what it `takes`.
fn tables_of<T: for<'de> Deserialize<'de>>(
    source: &SourceText,
    value: &Spanned<DeValue<'_>>,
    key: &str,
    takes: &str,
    errors: &mut Vec<Diagnostic>,
) -> Vec<T> {
    let not_tables = |span: std::ops::Range<usize>| {
        source.error_at(
            &span,
            format!("`{key}` holds something that is not a table"),
            Some(format!("write each as a [[{key}]] table")),
        )
    };
    let DeValue::Array(items) = value.get_ref() else {
        errors.push(not_tables(value.span()));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter() {
        let DeValue::Table(table) = item.get_ref() else {
            errors.push(not_tables(item.span()));
            continue;
        };
        let table = Spanned::new(item.span(), table.clone());
        match T::deserialize(toml::de::Deserializer::from(table)) {
            Ok(t) => out.push(t),
            Err(e) => {
                let (message, _) = toml_message(e.message());
                errors.push(source.error_at(&e.span().unwrap_or(item.span()), message, Some(takes.to_owned())));
            }
        }
    }
    out
}

/// Removes the key at `span` from the table or a table inside it (`[event.collect.lines]`);
/// whether there was one.
fn remove_key(table: &mut DeTable<'_>, span: &std::ops::Range<usize>) -> bool {
    let hit = table
        .iter()
        .find(|(k, v)| k.span() == *span || v.span() == *span)
        .map(|(k, _)| k.get_ref().to_string());
    if let Some(hit) = hit {
        table.remove(hit.as_str());
        return true;
    }
    table.iter_mut().any(|(_, v)| match v.get_mut() {
        DeValue::Table(inner) => remove_key(inner, span),
        _ => false,
    })
}

fn toml_message(message: &str) -> (String, Option<String>) {
    let message = message.trim().to_owned();
    let hint = if message.starts_with("unknown field") {
        Some(
            "an [[event]] takes name, version, table, on, when, key, aggregate, data, exclude, unchanged_toast, per and collect; a collect table takes table, on, when, key, data, exclude, order_by, without_parent and unchanged_toast"
                .to_owned(),
        )
    } else if message.starts_with("missing field") {
        Some("every [[event]] needs name, table, on and key".to_owned())
    } else {
        Some("see docs/mappings.md for the file format".to_owned())
    };
    (message, hint)
}
