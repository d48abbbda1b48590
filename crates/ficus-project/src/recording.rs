//! What `ficus record` writes: the row changes a live run mapped, with the events it made of
//! them, as fixture files that `ficus test` runs with no database.
//!
//! One file per table (`orders.recorded.toml`; a second one, `orders.recorded.2.toml`, when the
//! table's columns changed during the run), its columns declared with their types, each change
//! with its transaction's id and commit time (a mapping may read `tx`), and the events `ficus run`
//! delivered as the expectation. Up to a limit of changes per table: a recording is a test, not
//! an archive. The logical decoding messages `[[message]]` mappings map go into one file of their
//! own, `pg_logical_emit_message.recorded.toml`, under the same limit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use ficus_model::{Cell, Column, Lsn, Origin, PgType, Relation, ReplicaIdentity, RowChange, TableRef};
use serde_json::Value as Json;

use crate::ProjectError;

/// A column's type as a fixture declares it: so that `PgType::from_name` gives back the type the
/// source resolved (`ty`). Postgres' name (`numeric(10,2)`, an enum's name) when it does; a
/// domain's base type from `base` (what `format_type` names it) when there is one; else the
/// resolved type's own name.
pub fn fixture_type(type_name: &str, ty: &PgType, base: Option<&str>) -> String {
    for name in [Some(type_name), base].into_iter().flatten() {
        if !name.is_empty() && PgType::from_name(name) == *ty {
            return name.to_owned();
        }
    }
    pg_name(ty)
}

/// The name of a resolved type that `PgType::from_name` reads back as it.
pub fn pg_name(ty: &PgType) -> String {
    match ty {
        PgType::Bool => "boolean".into(),
        PgType::Int => "integer".into(),
        PgType::Int8 => "bigint".into(),
        PgType::Float => "double precision".into(),
        PgType::Numeric => "numeric".into(),
        PgType::Text => "text".into(),
        PgType::Bytea => "bytea".into(),
        PgType::Json => "jsonb".into(),
        PgType::Timestamptz => "timestamptz".into(),
        PgType::Timestamp => "timestamp".into(),
        PgType::Date => "date".into(),
        PgType::Time => "time".into(),
        PgType::Interval => "interval".into(),
        PgType::Array(elem) => format!("{}[]", pg_name(elem)),
    }
}

/// What the source knows of a table's columns beyond what the stream says: their type names,
/// domains' base types, `NOT NULL`. Keyed by column.
#[derive(Clone, Debug, Default)]
pub struct ColumnFacts {
    /// The type as Postgres names it (`numeric(10,2)`, `order_status`).
    pub type_names: HashMap<String, String>,
    /// A domain's base type, as Postgres names it.
    pub base_types: HashMap<String, String>,
    /// Columns declared `NOT NULL`.
    pub not_null: BTreeSet<String>,
}

/// A table's `[tables."schema.name"]` declaration.
pub fn table_declaration(relation: &Relation, facts: &ColumnFacts) -> String {
    let mut s = format!("[tables.{}]\n", quoted(&relation.table.to_string()));
    let key: Vec<String> = relation
        .columns
        .iter()
        .filter(|c| c.identity)
        .map(|c| quoted(&c.name))
        .collect();
    if !key.is_empty() {
        let _ = writeln!(s, "key = [{}]", key.join(", "));
    }
    let identity = match relation.replica_identity {
        ReplicaIdentity::Default => "default",
        ReplicaIdentity::Full => "full",
        ReplicaIdentity::Index => "index",
        ReplicaIdentity::Nothing => "nothing",
    };
    let _ = writeln!(s, "replica_identity = \"{identity}\"");
    let columns: Vec<String> = relation
        .columns
        .iter()
        .map(|c| format!("{} = {}", key_of(&c.name), quoted(&column_type(c, facts))))
        .collect();
    let _ = writeln!(s, "columns = {{ {} }}", columns.join(", "));
    s
}

