//! The raw change archive's encoding: row changes as the store keeps them (`archive = true`), and
//! back, for `ficus remap`.
//!
//! A change is JSON: `{"op", "xid", "commit_lsn", "commit_us", "origin", "new", "old"}`, where a
//! row is an array of cells in its relation's column order — a string (the value's text form),
//! `null` (SQL NULL) or `false` (a value the source did not send: an unchanged TOASTed value, a
//! column outside the replica identity). `origin` is `{"wal": {"lsn", "seq"}}` or
//! `{"backfill": {"id", "key"}}`: what the event ids derive from. The relation is described
//! separately, once per distinct description (its schema version), with the source's name and
//! identity, which the event ids and `source` derive from too.

use std::sync::Arc;

use bytes::Bytes;
use ficus_mapping::EventContext;
use ficus_model::{Cell, Lsn, Op, Origin, Relation, Row, RowChange, TxMeta};
use ficus_store::ArchivedChange;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A relation as archived, with the source it belongs to.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RelationDescription {
    /// The source's name (events' `source`).
    pub source: String,
    /// The source's identity (what event ids derive from).
    pub identity: String,
    /// The relation; none for the logical decoding messages of the source.
    #[serde(default)]
    pub relation: Option<Relation>,
}

impl RelationDescription {
    /// The description of a relation seen through a context, as stored.
    pub fn encode(relation: &Relation, ctx: &EventContext) -> String {
        let description = RelationDescription {
            source: ctx.source_name.clone(),
            identity: ctx.identity().to_owned(),
            relation: Some(relation.clone()),
        };
        serde_json::to_string(&description).expect("a relation always serializes")
    }

    /// The description the source's logical decoding messages are archived under.
    pub fn encode_messages(ctx: &EventContext) -> String {
        let description = RelationDescription {
            source: ctx.source_name.clone(),
            identity: ctx.identity().to_owned(),
            relation: None,
        };
        serde_json::to_string(&description).expect("a description always serializes")
    }
}

/// A logical decoding message as archived: `{"op": "message", "prefix", "content", "lsn",
/// "xid", "commit_lsn", "commit_us"}` (a mapped message's content is JSON text).
#[derive(Serialize, Deserialize)]
struct MessageJson {
    op: String,
    prefix: String,
    content: String,
    lsn: String,
    xid: u32,
    commit_lsn: String,
    commit_us: i64,
}

/// A logical decoding message as the store archives it (under [`RelationDescription::encode_messages`]).
pub(crate) fn encode_message(msg: &ficus_mapping::Message<'_>, description: &str) -> ArchivedChange {
    let json = MessageJson {
        op: "message".into(),
        prefix: msg.prefix.to_owned(),
        content: String::from_utf8_lossy(msg.content).into_owned(),
        lsn: msg.lsn.to_string(),
        xid: msg.tx.xid,
        commit_lsn: msg.tx.commit_lsn.to_string(),
        commit_us: msg.tx.commit_time_micros,
    };
    ArchivedChange {
        key: format!("message/{}/{}", msg.tx.commit_lsn, msg.lsn),
        lsn: msg.tx.commit_lsn.0,
        time_micros: msg.tx.commit_time_micros,
        relation: description.to_owned(),
        change: serde_json::to_string(&json).expect("a message always serializes"),
    }
}

/// An archived message back: its prefix, content, LSN and transaction.
pub(crate) fn decode_message(text: &str) -> Result<(String, String, Lsn, TxMeta), String> {
    let json: MessageJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let lsn = |s: &str| s.parse::<Lsn>().map_err(|e| e.to_string());
    Ok((
        json.prefix,
        json.content,
        lsn(&json.lsn)?,
        TxMeta {
            xid: json.xid,
            commit_lsn: lsn(&json.commit_lsn)?,
            commit_time_micros: json.commit_us,
        },
    ))
}

