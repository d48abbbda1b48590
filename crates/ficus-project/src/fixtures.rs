//! Mapping fixtures: row changes written by hand (or by `ficus record`) and the events the
//! mappings must make of them, checked with no database by `ficus test`.
//!
//! ```toml
//! # mappings/tests/orders.toml
//! [tables."public.orders"]
//! key = ["id"]                      # the replica identity's columns (the primary key)
//! replica_identity = "default"      # or "full": what `old` carries
//! columns = { id = "bigint not null", status = "order_status", total = "numeric(10,2)" }
//!
//! [[change]]
//! table = "orders"                  # `public` unless a schema is named
//! op = "insert"
//! new = { id = 1, status = "placed", total = "12.50" }
//!
//! [[change]]
//! op = "update"
//! table = "orders"
//! old = { id = 1, status = "placed", total = "12.50" }
//! new = { id = 1, status = "paid", total = "12.50" }
//!
//! [expect]
//! events = '''
//! {"type":"OrderCreated","subject":"1","eventversion":1,"data":{"id":1,"status":"placed","total":12.50}}
//! {"type":"OrderPaid","subject":"1","eventversion":1,"data":{"id":1}}
//! '''
//! ```
//!
//! Values are written as Postgres sends them: their text form, converted by the column's type
//! exactly as `ficus run` converts it (TOML integers, booleans and floats are taken as their
//! text; a table or an array for a `json` column is its JSON). TOML has no null: a column left
//! out of `new` is NULL, one listed in `unchanged` is a value the update did not send (an
//! unchanged TOASTed value); a column left out of `old` was not sent, unless the replica
//! identity is `full` (then it is NULL). Changes with the same `tx` are one transaction; by
//! default each change is its own. `xid` and `commit_time` give what a mapping reads of `tx`
//! (`ficus record` writes them); `op` may also be `truncate` (no row) and `snapshot`.
//!
//! A logical decoding message (for `[[message]]` mappings) is a change with `op = "message"`, a
//! `prefix` and a `content` (a string as it is, or a table written as its JSON), in its place in
//! its transaction; `transactional = false` for one emitted outside a transaction:
//!
//! ```toml
//! [[change]]
//! tx = 2
//! op = "message"
//! prefix = "shop.events"
//! content = { type = "CartAbandoned", cart_id = 9, items = 3 }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ficus_mapping::{Compiled, EventContext};
use ficus_model::{
    CatalogTable, Cell, Column, Lsn, Op, Origin, PgType, Relation, ReplicaIdentity, Row, RowChange, TableRef, TxMeta,
};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::ProjectError;
use crate::config::line_column;

