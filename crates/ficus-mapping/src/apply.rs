//! Applying mappings to row changes: the hot path.

use std::sync::Arc;

use cel::Value as Cel;
use cel::objects::Key;
use ficus_model::value::{rfc3339, to_json};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use ficus_model::{Cell, Event, Op, Origin, Relation, RowChange, text_of};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

use crate::cel_value::{cel_to_json, cel_to_subject, map, to_cel};
use crate::compile::{Compiled, Data, Mapping};
use crate::expr::{Cols, Expr, Var};

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
    /// An expression failed on a row change.
    #[error(transparent)]
    Eval(Box<EvalError>),
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
            MapError::ColumnMissing { .. } => {
                "restore the column or change the mapping (ficus check shows what else is off), then start ficus again: the slot stays where it is".into()
            }
            MapError::Eval(e) if e.message.contains("No such key") => {
                "the row change has no value for that column: old values need REPLICA IDENTITY FULL, and unchanged TOASTed values are not sent; guard with has(old.column)".into()
            }
            MapError::Eval(_) => "fix the expression, then start ficus again: the slot stays where it is".into(),
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
}

/// The mappings of one table, bound to one version of its relation.
pub struct Bound {
    relation: Arc<Relation>,
    rules: Vec<Rule>,
    /// Columns put into CEL's `new` and `old`, with their names as CEL map keys.
    cel_new: Vec<(usize, Key)>,
    cel_old: Vec<(usize, Key)>,
    changed: bool,
    source: Arc<str>,
    env: Arc<cel::Env>,
    /// The shared attributes of the transaction last seen: the same for all its events.
    tx: RefCell<Option<TxAttributes>>,
}

/// `time`, `lsn` and `txid` of one transaction, formatted once.
struct TxAttributes {
    /// The transaction the attributes are of (a backfill's chunks share an LSN, not a time).
    tx: ficus_model::TxMeta,
    time: Arc<str>,
    lsn: Arc<str>,
    txid: Arc<str>,
}

