//! Checking and compiling mapping files: every error of every file at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

use ficus_model::{CatalogTable, Op, Relation, ReplicaIdentity, TableRef, Unseen};
use toml::Spanned;

use crate::cel_value;
use crate::diagnostic::{Diagnostic, SourceText};
use crate::expr::{self, Cols, ColumnRef, Expr, Reads, Var};
use crate::file::{MappingFile, RawCollect, RawData, RawEvent, RawWithoutParent};

/// The live schema of the mapped tables, for checking mappings against it.
pub type Schema = BTreeMap<TableRef, CatalogTable>;

/// The default schema version of an event.
pub const DEFAULT_VERSION: u32 = 1;

/// What a mapping does with a value an update left unchanged and Postgres did not send (a TOASTed
/// value, on a table whose replica identity is not FULL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum UnchangedToast {
    /// Stop before acknowledging the change, naming table, key and column (the default).
    #[default]
    Stop,
    /// Read the row again by its key (the runtime does it) and take the value from there: the
    /// value now, which is the change's unless the row changed again since.
    Reselect,
    /// Leave the field out of `data`, and list it in the event's `ficusunavailable` attribute.
    Omit,
}

impl UnchangedToast {
    /// Its name in mapping files.
    pub fn as_str(self) -> &'static str {
        match self {
            UnchangedToast::Stop => "stop",
            UnchangedToast::Reselect => "reselect",
            UnchangedToast::Omit => "omit",
        }
    }
}

/// One compiled `[[event]]` rule.
#[derive(Debug)]
pub struct Mapping {
    /// The event's name (CloudEvents `type`).
    pub name: Arc<str>,
    /// The event's schema version.
    pub version: u32,
    /// The table whose row changes it maps.
    pub table: TableRef,
    /// The aggregate its events belong to: with the key, their stream in the store.
    pub aggregate: Arc<str>,
    /// The operations it maps.
    pub ops: Vec<Op>,
    /// Where it is written, `file:line`.
    pub origin: String,
    /// The columns it reads of the row after the change (`new`).
    pub reads_new: ColumnsRead,
    /// The columns it reads of the row before the change (`old`).
    pub reads_old: ColumnsRead,
    /// What it does with an unchanged value the source did not send.
    pub unchanged_toast: UnchangedToast,
    /// The expressions as written.
    pub sources: Sources,
    /// Rows of other tables it collects from its transaction, each into a field of its data.
    pub collects: Vec<Collect>,
    /// Made at most once per transaction and key, of the row's net change (`per = "transaction"`).
    pub per_transaction: bool,
    pub(crate) when: Option<Expr>,
    pub(crate) key: Expr,
    pub(crate) data: Data,
    pub(crate) reads: Reads,
}

/// Rows of a table written in the same transaction as an event's row change, collected into a
/// field of the event (`[event.collect.lines]`): the lines of an order.
#[derive(Debug)]
pub struct Collect {
    /// The field of the event's data that holds the rows, an array.
    pub field: String,
    /// How a row is collected, as a mapping of its table: its operations, `when`, `key` (the key
    /// of the event it belongs to) and `data` (the array's element). Its name is
    /// `Event.field`.
    pub rows: Arc<Mapping>,
    /// `order_by` as written; `None`: the rows' order in the transaction.
    pub order_by: Option<String>,
    /// What rows whose event did not fire in their transaction make.
    pub without_parent: WithoutParent,
    pub(crate) order: Option<Expr>,
}

/// What collected rows make when the event they belong to did not fire in their transaction (a
/// line added to an order placed before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WithoutParent {
    /// Nothing (the default): another mapping of the table may map them.
    Ignore,
    /// An event of the parent's aggregate, keyed by the parent's key.
    Event {
        /// Its name.
        name: Arc<str>,
        /// Its version.
        version: u32,
        /// One per transaction and key, or one per row.
        per: Per,
    },
}

/// How many events rows without their parent make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    /// One per transaction and key, its data `{ field: [rows] }`.
    Aggregate,
    /// One per row, its data the row's.
    Row,
}

/// A mapping's expressions as written in its file (for the catalog and messages).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `when`, if any.
    pub when: Option<String>,
    /// `key`.
    pub key: String,
    /// Each `data` field's expression, in the order of the fields (none for a whole row).
    pub fields: Vec<String>,
}

impl Mapping {
    /// Whether the mapping reads `old` values beyond what every replica identity sends.
    pub fn reads_old(&self) -> bool {
        !self.reads.old.is_none() || self.reads.changed
    }

    /// Whether it reads the column, in `new` or `old`.
    pub fn reads(&self, column: &str) -> bool {
        self.reads_new.contains(column) || self.reads_old.contains(column)
    }
}

/// The columns of its table a mapping reads, of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnsRead {
    /// Every column but these (`data = "new"` with `exclude`, or an expression that reads the
    /// whole row).
    AllBut(BTreeSet<String>),
    /// Only these.
    Only(BTreeSet<String>),
}

impl ColumnsRead {
    /// Whether the column is read.
    pub fn contains(&self, column: &str) -> bool {
        match self {
            ColumnsRead::AllBut(except) => !except.contains(column),
            ColumnsRead::Only(columns) => columns.contains(column),
        }
    }

    /// What expressions read of a row, and the whole row but `exclude` when it is the data.
    fn of(exprs: &Cols, whole_row_but: Option<&[String]>) -> ColumnsRead {
        match (exprs, whole_row_but) {
            (Cols::All, _) => ColumnsRead::AllBut(BTreeSet::new()),
            (Cols::Some(read), Some(exclude)) => {
                ColumnsRead::AllBut(exclude.iter().filter(|c| !read.contains(*c)).cloned().collect())
            }
            (Cols::None, Some(exclude)) => ColumnsRead::AllBut(exclude.iter().cloned().collect()),
            (Cols::Some(read), None) => ColumnsRead::Only(read.clone()),
            (Cols::None, None) => ColumnsRead::Only(BTreeSet::new()),
        }
    }
}

#[derive(Debug)]
pub(crate) enum Data {
    Fields(Vec<(String, Expr)>),
    Row { var: Var, exclude: Vec<String> },
}