/// A fixture file, read.
#[derive(Debug)]
pub struct Fixture {
    /// The file, as shown in messages.
    pub file: String,
    /// The tables its changes are of.
    pub tables: BTreeMap<TableRef, Arc<Relation>>,
    /// Their columns declared `not null`.
    pub not_null: BTreeMap<TableRef, std::collections::BTreeSet<String>>,
    /// The row changes and messages, in order.
    pub steps: Vec<Step>,
    /// The events expected, one JSON object a line; `None` when the file has no `expect` yet.
    pub expect: Option<Vec<Json>>,
    /// Each change's line in the file.
    lines: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tables: toml::Table,
    #[serde(default, rename = "change")]
    changes: Vec<toml::Spanned<ChangeDecl>>,
    #[serde(default)]
    expect: Option<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    events: toml::Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableDecl {
    columns: toml::Table,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    replica_identity: Option<ReplicaIdentity>,
}

/// One change of a fixture: a row change, or a logical decoding message.
#[derive(Clone, Debug)]
pub enum Step {
    /// A row change.
    Change(RowChange),
    /// A logical decoding message.
    Message(FixtureMessage),
}

impl Step {
    /// Its transaction.
    fn tx(&self) -> &TxMeta {
        match self {
            Step::Change(c) => &c.tx,
            Step::Message(m) => &m.tx,
        }
    }
}

/// A logical decoding message of a fixture, as the stream would give it.
#[derive(Clone, Debug)]
pub struct FixtureMessage {
    /// Its prefix.
    pub prefix: String,
    /// Its content.
    pub content: Vec<u8>,
    /// Its own LSN.
    pub lsn: Lsn,
    /// Whether it was emitted in a transaction.
    pub transactional: bool,
    /// Its transaction.
    pub tx: TxMeta,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeDecl {
    #[serde(default)]
    table: Option<String>,
    op: String,
    /// A message's prefix.
    #[serde(default)]
    prefix: Option<String>,
    /// A message's content: a string as it is, anything else as its JSON.
    #[serde(default)]
    content: Option<toml::Value>,
    /// Whether a message was emitted in a transaction (default true).
    #[serde(default)]
    transactional: Option<bool>,
    #[serde(default)]
    new: Option<toml::Table>,
    #[serde(default)]
    old: Option<toml::Table>,
    #[serde(default)]
    unchanged: Vec<String>,
    #[serde(default)]
    tx: Option<u32>,
    /// The transaction's id as the source numbered it (`ficus record` writes it); `tx` by default.
    #[serde(default)]
    xid: Option<u32>,
    /// The commit's time (`ficus record` writes it); by default transaction N commits N seconds
    /// after 2026-01-01T00:00:00Z.
    #[serde(default)]
    commit_time: Option<toml::value::Datetime>,
}

/// The commit time of transaction 1 in fixtures (each next one a second later):
/// 2026-01-01T00:00:00Z.
const EPOCH_MICROS: i64 = 1_767_225_600_000_000;

impl Fixture {
    /// Reads a fixture file's text; `file` names it in messages.
    pub fn parse(file: &str, text: &str) -> Result<Fixture, ProjectError> {
        let at = |offset: usize, message: String, hint: &str| {
            let (line, column) = line_column(text, offset);
            ProjectError::new(format!("{file}:{line}:{column}: {message}"), hint)
        };
        let raw: File = toml::from_str(text).map_err(|e| {
            at(
                e.span().map_or(0, |s| s.start),
                e.message().trim().to_owned(),
                "see docs/mappings.md#testing-mappings-ficus-test",
            )
        })?;
        let mut tables = BTreeMap::new();
        let mut not_null: BTreeMap<TableRef, std::collections::BTreeSet<String>> = BTreeMap::new();
        for (oid, (name, decl)) in raw.tables.into_iter().enumerate() {
            let shown = name.clone();
            let decl: TableDecl = decl.try_into().map_err(|e: toml::de::Error| {
                ProjectError::new(
                    format!("{file}: [tables.{shown:?}]: {}", e.message().trim()),
                    "a table has columns = { name = \"type\", ... }, and may have key = [...] and replica_identity",
                )
            })?;
            let table = TableRef::parse(&name);
            let mut columns = Vec::with_capacity(decl.columns.len());
            for (column, ty) in &decl.columns {
                let Some(type_name) = ty.as_str() else {
                    return Err(ProjectError::new(
                        format!("{file}: [tables.{shown:?}]: column {column:?}: its type is not a string"),
                        "write it as Postgres names it: id = \"bigint not null\"",
                    ));
                };
                let type_name = type_name.trim();
                let stripped = type_name.strip_suffix("not null").map(str::trim_end);
                if stripped.is_some() {
                    not_null.entry(table.clone()).or_default().insert(column.clone());
                }
                let type_name = stripped.unwrap_or(type_name);
                columns.push(Column {
                    name: column.clone(),
                    ty: PgType::from_name(type_name),
                    type_name: type_name.to_owned(),
                    identity: decl.key.contains(column),
                });
            }
            if let Some(missing) = decl.key.iter().find(|k| !decl.columns.contains_key(*k)) {
                return Err(ProjectError::new(
                    format!("{file}: [tables.{shown:?}]: key column {missing:?} is not among its columns"),
                    "list it in columns, or correct key",
                ));
            }
            let relation = Relation {
                oid: oid as u32 + 1,
                table: table.clone(),
                replica_identity: decl.replica_identity.unwrap_or(ReplicaIdentity::Default),
                columns,
            };
            tables.insert(table, Arc::new(relation));
        }
        let mut steps = Vec::with_capacity(raw.changes.len());
        let mut lines = Vec::with_capacity(raw.changes.len());
        for (i, spanned) in raw.changes.into_iter().enumerate() {
            let offset = spanned.span().start;
            let decl = spanned.into_inner();
            let err = |message: String, hint: &str| at(offset, format!("change {}: {message}", i + 1), hint);
            let tx = decl.tx.unwrap_or(i as u32 + 1);
            let commit_lsn = Lsn(u64::from(tx) << 24);
            let commit_time_micros = match &decl.commit_time {
                None => EPOCH_MICROS + i64::from(tx) * 1_000_000,
                Some(t) => chrono::DateTime::parse_from_rfc3339(&t.to_string())
                    .map(|t| t.timestamp_micros())
                    .map_err(|e| {
                        err(
                            format!("commit_time = {t}: {e}"),
                            "write it with a date, a time and an offset: 2026-01-01T10:00:00.123456Z",
                        )
                    })?,
            };
            let lsn = Lsn(commit_lsn.0 - 0x10_0000 + i as u64 + 1);
            let tx_meta = TxMeta {
                xid: decl.xid.unwrap_or(tx),
                commit_lsn,
                commit_time_micros,
            };
            if decl.op == "message" {
                let (Some(prefix), Some(content), None, None, None, true) = (
                    decl.prefix,
                    decl.content,
                    &decl.table,
                    &decl.new,
                    &decl.old,
                    decl.unchanged.is_empty(),
                ) else {
                    return Err(err(
                        "a message has a prefix and a content, and no table or rows".into(),
                        "op = \"message\", prefix = \"shop.events\", content = { type = \"CartAbandoned\", cart_id = 9 }",
                    ));
                };
                let content = match content {
                    toml::Value::String(text) => text.into_bytes(),
                    other => serde_json::to_vec(&toml_to_json(&other)).unwrap_or_default(),
                };
                let transactional = decl.transactional.unwrap_or(true);
                steps.push(Step::Message(FixtureMessage {
                    prefix,
                    content,
                    lsn,
                    transactional,
                    // Outside a transaction, the message's own LSN stands for the commit.
                    tx: if transactional {
                        tx_meta
                    } else {
                        TxMeta {
                            xid: 0,
                            commit_lsn: lsn,
                            commit_time_micros,
                        }
                    },
                }));
                lines.push(line_column(text, offset).0);
                continue;
            }
            if decl.prefix.is_some() || decl.content.is_some() || decl.transactional.is_some() {
                return Err(err(
                    format!(
                        "a row change (op = {:?}) has no prefix, content or transactional",
                        decl.op
                    ),
                    "those are a message's: op = \"message\"",
                ));
            }
            let Some(table) = decl.table.as_deref().map(TableRef::parse) else {
                return Err(err(
                    "no table".into(),
                    "a row change names its table: table = \"orders\"",
                ));
            };
            let Some(relation) = tables.get(&table) else {
                return Err(err(
                    format!("table {table} is not declared"),
                    "declare it: [tables.\"public.orders\"] columns = { id = \"bigint\", ... }",
                ));
            };
            let op = match decl.op.as_str() {
                "insert" => Op::Insert,
                "update" => Op::Update,
                "delete" => Op::Delete,
                "snapshot" => Op::Snapshot,
                "truncate" => Op::Truncate,
                other => {
                    return Err(err(
                        format!("op = {other:?}"),
                        "op is insert, update, delete, truncate, snapshot or message",
                    ));
                }
            };
            let wants_new = matches!(op, Op::Insert | Op::Update | Op::Snapshot);
            if wants_new != decl.new.is_some() {
                return Err(err(
                    if wants_new {
                        format!("an {op} needs new = {{ ... }}")
                    } else {
                        format!("a {op} has no new row")
                    },
                    "inserts, updates and snapshots have new; updates and deletes may have old",
                ));
            }
            if op == Op::Truncate && !decl.unchanged.is_empty() {
                return Err(err("a truncate has no row".into(), "leave unchanged out"));
            }
            if decl.old.is_some() && !matches!(op, Op::Update | Op::Delete) {
                return Err(err(format!("an {op} has no old row"), "leave old out"));
            }
            let new = decl
                .new
                .as_ref()
                .map(|values| row(relation, values, &decl.unchanged, false))
                .transpose()
                .map_err(|e| err(e, "name the columns of [tables] only"))?;
            let old = decl
                .old
                .as_ref()
                .map(|values| {
                    row(
                        relation,
                        values,
                        &[],
                        relation.replica_identity != ReplicaIdentity::Full,
                    )
                })
                .transpose()
                .map_err(|e| err(e, "name the columns of [tables] only"))?;
            steps.push(Step::Change(RowChange {
                op,
                relation: relation.clone(),
                new,
                old,
                tx: tx_meta,
                origin: match op {
                    Op::Snapshot => Origin::Backfill {
                        id: Arc::from("fixture"),
                        key: Arc::from(format!("{}", i + 1)),
                    },
                    _ => Origin::Wal { lsn, seq: 0 },
                },
            }));
            lines.push(line_column(text, offset).0);
        }
        let expect = match raw.expect {
            None => None,
            Some(Expect { events: spanned }) => {
                let start = spanned.span().start;
                let mut events = Vec::new();
                for (n, line) in spanned.get_ref().lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let event: Json = serde_json::from_str(line).map_err(|e| {
                        let (l, _) = line_column(text, start);
                        ProjectError::new(
                            format!("{file}:{}: expect.events: {e}", l + n + usize::from(text[start..].starts_with("'''\n") || text[start..].starts_with("\"\"\"\n"))),
                            "each line of [expect] events is one event as a JSON object; `ficus test --accept` writes them",
                        )
                    })?;
                    events.push(event);
                }
                Some(events)
            }
        };
        Ok(Fixture {
            file: file.to_owned(),
            tables,
            not_null,
            steps,
            expect,
            lines,
        })
    }

