//! The event catalog: what each event is, where it comes from, and the JSON Schema (2020-12) of
//! the whole CloudEvent with its `data`; the AsyncAPI 3.0 document of the sinks' channels
//! (`asyncapi`); the static HTML site with the flow picture (`site`) — pure functions of the
//! compiled mappings, the tables' columns (from fixtures or the live schema) and the sinks of
//! `ficus.toml`; the caller writes the files.
#![deny(missing_docs)]

pub mod asyncapi;
pub mod lock;
pub mod sinks;
pub mod site;

use std::collections::BTreeMap;

use ficus_mapping::{Compiled, DataShape, FieldShape, JsonType, PayloadKind, Schema};
use ficus_model::TableRef;
use serde_json::{Value as Json, json};

/// One event version, and the mappings that make it.
#[derive(Clone, Debug)]
pub struct EventVersion {
    /// The event's name (`type`).
    pub name: String,
    /// Its version (`eventversion`).
    pub version: u32,
    /// Each mapping that makes it: usually one.
    pub sources: Vec<Source>,
}

/// A mapping that makes an event version.
#[derive(Clone, Debug)]
pub struct Source {
    /// The table.
    pub table: TableRef,
    /// The aggregate.
    pub aggregate: String,
    /// The operations (`insert`, `update`, ...).
    pub ops: Vec<String>,
    /// The condition, as written.
    pub when: Option<String>,
    /// The key expression, as written.
    pub key: String,
    /// Where it is written, `file:line`.
    pub origin: String,
    /// The data's shape.
    pub shape: DataShape,
    /// Whether the table's columns were known (else column fields are of any type).
    pub typed: bool,
    /// What the data is (a JSON object, text or bytes), and its content type.
    pub payload: (PayloadKind, String),
    /// Whether the application states the data itself (an outbox row's payload): its fields are
    /// the application's.
    pub stated: bool,
    /// The extensions it carries: (name, the column of the outbox row it is read from).
    pub extensions: Vec<(String, String)>,
}

/// A JSON object, of content type `application/json`.
fn json_payload() -> (PayloadKind, String) {
    (PayloadKind::Json, ficus_model::event::JSON.to_owned())
}

/// Every event version the mappings make, by name then version; `tables` gives the columns'
/// types and nullability (tables it lacks leave their fields untyped).
pub fn events(compiled: &Compiled, tables: &Schema) -> Vec<EventVersion> {
    let mut out: BTreeMap<(String, u32), EventVersion> = BTreeMap::new();
    let mut add = |name: &str, version: u32, source: Source| {
        out.entry((name.to_owned(), version))
            .or_insert_with(|| EventVersion {
                name: name.to_owned(),
                version,
                sources: vec![],
            })
            .sources
            .push(source);
    };
    for m in compiled.mappings() {
        let source = |rows: &ficus_mapping::Mapping, shape| Source {
            table: rows.table.clone(),
            aggregate: m.aggregate.to_string(),
            ops: rows.ops.iter().map(|o| o.as_str().to_owned()).collect(),
            when: rows.sources.when.clone(),
            key: rows.sources.key.clone(),
            origin: rows.origin.clone(),
            shape,
            typed: tables.contains_key(&rows.table),
            payload: json_payload(),
            stated: false,
            extensions: vec![],
        };
        add(&m.name, m.version, source(m, m.shape_in(tables)));
        // Rows whose event did not fire in their transaction make an event of their own.
        for c in &m.collects {
            if let ficus_mapping::WithoutParent::Event { name, version, per } = &c.without_parent {
                let shape = match per {
                    ficus_mapping::Per::Row => c.rows.shape(tables.get(&c.rows.table)),
                    ficus_mapping::Per::Aggregate => ficus_mapping::DataShape {
                        fields: vec![c.shape_in(tables)],
                        open: false,
                    },
                };
                add(name, *version, source(&c.rows, shape));
            }
        }
    }
    // Events the application writes into an outbox table, of the types the outbox lists.
    for o in compiled.outboxes() {
        let column = tables
            .get(&o.table)
            .and_then(|t| t.relation.columns.iter().find(|c| c.name == o.payload));
        let payload = o.payload_kind(column.map(|c| &c.ty)).unwrap_or_else(|_| json_payload());
        for ty in &o.types {
            add(
                ty,
                ficus_mapping::DEFAULT_VERSION,
                Source {
                    table: o.table.clone(),
                    aggregate: format!("the row's {}", o.aggregate_type),
                    ops: vec!["insert".to_owned()],
                    when: Some(format!("{} == '{ty}'", o.ty)),
                    key: o.aggregate_id.clone(),
                    origin: o.origin.clone(),
                    shape: DataShape {
                        fields: vec![],
                        open: true,
                    },
                    typed: true,
                    payload: payload.clone(),
                    stated: true,
                    extensions: o.extensions.clone(),
                },
            );
        }
    }
    // Events the application states itself (logical decoding messages): from the prefix.
    for m in compiled.messages() {
        add(
            &m.name,
            m.version,
            Source {
                table: TableRef::new("pg_logical_emit_message", &m.prefix),
                aggregate: m.aggregate.to_string(),
                ops: vec!["message".to_owned()],
                when: m.sources.when.clone(),
                key: m.sources.key.clone(),
                origin: m.origin.clone(),
                shape: m.shape(),
                typed: true,
                payload: json_payload(),
                stated: m.fields().is_none(),
                extensions: vec![],
            },
        );
    }
    out.into_values().collect()
}