/// One compiled `[[outbox]]`: an outbox table whose inserted rows are events the application
/// states, with the Debezium outbox event router's columns.
#[derive(Debug)]
pub struct OutboxMapping {
    /// The outbox table.
    pub table: TableRef,
    /// The column of the event id, if any.
    pub id: Option<String>,
    /// Whether `id` is the default (`id`), which a table without such a column does without.
    pub id_default: bool,
    /// The column of the aggregate's type.
    pub aggregate_type: String,
    /// The column of the aggregate's id.
    pub aggregate_id: String,
    /// The column of the event's type.
    pub ty: String,
    /// The column of the event's data.
    pub payload: String,
    /// The payload's media type, as written (`None`: the default of the payload column's type).
    pub content_type: Option<String>,
    /// Columns carried as CloudEvents extensions: (extension name, column), by name.
    pub extensions: Vec<(String, String)>,
    /// The event types it may make (empty: any).
    pub types: Vec<String>,
    /// Where it is written, `file:line`.
    pub origin: String,
}

/// What an outbox row's payload becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// A JSON object: the event's `data`.
    Json,
    /// Text: `data` is a JSON string.
    Text,
    /// Bytes: `data_base64`.
    Binary,
}

impl OutboxMapping {
    /// The columns it reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.id
            .iter()
            .map(String::as_str)
            .chain([&self.aggregate_type, &self.aggregate_id, &self.ty, &self.payload].map(String::as_str))
            .chain(self.extensions.iter().map(|(_, column)| column.as_str()))
    }

    /// What its payload becomes and the events' `datacontenttype`, by the payload column's type
    /// (`None`: not known, taken for `jsonb` unless a content type that is not JSON is given);
    /// an error says why the column cannot be a payload of the content type.
    pub fn payload_kind(&self, column: Option<&ficus_model::PgType>) -> Result<(PayloadKind, String), String> {
        use ficus_model::PgType;
        use ficus_model::event::{JSON, is_json};
        let given = self.content_type.as_deref();
        let json_given = given.is_some_and(is_json);
        let with = |kind: PayloadKind, default: &str| {
            let kind = if json_given { PayloadKind::Json } else { kind };
            Ok((kind, given.unwrap_or(default).to_owned()))
        };
        match column {
            Some(PgType::Json) if given.is_some() && !json_given => Err(format!(
                "a json or jsonb payload is JSON: its content type is application/json or a ...+json type, not {}",
                given.unwrap_or_default()
            )),
            Some(PgType::Json) | None if given.is_none() || json_given => with(PayloadKind::Json, JSON),
            None => with(PayloadKind::Text, "text/plain"),
            Some(PgType::Text) => with(PayloadKind::Text, "text/plain"),
            Some(PgType::Bytea) => with(PayloadKind::Binary, "application/octet-stream"),
            Some(_) => Err("an outbox's payload is jsonb, json, text or bytea".to_owned()),
        }
    }
}

/// One compiled `[[message]]`: events of logical decoding messages with a prefix.
#[derive(Debug)]
pub struct MessageMapping {
    /// The event's name (CloudEvents `type`).
    pub name: Arc<str>,
    /// The event's schema version.
    pub version: u32,
    /// The prefix of the messages it maps.
    pub prefix: String,
    /// The aggregate its events belong to.
    pub aggregate: Arc<str>,
    /// Where it is written, `file:line`.
    pub origin: String,
    /// `when` and `key` as written, and each data field's expression.
    pub sources: Sources,
    /// Whether a message of the prefix emitted outside a transaction is passed over
    /// (`non_transactional = "skip"`) rather than stopping ficus.
    pub skip_non_transactional: bool,
    pub(crate) when: Option<Arc<cel::Program>>,
    pub(crate) key: Arc<cel::Program>,
    /// `None`: the payload as it is.
    pub(crate) fields: Option<Vec<(String, Arc<cel::Program>)>>,
}

impl MessageMapping {
    /// The names of its data's fields, `None` when the data is the payload as it is.
    pub fn fields(&self) -> Option<Vec<&str>> {
        self.fields
            .as_ref()
            .map(|f| f.iter().map(|(n, _)| n.as_str()).collect())
    }
}

/// Every mapping, compiled: ready to bind to the source's relations.
pub struct Compiled {
    pub(crate) mappings: Vec<Arc<Mapping>>,
    pub(crate) messages: Vec<Arc<MessageMapping>>,
    pub(crate) outboxes: Vec<Arc<OutboxMapping>>,
    pub(crate) env: Arc<cel::Env>,
    pub(crate) warnings: Vec<Diagnostic>,
}

impl Compiled {
    /// The mappings, in file order.
    pub fn mappings(&self) -> &[Arc<Mapping>] {
        &self.mappings
    }

    /// The outbox tables (`[[outbox]]`), in file order.
    pub fn outboxes(&self) -> &[Arc<OutboxMapping>] {
        &self.outboxes
    }

    /// The mappings of logical decoding messages (`[[message]]`), in file order.
    pub fn messages(&self) -> &[Arc<MessageMapping>] {
        &self.messages
    }

    /// What checks out but may stop ficus at run time (a TOASTed value an update does not send),
    /// each pointing into its file.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The tables some mapping reads: the publication's tables.
    pub fn tables(&self) -> BTreeSet<TableRef> {
        self.readers()
            .map(|m| m.table.clone())
            .chain(self.outboxes.iter().map(|o| o.table.clone()))
            .collect()
    }

    /// Every mapping that reads row changes: the events' mappings and, after each, those of the
    /// rows it collects (what the publication must send).
    pub fn readers(&self) -> impl Iterator<Item = &Arc<Mapping>> {
        self.mappings
            .iter()
            .flat_map(|m| std::iter::once(m).chain(m.collects.iter().map(|c| &c.rows)))
    }

    /// Whether some mapping of the table maps snapshot rows (a backfill has events to make).
    pub fn maps_snapshots(&self, table: &TableRef) -> bool {
        self.mappings
            .iter()
            .any(|m| &m.table == table && m.ops.contains(&Op::Snapshot))
    }

    /// The tables some mapping maps snapshot rows of, in the order of the mappings, each once.
    pub fn snapshot_tables(&self) -> Vec<TableRef> {
        let mut tables: Vec<TableRef> = Vec::new();
        for m in &self.mappings {
            if m.ops.contains(&Op::Snapshot) && !tables.contains(&m.table) {
                tables.push(m.table.clone());
            }
        }
        tables
    }
}

const OPS: &[(&str, Op)] = &[
    ("insert", Op::Insert),
    ("update", Op::Update),
    ("delete", Op::Delete),
    ("truncate", Op::Truncate),
    ("snapshot", Op::Snapshot),
];