    /// The row changes, in order (the messages left out).
    pub fn changes(&self) -> impl Iterator<Item = &RowChange> {
        self.steps.iter().filter_map(|s| match s {
            Step::Change(c) => Some(c),
            Step::Message(_) => None,
        })
    }

    /// The tables as the mappings are checked against them.
    pub fn schema(&self) -> ficus_mapping::Schema {
        self.tables
            .iter()
            .map(|(t, r)| {
                (
                    t.clone(),
                    CatalogTable {
                        relation: (**r).clone(),
                        unseen: vec![],
                        toastable: Default::default(),
                        partitioned: false,
                        not_null: self.not_null.get(t).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect()
    }

    /// Runs the changes through the mappings, as `ficus run` maps them: the events, each as a
    /// line of `expect`.
    pub fn run(&self, compiled: &Compiled, source_name: &str) -> Result<Vec<Json>, ProjectError> {
        let ctx = EventContext::new(source_name, "fixture");
        let mut bound = BTreeMap::new();
        let mut out = Vec::new();
        // A transaction's events that collect rows come at its end: the next change of another
        // transaction, or the last change.
        let mut tx = ficus_mapping::Transaction::default();
        let commit = |tx: &mut ficus_mapping::Transaction, out: &mut Vec<Json>, i: usize| {
            let events = tx.commit(&ctx).map_err(|e| {
                ProjectError::new(
                    format!(
                        "{}:{}: the transaction of change {}: {e}",
                        self.file,
                        self.lines[i],
                        i + 1
                    ),
                    e.hint(),
                )
            })?;
            out.extend(events.iter().map(expectation));
            Ok::<(), ProjectError>(())
        };
        let failed = |i: usize, e: ficus_mapping::MapError| {
            ProjectError::new(
                format!("{}:{}: change {}: {e}", self.file, self.lines[i], i + 1),
                e.hint(),
            )
        };
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 && self.steps[i - 1].tx() != step.tx() {
                commit(&mut tx, &mut out, i - 1)?;
            }
            let change = match step {
                Step::Change(change) => change,
                Step::Message(m) => {
                    let message = ficus_mapping::Message {
                        prefix: &m.prefix,
                        content: &m.content,
                        lsn: m.lsn,
                        transactional: m.transactional,
                        tx: &m.tx,
                    };
                    let events = compiled
                        .apply_message(&message, &ctx, &mut tx)
                        .map_err(|e| failed(i, e))?;
                    out.extend(events.iter().map(expectation));
                    continue;
                }
            };
            let table = &change.relation.table;
            if !bound.contains_key(table) {
                let b = compiled
                    .bind(change.relation.clone(), &ctx)
                    .map_err(|e| ProjectError::new(format!("{}: {e}", self.file), e.hint()))?;
                bound.insert(table.clone(), b);
            }
            let Some(b) = &bound[table] else { continue };
            let events = b.apply_in(change, &ctx, &mut tx).map_err(|e| failed(i, e))?;
            out.extend(events.iter().map(expectation));
        }
        if !self.steps.is_empty() {
            commit(&mut tx, &mut out, self.steps.len() - 1)?;
        }
        Ok(out)
    }
}

/// A column value of a fixture as Postgres' text form of it.
fn text_of(ty: &PgType, value: &toml::Value) -> String {
    use toml::Value as T;
    match (ty, value) {
        (PgType::Json, T::String(s)) => s.clone(),
        (PgType::Json, v) => serde_json::to_string(&toml_to_json(v)).unwrap_or_default(),
        (_, T::String(s)) => s.clone(),
        (_, T::Integer(n)) => n.to_string(),
        (_, T::Float(f)) => f.to_string(),
        (_, T::Boolean(b)) => if *b { "t" } else { "f" }.to_owned(),
        (_, T::Datetime(d)) => d.to_string(),
        (PgType::Array(elem), T::Array(items)) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| {
                    let t = text_of(elem, v);
                    if matches!(v, T::String(_)) || matches!(v, T::Table(_)) {
                        format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))
                    } else {
                        t
                    }
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        (_, v) => serde_json::to_string(&toml_to_json(v)).unwrap_or_default(),
    }
}

fn toml_to_json(v: &toml::Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// A row of a relation from a fixture's values: left out is NULL, or unsent when `absent_unsent`;
/// `unchanged` columns unsent.
fn row(relation: &Relation, values: &toml::Table, unchanged: &[String], absent_unsent: bool) -> Result<Row, String> {
    if let Some(unknown) = values
        .keys()
        .chain(unchanged)
        .find(|k| relation.column_index(k).is_none())
    {
        return Err(format!("{} has no column {unknown:?}", relation.table));
    }
    Ok(Row(relation
        .columns
        .iter()
        .map(|c| match values.get(&c.name) {
            Some(v) => Cell::text(&text_of(&c.ty, v)),
            None if unchanged.contains(&c.name) || absent_unsent => Cell::Unsent,
            None => Cell::Null,
        })
        .collect()))
}

/// What a fixture expects of an event: its type, subject, version, the fields left out as
/// unavailable, an outbox's content type (when not JSON) and extensions, and its data (an
/// outbox's text as a string, its bytes as `data_base64`). Ids, times and positions depend on
/// where the changes were made, not on the mappings, and are left out.
pub fn expectation(event: &ficus_model::Event) -> Json {
    use base64::Engine;
    let mut o = serde_json::Map::new();
    o.insert("type".into(), Json::String(event.ty.to_string()));
    o.insert("subject".into(), Json::String(event.subject.clone()));
    o.insert("eventversion".into(), Json::from(event.eventversion));
    if let Some(u) = &event.unavailable {
        o.insert("ficusunavailable".into(), Json::String(u.clone()));
    }
    if event.datacontenttype != ficus_model::event::JSON {
        o.insert(
            "datacontenttype".into(),
            Json::String(event.datacontenttype.to_string()),
        );
    }
    for (name, value) in &event.extensions {
        o.insert(name.to_string(), Json::String(value.clone()));
    }
    match &event.body {
        None => o.insert("data".into(), event.data.to_value()),
        Some(ficus_model::Body::Text(text)) => o.insert("data".into(), Json::String(text.clone())),
        Some(ficus_model::Body::Binary(bytes)) => o.insert(
            "data_base64".into(),
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
    Json::Object(o)
}

/// The `expect` text of events: one compact JSON object a line.
pub fn expect_text(events: &[Json]) -> String {
    let mut s = String::new();
    for e in events {
        s.push_str(&serde_json::to_string(e).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// A readable difference between the events expected and those made: a line diff of the events,
/// and for each event that changed, the fields that differ. Empty when they are equal.
pub fn diff(expected: &[Json], actual: &[Json]) -> String {
    use std::fmt::Write;
    if expected == actual {
        return String::new();
    }
    let (e, a) = (expect_text(expected), expect_text(actual));
    let text = similar::TextDiff::from_lines(&e, &a);
    let mut out = String::new();
    for op in text.ops() {
        for change in text.iter_changes(op) {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => "- ",
                similar::ChangeTag::Insert => "+ ",
                similar::ChangeTag::Equal => "  ",
            };
            let _ = write!(out, "{sign}{}", change.value());
        }
        if let similar::DiffOp::Replace {
            old_index,
            old_len,
            new_index,
            new_len,
        } = *op
        {
            for k in 0..old_len.min(new_len) {
                let mut notes = Vec::new();
                fields(&expected[old_index + k], &actual[new_index + k], "", &mut notes);
                for note in notes {
                    let _ = writeln!(out, "    {note}");
                }
            }
        }
    }
    out
}

/// The paths at which two values differ.
fn fields(expected: &Json, actual: &Json, path: &str, notes: &mut Vec<String>) {
    let shown = |v: Option<&Json>| v.map_or("(absent)".to_owned(), |v| v.to_string());
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            for (k, ev) in e {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    Some(av) => fields(ev, av, &p, notes),
                    None => notes.push(format!("{p}: expected {}, got (absent)", shown(Some(ev)))),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    notes.push(format!("{p}: expected (absent), got {}", shown(Some(av))));
                }
            }
        }
        (e, a) if e != a => notes.push(format!("{path}: expected {e}, got {a}")),
        _ => {}
    }
}

/// The fixture's text with `[expect] events` set to `events`, everything else as written.
pub fn accept(text: &str, events: &[Json]) -> Result<String, ProjectError> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| ProjectError::new(e.to_string(), "correct the fixture's TOML"))?;
    let body = expect_text(events);
    // A literal multi-line string keeps the JSON readable (no escapes), when it can hold it.
    let value: toml_edit::Value = match format!("'''\n{body}'''").parse() {
        Ok(literal) if !body.contains("'''") => literal,
        _ => toml_edit::Value::from(body),
    };
    if !doc.contains_table("expect") {
        doc["expect"] = toml_edit::table();
    }
    doc["expect"]["events"] = toml_edit::Item::Value(value);
    Ok(doc.to_string())
}

/// The default fixture files, relative to the config's directory.
pub const DEFAULT_FIXTURES: &str = "mappings/tests/*.toml";

/// What a fixture file came to.
#[derive(Debug)]
pub enum Verdict {
    /// The mappings made the events expected (this many).
    Passed(usize),
    /// They made other events: the readable difference.
    Failed(String),
    /// The file expects nothing yet: the events made, to review and `--accept`.
    Unreviewed(Vec<Json>),
    /// `--accept` wrote the events made as the expectation (this many).
    Accepted(usize),
    /// The file or a change is wrong, or a change could not be mapped.
    Error(ProjectError),
}

/// A fixture file and its verdict.
#[derive(Debug)]
pub struct Outcome {
    /// The file, as shown.
    pub file: String,
    /// What it came to.
    pub verdict: Verdict,
}

/// Runs every fixture file that `pattern` (relative to the config's directory) matches through
/// the mappings; with `accept`, writes the events made as each file's expectation. Nothing
/// connects to anything.
pub fn test(
    config: &crate::Config,
    compiled: &Compiled,
    pattern: &str,
    accept: bool,
) -> Result<Vec<Outcome>, ProjectError> {
    let paths = crate::mappings::mapping_paths(&config.dir, &[pattern.to_owned()]).map_err(|_| {
        ProjectError::new(
            format!("no fixture file matches {pattern:?} (in {})", config.dir.display()),
            "write one (see docs/mappings.md#testing-mappings-ficus-test); `ficus init` writes one per table",
        )
    })?;
    let source_name = config.source.name.clone().unwrap_or_else(|| "fixture".into());
    let mut outcomes = Vec::new();
    for path in paths {
        let file = config.shown(&path);
        let verdict = (|| -> Result<Verdict, ProjectError> {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ProjectError::new(format!("{file}: {e}"), "check the file's permissions"))?;
            let fixture = Fixture::parse(&file, &text)?;
            let made = fixture.run(compiled, &source_name)?;
            if accept && fixture.expect.as_deref() != Some(&made) {
                std::fs::write(&path, super::fixtures::accept(&text, &made)?)
                    .map_err(|e| ProjectError::new(format!("{file}: {e}"), "check the file's permissions"))?;
                return Ok(Verdict::Accepted(made.len()));
            }
            Ok(match &fixture.expect {
                None => Verdict::Unreviewed(made),
                Some(expected) if *expected == made => Verdict::Passed(made.len()),
                Some(expected) => Verdict::Failed(diff(expected, &made)),
            })
        })()
        .unwrap_or_else(Verdict::Error);
        outcomes.push(Outcome { file, verdict });
    }
    Ok(outcomes)
}

#[cfg(test)]
pub(crate) mod tests;

/// Examples of events by type and version: an event as `[expect]` has it, and its file.
pub type Examples = BTreeMap<(String, u32), (Json, String)>;

/// Every fixture file that `pattern` (relative to the config's directory) matches, read; no file
/// at all is none.
pub fn read(config: &crate::Config, pattern: &str) -> Result<Vec<Fixture>, ProjectError> {
    let Ok(paths) = crate::mappings::mapping_paths(&config.dir, &[pattern.to_owned()]) else {
        return Ok(Vec::new());
    };
    paths
        .iter()
        .map(|path| {
            let file = config.shown(path);
            let text = std::fs::read_to_string(path)
                .map_err(|e| ProjectError::new(format!("{file}: {e}"), "check the file's permissions"))?;
            Fixture::parse(&file, &text)
        })
        .collect()
}

/// An example of each event version the fixtures expect: the first `[expect]` event of each
/// type and version, with the file it is in.
pub fn examples(fixtures: &[Fixture]) -> Examples {
    let mut out = BTreeMap::new();
    for fixture in fixtures {
        for event in fixture.expect.iter().flatten() {
            let (Some(ty), Some(version)) = (
                event["type"].as_str(),
                event["eventversion"].as_u64().and_then(|v| u32::try_from(v).ok()),
            ) else {
                continue;
            };
            out.entry((ty.to_owned(), version))
                .or_insert_with(|| (event.clone(), fixture.file.clone()));
        }
    }
    out
}

/// The tables every fixture file that `pattern` matches declares, merged (see [`tables_of`]).
pub fn tables(config: &crate::Config, pattern: &str) -> Result<ficus_mapping::Schema, ProjectError> {
    tables_of(&read(config, pattern)?)
}

/// The tables the fixtures declare, merged: the columns' types the catalog and the lock type
/// fields with when there is no database. Two files that declare one table differently are an
/// error; no fixture at all is no tables.
pub fn tables_of(fixtures: &[Fixture]) -> Result<ficus_mapping::Schema, ProjectError> {
    let mut schema = ficus_mapping::Schema::new();
    let mut declared_in: BTreeMap<TableRef, String> = BTreeMap::new();
    for fixture in fixtures {
        let file = &fixture.file;
        for (table, t) in fixture.schema() {
            match schema.get(&table) {
                Some(seen) if seen.relation.columns != t.relation.columns || seen.not_null != t.not_null => {
                    return Err(ProjectError::new(
                        format!(
                            "{file}: table {table} is declared differently in {}",
                            declared_in[&table]
                        ),
                        "declare a table the same way in every fixture (the columns as the database has them)",
                    ));
                }
                Some(_) => {}
                None => {
                    declared_in.insert(table.clone(), file.clone());
                    schema.insert(table, t);
                }
            }
        }
    }
    Ok(schema)
}
