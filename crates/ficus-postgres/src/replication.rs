//! The replication stream: pgoutput over the replication protocol, as row changes.
//!
//! ```text
//! server ──CopyData──▶ pgwire-replication worker ──Begin/XLogData/Commit/KeepAlive──▶ ReplicationStream::next
//!                                                                                      │ decode, resolve types
//!                                                                                      ▼
//!                                                                                 SourceEvent
//! ```
//!
//! Acknowledging is the caller's: [`ReplicationStream::acknowledge`] moves the
//! position the slot may forget, and only the caller knows what is durable.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_model::{Cell, Column, Lsn, Op, Origin, Relation, Row, RowChange, TableRef, TxMeta};
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use sqlx::PgPool;

use crate::catalog::TypeCache;
use crate::decode::{self, Message, RawRelation};
use crate::{SourceError, SourceUrl};

/// Microseconds from the Unix epoch to Postgres' epoch (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// What the stream says, in WAL order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A transaction starts.
    Begin(TxMeta),
    /// A row change of the current transaction.
    Change(RowChange),
    /// A relation's (new) description: mappings bind to it.
    Relation(Arc<Relation>),
    /// The current transaction committed; acknowledging `end_lsn` lets the slot forget it.
    Commit {
        /// The commit LSN.
        commit_lsn: Lsn,
        /// The end of the commit record.
        end_lsn: Lsn,
    },
    /// The server is alive, and everything before `wal_end` was sent.
    KeepAlive {
        /// The server's position.
        wal_end: Lsn,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: bytes::Bytes,
        /// Its LSN.
        lsn: Lsn,
        /// Whether it was emitted in a transaction (it comes with the commit, if any).
        transactional: bool,
    },
}

/// What the source says of itself over the replication protocol (`IDENTIFY_SYSTEM`): any user
/// with the REPLICATION attribute may ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The cluster's current timeline: a restore or a promotion starts a new one.
    pub timeline: u32,
    /// Where its WAL is flushed up to.
    pub wal_end: Lsn,
    /// For each earlier timeline, where the history left it: `(timeline, switch point)`.
    pub history: Vec<(u32, Lsn)>,
}

impl SystemInfo {
    /// Where the WAL of `timeline` stopped being this cluster's history (`None` when it still is,
    /// being the current timeline, or is unknown).
    pub fn left_timeline_at(&self, timeline: u32) -> Option<Lsn> {
        self.history.iter().find(|(t, _)| *t == timeline).map(|(_, at)| *at)
    }
}

/// Asks the source who it is and where its WAL ends.
pub async fn identify(url: &SourceUrl, slot: &str, publication: &str) -> Result<SystemInfo, SourceError> {
    let mut session = ReplicationClient::connect_gated(url.replication_config(slot, publication))
        .await
        .map_err(SourceError::from_pgwire)?;
    let system = session.identify_system().await.map_err(SourceError::from_pgwire)?;
    let history = if system.timeline > 1 {
        let file = session
            .timeline_history(system.timeline)
            .await
            .map_err(SourceError::from_pgwire)?;
        parse_history(&String::from_utf8_lossy(&file.content))
    } else {
        vec![]
    };
    Ok(SystemInfo {
        system_id: system.system_id,
        timeline: system.timeline,
        wal_end: Lsn(system.xlogpos.as_u64()),
        history,
    })
}

/// A timeline history file: `parent_timeline<TAB>switch_point<TAB>reason` per line.
fn parse_history(text: &str) -> Vec<(u32, Lsn)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let timeline = fields.next()?.trim().parse().ok()?;
            let at = fields.next()?.trim().parse().ok()?;
            Some((timeline, at))
        })
        .collect()
}

/// A slot just created over the replication protocol, with the snapshot it
/// exported: the source exactly as of the slot's consistent point, every later
/// change being in the slot. The snapshot can be imported
/// (`SET TRANSACTION SNAPSHOT`) until this session ends.
pub struct ExportedSlot {
    _session: ReplicationClient,
    /// The exported snapshot's name.
    pub snapshot: String,
    /// Where the slot starts.
    pub consistent_point: Lsn,
    /// The server's system identifier.
    pub system_id: String,
}

impl ExportedSlot {
    /// Creates the slot (`pgoutput`) and keeps its exported snapshot.
    pub async fn create(url: &SourceUrl, slot: &str, publication: &str) -> Result<ExportedSlot, SourceError> {
        let mut session = ReplicationClient::connect_gated(url.replication_config(slot, publication))
            .await
            .map_err(SourceError::from_pgwire)?;
        let system = session.identify_system().await.map_err(SourceError::from_pgwire)?;
        let rows = session
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                ficus_model::relation::quote_ident(slot)
            ))
            .await
            .map_err(SourceError::from_pgwire)?;
        let field = |i: usize| {
            rows.first()
                .and_then(|r| r.get(i).cloned().flatten())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let (Some(point), Some(snapshot)) = (field(1), field(2)) else {
            return Err(SourceError::definite(
                format!("creating slot {slot}: the server returned no consistent point or snapshot"),
                "report this as a bug",
            ));
        };
        let consistent_point = point.parse().map_err(|_| {
            SourceError::definite(
                format!("creating slot {slot}: bad consistent point {point:?}"),
                "report this as a bug",
            )
        })?;
        Ok(ExportedSlot {
            _session: session,
            snapshot,
            consistent_point,
            system_id: system.system_id,
        })
    }
}