/// Checks and compiles mapping files. With a schema, also checks them against
/// it: tables and columns exist, keys are scalars, `old` values are sent, and
/// expressions evaluate with values of the columns' types.
pub fn compile(files: &[MappingFile], schema: Option<&Schema>) -> Result<Compiled, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut mappings = Vec::new();
    let mut messages = Vec::new();
    let mut outboxes = Vec::new();
    let env = Arc::new(cel::Env::stdlib());
    for file in files {
        for raw in &file.events {
            let mut checker = Checker {
                src: &file.source,
                errors: Vec::new(),
                warnings: Vec::new(),
            };
            if let Some(mapping) = checker.event(raw, schema, &env) {
                mappings.push(Arc::new(mapping));
            }
            errors.extend(checker.errors);
            warnings.extend(checker.warnings);
        }
        for raw in &file.outboxes {
            let mut checker = Checker {
                src: &file.source,
                errors: Vec::new(),
                warnings: Vec::new(),
            };
            if let Some(o) = checker.outbox(raw, schema) {
                outboxes.push(Arc::new(o));
            }
            errors.extend(checker.errors);
        }
        for raw in &file.messages {
            let mut checker = Checker {
                src: &file.source,
                errors: Vec::new(),
                warnings: Vec::new(),
            };
            if let Some(m) = checker.message(raw) {
                messages.push(Arc::new(m));
            }
            errors.extend(checker.errors);
        }
    }
    if errors.is_empty() {
        Ok(Compiled {
            outboxes,
            messages,
            mappings,
            env,
            warnings,
        })
    } else {
        Err(errors)
    }
}

struct Checker<'a> {
    src: &'a SourceText,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// An expression with where it was written.
struct Located {
    parsed: expr::Parsed,
    span: Range<usize>,
}

