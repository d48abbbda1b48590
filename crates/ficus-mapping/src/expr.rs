//! Expressions: plain column references, read without CEL, and CEL programs.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Ast, IdedExpr};

/// Which row an expression reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Var {
    New,
    Old,
}

impl Var {
    fn from_name(name: &str) -> Option<Var> {
        match name {
            "new" => Some(Var::New),
            "old" => Some(Var::Old),
            _ => None,
        }
    }
}

/// The variables an expression may read.
pub(crate) const VARIABLES: &[&str] = &["new", "old", "op", "changed", "table", "tx"];

/// A compiled expression.
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    /// `new.id`: read straight from the row change, no CEL.
    Column { var: Var, name: String },
    /// `op`
    Op,
    /// `table`
    Table,
    /// Anything else.
    Cel(Arc<cel::Program>),
}

/// Columns one row variable is read for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Cols {
    #[default]
    None,
    Some(BTreeSet<String>),
    All,
}

impl Cols {
    pub fn add(&mut self, name: &str) {
        match self {
            Cols::None => *self = Cols::Some(BTreeSet::from([name.to_owned()])),
            Cols::Some(set) => {
                set.insert(name.to_owned());
            }
            Cols::All => {}
        }
    }

    pub fn merge(&mut self, other: &Cols) {
        match other {
            Cols::None => {}
            Cols::All => *self = Cols::All,
            Cols::Some(set) => set.iter().for_each(|c| self.add(c)),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Cols::None)
    }
}

/// What an expression reads from a row change.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reads {
    /// Columns read through CEL (which needs them in its context).
    pub cel_new: Cols,
    pub cel_old: Cols,
    /// Every column read, through CEL or directly.
    pub new: Cols,
    pub old: Cols,
    pub changed: bool,
    pub uses_cel: bool,
}

impl Reads {
    pub fn merge(&mut self, other: &Reads) {
        self.cel_new.merge(&other.cel_new);
        self.cel_old.merge(&other.cel_old);
        self.new.merge(&other.new);
        self.old.merge(&other.old);
        self.changed |= other.changed;
        self.uses_cel |= other.uses_cel;
    }
}

/// A column an expression names, with where (byte offset in the expression).
#[derive(Clone, Debug)]
pub(crate) struct ColumnRef {
    pub var: Var,
    pub name: String,
    pub offset: usize,
}

/// An expression that does not compile.
#[derive(Debug)]
pub(crate) struct ExprError {
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// A parsed expression, with what it reads.
pub(crate) struct Parsed {
    pub expr: Expr,
    pub reads: Reads,
    pub columns: Vec<ColumnRef>,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The variables of an expression over a logical decoding message.
pub(crate) const MESSAGE_VARIABLES: &[&str] = &["payload", "prefix", "tx"];

/// Parses an expression over a logical decoding message (`payload`, `prefix`, `tx`): CEL.
pub(crate) fn parse_message(text: &str) -> Result<Arc<cel::Program>, Vec<ExprError>> {
    let program = compile_cel(text, "payload.type == 'OrderRefunded'")?;
    let mut unknown = Vec::new();
    names(program.expression(), &mut Vec::new(), &mut unknown);
    if unknown.is_empty() {
        return Ok(Arc::new(program));
    }
    Err(unknown
        .into_iter()
        .map(|(name, id)| ExprError {
            offset: program
                .source_info()
                .offset_for(id)
                .map_or(0, |(start, _)| start as usize),
            message: format!("unknown variable `{name}`"),
            hint: Some(format!("a message's variables are {}", MESSAGE_VARIABLES.join(", "))),
        })
        .collect())
}

/// The free names of an expression that are no message variable.
fn names(e: &IdedExpr, bound: &mut Vec<String>, unknown: &mut Vec<(String, u64)>) {
    let mut walk = |e: &IdedExpr, bound: &mut Vec<String>| names(e, bound, unknown);
    match &e.expr {
        Ast::Ident(name) => {
            if !bound.contains(name) && !MESSAGE_VARIABLES.contains(&name.as_str()) {
                unknown.push((name.clone(), e.id));
            }
        }
        Ast::Select(select) => walk(&select.operand, bound),
        Ast::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, bound);
            }
            call.args.iter().for_each(|a| walk(a, bound));
        }
        Ast::Comprehension(c) => {
            walk(&c.iter_range, bound);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(part, bound);
            }
            bound.truncate(depth);
        }
        Ast::List(list) => list.elements.iter().for_each(|a| walk(a, bound)),
        Ast::Map(map) => map.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => {
                walk(&m.key, bound);
                walk(&m.value, bound);
            }
            EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Ast::Struct(s) => s.entries.iter().for_each(|entry| {
            if let EntryExpr::StructField(f) = &entry.expr {
                walk(&f.value, bound)
            }
        }),
        Ast::Literal(_) | Ast::Unspecified => {}
    }
}

fn compile_cel(text: &str, example: &str) -> Result<cel::Program, Vec<ExprError>> {
    cel::Program::compile(text).map_err(|errors| {
        errors
            .errors
            .iter()
            .take(1) // the parser's later errors follow from the first
            .map(|e| ExprError {
                offset: line_col_offset(text, e.pos.0, e.pos.1),
                message: format!("CEL does not parse: {}", e.msg),
                hint: Some(format!("expressions are CEL, e.g. {example}")),
            })
            .collect::<Vec<_>>()
    })
}

