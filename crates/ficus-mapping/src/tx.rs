//! Transaction-scoped events: an event that collects rows of other tables waits for its
//! transaction's commit, with only what it collects — each collected row already mapped to its
//! element of the array, as JSON text — and the memory that takes is bounded.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use ficus_model::{Event, Field, Lsn, Op, Origin, RowChange, Time, TxMeta};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::apply::{CollectLimit, EventContext, MapError};
use crate::compile::{Mapping, Per, WithoutParent};

/// What a collected row or a waiting event is reckoned to take beyond its JSON text.
const OVERHEAD: u64 = 96;

/// One transaction's events that collect rows, and the rows they collect, until its commit.
///
/// Row changes go in through [`Bound::apply_in`](crate::Bound::apply_in), in the transaction's
/// order; [`commit`](Transaction::commit) gives the events, each with its collected rows, and
/// makes it ready for the next transaction. Only the rows some mapping collects are kept, as the
/// JSON text of their element; past `limit` bytes the change that crosses it fails
/// ([`MapError::CollectLimit`]): a bound, never an unbounded buffer.
#[derive(Debug)]
pub struct Transaction {
    limit: u64,
    bytes: u64,
    tx: Option<TxMeta>,
    /// What waits for the commit, in the transaction's order.
    held: Vec<Held>,
    /// The collected rows, by collect and the key of the event they belong to.
    collected: HashMap<Slot, Rows>,
    /// The rows of `per = "transaction"` events changed so far, by mapping and key.
    folds: HashMap<(usize, String), Fold>,
    seq: u64,
}

impl Default for Transaction {
    /// No limit.
    fn default() -> Transaction {
        Transaction::new(u64::MAX)
    }
}

/// A collect of a mapping (by the mapping's address and the collect's place) and a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Slot {
    mapping: usize,
    index: usize,
    key: String,
}

/// What waits for the commit, in the transaction's order: an event that collects rows
/// (`mapping`), an event made after something that waits (so that the transaction's events keep
/// their order), or the place of a slot's first collected row — where its `without_parent`
/// events go when no event of the transaction takes its rows.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "events are what is held, mostly: boxing them would cost an allocation per event"
)]
enum Held {
    Event {
        event: Event,
        mapping: Option<Arc<Mapping>>,
    },
    Rows(Slot),
    /// The place of a `per = "transaction"` event whose net change makes none (yet).
    Gone,
}

/// A row's changes in the transaction so far, for a `per = "transaction"` event.
#[derive(Debug)]
struct Fold {
    first: Op,
    old: Option<ficus_model::Row>,
    origin: Origin,
    /// Its place in `held`.
    at: usize,
    /// What its event there is reckoned to take (replaced with it).
    size: u64,
}

#[derive(Debug)]
struct Rows {
    parent: Arc<Mapping>,
    index: usize,
    /// The collected table's `source`.
    source: Arc<str>,
    rows: Vec<Collected>,
    sorted: bool,
}

#[derive(Debug)]
struct Collected {
    order: Option<SortKey>,
    seq: u64,
    /// The element's JSON text.
    json: String,
    /// The row change's own position, for the id of a `per = "row"` event.
    at: Option<(Lsn, u32)>,
}