fn column_type(c: &Column, facts: &ColumnFacts) -> String {
    let name = facts
        .type_names
        .get(&c.name)
        .map_or(c.type_name.as_str(), String::as_str);
    let mut ty = fixture_type(name, &c.ty, facts.base_types.get(&c.name).map(String::as_str));
    if facts.not_null.contains(&c.name) {
        ty.push_str(" not null");
    }
    ty
}

/// A TOML basic string.
pub fn quoted(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// A TOML key: bare when it can be.
pub fn key_of(name: &str) -> String {
    toml_edit::Key::new(name).display_repr().into_owned()
}

/// A value's text form as a fixture writes it: integers and booleans as TOML's own, everything
/// else as the string Postgres sent (which the fixture converts exactly as `ficus run` does).
pub(crate) fn value_of(ty: &PgType, text: &str) -> String {
    match ty {
        PgType::Int | PgType::Int8 if text.parse::<i64>().is_ok() => text.to_owned(),
        PgType::Bool if text == "t" => "true".into(),
        PgType::Bool if text == "f" => "false".into(),
        _ => quoted(text),
    }
}

/// The changes of one table, under one description of its columns.
#[derive(Debug)]
struct Recorded {
    relation: Arc<Relation>,
    /// Its changes and the events made of each, as `expect` lines.
    changes: Vec<(RowChange, Vec<Json>)>,
    /// Changes seen past the limit, not recorded.
    left_out: u64,
}

/// A logical decoding message recorded, with the events made of it.
#[derive(Debug)]
struct RecordedMessage {
    prefix: String,
    content: Vec<u8>,
    tx: ficus_model::TxMeta,
    events: Vec<Json>,
}

/// The row changes of a run and their events, for fixture files.
#[derive(Debug)]
pub struct Recording {
    limit: usize,
    /// Per table, its descriptions in the order they came (a schema change starts another).
    tables: BTreeMap<TableRef, Vec<Recorded>>,
    /// The mapped messages, and how many were seen past the limit.
    messages: Vec<RecordedMessage>,
    messages_left_out: u64,
    /// The last WAL change recorded: (commit, change's LSN, its place in the record). A stream
    /// resumed after a lost connection sends again from the last acknowledged commit; what is
    /// not past this was recorded already.
    last_wal: Option<(Lsn, Lsn, u32)>,
}

/// A fixture file a recording makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedFile {
    /// Its name (`orders.recorded.toml`).
    pub name: String,
    /// The table.
    pub table: TableRef,
    /// Its text.
    pub text: String,
    /// The changes in it.
    pub changes: usize,
    /// The changes of its table seen past the limit and left out.
    pub left_out: u64,
}

/// The suffix of recorded fixture files: `<table>.recorded.toml`.
pub const RECORDED_SUFFIX: &str = ".recorded";

impl Recording {
    /// A recording of at most `limit` changes per table.
    pub fn new(limit: usize) -> Recording {
        Recording {
            limit,
            tables: BTreeMap::new(),
            messages: Vec::new(),
            messages_left_out: 0,
            last_wal: None,
        }
    }

    /// Records a logical decoding message of a transaction and the events mapped from it, as
    /// [`Recording::record`] records a change.
    pub fn record_message(
        &mut self,
        prefix: &str,
        content: &[u8],
        lsn: Lsn,
        tx: &ficus_model::TxMeta,
        events: Vec<Json>,
    ) {
        let at = (tx.commit_lsn, lsn, 0);
        if self.last_wal.is_some_and(|last| at <= last) {
            return;
        }
        self.last_wal = Some(at);
        if self.messages.len() >= self.limit {
            self.messages_left_out += 1;
            return;
        }
        self.messages.push(RecordedMessage {
            prefix: prefix.to_owned(),
            content: content.to_vec(),
            tx: tx.clone(),
            events,
        });
    }