/// A name made of letters, digits, `.`, `-` and `_` only (others become `_`): an AsyncAPI
/// component key, a page's file name.
pub(crate) fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `$id` of an event version's schema: its file name in the catalog.
pub fn schema_file(name: &str, version: u32) -> String {
    format!("{name}.v{version}.schema.json")
}

/// The JSON Schema (2020-12) of an event version: the whole CloudEvent as ficus writes it
/// (structured mode), with its `data`. `data` is an open object (a field added later does not
/// break a consumer of this schema); its fields are typed from the columns and expressions,
/// nullable where the column or expression can be null, required unless the source may leave
/// them out.
pub fn json_schema(event: &EventVersion) -> Json {
    let is = |kind: PayloadKind| event.sources.iter().filter(|s| s.payload.0 == kind).count();
    // Bytes are in `data_base64`, the rest in `data`.
    let (json_or_text, binary) = (is(PayloadKind::Json) + is(PayloadKind::Text), is(PayloadKind::Binary));
    let in_data: Vec<Json> = event
        .sources
        .iter()
        .filter(|s| s.payload.0 != PayloadKind::Binary)
        .map(data_schema)
        .collect();
    let data = match <[Json; 1]>::try_from(in_data) {
        Ok([one]) => one,
        Err(many) => json!({ "anyOf": many }),
    };
    let content_types: std::collections::BTreeSet<&str> = event.sources.iter().map(|s| s.payload.1.as_str()).collect();
    let datacontenttype = match content_types.iter().collect::<Vec<_>>().as_slice() {
        [one] => json!({ "const": one }),
        many => json!({ "enum": many }),
    };
    let described: Vec<String> = event.sources.iter().map(describe).collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_file(&event.name, event.version),
        "title": format!("{} v{}", event.name, event.version),
        "description": described.join("; or "),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "eventversion", "lsn", "txid", "data"],
        "properties": {
            "specversion": { "const": "1.0" },
            "id": { "type": "string", "minLength": 1, "description": "deterministic: the same change gives the same id" },
            "source": { "type": "string", "format": "uri-reference" },
            "type": { "const": event.name },
            "subject": { "type": "string", "description": "the aggregate's key" },
            "time": { "type": "string", "format": "date-time", "description": "the source transaction's commit time" },
            "datacontenttype": datacontenttype,
            "eventversion": { "const": event.version },
            "lsn": { "type": "string", "pattern": "^[0-9A-F]{1,8}/[0-9A-F]{1,8}$", "description": "the commit's position in the source's WAL" },
            "txid": { "type": "string", "pattern": "^[0-9]+$" },
            "backfill": { "type": "string", "description": "the backfill that read the row (snapshot events only)" },
            "ficusunavailable": { "type": "string", "description": "fields left out because the source did not send them, comma-separated" },
            "data": data,
        },
    });
    if binary > 0 {
        let types: Vec<&str> = event
            .sources
            .iter()
            .filter(|s| s.payload.0 == PayloadKind::Binary)
            .map(|s| s.payload.1.as_str())
            .collect();
        schema["properties"]["data_base64"] = json!({
            "type": "string",
            "contentEncoding": "base64",
            "description": format!("the outbox row's bytes ({})", types.join(", ")),
        });
        let required = schema["required"].as_array_mut().expect("required is an array");
        if json_or_text == 0 {
            // Every source writes bytes: no `data`.
            required.retain(|r| r != "data");
            required.push(json!("data_base64"));
            schema["properties"].as_object_mut().expect("properties").remove("data");
        } else {
            required.retain(|r| r != "data");
        }
    }
    for source in &event.sources {
        for (name, column) in &source.extensions {
            schema["properties"][name] = json!({
                "type": "string",
                "description": format!("column {column} of the outbox row, as text (absent when null)"),
            });
        }
    }
    schema
}