/// A running replication connection on ficus's slot.
pub struct ReplicationStream {
    client: ReplicationClient,
    pool: PgPool,
    types: TypeCache,
    relations: HashMap<u32, Arc<Relation>>,
    tx: Option<TxMeta>,
    last_change: (Lsn, u32),
    queued: VecDeque<SourceEvent>,
    /// A relation whose types are being resolved: kept here until done, so that
    /// [`next`](ReplicationStream::next) stays cancel-safe.
    unresolved: Option<RawRelation>,
    /// When the server last said something (an event, a keepalive).
    heard: Instant,
    /// The server's system identifier.
    pub system_id: String,
}

impl ReplicationStream {
    /// Connects and starts streaming from the slot's confirmed position.
    /// `acknowledged` is what the caller knows is durable: the worker reports it
    /// until the first [`acknowledge`](Self::acknowledge).
    pub async fn start(
        url: &SourceUrl,
        pool: PgPool,
        slot: &str,
        publication: &str,
        acknowledged: Lsn,
    ) -> Result<ReplicationStream, SourceError> {
        let cfg = url
            .replication_config(slot, publication)
            .with_ack_lsn(pgwire_replication::Lsn::from_u64(acknowledged.0))
            .with_status_interval(Duration::from_millis(200))
            .with_buffer_size(4096);
        let mut client = ReplicationClient::connect_gated(cfg)
            .await
            .map_err(SourceError::from_pgwire)?;
        let system = client.identify_system().await.map_err(SourceError::from_pgwire)?;
        client.start().await.map_err(SourceError::from_pgwire)?;
        client.wait_started().await.map_err(SourceError::from_pgwire)?;
        Ok(ReplicationStream {
            client,
            pool,
            types: TypeCache::default(),
            relations: HashMap::new(),
            tx: None,
            last_change: (Lsn(0), 0),
            queued: VecDeque::new(),
            unresolved: None,
            heard: Instant::now(),
            system_id: system.system_id,
        })
    }

