//! pgoutput (protocol version 1) messages other than Begin, Commit and
//! logical decoding messages, which the transport decodes itself.
//!
//! Values stay in their text form, as shared slices of the received buffer:
//! nothing is converted until a mapping reads the column.

use bytes::{Buf, Bytes};
use ficus_model::{Cell, ReplicaIdentity, Row};

/// A relation as pgoutput describes it, before its types are resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRelation {
    /// The table's OID.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns: name, type OID, whether part of the replica identity.
    pub columns: Vec<(String, u32, bool)>,
}

/// One decoded pgoutput message.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// A relation's description; comes before its first change and after every schema change.
    Relation(RawRelation),
    /// An insert.
    Insert {
        /// Table OID.
        relation: u32,
        /// The new row.
        new: Row,
    },
    /// An update; `old` is sent when the replica identity changed or is FULL.
    Update {
        /// Table OID.
        relation: u32,
        /// The old row (all columns, or only the identity's with the rest NULL).
        old: Option<Row>,
        /// Whether `old` holds only the replica identity's columns.
        key_only: bool,
        /// The new row.
        new: Row,
    },
    /// A delete.
    Delete {
        /// Table OID.
        relation: u32,
        /// The old row (all columns, or only the identity's with the rest NULL).
        old: Row,
        /// Whether `old` holds only the replica identity's columns.
        key_only: bool,
    },
    /// A truncate of one or more tables.
    Truncate {
        /// Table OIDs.
        relations: Vec<u32>,
    },
    /// Anything ficus has no use for (Type, Origin).
    Ignored(u8),
}

/// A pgoutput message that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message {tag:?}: {why}")]
pub struct DecodeError {
    tag: char,
    why: &'static str,
}

struct Reader {
    buf: Bytes,
    tag: u8,
}

impl Reader {
    fn err(&self, why: &'static str) -> DecodeError {
        DecodeError {
            tag: self.tag as char,
            why,
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.get_u32())
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Row, DecodeError> {
        let n = self.u16()? as usize;
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match self.u8()? {
                b'n' => Cell::Null,
                b'u' => Cell::Unsent,
                b't' => {
                    let len = self.u32()? as usize;
                    if self.buf.remaining() < len {
                        return Err(self.err("truncated value"));
                    }
                    Cell::Text(self.buf.split_to(len))
                }
                _ => return Err(self.err("binary or unknown tuple value")),
            });
        }
        Ok(Row(cells))
    }
}

/// Decodes one pgoutput message.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader {
        tag: data.first().copied().unwrap_or(0),
        buf: data,
    };
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let oid = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let replica_identity = ReplicaIdentity::from_letter(r.u8()?);
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push((name, type_oid, flags & 1 == 1));
            }
            Message::Relation(RawRelation {
                oid,
                schema: if schema.is_empty() { "pg_catalog".into() } else { schema },
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(r.err("insert without new tuple"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            let key_only = kind == b'K';
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(r.err("update without new tuple"));
            }
            Message::Update {
                relation,
                old,
                key_only,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let key_only = match r.u8()? {
                b'K' => true,
                b'O' => false,
                _ => return Err(r.err("delete without old tuple")),
            };
            Message::Delete {
                relation,
                old: r.tuple()?,
                key_only,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        other => Message::Ignored(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(cells: &[Option<&str>]) -> Vec<u8> {
        let mut v = (cells.len() as u16).to_be_bytes().to_vec();
        for c in cells {
            match c {
                None => v.push(b'n'),
                Some(s) => {
                    v.push(b't');
                    v.extend((s.len() as u32).to_be_bytes());
                    v.extend(s.as_bytes());
                }
            }
        }
        v
    }

    #[test]
    fn decodes_relation_and_changes() {
        let mut rel = vec![b'R'];
        rel.extend(16385u32.to_be_bytes());
        rel.extend(b"public\0orders\0d");
        rel.extend(2u16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(20u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.push(0);
        rel.extend(b"status\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = decode(Bytes::from(rel)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(r.columns, vec![("id".into(), 20, true), ("status".into(), 25, false)]);

        let mut upd = vec![b'U'];
        upd.extend(16385u32.to_be_bytes());
        upd.push(b'O');
        upd.extend(tuple(&[Some("1"), Some("placed")]));
        upd.push(b'N');
        upd.extend(tuple(&[Some("1"), None]));
        let msg = decode(Bytes::from(upd)).unwrap();
        let Message::Update {
            old: Some(old), new, ..
        } = msg
        else {
            panic!("not an update with old")
        };
        assert_eq!(old.0[1], Cell::text("placed"));
        assert_eq!(new.0[1], Cell::Null);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        for bad in [
            &b"I\0\0"[..],
            b"U\0\0\0\x01N\0\x05t",
            b"R\0\0\0\x01pub",
            b"D\0\0\0\x01X",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
