//! Row changes: what the source decodes from the WAL.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Lsn, Relation};

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
    /// A row that already existed, read by a backfill.
    Snapshot,
}

impl Op {
    /// The name mappings use: `insert`, `update`, `delete`, `truncate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Snapshot => "snapshot",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One column value, as pgoutput sends it (text form).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A value the source did not send: a TOASTed value an update did not
    /// change, or, in `old`, a column outside the replica identity.
    Unsent,
    /// The value's text form, a slice of the received message.
    Text(Bytes),
}

impl Cell {
    /// A text cell.
    pub fn text(s: &str) -> Cell {
        Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// A text value's bytes as a string (Postgres sends UTF-8 to a UTF-8 client).
pub fn text_of(bytes: &Bytes) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A row: one cell per column of its relation, in the relation's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Row(pub Vec<Cell>);

impl Row {
    /// The cell at a column position.
    pub fn get(&self, index: usize) -> Option<&Cell> {
        self.0.get(index)
    }
}

/// The transaction a row change belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxMeta {
    /// The transaction id.
    pub xid: u32,
    /// The commit LSN: orders transactions.
    pub commit_lsn: Lsn,
    /// The commit time, in microseconds since the Unix epoch.
    pub commit_time_micros: i64,
}

/// One decoded insert, update, delete or truncate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    /// What happened.
    pub op: Op,
    /// The table, as described by the stream when the change was made.
    pub relation: Arc<Relation>,
    /// The row after the change (inserts and updates).
    pub new: Option<Row>,
    /// The row before the change, as far as the replica identity provides it (updates and deletes).
    pub old: Option<Row>,
    /// The transaction (for a snapshot row: the position in the stream where it is emitted).
    pub tx: TxMeta,
    /// Where the change comes from: what makes its events' ids.
    pub origin: Origin,
}

/// Where a row change comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A change decoded from the WAL.
    Wal {
        /// The LSN of the change's own WAL record.
        lsn: Lsn,
        /// The change's position among the changes of the same WAL record (a multi-row
        /// `COPY` writes one record for many rows; a `TRUNCATE` one record for many tables).
        seq: u32,
    },
    /// A row read by a backfill.
    Backfill {
        /// The backfill's id.
        id: Arc<str>,
        /// The row's key, as text (its key columns' values joined).
        key: Arc<str>,
    },
}