    /// Records a change and the events mapped from it (each as [`crate::fixtures::expectation`]
    /// makes it). A WAL change seen before (a resumed stream sends again) is not recorded twice.
    pub fn record(&mut self, change: &RowChange, events: Vec<Json>) {
        if let Origin::Wal { lsn, seq } = change.origin {
            let at = (change.tx.commit_lsn, lsn, seq);
            if self.last_wal.is_some_and(|last| at <= last) {
                return;
            }
            self.last_wal = Some(at);
        }
        let parts = self.tables.entry(change.relation.table.clone()).or_default();
        let same = parts.last().is_some_and(|r| {
            r.relation.columns == change.relation.columns
                && r.relation.replica_identity == change.relation.replica_identity
        });
        if !same {
            parts.push(Recorded {
                relation: change.relation.clone(),
                changes: Vec::new(),
                left_out: 0,
            });
        }
        let recorded: usize = parts.iter().map(|r| r.changes.len()).sum();
        let Some(part) = parts.last_mut() else { return };
        if recorded >= self.limit {
            part.left_out += 1;
            return;
        }
        part.changes.push((change.clone(), events));
    }

    /// Events a transaction's commit made of the changes of `table` (an event that collects
    /// rows, as `ficus test` makes it of the file's changes): they go with its last change
    /// recorded, where `ficus test` makes them.
    pub fn record_commit(&mut self, table: &TableRef, events: Vec<Json>) {
        if let Some(last) = self
            .tables
            .get_mut(table)
            .and_then(|parts| parts.last_mut())
            .and_then(|part| part.changes.last_mut())
        {
            last.1.extend(events);
        }
    }