/// A value of `order_by`, ordered: nulls first, then booleans, numbers, strings.
#[derive(Clone, Debug)]
pub(crate) enum SortKey {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl SortKey {
    pub(crate) fn of(value: &Json) -> SortKey {
        match value {
            Json::Null => SortKey::Null,
            Json::Bool(b) => SortKey::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => SortKey::Int(i),
                None => SortKey::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => SortKey::Text(s.clone()),
            other => SortKey::Text(other.to_string()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            SortKey::Null => 0,
            SortKey::Bool(_) => 1,
            SortKey::Int(_) | SortKey::Float(_) => 2,
            SortKey::Text(_) => 3,
        }
    }

    fn cmp(&self, other: &SortKey) -> Ordering {
        use SortKey::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a.cmp(b),
            (Int(a), Int(b)) => a.cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl Transaction {
    /// A transaction whose collected rows may take up to `limit` bytes.
    pub fn new(limit: u64) -> Transaction {
        Transaction {
            limit,
            bytes: 0,
            tx: None,
            held: Vec::new(),
            collected: HashMap::new(),
            folds: HashMap::new(),
            seq: 0,
        }
    }

    /// Forgets what it holds (a transaction that will not commit here: the stream starts again).
    pub fn clear(&mut self) {
        self.bytes = 0;
        self.tx = None;
        self.held.clear();
        self.collected.clear();
        self.folds.clear();
        self.seq = 0;
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.collected.is_empty()
    }

    /// What it holds, in bytes as reckoned against the limit.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether events wait for the commit: once an event that collects rows, or a collected
    /// row, does, every later event of the transaction waits behind it.
    pub(crate) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// An event that collects rows (of `mapping`): it waits for the commit.
    pub(crate) fn hold(&mut self, event: Event, mapping: &Arc<Mapping>, change: &RowChange) -> Result<(), MapError> {
        self.tx.get_or_insert_with(|| change.tx.clone());
        let lsn = change.tx.commit_lsn;
        self.take(size_of(&event), &mapping.origin, &mapping.name, &mapping.table, lsn)?;
        self.held.push(Held::Event {
            event,
            mapping: Some(mapping.clone()),
        });
        Ok(())
    }

    /// An event made after something that waits: it waits too. `origin` (its mapping's) and
    /// `table` (or what it comes from) are named when the limit is hit.
    pub(crate) fn wait(
        &mut self,
        event: Event,
        origin: &str,
        table: &dyn std::fmt::Display,
        lsn: Lsn,
    ) -> Result<(), MapError> {
        self.take(size_of(&event), origin, &event.ty, table, lsn)?;
        self.held.push(Held::Event { event, mapping: None });
        Ok(())
    }

    /// The net change of a row in the transaction so far, for a `per = "transaction"` event
    /// keyed `key`: the first change's old row and origin, this change's new row, and the
    /// operation they make together; `None` when they cancel (inserted, then deleted).
    pub(crate) fn fold(&mut self, mapping: &Arc<Mapping>, key: &str, change: &RowChange) -> Option<RowChange> {
        let slot = (Arc::as_ptr(mapping) as usize, key.to_owned());
        let Some(f) = self.folds.get(&slot) else {
            self.tx.get_or_insert_with(|| change.tx.clone());
            self.held.push(Held::Gone);
            self.folds.insert(
                slot,
                Fold {
                    first: change.op,
                    old: change.old.clone(),
                    origin: change.origin.clone(),
                    at: self.held.len() - 1,
                    size: 0,
                },
            );
            return Some(change.clone());
        };
        let op = match (f.first, change.op) {
            (Op::Insert, Op::Delete) => return None,
            (Op::Insert, _) => Op::Insert,
            (_, Op::Delete) => Op::Delete,
            _ => Op::Update,
        };
        Some(RowChange {
            op,
            relation: change.relation.clone(),
            new: change.new.clone(),
            old: if op == Op::Insert { None } else { f.old.clone() },
            tx: change.tx.clone(),
            origin: f.origin.clone(),
        })
    }

    /// The event of a row's net change so far (none: the changes cancel, or `when` is false),
    /// in the place of the row's first change.
    pub(crate) fn place(
        &mut self,
        mapping: &Arc<Mapping>,
        key: &str,
        event: Option<Event>,
        change: &RowChange,
    ) -> Result<(), MapError> {
        let Some(f) = self.folds.get_mut(&(Arc::as_ptr(mapping) as usize, key.to_owned())) else {
            return Ok(());
        };
        let size = event.as_ref().map_or(0, size_of);
        // The event replaces the one of the row's earlier changes: what that took is given back.
        let (at, before) = (f.at, std::mem::replace(&mut f.size, size));
        self.bytes -= before;
        let lsn = change.tx.commit_lsn;
        self.take(size, &mapping.origin, &mapping.name, &mapping.table, lsn)?;
        self.held[at] = match event {
            Some(event) => Held::Event {
                event,
                mapping: Some(mapping.clone()),
            },
            None => Held::Gone,
        };
        Ok(())
    }

    /// Events of a logical decoding message: returned, or, when events wait already, waiting
    /// behind them.
    pub(crate) fn after(
        &mut self,
        events: Vec<Event>,
        mapping: &crate::compile::MessageMapping,
        msg: &crate::Message<'_>,
    ) -> Result<Vec<Event>, MapError> {
        if !self.holding() {
            return Ok(events);
        }
        for event in events {
            let from = format_args!("messages {:?}", mapping.prefix);
            self.wait(event, &mapping.origin, &from, msg.tx.commit_lsn)?;
        }
        Ok(Vec::new())
    }

    /// A collected row, mapped (`row`: its key is the subject, its element the data).
    pub(crate) fn collect(
        &mut self,
        parent: &Arc<Mapping>,
        index: usize,
        row: Event,
        order: Option<SortKey>,
        change: &RowChange,
    ) -> Result<(), MapError> {
        self.tx.get_or_insert_with(|| change.tx.clone());
        let json = serde_json::to_string(&row.data).expect("data always serializes");
        let size = json.len() as u64 + row.subject.len() as u64 + OVERHEAD;
        let rows = &parent.collects[index].rows;
        self.take(size, &rows.origin, &rows.name, &rows.table, change.tx.commit_lsn)?;
        let slot = Slot {
            mapping: Arc::as_ptr(parent) as usize,
            index,
            key: row.subject,
        };
        self.seq += 1;
        let collected = Collected {
            order,
            seq: self.seq,
            json,
            at: match change.origin {
                Origin::Wal { lsn, seq } => Some((lsn, seq)),
                Origin::Backfill { .. } => None,
            },
        };
        match self.collected.get_mut(&slot) {
            Some(rows) => {
                rows.rows.push(collected);
                rows.sorted = false;
            }
            None => {
                self.held.push(Held::Rows(slot.clone()));
                self.collected.insert(
                    slot,
                    Rows {
                        parent: parent.clone(),
                        index,
                        source: row.source,
                        rows: vec![collected],
                        sorted: false,
                    },
                );
            }
        }
        Ok(())
    }

    /// Reckons `size` more bytes; past the limit, the error names who took them: the mapping's
    /// origin and event, the table (or messages) and the commit.
    fn take(
        &mut self,
        size: u64,
        origin: &str,
        event: &str,
        table: &dyn std::fmt::Display,
        lsn: Lsn,
    ) -> Result<(), MapError> {
        self.bytes += size;
        if self.bytes > self.limit {
            return Err(MapError::CollectLimit(Box::new(CollectLimit {
                origin: origin.to_owned(),
                event: event.to_owned(),
                table: table.to_string(),
                lsn: lsn.to_string(),
                limit: self.limit,
            })));
        }
        Ok(())
    }

    /// The transaction committed: what waited, in the transaction's order — each event that
    /// collects rows with the rows it collected, in their order, and where rows came whose event
    /// did not fire in the transaction, their `without_parent` events. Leaves it empty, for the
    /// next transaction.
    pub fn commit(&mut self, ctx: &EventContext) -> Result<Vec<Event>, MapError> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let held = std::mem::take(&mut self.held);
        let meta = self.tx.take();
        // The slots some event takes (it may come after its rows: a child written first).
        let slot_of = |event: &Event, mapping: &Arc<Mapping>, index: usize| Slot {
            mapping: Arc::as_ptr(mapping) as usize,
            index,
            key: event.subject.clone(),
        };
        let mut taken: std::collections::HashSet<Slot> = std::collections::HashSet::new();
        for h in &held {
            if let Held::Event {
                event,
                mapping: Some(mapping),
            } = h
            {
                taken.extend((0..mapping.collects.len()).map(|i| slot_of(event, mapping, i)));
            }
        }
        let mut out = Vec::with_capacity(held.len());
        for h in held {
            match h {
                Held::Event { event, mapping: None } => out.push(event),
                Held::Event {
                    mut event,
                    mapping: Some(mapping),
                } => {
                    for (index, c) in mapping.collects.iter().enumerate() {
                        let array = match self.collected.get_mut(&slot_of(&event, &mapping, index)) {
                            Some(rows) => array_of(rows),
                            None => RawValue::from_string("[]".to_owned()).expect("[] is JSON"),
                        };
                        event.data.0.push((c.field.clone(), Field::Raw(array)));
                    }
                    out.push(event);
                }
                Held::Gone => {}
                Held::Rows(slot) if taken.contains(&slot) => {}
                Held::Rows(slot) => {
                    if let (Some(rows), Some(meta)) = (self.collected.get_mut(&slot), &meta) {
                        without_parent(ctx, meta, &slot, rows, &mut out);
                    }
                }
            }
        }
        self.clear();
        Ok(out)
    }
}

/// The events of collected rows whose event did not fire in their transaction, as their
/// collect's `without_parent` says.
fn without_parent(ctx: &EventContext, meta: &TxMeta, slot: &Slot, rows: &mut Rows, out: &mut Vec<Event>) {
    let parent = rows.parent.clone();
    let c = &parent.collects[rows.index];
    let WithoutParent::Event { name, version, per } = &c.without_parent else {
        return;
    };
    let source = rows.source.clone();
    let event = |id: String, data: ficus_model::Data| Event {
        specversion: "1.0",
        id: ctx.event_id(&id),
        source: source.clone(),
        ty: name.clone(),
        aggregate: parent.aggregate.clone(),
        subject: slot.key.clone(),
        time: Time::from_micros(meta.commit_time_micros),
        datacontenttype: ficus_model::event::JSON.into(),
        extensions: Vec::new(),
        body: None,
        eventversion: *version,
        lsn: meta.commit_lsn,
        txid: meta.xid,
        backfill: None,
        unavailable: None,
        data,
    };
    match per {
        Per::Aggregate => {
            let array = array_of(rows);
            let id = format!("{}/tx/{name}/{version}/{}", meta.commit_lsn, slot.key);
            out.push(event(id, ficus_model::Data(vec![(c.field.clone(), Field::Raw(array))])));
        }
        Per::Row => {
            sort(rows);
            for row in &rows.rows {
                let id = match row.at {
                    Some((lsn, seq)) => format!("{}/{lsn}/{seq}/{name}/{version}/0", meta.commit_lsn),
                    None => format!("{}/row/{}/{name}/{version}", meta.commit_lsn, row.seq),
                };
                let data: ficus_model::Data = serde_json::from_str(&row.json).expect("written as an object");
                out.push(event(id, data));
            }
        }
    }
}

/// What an event's data is reckoned to take: its JSON's length, counted without writing it (or
/// its text's or bytes'), its extensions' and [`OVERHEAD`].
fn size_of(event: &Event) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match &event.body {
        None => serde_json::to_writer(&mut count, &event.data).expect("data always serializes"),
        Some(ficus_model::Body::Text(text)) => count.0 += text.len() as u64,
        Some(ficus_model::Body::Binary(bytes)) => count.0 += bytes.len() as u64,
    }
    let extensions: usize = event.extensions.iter().map(|(n, v)| n.len() + v.len()).sum();
    count.0 + extensions as u64 + OVERHEAD
}

fn sort(rows: &mut Rows) {
    if !rows.sorted {
        rows.rows.sort_by(|a, b| match (&a.order, &b.order) {
            (Some(x), Some(y)) => x.cmp(y).then(a.seq.cmp(&b.seq)),
            _ => a.seq.cmp(&b.seq),
        });
        rows.sorted = true;
    }
}

/// The rows as a JSON array, in their order.
fn array_of(rows: &mut Rows) -> Box<RawValue> {
    sort(rows);
    let mut text = String::with_capacity(rows.rows.iter().map(|r| r.json.len() + 1).sum::<usize>() + 2);
    text.push('[');
    for (i, row) in rows.rows.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&row.json);
    }
    text.push(']');
    RawValue::from_string(text).expect("an array of JSON objects is JSON")
}
