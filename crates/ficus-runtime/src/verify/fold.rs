//! The archive folded by key into row images, as a snapshot of the source sees them (pure).
//!
//! Each key keeps a settled image and the changes after it, in commit order, each with its
//! transaction: the image a snapshot sees is the settled one with the changes of the transactions
//! it sees applied. Those are a prefix: a transaction that writes a row after another waits for
//! the other's row lock, which is released after the other is visible, so no snapshot sees the
//! later change without the earlier one. Changes every later snapshot sees (their transaction is
//! below its `xmin`) are folded into the settled image.

use std::collections::HashMap;
use std::sync::Arc;

use ficus_model::{Cell, Op, Origin, Relation, Row, RowChange};

use crate::backfill::key_text;
use crate::watermark::Snapshot;

/// A row as the archive says it is, with the relation version its cells are in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Image {
    pub relation: Arc<Relation>,
    pub row: Row,
}

impl Image {
    /// The cell of a column, by name; `None` when this version has no such column or the value is
    /// unknown (an unchanged TOASTed value the archive never saw).
    pub fn cell(&self, column: &str) -> Option<&Cell> {
        let cell = self.row.get(self.relation.column_index(column)?)?;
        (*cell != Cell::Unsent).then_some(cell)
    }
}

/// A change of one key: its transaction (0 for a backfill's snapshot row, which every snapshot
/// after the backfill sees) and the image after it (`None`: the row is gone).
#[derive(Clone, Debug)]
struct Step {
    xid: u32,
    image: Option<Image>,
}

#[derive(Debug, Default)]
struct History {
    settled: Option<Image>,
    steps: Vec<Step>,
}

impl History {
    fn last(&self) -> Option<&Image> {
        match self.steps.last() {
            Some(step) => step.image.as_ref(),
            None => self.settled.as_ref(),
        }
    }

    fn sees(snapshot: &Snapshot, xid: u32) -> bool {
        xid == 0 || snapshot.sees(snapshot.widen(xid))
    }

    /// The image `snapshot` sees; first settles the changes every later snapshot sees.
    fn at(&mut self, snapshot: &Snapshot) -> Option<&Image> {
        let settled = self
            .steps
            .iter()
            .take_while(|s| s.xid == 0 || snapshot.widen(s.xid) < snapshot.xmin)
            .count();
        for step in self.steps.drain(..settled) {
            self.settled = step.image;
        }
        let seen = self.steps.iter().take_while(|s| History::sees(snapshot, s.xid)).count();
        match seen {
            0 => self.settled.as_ref(),
            n => self.steps[n - 1].image.as_ref(),
        }
    }
}

/// One table's archived changes, folded by key.
#[derive(Debug)]
pub(crate) struct Fold {
    /// The key's columns, in key order.
    key_columns: Vec<String>,
    keys: HashMap<String, History>,
}

impl Fold {
    pub fn new(key_columns: Vec<String>) -> Fold {
        Fold {
            key_columns,
            keys: HashMap::new(),
        }
    }

    fn key_of(&self, relation: &Relation, row: &Row) -> Option<String> {
        let positions: Option<Vec<usize>> = self.key_columns.iter().map(|c| relation.column_index(c)).collect();
        key_text(row, &positions?)
    }

    fn push(&mut self, key: String, xid: u32, image: Option<Image>) {
        self.keys.entry(key).or_default().steps.push(Step { xid, image });
    }

    /// Every row gone (a truncate, or a resync's backfill that brings the current state).
    pub fn clear(&mut self, xid: u32) {
        for history in self.keys.values_mut() {
            history.steps.push(Step { xid, image: None });
        }
    }

    /// Adds an archived change of the table, in archive order.
    pub fn add(&mut self, change: &RowChange) {
        let xid = match change.origin {
            Origin::Backfill { .. } => 0,
            Origin::Wal { .. } => change.tx.xid,
        };
        let relation = &change.relation;
        if change.op == Op::Truncate {
            self.clear(xid);
            return;
        }
        let old_key = change.old.as_ref().and_then(|old| self.key_of(relation, old));
        let new = change.new.as_ref().map(|new| {
            let key = self.key_of(relation, new);
            (key, new)
        });
        match (change.op, new) {
            (Op::Delete, _) => {
                if let Some(key) = old_key {
                    self.push(key, xid, None);
                }
            }
            (_, Some((Some(key), new))) => {
                if let Some(old) = old_key.filter(|old| *old != key) {
                    self.push(old, xid, None); // the key moved
                }
                // An unsent cell (an unchanged TOASTed value) is the previous image's.
                let previous = self.keys.get(&key).and_then(History::last);
                let cells = new
                    .0
                    .iter()
                    .zip(&relation.columns)
                    .map(|(cell, column)| match (cell, previous) {
                        (Cell::Unsent, Some(p)) => p.cell(&column.name).cloned().unwrap_or(Cell::Unsent),
                        (cell, _) => cell.clone(),
                    })
                    .collect();
                let image = Image {
                    relation: relation.clone(),
                    row: Row(cells),
                };
                self.push(key, xid, Some(image));
            }
            _ => {}
        }
    }