    /// How many changes are recorded.
    pub fn len(&self) -> usize {
        self.tables.values().flatten().map(|r| r.changes.len()).sum::<usize>() + self.messages.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fixture files: one per table (and per change of its columns), with the events as
    /// their expectation. `facts` gives what the stream does not say of a table's columns.
    pub fn files(&self, facts: &BTreeMap<TableRef, ColumnFacts>) -> Result<Vec<RecordedFile>, ProjectError> {
        let mut files = Vec::new();
        for (table, parts) in &self.tables {
            let facts = facts.get(table).cloned().unwrap_or_default();
            for (n, part) in parts.iter().enumerate() {
                if part.changes.is_empty() {
                    continue;
                }
                let stem = if table.schema == "public" {
                    table.name.clone()
                } else {
                    table.to_string()
                };
                let name = match n {
                    0 => format!("{stem}{RECORDED_SUFFIX}.toml"),
                    n => format!("{stem}{RECORDED_SUFFIX}.{}.toml", n + 1),
                };
                let text = fixture_text(table, part, &facts);
                let events: Vec<Json> = part.changes.iter().flat_map(|(_, e)| e.iter().cloned()).collect();
                files.push(RecordedFile {
                    name,
                    table: table.clone(),
                    text: crate::fixtures::accept(&text, &events)?,
                    changes: part.changes.len(),
                    left_out: part.left_out,
                });
            }
        }
        if !self.messages.is_empty() {
            let text = self.messages_text();
            let events: Vec<Json> = self.messages.iter().flat_map(|m| m.events.iter().cloned()).collect();
            files.push(RecordedFile {
                name: format!("{MESSAGES}{RECORDED_SUFFIX}.toml"),
                table: TableRef::new("pg_catalog", MESSAGES),
                text: crate::fixtures::accept(&text, &events)?,
                changes: self.messages.len(),
                left_out: self.messages_left_out,
            });
        }
        Ok(files)
    }

    /// The messages' fixture: each a change of `op = "message"`, its content as the text it is
    /// (a content that is not UTF-8 cannot be written, and is written as its lossy text).
    fn messages_text(&self) -> String {
        let mut s = String::from(
            "# Recorded by `ficus record`: logical decoding messages that `ficus run` mapped ([[message]]),\n\
             # and the events it delivered of them. `ficus test` runs them through the mappings with no database.\n",
        );
        if self.messages_left_out > 0 {
            let _ = writeln!(
                s,
                "# {} more messages were seen and left out (ficus record --limit).",
                self.messages_left_out
            );
        }
        let mut txs = HashMap::new();
        for m in &self.messages {
            let _ = writeln!(s, "\n[[change]]\nop = \"message\"");
            write_tx(&mut s, &mut txs, &m.tx);
            let _ = writeln!(s, "prefix = {}", quoted(&m.prefix));
            let _ = writeln!(s, "content = {}", quoted(&String::from_utf8_lossy(&m.content)));
        }
        s
    }
}

/// The stem of the messages' recorded file, `pg_logical_emit_message.recorded.toml` (no table's
/// file is named so but a table of that name's).
pub const MESSAGES: &str = "pg_logical_emit_message";

fn fixture_text(table: &TableRef, part: &Recorded, facts: &ColumnFacts) -> String {
    let mut s = format!(
        "# Recorded by `ficus record`: row changes of {table} that `ficus run` mapped, and the events it\n\
         # delivered of them. `ficus test` runs them through the mappings with no database.\n"
    );
    if part.left_out > 0 {
        let _ = writeln!(
            s,
            "# {} more changes of {table} were seen and left out (ficus record --limit).",
            part.left_out
        );
    }
    s.push('\n');
    s.push_str(&table_declaration(&part.relation, facts));
    let shown = if table.schema == "public" {
        table.name.clone()
    } else {
        table.to_string()
    };
    let relation = &part.relation;
    let mut txs = HashMap::new();
    for (change, _) in &part.changes {
        let _ = writeln!(s, "\n[[change]]\ntable = {}", quoted(&shown));
        let _ = writeln!(s, "op = \"{}\"", change.op.as_str());
        write_tx(&mut s, &mut txs, &change.tx);
        if let Some(old) = &change.old {
            // Under FULL a column left out is NULL; otherwise one the source did not send (the
            // replica identity's columns, which it sends, are never NULL).
            let _ = writeln!(s, "old = {}", row_text(relation, old));
        }
        if let Some(new) = &change.new {
            let _ = writeln!(s, "new = {}", row_text(relation, new));
            let unchanged: Vec<String> = relation
                .columns
                .iter()
                .zip(&new.0)
                .filter(|(_, c)| **c == Cell::Unsent)
                .map(|(col, _)| quoted(&col.name))
                .collect();
            if !unchanged.is_empty() {
                let _ = writeln!(s, "unchanged = [{}]", unchanged.join(", "));
            }
        }
    }
    s
}

/// A recorded change's transaction: `tx` (numbered in the file, by commit, in `txs`), its `xid`
/// and its `commit_time`.
fn write_tx(s: &mut String, txs: &mut HashMap<Lsn, usize>, tx: &ficus_model::TxMeta) {
    let next = txs.len() + 1;
    let n = *txs.entry(tx.commit_lsn).or_insert(next);
    let _ = writeln!(s, "tx = {n}\nxid = {}", tx.xid);
    if let Some(t) = chrono::DateTime::from_timestamp_micros(tx.commit_time_micros) {
        let _ = writeln!(
            s,
            "commit_time = {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
    }
}

/// `{ id = 1, status = "paid" }`: the row's sent values (NULLs and unsent values left out).
fn row_text(relation: &Relation, row: &ficus_model::Row) -> String {
    let mut fields = Vec::new();
    for (column, cell) in relation.columns.iter().zip(&row.0) {
        if let Cell::Text(bytes) = cell {
            fields.push(format!(
                "{} = {}",
                key_of(&column.name),
                value_of(&column.ty, &ficus_model::text_of(bytes))
            ));
        }
    }
    if fields.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", fields.join(", "))
    }
}

#[cfg(test)]
mod tests;
