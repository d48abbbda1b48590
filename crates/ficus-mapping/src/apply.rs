//! Applying mappings to row changes: the hot path.

use std::sync::Arc;

use cel::Value as Cel;
use cel::objects::Key;
use ficus_model::value::to_field;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use ficus_model::{Cell, Event, Field, Op, Origin, Relation, RowChange, Time, text_of};
use serde_json::Value as Json;
use uuid::Uuid;

use crate::cel_value::{cel_to_json, cel_to_subject, map, to_cel};
use crate::compile::{Compiled, Data, Mapping, UnchangedToast};
use crate::expr::{Cols, Expr, Var};
use crate::tx::Transaction;

/// Where events come from: names the source in `source` and makes event ids
/// unique to it.
#[derive(Clone, Debug)]
pub struct EventContext {
    /// The source's name, in every event's `source`.
    pub source_name: String,
    identity: String,
    id_namespace: Uuid,
}

impl EventContext {
    /// `identity` names the database uniquely and stably (ficus uses the
    /// server's system identifier and the database name).
    pub fn new(source_name: &str, identity: &str) -> EventContext {
        let id_namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("ficus:{identity}").as_bytes());
        EventContext {
            source_name: source_name.to_owned(),
            identity: identity.to_owned(),
            id_namespace,
        }
    }

    /// The identity the event ids derive from.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The events' `source`: `/ficus/{source name}`, then `/{schema}.{table}` for a table's
    /// events, each segment percent-encoded, so that any name makes a valid URI-reference.
    pub fn source_uri(&self, table: Option<&ficus_model::TableRef>) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        // RFC 3986 unreserved characters stay as they are.
        const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
        let mut uri = format!("/ficus/{}", utf8_percent_encode(&self.source_name, SEGMENT));
        if let Some(table) = table {
            uri.push('/');
            uri.extend(utf8_percent_encode(&table.to_string(), SEGMENT));
        }
        uri
    }

    /// The `source` of the events of logical decoding messages with `prefix`:
    /// `/ficus/{source name}/message/{prefix}`, percent-encoded.
    pub fn message_source(&self, prefix: &str) -> String {
        use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
        const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
        format!(
            "{}/message/{}",
            self.source_uri(None),
            utf8_percent_encode(prefix, SEGMENT)
        )
    }

    /// The deterministic id of the event named `name` in this source: the same name, the same id.
    pub fn event_id(&self, name: &str) -> String {
        Uuid::new_v5(&self.id_namespace, name.as_bytes()).to_string()
    }
}

/// Why a row change could not be mapped. Every variant is definite: the
/// runtime stops without acknowledging the change, and the hint says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A column a mapping reads is not in the table any more.
    #[error("{origin}: {event} reads column {column:?}, which {table} no longer has")]
    ColumnMissing {
        /// The mapping's `file:line`.
        origin: String,
        /// The mapping's event name.
        event: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// An update left a TOASTed value unchanged, so the source did not send it, and the mapping
    /// reads it (with `unchanged_toast = "stop"`, the default).
    #[error(transparent)]
    Unsent(Box<UnsentValue>),
    /// An expression failed on a row change.
    #[error(transparent)]
    Eval(Box<EvalError>),
    /// A transaction's collected rows (and the events waiting for them) outgrew
    /// `collect_memory`.
    #[error(transparent)]
    CollectLimit(Box<CollectLimit>),
    /// A logical decoding message of a mapped prefix that cannot be mapped.
    #[error(transparent)]
    Message(Box<MessageError>),
    /// An outbox's payload column is of a type that cannot be a payload of its content type.
    #[error("{origin}: [[outbox]] reads its payload from {column} of {table}, which is {type_name}: {why}")]
    OutboxPayload {
        /// The `[[outbox]]`'s `file:line`.
        origin: String,
        /// The table.
        table: String,
        /// The payload column.
        column: String,
        /// Its type.
        type_name: String,
        /// Why it cannot be.
        why: String,
    },
}

/// A logical decoding message of a mapped prefix that cannot be mapped.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: the message with prefix {prefix:?} at {lsn}: {message}")]
pub struct MessageError {
    /// The `[[message]]`'s `file:line`.
    pub origin: String,
    /// The message's prefix.
    pub prefix: String,
    /// The message's LSN.
    pub lsn: String,
    /// `transactional`, `payload`, `when`, `key` or `data.field`.
    pub what: String,
    /// What went wrong.
    pub message: String,
}