    /// The image of a key a snapshot sees.
    pub fn at(&mut self, key: &str, snapshot: &Snapshot) -> Option<&Image> {
        self.keys.get_mut(key)?.at(snapshot)
    }

    /// The keys the archive has a row for, as `snapshot` sees them.
    pub fn present(&mut self, snapshot: &Snapshot) -> Vec<String> {
        self.keys
            .iter_mut()
            .filter_map(|(key, history)| history.at(snapshot).map(|_| key.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ficus_model::{Column, Lsn, PgType, ReplicaIdentity, TableRef, TxMeta};

    use super::*;

    fn relation() -> Arc<Relation> {
        let column = |name: &str| Column {
            name: name.into(),
            ty: PgType::Text,
            type_name: "text".into(),
            identity: name == "id",
        };
        Arc::new(Relation {
            oid: 1,
            table: TableRef::new("public", "t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column("id"), column("v"), column("body")],
        })
    }

    fn cells(values: &[Option<&str>]) -> Row {
        Row(values.iter().map(|v| v.map_or(Cell::Unsent, Cell::text)).collect())
    }

    fn change(op: Op, xid: u32, new: Option<&[Option<&str>]>, old: Option<&[Option<&str>]>) -> RowChange {
        RowChange {
            op,
            relation: relation(),
            new: new.map(cells),
            old: old.map(cells),
            tx: TxMeta {
                xid,
                commit_lsn: Lsn(u64::from(xid)),
                commit_time_micros: 0,
            },
            origin: Origin::Wal { lsn: Lsn(1), seq: 0 },
        }
    }

    fn value(fold: &mut Fold, key: &str, snapshot: &str) -> Option<String> {
        let snapshot: Snapshot = snapshot.parse().unwrap();
        fold.at(key, &snapshot).map(|i| match i.cell("v") {
            Some(Cell::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn a_snapshot_sees_the_changes_of_the_transactions_it_sees() {
        let mut fold = Fold::new(vec!["id".into()]);
        fold.add(&change(
            Op::Insert,
            100,
            Some(&[Some("1"), Some("a"), Some("b0")]),
            None,
        ));
        fold.add(&change(Op::Update, 105, Some(&[Some("1"), Some("b"), None]), None));
        fold.add(&change(Op::Update, 110, Some(&[Some("1"), Some("c"), None]), None));
        // 105 still running: only the insert is seen, and the later change is not either.
        assert_eq!(value(&mut fold, r#"["1"]"#, "101:111:105"), Some("a".into()));
        assert_eq!(value(&mut fold, r#"["1"]"#, "106:108:"), Some("b".into()));
        assert_eq!(value(&mut fold, r#"["1"]"#, "111:111:"), Some("c".into()));
        // The unchanged body was carried from the insert.
        let snapshot: Snapshot = "111:111:".parse().unwrap();
        assert_eq!(
            fold.at(r#"["1"]"#, &snapshot).unwrap().cell("body"),
            Some(&Cell::text("b0"))
        );
        // Before the insert, the row is not there.
        let mut fresh = Fold::new(vec!["id".into()]);
        fresh.add(&change(
            Op::Insert,
            100,
            Some(&[Some("1"), Some("a"), Some("b0")]),
            None,
        ));
        assert_eq!(value(&mut fresh, r#"["1"]"#, "100:100:"), None);
    }

    #[test]
    fn deletes_moved_keys_and_truncates_take_rows_away() {
        let mut fold = Fold::new(vec!["id".into()]);
        fold.add(&change(Op::Insert, 100, Some(&[Some("1"), Some("a"), Some("x")]), None));
        fold.add(&change(Op::Insert, 100, Some(&[Some("2"), Some("a"), Some("x")]), None));
        fold.add(&change(
            Op::Update,
            101,
            Some(&[Some("3"), Some("a"), Some("x")]),
            Some(&[Some("1"), None, None]),
        ));
        fold.add(&change(Op::Delete, 102, None, Some(&[Some("2"), None, None])));
        let seen: Snapshot = "103:103:".parse().unwrap();
        let mut present = fold.present(&seen);
        present.sort();
        assert_eq!(present, vec![r#"["3"]"#.to_owned()]);
        fold.add(&change(Op::Truncate, 104, None, None));
        assert_eq!(fold.present(&"103:103:".parse().unwrap()), vec![r#"["3"]"#.to_owned()]);
        assert!(fold.present(&"105:105:".parse().unwrap()).is_empty());
    }
}