    /// Tells the server that everything up to `lsn` is durable: the slot may move there.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.client.update_applied_lsn(pgwire_replication::Lsn::from_u64(lsn.0));
    }

    /// Ends the stream.
    pub fn stop(&self) {
        self.client.stop();
    }

    /// When the server last said something on this connection.
    pub fn heard(&self) -> Instant {
        self.heard
    }

    /// The next event, or [`SourceError::Silent`] once the server has said nothing for
    /// `silence` (`None`: wait for ever). An event already received wins over the deadline, so
    /// time the caller spent elsewhere is never taken for the server's silence. Cancel-safe.
    pub async fn next_within(&mut self, silence: Option<Duration>) -> Result<Option<SourceEvent>, SourceError> {
        let Some(limit) = silence else {
            return self.next().await;
        };
        let deadline = tokio::time::Instant::from_std(self.heard + limit);
        tokio::select! {
            biased;
            ev = self.next() => ev,
            _ = tokio::time::sleep_until(deadline) => Err(SourceError::Silent(format!(
                "the server said nothing on the replication connection for {}s (replication_timeout_secs): the route to it may be dead",
                limit.as_secs()
            ))),
        }
    }

    /// The next event; `None` when the server ended the stream. Cancel-safe:
    /// dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        let ev = self.receive().await;
        if matches!(ev, Ok(Some(_))) {
            self.heard = Instant::now();
        }
        ev
    }

    async fn receive(&mut self) -> Result<Option<SourceEvent>, SourceError> {
        loop {
            if let Some(raw) = &self.unresolved {
                let relation = Arc::new(self.resolve(raw.clone()).await?);
                self.unresolved = None;
                self.relations.insert(relation.oid, relation.clone());
                return Ok(Some(SourceEvent::Relation(relation)));
            }
            if let Some(ev) = self.queued.pop_front() {
                return Ok(Some(ev));
            }
            let Some(ev) = self.client.recv().await.map_err(SourceError::from_pgwire)? else {
                return Ok(None);
            };
            match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let tx = TxMeta {
                        xid,
                        commit_lsn: Lsn(final_lsn.as_u64()),
                        commit_time_micros: commit_time_micros + PG_EPOCH_MICROS,
                    };
                    self.tx = Some(tx.clone());
                    self.last_change = (Lsn(0), 0);
                    return Ok(Some(SourceEvent::Begin(tx)));
                }
                ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                    self.tx = None;
                    return Ok(Some(SourceEvent::Commit {
                        commit_lsn: Lsn(lsn.as_u64()),
                        end_lsn: Lsn(end_lsn.as_u64()),
                    }));
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    return Ok(Some(SourceEvent::KeepAlive {
                        wal_end: Lsn(wal_end.as_u64()),
                    }));
                }
                ReplicationEvent::Message {
                    prefix,
                    content,
                    lsn,
                    transactional,
                    ..
                } => {
                    return Ok(Some(SourceEvent::Message {
                        prefix,
                        content,
                        lsn: Lsn(lsn.as_u64()),
                        transactional,
                    }));
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
                ReplicationEvent::XLogData { wal_start, data, .. } => {
                    let msg = decode::decode(data).map_err(|e| {
                        SourceError::definite(e.to_string(), "report this as a bug, with the Postgres version")
                    })?;
                    self.on_message(msg, Lsn(wal_start.as_u64()))?;
                }
            }
        }
    }

    fn on_message(&mut self, msg: Message, lsn: Lsn) -> Result<(), SourceError> {
        let (op, relation, new, old) = match msg {
            Message::Relation(raw) => {
                self.unresolved = Some(raw);
                return Ok(());
            }
            Message::Insert { relation, new } => (Op::Insert, relation, Some(new), None),
            Message::Update {
                relation,
                old,
                key_only,
                new,
            } => (
                Op::Update,
                relation,
                Some(new),
                old.map(|o| self.identity_only(relation, o, key_only)),
            ),
            Message::Delete {
                relation,
                old,
                key_only,
            } => (
                Op::Delete,
                relation,
                None,
                Some(self.identity_only(relation, old, key_only)),
            ),
            Message::Truncate { relations } => {
                for oid in relations {
                    let change = self.change(Op::Truncate, oid, None, None, lsn)?;
                    self.queued.push_back(SourceEvent::Change(change));
                }
                return Ok(());
            }
            Message::Ignored(_) => return Ok(()),
        };
        let change = self.change(op, relation, new, old, lsn)?;
        self.queued.push_back(SourceEvent::Change(change));
        Ok(())
    }

    /// A key-only old row carries NULL for the columns outside the replica
    /// identity; they are not NULL but unknown, so they become [`Cell::Unsent`].
    fn identity_only(&self, oid: u32, mut old: Row, key_only: bool) -> Row {
        if let (true, Some(rel)) = (key_only, self.relations.get(&oid)) {
            for (cell, col) in old.0.iter_mut().zip(&rel.columns) {
                if !col.identity {
                    *cell = Cell::Unsent;
                }
            }
        }
        old
    }

    fn change(
        &mut self,
        op: Op,
        oid: u32,
        new: Option<ficus_model::Row>,
        old: Option<ficus_model::Row>,
        lsn: Lsn,
    ) -> Result<RowChange, SourceError> {
        let relation = self.relations.get(&oid).cloned().ok_or_else(|| {
            SourceError::definite(
                format!("a row change names relation {oid}, which the stream did not describe"),
                "report this as a bug, with the Postgres version",
            )
        })?;
        let tx = self.tx.clone().ok_or_else(|| {
            SourceError::definite(
                "a row change outside a transaction",
                "report this as a bug, with the Postgres version",
            )
        })?;
        let seq = if self.last_change.0 == lsn {
            self.last_change.1 + 1
        } else {
            0
        };
        self.last_change = (lsn, seq);
        Ok(RowChange {
            op,
            relation,
            new,
            old,
            tx,
            origin: Origin::Wal { lsn, seq },
        })
    }

    async fn resolve(&mut self, raw: RawRelation) -> Result<Relation, SourceError> {
        // Type names for messages come from the catalog when ficus checks mappings; here the
        // resolved kind is enough.
        let mut columns = Vec::with_capacity(raw.columns.len());
        for (name, oid, identity) in raw.columns {
            let ty = self.types.resolve(&self.pool, oid).await?;
            columns.push(Column {
                name,
                type_name: format!("{ty:?}").to_lowercase(),
                ty,
                identity,
            });
        }
        Ok(Relation {
            oid: raw.oid,
            table: TableRef::new(raw.schema, raw.name),
            replica_identity: raw.replica_identity,
            columns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_history_says_where_each_timeline_was_left() {
        let history = parse_history("1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tat restore point\n");
        assert_eq!(history, vec![(1, Lsn(0x300_0060)), (2, Lsn(0x500_0000))]);
        let info = SystemInfo {
            system_id: "7".into(),
            timeline: 3,
            wal_end: Lsn(0x600_0000),
            history,
        };
        assert_eq!(info.left_timeline_at(2), Some(Lsn(0x500_0000)));
        assert_eq!(info.left_timeline_at(3), None);
    }
}