#[derive(Serialize, Deserialize)]
struct ChangeJson {
    op: String,
    xid: u32,
    commit_lsn: String,
    commit_us: i64,
    origin: OriginJson,
    new: Option<Vec<Value>>,
    old: Option<Vec<Value>>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OriginJson {
    Wal { lsn: String, seq: u32 },
    Backfill { id: String, key: String },
}

fn row_json(row: &Row) -> Vec<Value> {
    row.0
        .iter()
        .map(|cell| match cell {
            Cell::Null => Value::Null,
            Cell::Unsent => Value::Bool(false),
            Cell::Text(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        })
        .collect()
}

fn row_of(values: Vec<Value>) -> Result<Row, String> {
    values
        .into_iter()
        .map(|v| match v {
            Value::Null => Ok(Cell::Null),
            Value::Bool(false) => Ok(Cell::Unsent),
            Value::String(s) => Ok(Cell::Text(Bytes::from(s))),
            other => Err(format!("a cell is {other}")),
        })
        .collect::<Result<_, _>>()
        .map(Row)
}

/// The key that identifies a change in the archive: a repeat has the same.
fn key(change: &RowChange) -> String {
    match &change.origin {
        Origin::Wal { lsn, seq } => format!("wal/{}/{lsn}/{seq}", change.tx.commit_lsn),
        Origin::Backfill { id, key } => format!("backfill/{id}/{}/{key}", change.relation.table),
    }
}

/// A row change as the store archives it; `relation` is its relation's description.
pub(crate) fn encode(change: &RowChange, relation: &str) -> ArchivedChange {
    let json = ChangeJson {
        op: change.op.as_str().to_owned(),
        xid: change.tx.xid,
        commit_lsn: change.tx.commit_lsn.to_string(),
        commit_us: change.tx.commit_time_micros,
        origin: match &change.origin {
            Origin::Wal { lsn, seq } => OriginJson::Wal {
                lsn: lsn.to_string(),
                seq: *seq,
            },
            Origin::Backfill { id, key } => OriginJson::Backfill {
                id: id.to_string(),
                key: key.to_string(),
            },
        },
        new: change.new.as_ref().map(row_json),
        old: change.old.as_ref().map(row_json),
    };
    ArchivedChange {
        key: key(change),
        lsn: change.tx.commit_lsn.0,
        time_micros: change.tx.commit_time_micros,
        relation: relation.to_owned(),
        change: serde_json::to_string(&json).expect("a change always serializes"),
    }
}

/// An archived change back as the row change it was.
pub(crate) fn decode(change: &str, relation: &Arc<Relation>) -> Result<RowChange, String> {
    let json: ChangeJson = serde_json::from_str(change).map_err(|e| e.to_string())?;
    let lsn = |s: &str| s.parse::<Lsn>().map_err(|e| e.to_string());
    let op = match json.op.as_str() {
        "insert" => Op::Insert,
        "update" => Op::Update,
        "delete" => Op::Delete,
        "truncate" => Op::Truncate,
        "snapshot" => Op::Snapshot,
        other => return Err(format!("unknown operation {other:?}")),
    };
    let width = relation.columns.len();
    let row = |values: Option<Vec<Value>>| -> Result<Option<Row>, String> {
        let Some(values) = values else { return Ok(None) };
        let row = row_of(values)?;
        if row.0.len() != width {
            return Err(format!("a row of {} cells for {width} columns", row.0.len()));
        }
        Ok(Some(row))
    };
    Ok(RowChange {
        op,
        relation: relation.clone(),
        new: row(json.new)?,
        old: row(json.old)?,
        tx: TxMeta {
            xid: json.xid,
            commit_lsn: lsn(&json.commit_lsn)?,
            commit_time_micros: json.commit_us,
        },
        origin: match json.origin {
            OriginJson::Wal { lsn: l, seq } => Origin::Wal { lsn: lsn(&l)?, seq },
            OriginJson::Backfill { id, key } => Origin::Backfill {
                id: id.into(),
                key: key.into(),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use ficus_model::{Column, PgType, ReplicaIdentity, TableRef};

    use super::*;

    fn relation() -> Arc<Relation> {
        let column = |name: &str, ty: PgType| Column {
            name: name.into(),
            ty,
            type_name: "t".into(),
            identity: name == "id",
        };
        Arc::new(Relation {
            oid: 42,
            table: TableRef::new("public", "orders"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", PgType::Int8),
                column("note", PgType::Text),
                column("tags", PgType::Array(Box::new(PgType::Text))),
            ],
        })
    }

    #[test]
    fn a_change_comes_back_as_it_was() {
        let relation = relation();
        let changes = [
            RowChange {
                op: Op::Update,
                relation: relation.clone(),
                new: Some(Row(vec![Cell::text("1"), Cell::Unsent, Cell::text("{a,\"b c\"}")])),
                old: Some(Row(vec![Cell::text("1"), Cell::Null, Cell::Null])),
                tx: TxMeta {
                    xid: 735,
                    commit_lsn: Lsn(0x1_0000_0010),
                    commit_time_micros: 1_700_000_000_123_456,
                },
                origin: Origin::Wal {
                    lsn: Lsn(0x1_0000_0008),
                    seq: 3,
                },
            },
            RowChange {
                op: Op::Snapshot,
                relation: relation.clone(),
                new: Some(Row(vec![Cell::text("2"), Cell::text("é \"q\""), Cell::Null])),
                old: None,
                tx: TxMeta {
                    xid: 0,
                    commit_lsn: Lsn(5),
                    commit_time_micros: 9,
                },
                origin: Origin::Backfill {
                    id: "b1".into(),
                    key: "2".into(),
                },
            },
        ];
        let ctx = EventContext::new("shop", "7/shop");
        let description = RelationDescription::encode(&relation, &ctx);
        let back: RelationDescription = serde_json::from_str(&description).unwrap();
        assert_eq!(back.relation.as_ref(), Some(&*relation));
        assert_eq!((back.source.as_str(), back.identity.as_str()), ("shop", "7/shop"));
        for change in &changes {
            let archived = encode(change, &description);
            assert_eq!(&decode(&archived.change, &relation).unwrap(), change);
        }
        assert_eq!(encode(&changes[0], "").key, "wal/1/10/1/8/3");
        assert_eq!(encode(&changes[1], "").key, "backfill/b1/public.orders/2");
    }

    #[test]
    fn a_damaged_change_is_an_error() {
        let relation = relation();
        let short = r#"{"op":"insert","xid":1,"commit_lsn":"0/1","commit_us":0,"origin":{"wal":{"lsn":"0/1","seq":0}},"new":["1"],"old":null}"#;
        assert_eq!(decode(short, &relation).unwrap_err(), "a row of 1 cells for 3 columns");
        assert!(decode("{", &relation).is_err());
    }
}