/// "from public.orders on update when ..., key new.id"
pub fn describe(source: &Source) -> String {
    let mut s = format!("from {} on {}", source.table, source.ops.join(", "));
    if let Some(when) = &source.when {
        s.push_str(&format!(" when {when}"));
    }
    s.push_str(&format!(", key {} ({})", source.key, source.origin));
    s
}

fn data_schema(source: &Source) -> Json {
    if source.payload.0 == PayloadKind::Text {
        return json!({
            "type": "string",
            "contentMediaType": source.payload.1,
            "description": "the outbox row's payload, as text",
        });
    }
    let shape = &source.shape;
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for field in &shape.fields {
        properties.insert(field.name.clone(), field_schema(field));
        if field.required {
            required.push(Json::String(field.name.clone()));
        }
    }
    let mut o = json!({ "type": "object", "properties": properties, "required": required });
    if source.stated {
        o["description"] = json!("the object the application writes: its fields are the application's");
    } else if shape.open {
        o["description"] = json!("the whole row: its columns were not given to the catalog");
    }
    o
}

/// A field's schema: its type, null added when it can be null, and what it comes from.
pub fn field_schema(field: &FieldShape) -> Json {
    let mut s = type_schema(&field.ty);
    if field.nullable {
        s = match s {
            Json::Object(o) if o.is_empty() => Json::Object(o),
            Json::Object(mut o) if o.get("type").is_some_and(Json::is_string) && o.len() <= 2 => {
                let t = o["type"].clone();
                o.insert("type".into(), json!([t, "null"]));
                Json::Object(o)
            }
            Json::Object(mut o) if o.get("anyOf").is_some_and(Json::is_array) => {
                if let Some(Json::Array(any)) = o.get_mut("anyOf") {
                    any.push(json!({ "type": "null" }));
                }
                Json::Object(o)
            }
            other => json!({ "anyOf": [other, { "type": "null" }] }),
        };
    }
    if let Json::Object(o) = &mut s {
        o.insert("description".into(), Json::String(source_text(field)));
    }
    s
}

/// What a field comes from: `new.total (numeric(12,2))`, or its expression.
pub fn source_text(field: &FieldShape) -> String {
    match &field.source {
        ficus_mapping::FieldSource::Column {
            row,
            column,
            type_name: Some(t),
        } => format!("{row}.{column} ({t})"),
        ficus_mapping::FieldSource::Column { row, column, .. } => format!("{row}.{column}"),
        ficus_mapping::FieldSource::Expression(e) => e.clone(),
    }
}

/// The schema of values of a JSON type, as ficus writes them.
pub fn type_schema(ty: &JsonType) -> Json {
    match ty {
        JsonType::Boolean => json!({ "type": "boolean" }),
        JsonType::Integer => json!({ "type": "integer" }),
        // NaN and the infinities have no JSON number: ficus writes them as strings.
        JsonType::Number { .. } => {
            json!({ "anyOf": [{ "type": "number" }, { "enum": ["NaN", "Infinity", "-Infinity"] }] })
        }
        JsonType::String {
            format: Some("date-time"),
            ..
        } => json!({ "anyOf": [{ "type": "string", "format": "date-time" }, { "enum": ["infinity", "-infinity"] }] }),
        JsonType::String { format: Some(f), .. } => json!({ "type": "string", "format": f }),
        JsonType::String { base64: true, .. } => json!({ "type": "string", "contentEncoding": "base64" }),
        JsonType::String { .. } => json!({ "type": "string" }),
        JsonType::Array(elem) => json!({ "type": "array", "items": type_schema(elem) }),
        JsonType::Object => json!({ "type": "object" }),
        // Without descriptions: a type is compared as it is (the lock), and a description names
        // the column's type as the source at hand calls it.
        JsonType::Rows(shape) => {
            let mut properties = serde_json::Map::new();
            let mut required = Vec::new();
            for f in &shape.fields {
                let mut s = field_schema(f);
                if let Json::Object(o) = &mut s {
                    o.remove("description");
                }
                properties.insert(f.name.clone(), s);
                if f.required {
                    required.push(Json::String(f.name.clone()));
                }
            }
            json!({ "type": "array", "items": { "type": "object", "properties": properties, "required": required } })
        }
        JsonType::Any => json!({}),
    }
}

#[cfg(test)]
mod tests;