/// A transaction whose collected rows outgrew the memory they may take.
#[derive(Debug, thiserror::Error)]
#[error(
    "{origin}: {event} collects rows of {table}, and the transaction committed at {lsn} holds more of them than collect_memory allows ({limit} bytes)"
)]
pub struct CollectLimit {
    /// The mapping's `file:line`.
    pub origin: String,
    /// The collecting event's name and field (`OrderPlaced.lines`).
    pub event: String,
    /// The collected table.
    pub table: String,
    /// The transaction's commit LSN.
    pub lsn: String,
    /// The limit, in bytes.
    pub limit: u64,
}

/// A value a mapping reads that an update did not send.
#[derive(Debug, thiserror::Error)]
#[error(
    "{origin}: {event} reads {column} of {table}, which the update at {lsn} left unchanged ({key}): Postgres did not send the (TOASTed) value"
)]
pub struct UnsentValue {
    /// The mapping's `file:line`.
    pub origin: String,
    /// The mapping's event name.
    pub event: String,
    /// The table.
    pub table: String,
    /// The row's replica identity.
    pub key: String,
    /// The column.
    pub column: String,
    /// The change's commit LSN.
    pub lsn: String,
}

/// An expression that failed on a row change.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {event} on {table} ({op} at {lsn}): {what} failed: {message}")]
pub struct EvalError {
    /// The mapping's `file:line`.
    pub origin: String,
    /// The mapping's event name.
    pub event: String,
    /// The table.
    pub table: String,
    /// The operation.
    pub op: Op,
    /// The change's commit LSN.
    pub lsn: String,
    /// `when`, `key` or `data.field`.
    pub what: String,
    /// What went wrong.
    pub message: String,
}

impl MapError {
    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            MapError::Unsent(e) => format!(
                "run ALTER TABLE {} REPLICA IDENTITY FULL; so the old row carries the value, or set unchanged_toast = \"reselect\" (ficus reads the row again) or \"omit\" (the field is left out, listed in ficusunavailable) on the mapping; then start ficus again: the slot stays before this change",
                ficus_model::TableRef::parse(&e.table).quoted()
            ),
            MapError::OutboxPayload { .. } => {
                "make the payload column jsonb, or text or bytea with a content_type that fits it (ficus check shows it), then start ficus again: the slot stays where it is".into()
            }
            MapError::ColumnMissing { .. } => {
                "restore the column or change the mapping (ficus check shows what else is off), then start ficus again: the slot stays where it is".into()
            }
            MapError::Eval(e) if e.message.contains("No such key") => {
                "the row change has no value for that column: old values need REPLICA IDENTITY FULL, and unchanged TOASTed values are not sent; guard with has(old.column)".into()
            }
            MapError::Eval(_) => "fix the expression, then start ficus again: the slot stays where it is".into(),
            MapError::Message(e) if e.what == "transactional" => {
                "emit it with pg_logical_emit_message(true, ...), in the transaction whose fact it states; then, to go past the message already written, set non_transactional = \"skip\" on the [[message]] (ficus logs each one it skips) and start ficus again: the slot stays before it".into()
            }
            MapError::Message(e) if e.what == "payload" => {
                "a [[message]]'s payload must be JSON text (an object with data = \"payload\"): fix the application. This message cannot become an event; to go past it, take the prefix's [[message]] mappings out for one run (ficus then passes over messages of the prefix: this one is lost, tell its consumers) and put them back. Until then the slot stays before it".into()
            }
            MapError::Message(_) => {
                "fix the [[message]] (its when, key or data), or add one for what the application states; then start ficus again: the slot stays before the message".into()
            }
            MapError::CollectLimit(_) => {
                "raise collect_memory in [source] of ficus.toml (it bounds one transaction's collected rows, default 64MB), or narrow the collect's when; then start ficus again: the slot stays before this transaction".into()
            }
        }
    }
}

/// An expression with its columns resolved to positions.
#[derive(Debug)]
enum BoundExpr {
    Column { var: Var, index: usize },
    Op,
    Table,
    Cel(Arc<cel::Program>),
}

#[derive(Debug)]
enum BoundData {
    Fields(Vec<(String, BoundExpr)>),
    Row { var: Var, columns: Vec<usize> },
}

#[derive(Debug)]
struct Rule {
    mapping: Arc<Mapping>,
    when: Option<BoundExpr>,
    key: BoundExpr,
    data: BoundData,
    /// The positions of the columns it reads of `new`: an update may leave them unsent.
    reads_new: Vec<usize>,
}

/// Rows of this table some event collects, bound.
#[derive(Debug)]
struct CollectRule {
    /// The collecting event's mapping.
    parent: Arc<Mapping>,
    /// Which of its collects.
    index: usize,
    /// The collected row's mapping (`key`, `when`, `data`).
    rule: Rule,
    order: Option<BoundExpr>,
}

