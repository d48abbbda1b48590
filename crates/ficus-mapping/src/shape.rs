//! The shape of each event's data — its fields, the expression behind each, their JSON types,
//! whether they can be null or absent — worked out from a mapping and its table's columns, for
//! the event catalog, the lock file and fixtures.

use cel::common::ast::{Expr as Ast, IdedExpr, LiteralValue};
use ficus_model::{CatalogTable, Op, PgType, ReplicaIdentity};

use crate::compile::{Data, Mapping, UnchangedToast};
use crate::expr::{Expr, Var};

/// The JSON type of a field, as ficus writes its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonType {
    /// `true` / `false`.
    Boolean,
    /// An integer.
    Integer,
    /// A number; `exact` when it carries a `numeric`'s digits as written. `NaN` and the
    /// infinities of `float`/`numeric` columns are written as strings.
    Number {
        /// A `numeric` column: digits kept exactly.
        exact: bool,
    },
    /// A string, with a JSON Schema `format` when it has one (`date-time`, `date`).
    String {
        /// `date-time`, `date`, ...
        format: Option<&'static str>,
        /// Base64 of bytes (`bytea`).
        base64: bool,
    },
    /// An array of one type.
    Array(Box<JsonType>),
    /// A JSON object.
    Object,
    /// An array of objects of one shape: collected rows.
    Rows(Box<DataShape>),
    /// Any JSON value (a `json`/`jsonb` column, or an expression whose type ficus cannot tell).
    Any,
}

impl JsonType {
    /// The JSON type of a column's values.
    pub fn of_column(ty: &PgType) -> JsonType {
        match ty {
            PgType::Bool => JsonType::Boolean,
            PgType::Int | PgType::Int8 => JsonType::Integer,
            PgType::Float => JsonType::Number { exact: false },
            PgType::Numeric => JsonType::Number { exact: true },
            PgType::Text | PgType::Time | PgType::Interval => JsonType::String {
                format: None,
                base64: false,
            },
            PgType::Timestamptz => JsonType::String {
                format: Some("date-time"),
                base64: false,
            },
            // Without a zone: RFC 3339 without the offset, which `date-time` requires.
            PgType::Timestamp => JsonType::String {
                format: None,
                base64: false,
            },
            PgType::Date => JsonType::String {
                format: Some("date"),
                base64: false,
            },
            PgType::Bytea => JsonType::String {
                format: None,
                base64: true,
            },
            PgType::Json => JsonType::Any,
            PgType::Array(elem) => JsonType::Array(Box::new(JsonType::of_column(elem))),
        }
    }

    /// The type of a column's values as CEL sees them (numbers are doubles in CEL).
    fn in_cel(ty: &PgType) -> JsonType {
        match ty {
            PgType::Numeric => JsonType::Number { exact: false },
            PgType::Array(elem) => JsonType::Array(Box::new(JsonType::in_cel(elem))),
            other => JsonType::of_column(other),
        }
    }
}

/// What a field's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldSource {
    /// A column of the row after (`new`) or before (`old`) the change, read as it is.
    Column {
        /// `new` or `old`.
        row: &'static str,
        /// The column.
        column: String,
        /// Its type as Postgres names it, when the table is known.
        type_name: Option<String>,
    },
    /// A CEL expression, as written.
    Expression(String),
}

/// One field of an event's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldShape {
    /// The field's name in `data`.
    pub name: String,
    /// What its value comes from.
    pub source: FieldSource,
    /// Its JSON type.
    pub ty: JsonType,
    /// Whether its value can be null.
    pub nullable: bool,
    /// Whether it is in every event's data (a value the source did not send is left out: an
    /// `old` column outside the replica identity, an unchanged TOASTed value with
    /// `unchanged_toast = "omit"`, `old` of an insert).
    pub required: bool,
}

/// The shape of an event's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataShape {
    /// The fields, in the order events carry them.
    pub fields: Vec<FieldShape>,
    /// Whether the fields are not all known: a whole row (`data = "new"`) of a table whose
    /// columns were not given.
    pub open: bool,
}

impl Mapping {
    /// The shape of this mapping's events' data with their collected rows (an array field per
    /// collect, each row of its table's shape); `tables` gives the columns' types.
    pub fn shape_in(&self, tables: &crate::Schema) -> DataShape {
        let mut shape = self.shape(tables.get(&self.table));
        for c in &self.collects {
            shape.fields.push(c.shape_in(tables));
        }
        shape
    }