impl Compiled {
    /// Binds the mappings of a relation's table to the relation's columns;
    /// `None` when no mapping reads the table.
    pub fn bind(&self, relation: Arc<Relation>, ctx: &EventContext) -> Result<Option<Bound>, MapError> {
        let mappings: Vec<&Arc<Mapping>> = self.mappings.iter().filter(|m| m.table == relation.table).collect();
        if mappings.is_empty() {
            return Ok(None);
        }
        let (mut cel_new, mut cel_old, mut changed) = (Cols::None, Cols::None, false);
        let mut rules = Vec::new();
        for m in mappings {
            let bind = |e: &Expr| -> Result<BoundExpr, MapError> {
                Ok(match e {
                    Expr::Column { var, name } => BoundExpr::Column {
                        var: *var,
                        index: column(&relation, m, name)?,
                    },
                    Expr::Op => BoundExpr::Op,
                    Expr::Table => BoundExpr::Table,
                    Expr::Cel(p) => BoundExpr::Cel(p.clone()),
                })
            };
            for cols in [&m.reads.new, &m.reads.old] {
                if let Cols::Some(names) = cols {
                    for name in names {
                        column(&relation, m, name)?;
                    }
                }
            }
            cel_new.merge(&m.reads.cel_new);
            cel_old.merge(&m.reads.cel_old);
            changed |= m.reads.changed;
            let data = match &m.data {
                Data::Fields(fields) => BoundData::Fields(
                    fields
                        .iter()
                        .map(|(f, e)| Ok((f.clone(), bind(e)?)))
                        .collect::<Result<_, MapError>>()?,
                ),
                Data::Row { var, exclude } => BoundData::Row {
                    var: *var,
                    columns: (0..relation.columns.len())
                        .filter(|i| !exclude.contains(&relation.columns[*i].name))
                        .collect(),
                },
            };
            rules.push(Rule {
                when: m.when.as_ref().map(&bind).transpose()?,
                key: bind(&m.key)?,
                data,
                mapping: m.clone(),
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
            cel_new: positions(&cel_new),
            cel_old: positions(&cel_old),
            changed,
            source: format!("/ficus/{}/{}", ctx.source_name, relation.table).into(),
            tx: RefCell::new(None),
            rules,
            env: self.env.clone(),
            relation,
        }))
    }
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

/// A value on its way into an event: JSON for data, text for keys.
enum Out<'a> {
    Missing,
    Null,
    Text(Cow<'a, str>),
    Cel(Cel),
}

impl Bound {
    /// The relation the mappings are bound to.
    pub fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// Maps one row change to its events: none, one or several, in mapping order.
    pub fn apply(&self, change: &RowChange, ctx: &EventContext) -> Result<Vec<Event>, MapError> {
        let mut cel_ctx: Option<cel::Context<'static, 'static>> = None;
        let mut events: Vec<Event> = Vec::new();
        for rule in &self.rules {
            if !rule.mapping.ops.contains(&change.op) {
                continue;
            }
            let m = &rule.mapping;
            let fail = |what: &str, message: String| {
                MapError::Eval(Box::new(EvalError {
                    origin: m.origin.clone(),
                    event: m.name.to_string(),
                    table: self.relation.table.to_string(),
                    op: change.op,
                    lsn: change.tx.commit_lsn.to_string(),
                    what: what.to_owned(),
                    message,
                }))
            };
            if let Some(when) = &rule.when {
                match self.eval(when, change, &mut cel_ctx).map_err(|e| fail("when", e))? {
                    Out::Cel(Cel::Bool(true)) => {}
                    Out::Text(t) if t == "t" => {}
                    Out::Cel(Cel::Bool(false)) | Out::Null | Out::Missing => continue,
                    Out::Text(t) if t == "f" => continue,
                    _ => return Err(fail("when", "did not give a bool".into())),
                }
            }
            let subject = match self.eval(&rule.key, change, &mut cel_ctx).map_err(|e| fail("key", e))? {
                Out::Text(t) => t.to_string(),
                Out::Cel(v) => cel_to_subject(&v).ok_or_else(|| fail("key", format!("gave {v:?}, not a scalar")))?,
                Out::Null | Out::Missing => return Err(fail("key", "is null".into())),
            };
            let data = match &rule.data {
                BoundData::Row { var, columns } => {
                    let mut obj = Map::new();
                    for &i in columns {
                        let col = &self.relation.columns[i];
                        match cell(change, *var, i) {
                            Some(Cell::Text(t)) => obj.insert(col.name.clone(), to_json(&col.ty, &text_of(t))),
                            Some(Cell::Null) => obj.insert(col.name.clone(), Json::Null),
                            _ => None,
                        };
                    }
                    Json::Object(obj)
                }
                BoundData::Fields(fields) => {
                    let mut obj = Map::new();
                    for (name, e) in fields {
                        let value = match self
                            .eval(e, change, &mut cel_ctx)
                            .map_err(|err| fail(&format!("data.{name}"), err))?
                        {
                            Out::Missing => continue,
                            Out::Null => Json::Null,
                            Out::Text(t) => match e {
                                BoundExpr::Column { index, .. } => to_json(&self.relation.columns[*index].ty, &t),
                                _ => Json::String(t.to_string()),
                            },
                            Out::Cel(v) => cel_to_json(&v).ok_or_else(|| {
                                fail(&format!("data.{name}"), "gave a value with no JSON form".into())
                            })?,
                        };
                        obj.insert(name.clone(), value);
                    }
                    Json::Object(obj)
                }
            };
            let nth = events
                .iter()
                .filter(|e| e.ty == m.name && e.eventversion == m.version)
                .count();
            let tx = self.tx_attributes(change);
            let (id_name, backfill) = match &change.origin {
                Origin::Wal { lsn, seq } => (
                    format!("{}/{lsn}/{seq}/{}/{}/{nth}", change.tx.commit_lsn, m.name, m.version),
                    None,
                ),
                Origin::Backfill { id, key } => (
                    format!(
                        "backfill/{id}/{}/{key}/{}/{}/{nth}",
                        self.relation.table, m.name, m.version
                    ),
                    Some(id.clone()),
                ),
            };
            events.push(Event {
                specversion: "1.0",
                id: ctx.event_id(&id_name),
                source: self.source.clone(),
                ty: m.name.clone(),
                aggregate: m.aggregate.clone(),
                subject,
                time: tx.time,
                datacontenttype: "application/json",
                eventversion: m.version,
                lsn: tx.lsn,
                txid: tx.txid,
                backfill,
                data,
            });
        }
        Ok(events)
    }

    /// The transaction's shared attributes, formatted once per transaction.
    fn tx_attributes(&self, change: &RowChange) -> TxAttributes {
        let mut cache = self.tx.borrow_mut();
        let fresh = cache.as_ref().is_none_or(|c| c.tx != change.tx);
        if fresh {
            *cache = Some(TxAttributes {
                tx: change.tx.clone(),
                time: chrono::DateTime::from_timestamp_micros(change.tx.commit_time_micros)
                    .map(rfc3339)
                    .unwrap_or_default()
                    .into(),
                lsn: change.tx.commit_lsn.to_string().into(),
                txid: change.tx.xid.to_string().into(),
            });
        }
        let c = cache.as_ref().expect("filled above");
        TxAttributes {
            tx: c.tx.clone(),
            time: c.time.clone(),
            lsn: c.lsn.clone(),
            txid: c.txid.clone(),
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