/// An outbox table's columns, at their positions.
#[derive(Debug)]
struct OutboxRule {
    mapping: Arc<crate::compile::OutboxMapping>,
    id: Option<usize>,
    aggregate_type: usize,
    aggregate_id: usize,
    ty: usize,
    payload: usize,
    /// What the payload becomes, and the events' content type.
    kind: crate::compile::PayloadKind,
    content_type: Cow<'static, str>,
    /// The extensions' names and columns.
    extensions: Vec<(Arc<str>, usize)>,
}

/// The mappings of one table, bound to one version of its relation.
pub struct Bound {
    relation: Arc<Relation>,
    rules: Vec<Rule>,
    collects: Vec<CollectRule>,
    outboxes: Vec<OutboxRule>,
    /// Columns put into CEL's `new` and `old`, with their names as CEL map keys.
    cel_new: Vec<(usize, Key)>,
    cel_old: Vec<(usize, Key)>,
    changed: bool,
    source: Arc<str>,
    env: Arc<cel::Env>,
    /// The shared attributes of the transaction last seen: the same for all its events.
    tx: RefCell<Option<TxAttributes>>,
}

/// The time of one transaction, formatted once.
struct TxAttributes {
    /// The transaction the attributes are of (a backfill's chunks share an LSN, not a time).
    tx: ficus_model::TxMeta,
    time: Time,
}

impl Compiled {
    /// Binds the mappings of a relation's table to the relation's columns;
    /// `None` when no mapping reads the table.
    pub fn bind(&self, relation: Arc<Relation>, ctx: &EventContext) -> Result<Option<Bound>, MapError> {
        let mappings: Vec<&Arc<Mapping>> = self.mappings.iter().filter(|m| m.table == relation.table).collect();
        let collected: Vec<(&Arc<Mapping>, usize)> = self
            .mappings
            .iter()
            .flat_map(|m| m.collects.iter().enumerate().map(move |(i, c)| (m, i, c)))
            .filter(|(_, _, c)| c.rows.table == relation.table)
            .map(|(m, i, _)| (m, i))
            .collect();
        let mut outboxes = Vec::new();
        for o in self.outboxes.iter().filter(|o| o.table == relation.table) {
            let at = |name: &str| {
                relation.column_index(name).ok_or_else(|| MapError::ColumnMissing {
                    origin: o.origin.clone(),
                    event: "[[outbox]]".into(),
                    table: relation.table.to_string(),
                    column: name.to_owned(),
                })
            };
            let id = match &o.id {
                Some(c) if o.id_default && relation.column_index(c).is_none() => None,
                Some(c) => Some(at(c)?),
                None => None,
            };
            let payload = at(&o.payload)?;
            let column = &relation.columns[payload];
            let (kind, content_type) = o
                .payload_kind(Some(&column.ty))
                .map_err(|why| MapError::OutboxPayload {
                    origin: o.origin.clone(),
                    table: relation.table.to_string(),
                    column: column.name.clone(),
                    type_name: column.type_name.clone(),
                    why,
                })?;
            let mut extensions = Vec::with_capacity(o.extensions.len());
            for (name, column) in &o.extensions {
                extensions.push((Arc::from(name.as_str()), at(column)?));
            }
            outboxes.push(OutboxRule {
                id,
                aggregate_type: at(&o.aggregate_type)?,
                aggregate_id: at(&o.aggregate_id)?,
                ty: at(&o.ty)?,
                payload,
                kind,
                content_type: match content_type {
                    t if t == ficus_model::event::JSON => Cow::Borrowed(ficus_model::event::JSON),
                    t => Cow::Owned(t),
                },
                extensions,
                mapping: o.clone(),
            });
        }
        if mappings.is_empty() && collected.is_empty() && outboxes.is_empty() {
            return Ok(None);
        }
        let (mut cel_new, mut cel_old, mut changed) = (Cols::None, Cols::None, false);
        let mut rules = Vec::new();
        for m in mappings {
            cel_new.merge(&m.reads.cel_new);
            cel_old.merge(&m.reads.cel_old);
            changed |= m.reads.changed;
            rules.push(bind_rule(&relation, m)?);
        }
        let mut collects = Vec::new();
        for (parent, index) in collected {
            let c = &parent.collects[index];
            let m = &c.rows;
            cel_new.merge(&m.reads.cel_new);
            cel_old.merge(&m.reads.cel_old);
            changed |= m.reads.changed;
            collects.push(CollectRule {
                parent: parent.clone(),
                index,
                rule: bind_rule(&relation, m)?,
                order: c.order.as_ref().map(|e| bind_expr(&relation, m, e)).transpose()?,
            });
        }
        let positions = |cols: &Cols| -> Vec<(usize, Key)> {
            let indexes: Vec<usize> = match cols {
                Cols::None => vec![],
                Cols::All => (0..relation.columns.len()).collect(),
                Cols::Some(names) => names.iter().filter_map(|n| relation.column_index(n)).collect(),
            };
            indexes
                .into_iter()
                .map(|i| (i, Key::String(Arc::new(relation.columns[i].name.clone()))))
                .collect()
        };
        Ok(Some(Bound {
            collects,
            outboxes,
            cel_new: positions(&cel_new),
            cel_old: positions(&cel_old),
            changed,
            source: ctx.source_uri(Some(&relation.table)).into(),
            tx: RefCell::new(None),
            rules,
            env: self.env.clone(),
            relation,
        }))
    }
}