impl Checker<'_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.errors.push(self.src.error_at(span, message, hint.into()));
    }

    /// The byte offset in the file of a byte offset inside a string value.
    /// The file offset of byte `offset` of a string value's decoded text,
    /// stepping over the escapes of basic strings (`\"`, `\n`, `\u00e9`).
    fn inside(&self, span: &Range<usize>, offset: usize) -> Range<usize> {
        let raw = &self.src.text[span.clone()];
        let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else {
            1
        };
        let escapes = raw.starts_with('"');
        let body = &raw[quote..];
        let (mut decoded, mut at) = (0, 0);
        let mut chars = body.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if decoded >= offset {
                at = i;
                break;
            }
            at = i + c.len_utf8();
            if c == '\\' && escapes {
                let skip = match chars.peek() {
                    Some((_, 'u')) => 5,
                    Some((_, 'U')) => 9,
                    _ => 1,
                };
                for _ in 0..skip {
                    if let Some((j, e)) = chars.next() {
                        at = j + e.len_utf8();
                    }
                }
                decoded += 1;
            } else {
                decoded += c.len_utf8();
            }
        }
        let at = (span.start + quote + at).min(span.end);
        at..at
    }

    fn expr(&mut self, s: &Spanned<String>) -> Option<Located> {
        match expr::parse(s.get_ref()) {
            Ok(parsed) => Some(Located { parsed, span: s.span() }),
            Err(errs) => {
                for e in errs {
                    let at = self.inside(&s.span(), e.offset);
                    self.error(&at, e.message, e.hint);
                }
                None
            }
        }
    }

    fn event(&mut self, raw: &RawEvent, schema: Option<&Schema>, env: &Arc<cel::Env>) -> Option<Mapping> {
        let name = raw.name.get_ref().trim().to_owned();
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            self.error(
                &raw.name.span(),
                format!("invalid event name {name:?}"),
                "event names are like OrderPaid (letters, digits, _ . -)".to_owned(),
            );
        }
        let version = self.version(raw.version.as_ref());
        let table = TableRef::parse(raw.table.get_ref().trim());
        let mut ops = Vec::new();
        for op in raw.on.get_ref() {
            match OPS.iter().find(|(n, _)| n == op.get_ref()) {
                Some((_, o)) if !ops.contains(o) => ops.push(*o),
                Some(_) => {}
                None => self.error(
                    &op.span(),
                    format!("unknown operation {:?}", op.get_ref()),
                    "`on` takes insert, update, delete, truncate and snapshot".to_owned(),
                ),
            }
        }
        if raw.on.get_ref().is_empty() {
            self.error(
                &raw.on.span(),
                "`on` is empty",
                "say which operations the mapping maps, e.g. on = [\"insert\"]".to_owned(),
            );
        }

        let when = raw.when.as_ref().and_then(|w| self.expr(w));
        let key = self.expr(&raw.key);
        let key_scalar = key.as_ref().is_some_and(|k| key_is_scalar(&k.parsed));
        if let Some(k) = &key
            && !key_scalar
        {
            self.error(
                &k.span,
                format!("key {:?} is not a scalar", raw.key.get_ref()),
                "the key is the aggregate id: one value such as new.id, or a CEL expression giving a string or number"
                    .to_owned(),
            );
        }
        let mut fields = Vec::new();
        let mut field_texts = Vec::new();
        let mut row = None;
        match raw.data.as_ref().map(|d| (d.get_ref(), d.span())) {
            None => row = Some(if ops == [Op::Delete] { Var::Old } else { Var::New }),
            Some((RawData::Row(r), span)) => match r.trim() {
                "new" => row = Some(Var::New),
                "old" => row = Some(Var::Old),
                other => self.error(
                    &span,
                    format!("data = {other:?} is neither \"new\" nor \"old\""),
                    "write data = \"new\" for the whole row, or data = { field = \"expression\", ... }".to_owned(),
                ),
            },
            Some((RawData::Fields(fs), _)) => {
                for (field, value) in fs {
                    if let Some(e) = self.expr(value) {
                        fields.push((field.clone(), e));
                        field_texts.push(value.get_ref().trim().to_owned());
                    }
                }
            }
        }
        let exclude: Vec<Spanned<String>> = raw.exclude.as_ref().map(|e| e.get_ref().clone()).unwrap_or_default();
        if let Some(ex) = &raw.exclude
            && row.is_none()
        {
            self.error(
                &ex.span(),
                "`exclude` goes with data = \"new\" or \"old\"",
                "leave the field out of the data table instead".to_owned(),
            );
        }
        if ops.contains(&Op::Truncate)
            && let Some(k) = &key
            && (!k.parsed.reads.new.is_none() || !k.parsed.reads.old.is_none())
        {
            self.error(
                &k.span,
                "a truncate has no row to take a key from",
                "map truncate in a mapping of its own, with key = \"table\"".to_owned(),
            );
        }

        let mut reads = Reads::default();
        for e in when.iter().chain(key.iter()).chain(fields.iter().map(|(_, e)| e)) {
            reads.merge(&e.parsed.reads);
        }
        // `old` is empty for inserts, snapshot rows and truncates: reading it where no
        // mapped operation has an old row fails on every row change.
        if !ops.is_empty() && !ops.iter().any(|o| matches!(o, Op::Update | Op::Delete)) {
            let all = when.iter().chain(key.iter()).chain(fields.iter().map(|(_, e)| e));
            if let Some((e, c)) = all
                .flat_map(|e| e.parsed.columns.iter().map(move |c| (e, c)))
                .find(|(_, c)| c.var == Var::Old)
            {
                let at = self.inside(&e.span, c.offset);
                let on: Vec<&str> = ops.iter().map(|o| o.as_str()).collect();
                self.error(
                    &at,
                    format!(
                        "old.{} is never set: `on` is {}, which have no old row",
                        c.name,
                        on.join(", ")
                    ),
                    "read new, or map updates and deletes".to_owned(),
                );
            }
        }
        let unchanged_toast = match raw.unchanged_toast.as_ref().map(|t| (t.get_ref().trim(), t.span())) {
            None => UnchangedToast::default(),
            Some(("stop", _)) => UnchangedToast::Stop,
            Some(("reselect", _)) => UnchangedToast::Reselect,
            Some(("omit", _)) => UnchangedToast::Omit,
            Some((other, span)) => {
                self.error(
                    &span,
                    format!("unknown unchanged_toast {other:?}"),
                    "unchanged_toast is \"stop\" (the default), \"reselect\" or \"omit\" (docs/mappings.md)".to_owned(),
                );
                UnchangedToast::default()
            }
        };
        let excluded: Vec<String> = exclude.iter().map(|e| e.get_ref().clone()).collect();
        // `changed` compares every column of both rows.
        let (exprs_new, exprs_old) = if reads.changed {
            (Cols::All, Cols::All)
        } else {
            (reads.new.clone(), reads.old.clone())
        };
        let reads_new = ColumnsRead::of(&exprs_new, (row == Some(Var::New)).then_some(&excluded[..]));
        let reads_old = ColumnsRead::of(&exprs_old, (row == Some(Var::Old)).then_some(&excluded[..]));
        if let Some(var) = row {
            let mut cols = Cols::All;
            std::mem::swap(
                &mut cols,
                if var == Var::New {
                    &mut reads.new
                } else {
                    &mut reads.old
                },
            );
        }

        if let Some(catalog) = schema.and_then(|s| s.get(&table))
            && raw.unchanged_toast.is_none()
            && ops.contains(&Op::Update)
        {
            self.toast_warning(raw, catalog, &reads_new);
        }
        if let Some(schema) = schema {
            self.against_schema(
                schema,
                raw,
                &table,
                &ops,
                when.iter().chain(key.iter()).chain(fields.iter().map(|(_, e)| e)),
                &exclude,
                key.as_ref().filter(|_| key_scalar),
                when.as_ref(),
                env,
            );
        }

        let origin = format!(
            "{}:{}",
            self.src.path,
            self.src.error_at(&raw.name.span(), "", None).line
        );
        let (when, key) = (when.map(|w| w.parsed.expr), key?.parsed.expr);
        let data = match row {
            Some(var) => Data::Row {
                var,
                exclude: exclude.into_iter().map(|e| e.into_inner()).collect(),
            },
            None => Data::Fields(fields.into_iter().map(|(f, e)| (f, e.parsed.expr)).collect()),
        };
        let aggregate = match &raw.aggregate {
            None => table.to_string(),
            Some(a) => {
                let a = a.get_ref().trim().to_owned();
                if a.is_empty() {
                    self.error(
                        &raw.aggregate.as_ref().expect("given").span(),
                        "`aggregate` is empty",
                        "name the aggregate, e.g. aggregate = \"Order\", or leave the key out (the table is the default)"
                            .to_owned(),
                    );
                }
                a
            }
        };
        let sources = Sources {
            when: raw.when.as_ref().map(|w| w.get_ref().trim().to_owned()),
            key: raw.key.get_ref().trim().to_owned(),
            fields: field_texts,
        };
        let per_transaction = match raw.per.as_ref().map(|p| (p.get_ref().trim(), p.span())) {
            None | Some(("change", _)) => false,
            Some(("transaction", span)) => {
                if let Some(op) = ops.iter().find(|o| matches!(o, Op::Snapshot | Op::Truncate)) {
                    self.error(
                        &span,
                        format!("an event made per transaction cannot map {op}"),
                        "per = \"transaction\" folds the changes of a row in one transaction; map snapshot rows and truncates in an [[event]] of their own".to_owned(),
                    );
                }
                true
            }
            Some((other, span)) => {
                self.error(
                    &span,
                    format!("unknown per {other:?}"),
                    "per is \"change\" (the default) or \"transaction\" (once per transaction and key)".to_owned(),
                );
                false
            }
        };
        let collects = match &raw.collect {
            Some(collect) => self.collects(raw, collect, &name, &ops, schema, env),
            None => vec![],
        };
        Some(Mapping {
            per_transaction,
            collects,
            name: name.into(),
            version,
            sources,
            aggregate: aggregate.into(),
            table,
            ops,
            origin,
            reads_new,
            reads_old,
            unchanged_toast,
            when,
            key,
            data,
            reads,
        })
    }

    /// A `version` as written: a whole number from 1, default 1.
    fn version(&mut self, v: Option<&Spanned<i64>>) -> u32 {
        let Some(v) = v else { return DEFAULT_VERSION };
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                self.error(
                    &v.span(),
                    format!("invalid version {}", v.get_ref()),
                    "versions are whole numbers from 1".to_owned(),
                );
                DEFAULT_VERSION
            }
        }
    }

    /// An `[[outbox]]`: its table and columns, against the schema when there is one.
    fn outbox(&mut self, raw: &crate::file::RawOutbox, schema: Option<&Schema>) -> Option<OutboxMapping> {
        let table = TableRef::parse(raw.table.get_ref().trim());
        let column = |c: &Option<Spanned<String>>, default: &str| -> (String, Range<usize>) {
            match c {
                Some(c) => (c.get_ref().trim().to_owned(), c.span()),
                None => (default.to_owned(), raw.table.span()),
            }
        };
        let id = column(&raw.id, "id");
        let columns = [
            column(&raw.aggregate_type, "aggregatetype"),
            column(&raw.aggregate_id, "aggregateid"),
            column(&raw.ty, "type"),
            column(&raw.payload, "payload"),
        ];
        let mut id_column = (!id.0.is_empty()).then(|| id.0.clone());
        let extensions: Vec<(String, Spanned<String>)> = raw
            .extensions
            .iter()
            .flat_map(|e| e.get_ref())
            .map(|(name, column)| (name.clone(), column.clone()))
            .collect();
        let mut payload_type = None;
        if let Some(schema) = schema {
            let Some(catalog) = schema.get(&table) else {
                let known: Vec<String> = schema.keys().map(|t| t.to_string()).collect();
                self.error(
                    &raw.table.span(),
                    format!("unknown table {table}"),
                    format!("tables are {}", known.join(", ")),
                );
                return None;
            };
            let relation = &catalog.relation;
            let names = || {
                relation
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // The id column is optional: without `id = ...`, a table that has none derives ids.
            if raw.id.is_none() && relation.column_index("id").is_none() {
                id_column = None;
            }
            for (name, span) in id_column
                .iter()
                .map(|n| (n.clone(), id.1.clone()))
                .chain(columns.iter().cloned())
            {
                if relation.column_index(&name).is_none() {
                    self.error(
                        &span,
                        format!("{table} has no column {name:?}"),
                        format!(
                            "columns of {table} are {}; name the outbox's columns: id, aggregate_type, aggregate_id, type, payload",
                            names()
                        ),
                    );
                }
            }
            if relation.replica_identity != ReplicaIdentity::Full && !relation.columns.iter().any(|c| c.identity) {
                self.error(
                    &raw.table.span(),
                    format!(
                        "{table} has no replica identity: in ficus's publication, the monolith's DELETE of its rows (insert-then-delete) would fail in the source"
                    ),
                    format!("give it a primary key (id uuid primary key), or run ALTER TABLE {} REPLICA IDENTITY FULL;", table.quoted()),
                );
            }
            for (name, column) in &extensions {
                if relation.column_index(column.get_ref().trim()).is_none() {
                    self.error(
                        &column.span(),
                        format!("{table} has no column {:?} (extension {name})", column.get_ref().trim()),
                        format!("columns of {table} are {}", names()),
                    );
                }
            }
            payload_type = relation
                .columns
                .iter()
                .find(|c| c.name == columns[3].0)
                .map(|c| (c.ty.clone(), c.type_name.clone()));
        }
        let mut content_type = None;
        if let Some(c) = &raw.content_type {
            let text = c.get_ref().trim();
            let media = text.split(';').next().unwrap_or_default().trim();
            let valid = media
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
                && !media.contains(char::is_whitespace)
                && !text.chars().any(char::is_control);
            if !valid {
                self.error(
                    &c.span(),
                    format!("invalid content type {text:?}"),
                    "a media type: text/plain, application/xml, application/vnd.shop+json; charset=utf-8".to_owned(),
                );
            }
            content_type = Some(text.to_owned());
        }
        for (name, _) in &extensions {
            if name.is_empty()
                || name.len() > 20
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                || ficus_model::event::RESERVED.contains(&name.as_str())
            {
                let span = raw.extensions.as_ref().map(|e| e.span()).unwrap_or_default();
                self.error(
                    &span,
                    format!("invalid extension name {name:?}"),
                    format!(
                        "CloudEvents extension names are 1 to 20 lower-case letters and digits (tenantid, traceparent), and not one of {}",
                        ficus_model::event::RESERVED.join(", ")
                    ),
                );
            }
        }
        let mut types = Vec::new();
        for t in raw.types.iter().flat_map(|t| t.get_ref()) {
            let name = t.get_ref().trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                self.error(
                    &t.span(),
                    format!("invalid event name {name:?}"),
                    "event names are like LoyaltyPointsGranted (letters, digits, _ . -)".to_owned(),
                );
            }
            types.push(name.to_owned());
        }
        let [aggregate_type, aggregate_id, ty, payload] = columns.map(|(c, _)| c);
        let outbox = OutboxMapping {
            table,
            id_default: raw.id.is_none(),
            id: id_column,
            aggregate_type,
            aggregate_id,
            ty,
            payload,
            content_type,
            extensions: extensions
                .into_iter()
                .map(|(name, column)| (name, column.get_ref().trim().to_owned()))
                .collect(),
            types,
            origin: String::new(),
        };
        if let Some((ty, type_name)) = payload_type
            && let Err(why) = outbox.payload_kind(Some(&ty))
        {
            // A json column of a content type that is not JSON: the content type is what is off;
            // a column of another type: the column.
            let payload_span = raw.payload.as_ref().map_or_else(|| raw.table.span(), |p| p.span());
            let span = match &raw.content_type {
                Some(c) if ty == ficus_model::PgType::Json => c.span(),
                _ => payload_span,
            };
            self.error(
                &span,
                format!("the payload column {} is {type_name}: {why}", outbox.payload),
                "make the column jsonb (the event's data, a JSON object), or text or bytea with a content_type"
                    .to_owned(),
            );
        }
        let origin = format!(
            "{}:{}",
            self.src.path,
            self.src.error_at(&raw.table.span(), "", None).line
        );
        Some(OutboxMapping { origin, ..outbox })
    }

    /// A `[[message]]`: its prefix, name, version and CEL over `payload`, `prefix`, `tx`.
    fn message(&mut self, raw: &crate::file::RawMessage) -> Option<MessageMapping> {
        let prefix = raw.prefix.get_ref().trim().to_owned();
        if prefix.is_empty() || prefix.starts_with("ficus") {
            self.error(
                &raw.prefix.span(),
                format!("prefix {prefix:?} cannot be mapped"),
                "name the prefix your application passes to pg_logical_emit_message; prefixes starting with ficus are ficus's own (heartbeats, watermarks)".to_owned(),
            );
        }
        let name = raw
            .name
            .as_ref()
            .map_or(prefix.clone(), |n| n.get_ref().trim().to_owned());
        let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !name_ok {
            let span = raw.name.as_ref().map_or(raw.prefix.span(), |n| n.span());
            self.error(
                &span,
                format!("invalid event name {name:?}"),
                "event names are like OrderRefunded (letters, digits, _ . -); without name, the prefix is the name"
                    .to_owned(),
            );
        }
        let version = self.version(raw.version.as_ref());
        let mut cel = |s: &Spanned<String>| match expr::parse_message(s.get_ref()) {
            Ok(p) => Some(p),
            Err(errs) => {
                for e in errs {
                    let at = self.inside(&s.span(), e.offset);
                    self.error(&at, e.message, e.hint);
                }
                None
            }
        };
        let when = raw.when.as_ref().map(&mut cel);
        let key = cel(&raw.key);
        let mut field_texts = Vec::new();
        let fields = match raw.data.as_ref().map(|d| (d.get_ref(), d.span())) {
            None => Some(None),
            Some((RawData::Row(r), _)) if r.trim() == "payload" => Some(None),
            Some((RawData::Row(r), span)) => {
                self.error(
                    &span,
                    format!("data = {:?} is not \"payload\"", r.trim()),
                    "write data = \"payload\" for the payload as it is, or data = { field = \"payload.x\", ... }"
                        .to_owned(),
                );
                None
            }
            Some((RawData::Fields(fs), _)) => {
                let mut out = Vec::new();
                for (field, value) in fs {
                    if let Some(p) = cel(value) {
                        out.push((field.clone(), p));
                        field_texts.push(value.get_ref().trim().to_owned());
                    }
                }
                Some(Some(out))
            }
        };
        let aggregate = raw
            .aggregate
            .as_ref()
            .map_or(prefix.clone(), |a| a.get_ref().trim().to_owned());
        let origin = format!(
            "{}:{}",
            self.src.path,
            self.src.error_at(&raw.prefix.span(), "", None).line
        );
        let skip_non_transactional = match raw.non_transactional.as_ref().map(|n| (n.get_ref().trim(), n.span())) {
            None | Some(("stop", _)) => false,
            Some(("skip", _)) => true,
            Some((other, span)) => {
                self.error(
                    &span,
                    format!("unknown non_transactional {other:?}"),
                    "non_transactional is \"stop\" (the default) or \"skip\"".to_owned(),
                );
                false
            }
        };
        let (Some(key), Some(fields), Some(when)) = (key, fields, when.map_or(Some(None), |w| w.map(Some))) else {
            return None;
        };
        Some(MessageMapping {
            name: name.into(),
            version,
            prefix,
            aggregate: aggregate.into(),
            origin,
            sources: Sources {
                when: raw.when.as_ref().map(|w| w.get_ref().trim().to_owned()),
                key: raw.key.get_ref().trim().to_owned(),
                fields: field_texts,
            },
            skip_non_transactional,
            when,
            key,
            fields,
        })
    }

    /// The rows an event collects, each table checked as a mapping of its own (`Event.field`),
    /// with `order_by` and `without_parent`.
    fn collects(
        &mut self,
        raw: &RawEvent,
        collect: &Spanned<crate::file::RawCollects>,
        name: &str,
        ops: &[Op],
        schema: Option<&Schema>,
        env: &Arc<cel::Env>,
    ) -> Vec<Collect> {
        if let Some(op) = ops.iter().find(|o| matches!(o, Op::Snapshot | Op::Truncate)) {
            self.error(
                &raw.on.span(),
                format!("an event that collects rows cannot map {op}"),
                "collected rows come from the row change's transaction, which a snapshot row or a truncate does not have: map them in an [[event]] of their own".to_owned(),
            );
        }
        let mut out: Vec<Collect> = Vec::new();
        for (field, c) in &collect.get_ref().0 {
            let span = c.span();
            let c: &RawCollect = c.get_ref();
            let field_ok = !field.is_empty() && field.chars().all(|ch| ch.is_alphanumeric() || ch == '_');
            if !field_ok {
                self.error(
                    &span,
                    format!("invalid field name {field:?} for collected rows"),
                    "name the field like a data field: lines, order_lines".to_owned(),
                );
                continue;
            }
            if let Some(crate::file::RawData::Fields(fields)) = raw.data.as_ref().map(|d| d.get_ref())
                && fields.iter().any(|(f, _)| f == field)
            {
                self.error(
                    &span,
                    format!("{field} is a field of the event's data already"),
                    "give the collected rows a field of their own".to_owned(),
                );
            }
            let on = c.on.clone().unwrap_or_else(|| {
                Spanned::new(c.table.span(), vec![Spanned::new(c.table.span(), "insert".to_owned())])
            });
            for op in on.get_ref() {
                if matches!(op.get_ref().as_str(), "snapshot" | "truncate") {
                    self.error(
                        &op.span(),
                        format!("collected rows cannot be of {}", op.get_ref()),
                        "collect rows of insert, update and delete".to_owned(),
                    );
                }
            }
            let rows_raw = RawEvent {
                name: Spanned::new(c.table.span(), format!("{name}.{field}")),
                version: None,
                table: c.table.clone(),
                on,
                when: c.when.clone(),
                key: c.key.clone(),
                aggregate: None,
                data: c.data.clone(),
                exclude: c.exclude.clone(),
                unchanged_toast: c.unchanged_toast.clone(),
                per: None,
                collect: None,
            };
            let Some(mut rows) = self.event(&rows_raw, schema, env) else {
                continue;
            };
            let order = c.order_by.as_ref().and_then(|o| self.expr(o));
            // What order_by reads is read of the row too (the CEL context, the publication).
            if let Some(o) = &order {
                rows.reads.merge(&o.parsed.reads);
                for col in &o.parsed.columns {
                    let read = if col.var == Var::New {
                        &mut rows.reads_new
                    } else {
                        &mut rows.reads_old
                    };
                    if let ColumnsRead::Only(set) = read {
                        set.insert(col.name.clone());
                    }
                }
            }
            if let (Some(o), Some(schema)) = (&order, schema)
                && let Some(catalog) = schema.get(&rows.table)
            {
                for col in &o.parsed.columns {
                    if catalog.relation.column_index(&col.name).is_none() {
                        let at = self.inside(&o.span, col.offset);
                        self.error(
                            &at,
                            format!("unknown column {:?} in {}", col.name, rows.table),
                            "order_by reads the collected row, e.g. new.line_no".to_owned(),
                        );
                    }
                }
            }
            let without_parent = match c.without_parent.as_ref().map(|w| (w.get_ref(), w.span())) {
                None => WithoutParent::Ignore,
                Some((RawWithoutParent::Word(w), _)) if w == "ignore" => WithoutParent::Ignore,
                Some((RawWithoutParent::Event(e), span)) => {
                    let ok = !e.event.is_empty()
                        && e.event
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
                    let version = match e.version {
                        None => Some(DEFAULT_VERSION),
                        Some(v) => u32::try_from(v).ok().filter(|v| *v >= 1),
                    };
                    let per = match e.per.as_deref() {
                        None | Some("aggregate") => Some(Per::Aggregate),
                        Some("row") => Some(Per::Row),
                        Some(_) => None,
                    };
                    match (ok, version, per) {
                        (true, Some(version), Some(per)) => WithoutParent::Event {
                            name: e.event.clone().into(),
                            version,
                            per,
                        },
                        _ => {
                            self.error(
                                &span,
                                "without_parent names an invalid event",
                                "write without_parent = { event = \"OrderLinesAdded\", version = 1, per = \"aggregate\" } (per = \"row\": one event per row), with an event name like OrderPaid and a version from 1".to_owned(),
                            );
                            WithoutParent::Ignore
                        }
                    }
                }
                Some((RawWithoutParent::Word(w), span)) => {
                    self.error(
                        &span,
                        format!("unknown without_parent {w:?}"),
                        "without_parent is \"ignore\" (the default) or { event = \"OrderLinesAdded\", per = \"aggregate\" | \"row\" }".to_owned(),
                    );
                    WithoutParent::Ignore
                }
            };
            out.push(Collect {
                field: field.clone(),
                rows: Arc::new(rows),
                order_by: c.order_by.as_ref().map(|o| o.get_ref().trim().to_owned()),
                without_parent,
                order: order.map(|o| o.parsed.expr),
            });
        }
        out
    }

    /// A mapping of updates that reads a column whose value may be TOASTed, on a table whose
    /// replica identity is not FULL: an update that leaves that value unchanged does not send it,
    /// and by default ficus then stops. Said once per mapping, with the choices.
    fn toast_warning(&mut self, raw: &RawEvent, catalog: &CatalogTable, reads_new: &ColumnsRead) {
        let relation = &catalog.relation;
        if relation.replica_identity == ReplicaIdentity::Full {
            return;
        }
        let columns: Vec<&str> = relation
            .columns
            .iter()
            .filter(|c| catalog.toastable.contains(&c.name) && reads_new.contains(&c.name) && !c.identity)
            .map(|c| c.name.as_str())
            .collect();
        if columns.is_empty() {
            return;
        }
        let table = &relation.table;
        self.warnings.push(self.src.error_at(
            &raw.name.span(),
            format!(
                "{} reads {} of {table} on update; such values may be TOASTed, and with REPLICA IDENTITY {} an update that leaves one unchanged does not send it: ficus then stops at that update",
                raw.name.get_ref(),
                columns.join(", "),
                relation.replica_identity
            ),
            Some(format!(
                "run ALTER TABLE {} REPLICA IDENTITY FULL; (the old row carries the value), or set unchanged_toast = \"reselect\" (ficus reads the row again by its key) or \"omit\" (the field is left out and listed in ficusunavailable); unchanged_toast = \"stop\" keeps the default and this warning quiet",
                table.quoted()
            )),
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn against_schema<'e>(
        &mut self,
        schema: &Schema,
        raw: &RawEvent,
        table: &TableRef,
        ops: &[Op],
        exprs: impl Iterator<Item = &'e Located> + Clone,
        exclude: &[Spanned<String>],
        key: Option<&Located>,
        when: Option<&Located>,
        env: &Arc<cel::Env>,
    ) {
        let Some(catalog) = schema.get(table) else {
            let known: Vec<String> = schema.keys().map(|t| t.to_string()).collect();
            let hint = if known.is_empty() {
                "no table is visible to this user".to_owned()
            } else {
                format!("tables are {}", known.join(", "))
            };
            self.error(&raw.table.span(), format!("unknown table {table}"), hint);
            return;
        };
        let relation = &catalog.relation;
        if relation.replica_identity != ReplicaIdentity::Full && !relation.columns.iter().any(|c| c.identity) {
            self.error(
                &raw.table.span(),
                format!(
                    "{table} has no replica identity (REPLICA IDENTITY {} and no key): in ficus's publication, every UPDATE and DELETE of it would fail in the source",
                    relation.replica_identity
                ),
                format!(
                    "give it a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL;",
                    table.quoted()
                ),
            );
        }
        let columns_hint = || {
            format!(
                "columns of {table} are {}",
                relation
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let old_sent = ops.iter().any(|o| matches!(o, Op::Update | Op::Delete));
        let mut all_known = true;
        for e in exprs.clone() {
            for ColumnRef { var, name, offset } in &e.parsed.columns {
                let at = self.inside(&e.span, *offset);
                match relation.columns.iter().find(|c| &c.name == name) {
                    None => {
                        all_known = false;
                        match catalog.unseen(name) {
                            Some(why) => {
                                let (message, hint) = unseen_message(catalog, name, why);
                                self.error(&at, message, hint);
                            }
                            None => self.error(&at, format!("unknown column {name:?} in {table}"), columns_hint()),
                        }
                    }
                    Some(col)
                        if *var == Var::Old
                            && old_sent
                            && !col.identity
                            && relation.replica_identity != ReplicaIdentity::Full =>
                    {
                        self.error(
                            &at,
                            format!("old.{name} is not sent: {table} has REPLICA IDENTITY {}, which sends only its key columns in old", relation.replica_identity),
                            format!("run ALTER TABLE {} REPLICA IDENTITY FULL; to map updates and deletes that read old values", table.quoted()),
                        );
                    }
                    Some(_) => {}
                }
            }
            if e.parsed.reads.changed && ops.contains(&Op::Update) && relation.replica_identity != ReplicaIdentity::Full
            {
                self.error(
                    &e.span,
                    format!("`changed` needs the old row, and {table} does not send it"),
                    format!("run ALTER TABLE {} REPLICA IDENTITY FULL;", table.quoted()),
                );
            }
        }
        // The whole row: every column but the excluded ones, so one the stream does not send must
        // be excluded, or the event would silently lack it.
        if let Some(data) = &raw.data
            && matches!(data.get_ref(), RawData::Row(_))
        {
            for u in &catalog.unseen {
                if !exclude.iter().any(|e| e.get_ref() == &u.name) {
                    let (message, hint) = unseen_message(catalog, &u.name, &u.why);
                    self.error(
                        &data.span(),
                        format!("the whole row would lack {}: {message}", u.name),
                        format!(
                            "add {:?} to exclude to say so, or map the row field by field; {hint}",
                            u.name
                        ),
                    );
                }
            }
        }
        for ex in exclude {
            if relation.column_index(ex.get_ref()).is_none() && catalog.unseen(ex.get_ref()).is_none() {
                self.error(
                    &ex.span(),
                    format!("unknown column {:?} in {table}", ex.get_ref()),
                    columns_hint(),
                );
            }
        }
        if let Some(k) = key
            && let Expr::Column { name, .. } = &k.parsed.expr
            && let Some(col) = relation.columns.iter().find(|c| &c.name == name)
            && !col.ty.is_scalar()
        {
            self.error(
                &k.span,
                format!("key {name} is a {}, not a scalar", col.type_name),
                "use a column of a scalar type (id, uuid, text) as the key".to_owned(),
            );
        }
        if !all_known {
            return;
        }
        // Evaluate every CEL expression with values of the columns' types: what
        // fails here for a type reason fails on every row change.
        let sample_row = cel_value::map(
            relation
                .columns
                .iter()
                .map(|c| (c.name.clone(), cel_value::sample(&c.ty))),
        );
        let mut ctx = cel::Context::with_env(env.clone());
        ctx.add_variable_from_value("new", sample_row.clone());
        ctx.add_variable_from_value("old", sample_row);
        ctx.add_variable_from_value("op", "update");
        ctx.add_variable_from_value("table", table.to_string());
        ctx.add_variable_from_value("changed", vec!["a".to_owned()]);
        ctx.add_variable_from_value(
            "tx",
            cel_value::map([
                ("xid".to_owned(), cel::Value::Int(1)),
                ("lsn".to_owned(), cel::Value::from("0/1")),
                (
                    "commit_time".to_owned(),
                    cel::Value::Timestamp(chrono::DateTime::UNIX_EPOCH.fixed_offset()),
                ),
            ]),
        );
        for e in exprs {
            let Expr::Cel(program) = &e.parsed.expr else { continue };
            match program.execute(&ctx) {
                Err(err) if is_type_error(&err) => {
                    self.error(
                        &e.span,
                        format!("expression does not fit the columns' types: {err}"),
                        columns_types_hint(relation),
                    );
                }
                Ok(v) if when.is_some_and(|w| std::ptr::eq(w, e)) && !matches!(v, cel::Value::Bool(_)) => {
                    self.error(
                        &e.span,
                        "`when` must give a bool",
                        "compare something, e.g. new.status == 'paid'".to_owned(),
                    );
                }
                Ok(v) if key.is_some_and(|k| std::ptr::eq(k, e)) && cel_value::cel_to_subject(&v).is_none() => {
                    self.error(
                        &e.span,
                        "key is not a scalar",
                        "the key must give a string or a number".to_owned(),
                    );
                }
                _ => {}
            }
        }
    }
}

/// Why a mapping cannot read a column the stream does not send, and what to do instead.
fn unseen_message(catalog: &CatalogTable, column: &str, why: &Unseen) -> (String, String) {
    let table = &catalog.relation.table;
    match why {
        Unseen::Generated { expression } => (
            format!(
                "{column} is a generated column of {table} (GENERATED ALWAYS AS {expression}), and logical replication does not send generated columns"
            ),
            match generated_in_cel(expression, &catalog.relation) {
                Some(cel) => format!("compute it from the columns it is made of: \"{cel}\""),
                None => format!("compute it in CEL from the columns {expression} reads (new.column)"),
            },
        ),
        Unseen::NotPublished { publication, fix } => (
            format!("{column} of {table} is left out by the column list of publication {publication}"),
            format!("publish every column of the table: {fix}"),
        ),
    }
}

/// A generated column's SQL expression as CEL over `new`, when it is simple enough to be the same
/// expression in both (`(price * qty)` is `new.price * new.qty`).
fn generated_in_cel(sql: &str, relation: &Relation) -> Option<String> {
    let mut cel = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, cel: &mut String| -> Option<()> {
        if word.is_empty() {
            return Some(());
        }
        if word.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            cel.push_str(word);
        } else if relation.column_index(word).is_some() {
            cel.push_str("new.");
            cel.push_str(word);
        } else {
            return None; // a function or keyword of SQL: not the same in CEL
        }
        word.clear();
        Some(())
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && word.chars().all(|d| d.is_ascii_digit())) {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut cel)?;
        if "+-*/%() ".contains(c) {
            cel.push(c);
        } else {
            return None;
        }
    }
    flush(&mut word, &mut cel)?;
    let cel = cel.trim();
    expr::parse(cel).ok().map(|_| cel.to_owned())
}

fn columns_types_hint(relation: &Relation) -> String {
    let cols: Vec<String> = relation
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.type_name))
        .collect();
    format!(
        "{} has {}; numeric is a double in CEL, timestamptz a timestamp, other dates and times strings",
        relation.table,
        cols.join(", ")
    )
}

fn is_type_error(err: &cel::ExecutionError) -> bool {
    use cel::ExecutionError as E;
    matches!(
        err,
        E::NoSuchOverload(_)
            | E::UnsupportedBinaryOperator(..)
            | E::ValuesNotComparable(..)
            | E::UnexpectedType { .. }
            | E::UnsupportedTargetType { .. }
            | E::NotSupportedAsMethod { .. }
            | E::UndeclaredReference(_)
            | E::InvalidArgumentCount { .. }
    )
}

fn key_is_scalar(p: &expr::Parsed) -> bool {
    match &p.expr {
        Expr::Cel(program) => {
            !matches!(
                &program.expression().expr,
                cel::common::ast::Expr::List(_) | cel::common::ast::Expr::Map(_)
            ) && !matches!(&program.expression().expr, cel::common::ast::Expr::Ident(n) if n == "new" || n == "old" || n == "changed" || n == "tx")
        }
        _ => true,
    }
}