    /// The shape of this mapping's events' data; `table` gives the columns' types and
    /// nullability (without it, columns are of any type and nullable).
    pub fn shape(&self, table: Option<&CatalogTable>) -> DataShape {
        let column = |var: Var, name: &str| -> (JsonType, bool, bool, Option<String>) {
            let Some(t) = table else {
                return (JsonType::Any, true, false, None);
            };
            let Some(c) = t.relation.columns.iter().find(|c| c.name == name) else {
                return (JsonType::Any, true, false, None);
            };
            let ops = &self.ops;
            let present = match var {
                // An insert or snapshot has no old row; a delete no new row.
                Var::Old => {
                    !ops.iter().any(|o| matches!(o, Op::Insert | Op::Snapshot))
                        && (t.relation.replica_identity == ReplicaIdentity::Full || c.identity)
                }
                Var::New => {
                    let omitted = self.unchanged_toast == UnchangedToast::Omit && t.toastable.contains(name);
                    !ops.contains(&Op::Delete) && !omitted
                }
            };
            let nullable = !t.not_null.contains(name);
            (JsonType::of_column(&c.ty), nullable, present, Some(c.type_name.clone()))
        };
        match &self.data {
            Data::Row { var, exclude } => match table {
                None => DataShape {
                    fields: vec![],
                    open: true,
                },
                Some(t) => DataShape {
                    fields: t
                        .relation
                        .columns
                        .iter()
                        .filter(|c| !exclude.contains(&c.name))
                        .map(|c| {
                            let (ty, nullable, required, type_name) = column(*var, &c.name);
                            FieldShape {
                                name: c.name.clone(),
                                source: FieldSource::Column {
                                    row: var_name(*var),
                                    column: c.name.clone(),
                                    type_name,
                                },
                                ty,
                                nullable,
                                required,
                            }
                        })
                        .collect(),
                    open: false,
                },
            },
            Data::Fields(fields) => DataShape {
                fields: fields
                    .iter()
                    .zip(&self.sources.fields)
                    .map(|((name, e), text)| {
                        let (source, ty, nullable, required) = match e {
                            Expr::Column { var, name: col } => {
                                let (ty, nullable, required, type_name) = column(*var, col);
                                (
                                    FieldSource::Column {
                                        row: var_name(*var),
                                        column: col.clone(),
                                        type_name,
                                    },
                                    ty,
                                    nullable,
                                    required,
                                )
                            }
                            Expr::Op | Expr::Table => (
                                FieldSource::Expression(text.clone()),
                                JsonType::String {
                                    format: None,
                                    base64: false,
                                },
                                false,
                                true,
                            ),
                            Expr::Cel(program) => {
                                let (ty, nullable) = infer(program.expression(), table);
                                (FieldSource::Expression(text.clone()), ty, nullable, true)
                            }
                        };
                        FieldShape {
                            name: name.clone(),
                            source,
                            ty,
                            nullable,
                            required,
                        }
                    })
                    .collect(),
                open: false,
            },
        }
    }
}

fn var_name(var: Var) -> &'static str {
    match var {
        Var::New => "new",
        Var::Old => "old",
    }
}