/// A mapping's expressions with their columns resolved to the relation's positions.
fn bind_rule(relation: &Relation, m: &Arc<Mapping>) -> Result<Rule, MapError> {
    for cols in [&m.reads.new, &m.reads.old] {
        if let Cols::Some(names) = cols {
            for name in names {
                column(relation, m, name)?;
            }
        }
    }
    let data = match &m.data {
        Data::Fields(fields) => BoundData::Fields(
            fields
                .iter()
                .map(|(f, e)| Ok((f.clone(), bind_expr(relation, m, e)?)))
                .collect::<Result<_, MapError>>()?,
        ),
        Data::Row { var, exclude } => BoundData::Row {
            var: *var,
            columns: (0..relation.columns.len())
                .filter(|i| !exclude.contains(&relation.columns[*i].name))
                .collect(),
        },
    };
    Ok(Rule {
        when: m.when.as_ref().map(|e| bind_expr(relation, m, e)).transpose()?,
        key: bind_expr(relation, m, &m.key)?,
        data,
        reads_new: (0..relation.columns.len())
            .filter(|&i| m.reads_new.contains(&relation.columns[i].name))
            .collect(),
        mapping: m.clone(),
    })
}

fn bind_expr(relation: &Relation, m: &Mapping, e: &Expr) -> Result<BoundExpr, MapError> {
    Ok(match e {
        Expr::Column { var, name } => BoundExpr::Column {
            var: *var,
            index: column(relation, m, name)?,
        },
        Expr::Op => BoundExpr::Op,
        Expr::Table => BoundExpr::Table,
        Expr::Cel(p) => BoundExpr::Cel(p.clone()),
    })
}

fn column(relation: &Relation, m: &Mapping, name: &str) -> Result<usize, MapError> {
    relation.column_index(name).ok_or_else(|| MapError::ColumnMissing {
        origin: m.origin.clone(),
        event: m.name.to_string(),
        table: relation.table.to_string(),
        column: name.to_owned(),
    })
}

/// A row's cell; an unchanged TOASTed value of `new` is taken from `old` when the old row has it.
fn cell(change: &RowChange, var: Var, index: usize) -> Option<&Cell> {
    let row = match var {
        Var::New => change.new.as_ref(),
        Var::Old => change.old.as_ref(),
    };
    match row?.get(index)? {
        Cell::Unsent if var == Var::New => match change.old.as_ref()?.get(index)? {
            c @ Cell::Text(_) | c @ Cell::Null => Some(c),
            Cell::Unsent => None,
        },
        Cell::Unsent => None,
        c => Some(c),
    }
}

/// Whether an update left the value of `new` at `index` unsent and the old row does not have it.
fn unsent(change: &RowChange, index: usize) -> bool {
    change.op == Op::Update
        && change.new.as_ref().and_then(|r| r.get(index)) == Some(&Cell::Unsent)
        && cell(change, Var::New, index).is_none()
}