/// Parses an expression: a plain column reference when it is one, CEL otherwise.
pub(crate) fn parse(text: &str) -> Result<Parsed, Vec<ExprError>> {
    let trimmed = text.trim();
    let lead = text.len() - text.trim_start().len();
    if let Some((var, name)) = trimmed.split_once('.').and_then(|(v, n)| Some((Var::from_name(v)?, n)))
        && is_ident(name)
    {
        let mut reads = Reads::default();
        match var {
            Var::New => reads.new.add(name),
            Var::Old => reads.old.add(name),
        }
        let columns = vec![ColumnRef {
            var,
            name: name.to_owned(),
            offset: lead + 4,
        }];
        return Ok(Parsed {
            expr: Expr::Column {
                var,
                name: name.to_owned(),
            },
            reads,
            columns,
        });
    }
    match trimmed {
        "op" => {
            return Ok(Parsed {
                expr: Expr::Op,
                reads: Reads::default(),
                columns: vec![],
            });
        }
        "table" => {
            return Ok(Parsed {
                expr: Expr::Table,
                reads: Reads::default(),
                columns: vec![],
            });
        }
        _ => {}
    }
    let program = compile_cel(text, "new.status == 'paid' && old.status != 'paid'")?;
    let mut analysis = Analysis {
        reads: Reads {
            uses_cel: true,
            ..Reads::default()
        },
        ..Analysis::default()
    };
    analysis.walk(program.expression(), &mut Vec::new());
    let offset_of = |id: u64| {
        program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize)
    };
    if !analysis.unknown.is_empty() {
        return Err(analysis
            .unknown
            .iter()
            .map(|(name, id)| ExprError {
                offset: offset_of(*id),
                message: format!("unknown variable `{name}`"),
                hint: Some(format!("variables are {}", VARIABLES.join(", "))),
            })
            .collect());
    }
    let columns = analysis
        .columns
        .iter()
        .map(|(var, name, id)| ColumnRef {
            var: *var,
            name: name.clone(),
            offset: offset_of(*id),
        })
        .collect();
    let mut reads = analysis.reads;
    reads.new.merge(&reads.cel_new.clone());
    reads.old.merge(&reads.cel_old.clone());
    Ok(Parsed {
        expr: Expr::Cel(Arc::new(program)),
        reads,
        columns,
    })
}

fn line_col_offset(text: &str, line: isize, col: isize) -> usize {
    let line = line.max(1) as usize;
    let start: usize = text.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let rest = &text[start.min(text.len())..];
    let col = rest
        .char_indices()
        .nth((col.max(1) - 1) as usize)
        .map_or(rest.len(), |(i, _)| i);
    start + col
}

#[derive(Default)]
struct Analysis {
    reads: Reads,
    columns: Vec<(Var, String, u64)>,
    unknown: Vec<(String, u64)>,
}

impl Analysis {
    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        match &e.expr {
            Ast::Select(select) => {
                if let Ast::Ident(name) = &select.operand.expr
                    && let Some(var) = Var::from_name(name)
                    && !bound.contains(name)
                {
                    match var {
                        Var::New => self.reads.cel_new.add(&select.field),
                        Var::Old => self.reads.cel_old.add(&select.field),
                    }
                    self.columns.push((var, select.field.clone(), select.operand.id));
                } else {
                    self.walk(&select.operand, bound);
                }
            }
            Ast::Ident(name) => {
                if bound.contains(name) {
                    return;
                }
                match name.as_str() {
                    "new" => self.reads.cel_new = Cols::All,
                    "old" => self.reads.cel_old = Cols::All,
                    "changed" => self.reads.changed = true,
                    "op" | "table" | "tx" => {}
                    _ => self.unknown.push((name.clone(), e.id)),
                }
            }
            Ast::Call(call) => {
                if let Some(target) = &call.target {
                    self.walk(target, bound);
                }
                call.args.iter().for_each(|a| self.walk(a, bound));
            }
            Ast::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, bound);
                }
                bound.truncate(depth);
            }
            Ast::List(list) => list.elements.iter().for_each(|a| self.walk(a, bound)),
            Ast::Map(map) => map.entries.iter().for_each(|entry| self.walk_entry(&entry.expr, bound)),
            Ast::Struct(s) => s.entries.iter().for_each(|entry| self.walk_entry(&entry.expr, bound)),
            Ast::Literal(_) | Ast::Unspecified => {}
        }
    }

    fn walk_entry(&mut self, entry: &EntryExpr, bound: &mut Vec<String>) {
        match entry {
            EntryExpr::MapEntry(m) => {
                self.walk(&m.key, bound);
                self.walk(&m.value, bound);
            }
            EntryExpr::StructField(f) => self.walk(&f.value, bound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_references_skip_cel() {
        let p = parse("new.id").unwrap();
        assert!(matches!(p.expr, Expr::Column { var: Var::New, ref name } if name == "id"));
        assert!(!p.reads.uses_cel);
        assert!(matches!(parse(" op ").unwrap().expr, Expr::Op));
    }

    #[test]
    fn cel_reads_are_collected() {
        let p = parse("old.status != 'paid' && new.status == 'paid' && new.items.all(i, i > 0)").unwrap();
        assert_eq!(
            p.reads.new,
            Cols::Some(BTreeSet::from(["items".into(), "status".into()]))
        );
        assert_eq!(p.reads.old, Cols::Some(BTreeSet::from(["status".into()])));
        assert!(p.reads.uses_cel);
        assert_eq!(parse("size(new) > 2").unwrap().reads.new, Cols::All);
        assert!(parse("'x' in changed").unwrap().reads.changed);
    }

    #[test]
    fn unknown_variables_and_syntax_errors_have_offsets() {
        let errors = parse("neww.id == 1").err().unwrap();
        assert_eq!(errors[0].message, "unknown variable `neww`");
        assert_eq!(errors[0].offset, 0);
        let errors = parse("new.id ==").err().unwrap();
        assert!(
            errors[0].message.starts_with("CEL does not parse"),
            "{}",
            errors[0].message
        );
    }
}