/// The JSON type of a CEL expression's value and whether it can be null, as far as its form
/// tells: literals, comparisons and logic, conversions, `size`, arithmetic, conditionals, and
/// columns read through CEL. Anything else is of any type and nullable.
fn infer(e: &IdedExpr, table: Option<&CatalogTable>) -> (JsonType, bool) {
    const ANY: (JsonType, bool) = (JsonType::Any, true);
    let string = JsonType::String {
        format: None,
        base64: false,
    };
    match &e.expr {
        Ast::Literal(l) => match l {
            LiteralValue::Boolean(_) => (JsonType::Boolean, false),
            LiteralValue::Int(_) | LiteralValue::UInt(_) => (JsonType::Integer, false),
            LiteralValue::Double(_) => (JsonType::Number { exact: false }, false),
            LiteralValue::String(_) => (string, false),
            LiteralValue::Null => (JsonType::Any, true),
            _ => ANY,
        },
        Ast::Select(select) => match (&select.operand.expr, table) {
            (Ast::Ident(var), Some(t)) if (var == "new" || var == "old") && !select.test => {
                match t.relation.columns.iter().find(|c| c.name == select.field) {
                    Some(c) => (JsonType::in_cel(&c.ty), !t.not_null.contains(&c.name)),
                    None => ANY,
                }
            }
            _ if select.test => (JsonType::Boolean, false),
            _ => ANY,
        },
        Ast::Call(call) => match call.func_name.as_str() {
            "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "_&&_" | "_||_" | "!_" | "@in" | "startsWith"
            | "endsWith" | "contains" | "matches" | "has" | "exists" | "all" | "exists_one" | "bool" => {
                (JsonType::Boolean, false)
            }
            "size" | "int" | "uint" => (JsonType::Integer, false),
            "double" => (JsonType::Number { exact: false }, false),
            "string" | "lowerAscii" | "upperAscii" | "trim" | "replace" | "substring" => (string, false),
            "timestamp" => (
                JsonType::String {
                    format: Some("date-time"),
                    base64: false,
                },
                false,
            ),
            "_?_:_" if call.args.len() == 3 => {
                let (a, an) = infer(&call.args[1], table);
                let (b, bn) = infer(&call.args[2], table);
                let null_a = matches!(&call.args[1].expr, Ast::Literal(LiteralValue::Null));
                let null_b = matches!(&call.args[2].expr, Ast::Literal(LiteralValue::Null));
                match (null_a, null_b) {
                    (true, false) => (b, true),
                    (false, true) => (a, true),
                    _ if a == b => (a, an || bn),
                    _ => match (&a, &b) {
                        (JsonType::Integer | JsonType::Number { .. }, JsonType::Integer | JsonType::Number { .. }) => {
                            (JsonType::Number { exact: false }, an || bn)
                        }
                        _ => ANY,
                    },
                }
            }
            "_+_" | "_-_" | "_*_" | "_/_" | "_%_" if call.args.len() == 2 => {
                let (a, _) = infer(&call.args[0], table);
                let (b, _) = infer(&call.args[1], table);
                match (a, b) {
                    (JsonType::String { .. }, _) | (_, JsonType::String { .. }) => (string, false),
                    (JsonType::Integer, JsonType::Integer) => (JsonType::Integer, false),
                    (JsonType::Integer | JsonType::Number { .. }, JsonType::Integer | JsonType::Number { .. }) => {
                        (JsonType::Number { exact: false }, false)
                    }
                    (JsonType::Array(t), _) => (JsonType::Array(t), false),
                    _ => ANY,
                }
            }
            "-_" => infer(&call.args[0], table),
            _ => ANY,
        },
        Ast::List(_) => (JsonType::Array(Box::new(JsonType::Any)), false),
        Ast::Map(_) => (JsonType::Object, false),
        _ => ANY,
    }
}

impl crate::Collect {
    /// The field of the collected rows: always there, never null, an array of rows.
    pub fn shape_in(&self, tables: &crate::Schema) -> FieldShape {
        FieldShape {
            name: self.field.clone(),
            source: FieldSource::Expression(format!(
                "rows of {} where {} is the key{}",
                self.rows.table,
                self.rows.sources.key,
                self.order_by.as_ref().map(|o| format!(", by {o}")).unwrap_or_default()
            )),
            ty: JsonType::Rows(Box::new(self.rows.shape(tables.get(&self.rows.table)))),
            nullable: false,
            required: true,
        }
    }
}

impl crate::MessageMapping {
    /// The shape of its events' data: the payload (open, its fields unknown to ficus), or its
    /// fields, typed as far as their expressions tell.
    pub fn shape(&self) -> DataShape {
        match &self.fields {
            None => DataShape {
                fields: vec![],
                open: true,
            },
            Some(fields) => DataShape {
                fields: fields
                    .iter()
                    .zip(&self.sources.fields)
                    .map(|((name, program), text)| {
                        let (ty, nullable) = infer(program.expression(), None);
                        FieldShape {
                            name: name.clone(),
                            source: FieldSource::Expression(text.clone()),
                            ty,
                            nullable,
                            required: true,
                        }
                    })
                    .collect(),
                open: false,
            },
        }
    }
}