/// The row's replica identity, `id = 42`, for messages.
fn identity_of(relation: &Relation, change: &RowChange) -> String {
    let parts: Vec<String> = relation
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.identity)
        .map(
            |(i, c)| match cell(change, Var::New, i).or_else(|| cell(change, Var::Old, i)) {
                Some(Cell::Text(t)) => format!("{} = {}", c.name, text_of(t)),
                _ => format!("{} = ?", c.name),
            },
        )
        .collect();
    if parts.is_empty() {
        "(no replica identity)".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A value on its way into an event: JSON for data, text for keys.
enum Out<'a> {
    Missing,
    Null,
    Text(Cow<'a, str>),
    Cel(Cel),
}

impl Bound {
    /// The columns of an update's new row that a mapping with `unchanged_toast = "reselect"`
    /// reads and the source did not send: the runtime reads them again by the row's key and puts
    /// them into the row change before [`apply`](Bound::apply).
    pub fn to_reselect(&self, change: &RowChange) -> Vec<usize> {
        let mut columns: Vec<usize> = self
            .rules
            .iter()
            .chain(self.collects.iter().map(|c| &c.rule))
            .filter(|r| r.mapping.unchanged_toast == UnchangedToast::Reselect && r.mapping.ops.contains(&change.op))
            .flat_map(|r| r.reads_new.iter().copied())
            .filter(|&i| unsent(change, i))
            .collect();
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// The relation the mappings are bound to.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// Maps one row change to its events: none, one or several, in mapping order. A change
    /// mapped alone is a transaction of its own: an event that collects rows gets none but its
    /// own (see [`Bound::apply_in`]).
    pub fn apply(&self, change: &RowChange, ctx: &EventContext) -> Result<Vec<Event>, MapError> {
        let mut tx = Transaction::default();
        let mut events = self.apply_in(change, ctx, &mut tx)?;
        events.extend(tx.commit(ctx)?);
        Ok(events)
    }

    /// Maps one row change of the transaction `tx` collects: returns the events made at once; an
    /// event that collects rows, and the rows it collects, wait in `tx` for its
    /// [`commit`](Transaction::commit).
    pub fn apply_in(
        &self,
        change: &RowChange,
        ctx: &EventContext,
        tx: &mut Transaction,
    ) -> Result<Vec<Event>, MapError> {
        let mut cel_ctx: Option<cel::Context<'static, 'static>> = None;
        let mut events: Vec<Event> = Vec::new();
        let mut made: Vec<(Arc<str>, u32)> = Vec::new();
        for rule in &self.rules {
            if !rule.mapping.ops.contains(&change.op) {
                continue;
            }
            let m = &rule.mapping;
            if m.per_transaction {
                self.fold_into(rule, change, ctx, tx)?;
                continue;
            }
            let nth = made.iter().filter(|(n, v)| *n == m.name && *v == m.version).count();
            let Some(event) = self.event_of(rule, change, ctx, &mut cel_ctx, nth, true)? else {
                continue;
            };
            made.push((m.name.clone(), m.version));
            if !m.collects.is_empty() {
                // It waits for the commit, and so does every later event of the transaction.
                tx.hold(event, m, change)?;
            } else if tx.holding() {
                tx.wait(event, &m.origin, &m.table, change.tx.commit_lsn)?;
            } else {
                events.push(event);
            }
        }
        if change.op == Op::Insert {
            for o in &self.outboxes {
                let event = self.outbox_event(o, change, ctx)?;
                if tx.holding() {
                    tx.wait(event, &o.mapping.origin, &self.relation.table, change.tx.commit_lsn)?;
                } else {
                    events.push(event);
                }
            }
        }
        for c in &self.collects {
            if !c.rule.mapping.ops.contains(&change.op) {
                continue;
            }
            let Some(row) = self.event_of(&c.rule, change, ctx, &mut cel_ctx, 0, false)? else {
                continue;
            };
            let order = match &c.order {
                None => None,
                Some(e) => {
                    let value = self.eval(e, change, &mut cel_ctx).map_err(|err| {
                        self.eval_error(&c.rule.mapping.origin, &c.rule.mapping.name, change, "order_by", err)
                    })?;
                    Some(crate::tx::SortKey::of(&match value {
                        Out::Missing | Out::Null => Json::Null,
                        Out::Text(t) => match e {
                            BoundExpr::Column { index, .. } => match to_field(&self.relation.columns[*index].ty, &t) {
                                Field::Json(v) => v,
                                Field::Raw(r) => Json::String(r.get().to_owned()),
                            },
                            _ => Json::String(t.into_owned()),
                        },
                        Out::Cel(v) => cel_to_json(&v).unwrap_or(Json::Null),
                    }))
                }
            };
            tx.collect(&c.parent, c.index, row, order, change)?;
        }
        Ok(events)
    }

    /// An expression (or a value) of a mapping that failed on a row change of this table.
    fn eval_error(&self, origin: &str, event: &str, change: &RowChange, what: &str, message: String) -> MapError {
        MapError::Eval(Box::new(EvalError {
            origin: origin.to_owned(),
            event: event.to_owned(),
            table: self.relation.table.to_string(),
            op: change.op,
            lsn: change.tx.commit_lsn.to_string(),
            what: what.to_owned(),
            message,
        }))
    }

    /// A change of a `per = "transaction"` event's row: the event of the row's net change in the
    /// transaction so far replaces the one of its earlier changes, in their place.
    fn fold_into(
        &self,
        rule: &Rule,
        change: &RowChange,
        ctx: &EventContext,
        tx: &mut Transaction,
    ) -> Result<(), MapError> {
        let m = &rule.mapping;
        let key = match self.eval(&rule.key, change, &mut None) {
            Ok(Out::Text(t)) => Some(t.into_owned()),
            Ok(Out::Cel(v)) => cel_to_subject(&v),
            _ => None,
        };
        let Some(key) = key else {
            // No key to fold by: the change alone says why (the key's error), or that its `when`
            // is false (no event).
            return self.event_of(rule, change, ctx, &mut None, 0, true).map(drop);
        };
        let event = match tx.fold(m, &key, change) {
            Some(net) if m.ops.contains(&net.op) => self.event_of(rule, &net, ctx, &mut None, 0, true)?,
            _ => None,
        };
        tx.place(m, &key, event, change)
    }

    /// The event of a row inserted into an outbox table: its type, aggregate, key and data
    /// from the row, its id the row's when it has one.
    fn outbox_event(&self, o: &OutboxRule, change: &RowChange, ctx: &EventContext) -> Result<Event, MapError> {
        let fail = |column: usize, message: &str| {
            let what = &self.relation.columns[column].name;
            self.eval_error(&o.mapping.origin, "[[outbox]]", change, what, message.to_owned())
        };
        let text = |column: usize| -> Result<Cow<'_, str>, MapError> {
            match cell(change, Var::New, column) {
                Some(Cell::Text(t)) => Ok(text_of(t)),
                _ => Err(fail(column, "is null: an outbox row needs it")),
            }
        };
        let ty = text(o.ty)?;
        let types = &o.mapping.types;
        if !types.is_empty() && !types.iter().any(|t| *t == ty) {
            return Err(fail(
                o.ty,
                &format!(
                    "is {ty:?}, which is not among the outbox's types ({}): add it to types, or fix the application",
                    types.join(", ")
                ),
            ));
        }
        let aggregate = text(o.aggregate_type)?;
        let subject = text(o.aggregate_id)?.into_owned();
        let payload = text(o.payload)?;
        let bytes: Cow<'_, [u8]> = if self.relation.columns[o.payload].ty == ficus_model::PgType::Bytea {
            Cow::Owned(
                ficus_model::value::decode_bytea(&payload).ok_or_else(|| fail(o.payload, "is not bytea's hex form"))?,
            )
        } else {
            Cow::Borrowed(payload.as_bytes())
        };
        let (data, body) = match o.kind {
            crate::compile::PayloadKind::Json => {
                let data: ficus_model::Data = serde_json::from_slice(&bytes).map_err(|_| {
                    fail(
                        o.payload,
                        &format!(
                            "is not a JSON object: an outbox's payload of content type {} is the event's data",
                            o.content_type
                        ),
                    )
                })?;
                (data, None)
            }
            crate::compile::PayloadKind::Text => (
                ficus_model::Data::default(),
                Some(ficus_model::Body::Text(String::from_utf8_lossy(&bytes).into_owned())),
            ),
            crate::compile::PayloadKind::Binary => (
                ficus_model::Data::default(),
                Some(ficus_model::Body::Binary(bytes.into_owned())),
            ),
        };
        let mut extensions = Vec::with_capacity(o.extensions.len());
        for (name, column) in &o.extensions {
            if let Some(Cell::Text(t)) = cell(change, Var::New, *column) {
                let value = match ficus_model::value::to_json(&self.relation.columns[*column].ty, &text_of(t)) {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                extensions.push((name.clone(), value));
            }
        }
        let id = match o.id.map(|i| (i, cell(change, Var::New, i))) {
            Some((_, Some(Cell::Text(t)))) => text_of(t).into_owned(),
            _ => {
                let Origin::Wal { lsn, seq } = &change.origin else {
                    return Err(fail(o.ty, "an outbox maps inserts only"));
                };
                ctx.event_id(&format!(
                    "{}/{lsn}/{seq}/outbox/{}",
                    change.tx.commit_lsn, self.relation.table
                ))
            }
        };
        Ok(Event {
            specversion: "1.0",
            id,
            source: self.source.clone(),
            ty: ty.as_ref().into(),
            aggregate: aggregate.as_ref().into(),
            subject,
            time: self.tx_attributes(change).time,
            datacontenttype: o.content_type.clone(),
            extensions,
            body,
            eventversion: crate::compile::DEFAULT_VERSION,
            lsn: change.tx.commit_lsn,
            txid: change.tx.xid,
            backfill: None,
            unavailable: None,
            data,
        })
    }

    /// The event a rule makes of a row change, `None` when its `when` is false; `nth` tells
    /// apart the events of one name and version made of the change. Without `with_id`, its id
    /// is left empty (a collected row is no event of its own).
    fn event_of(
        &self,
        rule: &Rule,
        change: &RowChange,
        ctx: &EventContext,
        cel_ctx: &mut Option<cel::Context<'static, 'static>>,
        nth: usize,
        with_id: bool,
    ) -> Result<Option<Event>, MapError> {
        let m = &rule.mapping;
        let fail = |what: &str, message: String| self.eval_error(&m.origin, &m.name, change, what, message);
        if let Some(when) = &rule.when {
            match self.eval(when, change, cel_ctx).map_err(|e| fail("when", e))? {
                Out::Cel(Cel::Bool(true)) => {}
                Out::Text(t) if t == "t" => {}
                Out::Cel(Cel::Bool(false)) | Out::Null | Out::Missing => return Ok(None),
                Out::Text(t) if t == "f" => return Ok(None),
                _ => return Err(fail("when", "did not give a bool".into())),
            }
        }
        let subject = match self.eval(&rule.key, change, cel_ctx).map_err(|e| fail("key", e))? {
            Out::Text(t) => t.to_string(),
            Out::Cel(v) => cel_to_subject(&v).ok_or_else(|| fail("key", format!("gave {v:?}, not a scalar")))?,
            Out::Null | Out::Missing => return Err(fail("key", "is null".into())),
        };
        // A value the update did not send: stop, or leave it out and say so.
        if m.unchanged_toast == UnchangedToast::Stop
            && let Some(&i) = rule.reads_new.iter().find(|&&i| unsent(change, i))
        {
            return Err(MapError::Unsent(Box::new(UnsentValue {
                origin: m.origin.clone(),
                event: m.name.to_string(),
                table: self.relation.table.to_string(),
                key: identity_of(&self.relation, change),
                column: self.relation.columns[i].name.clone(),
                lsn: change.tx.commit_lsn.to_string(),
            })));
        }
        let mut unavailable: Vec<&str> = Vec::new();
        let data = match &rule.data {
            BoundData::Row { var, columns } => {
                let mut obj = Vec::with_capacity(columns.len());
                for &i in columns {
                    let col = &self.relation.columns[i];
                    match cell(change, *var, i) {
                        Some(Cell::Text(t)) => obj.push((col.name.clone(), to_field(&col.ty, &text_of(t)))),
                        Some(Cell::Null) => obj.push((col.name.clone(), Field::Json(Json::Null))),
                        _ => {
                            if *var == Var::New && unsent(change, i) {
                                unavailable.push(&col.name);
                            }
                        }
                    };
                }
                ficus_model::Data(obj)
            }
            BoundData::Fields(fields) => {
                let mut obj = Vec::with_capacity(fields.len());
                for (name, e) in fields {
                    let value =
                        match self
                            .eval(e, change, cel_ctx)
                            .map_err(|err| fail(&format!("data.{name}"), err))?
                        {
                            Out::Missing => {
                                if let BoundExpr::Column { var: Var::New, index } = e
                                    && unsent(change, *index)
                                {
                                    unavailable.push(name);
                                }
                                continue;
                            }
                            Out::Null => Field::Json(Json::Null),
                            Out::Text(t) => match e {
                                BoundExpr::Column { index, .. } => to_field(&self.relation.columns[*index].ty, &t),
                                _ => Field::Json(Json::String(t.to_string())),
                            },
                            Out::Cel(v) => Field::Json(cel_to_json(&v).ok_or_else(|| {
                                fail(&format!("data.{name}"), "gave a value with no JSON form".into())
                            })?),
                        };
                    obj.push((name.clone(), value));
                }
                ficus_model::Data(obj)
            }
        };
        let tx = self.tx_attributes(change);
        let backfill = match &change.origin {
            Origin::Wal { .. } => None,
            Origin::Backfill { id, .. } => Some(id.clone()),
        };
        let id = if !with_id {
            String::new()
        } else {
            ctx.event_id(&match &change.origin {
                Origin::Wal { lsn, seq } => {
                    format!("{}/{lsn}/{seq}/{}/{}/{nth}", change.tx.commit_lsn, m.name, m.version)
                }
                Origin::Backfill { id, key } => format!(
                    "backfill/{id}/{}/{key}/{}/{}/{nth}",
                    self.relation.table, m.name, m.version
                ),
            })
        };
        Ok(Some(Event {
            specversion: "1.0",
            id,
            source: self.source.clone(),
            ty: m.name.clone(),
            aggregate: m.aggregate.clone(),
            subject,
            time: tx.time,
            datacontenttype: ficus_model::event::JSON.into(),
            extensions: Vec::new(),
            body: None,
            eventversion: m.version,
            lsn: change.tx.commit_lsn,
            txid: change.tx.xid,
            backfill,
            unavailable: (!unavailable.is_empty()).then(|| unavailable.join(",")),
            data,
        }))
    }

    /// The transaction's shared attributes, formatted once per transaction.
    fn tx_attributes(&self, change: &RowChange) -> TxAttributes {
        let mut cache = self.tx.borrow_mut();
        let fresh = cache.as_ref().is_none_or(|c| c.tx != change.tx);
        if fresh {
            *cache = Some(TxAttributes {
                tx: change.tx.clone(),
                time: Time::from_micros(change.tx.commit_time_micros),
            });
        }
        let c = cache.as_ref().expect("filled above");
        TxAttributes {
            tx: c.tx.clone(),
            time: c.time.clone(),
        }
    }

    fn eval<'c>(
        &self,
        e: &BoundExpr,
        change: &'c RowChange,
        cel_ctx: &mut Option<cel::Context<'static, 'static>>,
    ) -> Result<Out<'c>, String> {
        Ok(match e {
            BoundExpr::Column { var, index } => match cell(change, *var, *index) {
                Some(Cell::Text(t)) => Out::Text(text_of(t)),
                Some(Cell::Null) => Out::Null,
                _ => Out::Missing,
            },
            BoundExpr::Op => Out::Text(Cow::Borrowed(change.op.as_str())),
            BoundExpr::Table => Out::Text(Cow::Owned(self.relation.table.to_string())),
            BoundExpr::Cel(program) => {
                let ctx = cel_ctx.get_or_insert_with(|| self.context(change));
                match program.execute(ctx).map_err(|e| e.to_string())? {
                    Cel::Null => Out::Null,
                    v => Out::Cel(v),
                }
            }
        })
    }

    /// The CEL context of one row change, built once for all its mappings, with
    /// only the columns some CEL expression reads.
    fn context(&self, change: &RowChange) -> cel::Context<'static, 'static> {
        let row = |var: Var, columns: &[(usize, Key)]| {
            let entries: HashMap<Key, Cel> = columns
                .iter()
                .filter_map(|(i, key)| {
                    let v = match cell(change, var, *i)? {
                        Cell::Text(t) => to_cel(&self.relation.columns[*i].ty, &text_of(t)),
                        _ => Cel::Null,
                    };
                    Some((key.clone(), v))
                })
                .collect();
            Cel::Map(cel::objects::Map { map: Arc::new(entries) })
        };
        let mut ctx = cel::Context::with_env(self.env.clone());
        ctx.add_variable_from_value("new", row(Var::New, &self.cel_new));
        ctx.add_variable_from_value("old", row(Var::Old, &self.cel_old));
        ctx.add_variable_from_value("op", change.op.as_str());
        ctx.add_variable_from_value("table", self.relation.table.to_string());
        let commit_time = chrono::DateTime::from_timestamp_micros(change.tx.commit_time_micros).unwrap_or_default();
        ctx.add_variable_from_value(
            "tx",
            map([
                ("xid".to_owned(), Cel::Int(i64::from(change.tx.xid))),
                ("lsn".to_owned(), Cel::from(change.tx.commit_lsn.to_string())),
                ("commit_time".to_owned(), Cel::Timestamp(commit_time.fixed_offset())),
            ]),
        );
        if self.changed {
            ctx.add_variable_from_value("changed", self.changed_columns(change));
        }
        ctx
    }

    /// Names of the columns whose value differs between `old` and `new`, where both are known.
    fn changed_columns(&self, change: &RowChange) -> Vec<String> {
        let (Some(old), Some(new)) = (&change.old, &change.new) else {
            return vec![];
        };
        (0..self.relation.columns.len())
            .filter(|&i| match (old.get(i), new.get(i)) {
                (Some(o), Some(n)) => *n != Cell::Unsent && *o != Cell::Unsent && o != n,
                _ => false,
            })
            .map(|i| self.relation.columns[i].name.clone())
            .collect()
    }
}
