//! Delivery: fan-out to every sink, and the one rule that moves the slot.
//!
//! ```text
//!                    ┌─▶ lane: jsonl ──────────┐ durable up to
//! events ──fan-out───┼─▶ lane: kafka ──────────┼─▶ commit X each ──min──▶ recorded ──▶ acknowledge
//!                    └─▶ lane: store (last) ◀──┘ (its checkpoint ≤ every other lane's)
//! ```
//!
//! Every sink has a lane (`lane`): a task that writes to it, flushes it, and says up to which
//! commit it is durable; the events in flight per lane are bounded, so a slow or failing sink
//! slows ficus down rather than growing its memory, and holds the slot back — the other sinks go
//! on until that bound. The slot's position is the lowest commit every lane holds durable, and it
//! moves only up to a position that is recorded ([`Positions`]): in the store's checkpoint, which
//! its lane keeps no further than every other lane (the store is last: its checkpoint is the
//! exactly-once one), or in `.ficus/slots/SLOT.json`. A record alone is written at most every
//! [`RECORD_INTERVAL`], so commits that give no event do not cost a write each. So the slot never
//! confirms more than ficus recorded, and a slot ahead of the record was moved by someone else
//! (see `position`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_mapping::{Compiled, EventContext};
use ficus_model::{Event, Lsn, Relation, RowChange};
use ficus_sinks::Outgoing;
use ficus_store::{ArchivedChange, EventStore, Mode, SavedCheckpoint, Store, StoreSink};
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, info, warn};

use super::lane::{Item, Lane, LaneSettings, Target, Wakers};
use crate::RunError;
use crate::archive::{self, RelationDescription};
use crate::backfill::snapshot_change;
use crate::config::Config;
use crate::health::Health;
use crate::position::{self, Source};

/// A position recorded alone (no events to append with it) at most this often.
pub(crate) const RECORD_INTERVAL: Duration = Duration::from_millis(200);
/// Events sent to the lanes together (or fewer, at a commit).
const BATCH: usize = 1_000;
/// How long a stop waits for the sinks to make the last events durable.
const LAST_FLUSH: Duration = Duration::from_secs(5);
/// Relation descriptions remembered at most (relations change rarely).
const DESCRIPTIONS: usize = 256;

/// What ficus has recorded of its position, and where it records it.
pub(crate) struct Positions {
    slot: String,
    source: Source,
    encoded: String,
    /// The file, when there is no store.
    file: Option<PathBuf>,
    /// A file left from before the config had a store: removed once the store has recorded.
    stale_file: Option<PathBuf>,
    recorded: Lsn,
    written: Option<Instant>,
}

impl Positions {
    /// Positions of the config's slot on `source`, `recorded` up to where the record says.
    pub fn new(config: &Config, source: Source, recorded: Lsn, store: bool) -> Positions {
        let path = position::file(&config.dir, &config.source.slot);
        let (file, stale_file) = if store {
            (None, path.exists().then_some(path))
        } else {
            (Some(path), None)
        };
        Positions {
            slot: config.source.slot.clone(),
            encoded: source.encode(),
            source,
            file,
            stale_file,
            recorded,
            written: None,
        }
    }

    /// Recorded up to here: the slot may be acknowledged up to here.
    pub fn recorded(&self) -> Lsn {
        self.recorded
    }

    /// What is known of the source, as the store records it with its checkpoints.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// Records `lsn` (every sink has everything up to it) unless it is recorded already, or a
    /// record was written less than [`RECORD_INTERVAL`] ago and `now` is false; returns what is
    /// recorded. With a store, its lane records (its checkpoint, with the events it appends, or
    /// alone at most every [`RECORD_INTERVAL`]); `now` makes it record at once.
    pub async fn record(&mut self, delivery: &mut Delivery, lsn: Lsn, now: bool) -> Result<Lsn, RunError> {
        let Some(path) = &self.file else {
            if now && lsn > delivery.store_recorded() {
                delivery.flush().await?;
            }
            self.recorded = self.recorded.max(delivery.store_recorded());
            if self.recorded > Lsn(0)
                && let Some(stale) = self.stale_file.take()
            {
                let _ = std::fs::remove_file(stale);
            }
            return Ok(self.recorded);
        };
        if lsn <= self.recorded || (!now && self.written.is_some_and(|t| t.elapsed() < RECORD_INTERVAL)) {
            return Ok(self.recorded);
        }
        position::save(path, &self.slot, lsn, &self.source)?;
        self.recorded = lsn;
        self.written = Some(Instant::now());
        debug!(%lsn, "recorded position");
        Ok(lsn)
    }
}

/// A sink built and checked, waiting for its lane.
struct Planned {
    settings: LaneSettings,
    target: Target,
}

/// Every configured sink, and the rule that moves the slot.
pub(crate) struct Delivery {
    /// Built and checked, before [`Delivery::start`].
    planned: Vec<Planned>,
    /// Every lane, the store's last.
    lanes: Vec<Lane>,
    /// The store, for what startup reads of it.
    store: Option<Store>,
    archive: bool,
    /// Events and archived changes not yet sent to the lanes.
    pending: Vec<Outgoing>,
    changes: Vec<ArchivedChange>,
    /// Descriptions of the relations seen lately (the relation is kept, so that it is never
    /// taken for another one at the same address).
    descriptions: Vec<(Arc<Relation>, Arc<str>)>,
    /// Told when a lane's status changes.
    notify: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    /// `ficus record`'s recording of the changes mapped and their events.
    pub recording: Option<Recorder>,
    /// Told by the lanes when a sink fails and when it takes events again (`/readyz`).
    pub health: Arc<Health>,
}

/// Where `ficus record` keeps what it records while the run goes on.
pub type Recorder = Arc<std::sync::Mutex<ficus_project::recording::Recording>>;

impl Delivery {
    /// Builds the config's live sinks (stdout when none is configured) and checks each can take
    /// events: a sink that cannot must not get a slot created for it.
    pub async fn open(config: &Config, shutdown: watch::Receiver<bool>) -> Result<Delivery, RunError> {
        let mut planned = Vec::new();
        let mut store = None;
        let mut archive = false;
        for sink in config.sinks.iter().filter(|s| s.live()) {
            let settings = LaneSettings {
                name: sink.name().to_owned(),
                routes: sink.routes()?,
                max_in_flight: sink.max_in_flight,
                give_up_after: None,
                from: Lsn(0),
            };
            if let crate::config::SinkKind::Store(c) = &sink.kind {
                let opened = Store::open(&c.location(&config.dir), Mode::Create).await?;
                info!(store = %opened.describe(), "event store");
                archive = c.archive;
                store = Some((settings, opened));
                continue;
            }
            let mut built = sink.build(config)?;
            match built.health().await {
                Ok(()) => {}
                // Its lane retries: a broker down at the start is waited for like one that goes
                // down later.
                Err(e) if e.is_transient() => {
                    warn!(sink = %sink.name(), error = %e.message(), "the sink does not take events yet; retrying")
                }
                Err(e) => return Err(e.named(sink.name()).into()),
            }
            planned.push(Planned {
                settings,
                target: Target::Sink(built),
            });
        }
        if config.sinks.is_empty() {
            planned.push(Planned {
                settings: LaneSettings {
                    name: "stdout".into(),
                    routes: Default::default(),
                    max_in_flight: crate::config::DEFAULT_MAX_IN_FLIGHT,
                    give_up_after: None,
                    from: Lsn(0),
                },
                target: Target::Sink(Box::new(ficus_sinks::stdout::StdoutConfig::default().build())),
            });
        }
        let handle = store.as_ref().map(|(_, s)| s.clone());
        if let Some((settings, opened)) = store {
            planned.push(Planned {
                settings,
                target: Target::Store {
                    sink: StoreSink::new(opened, &config.source.slot),
                    gate: vec![],
                    source: String::new(),
                    recorded: Lsn(0),
                },
            });
        }
        Ok(Delivery {
            planned,
            lanes: Vec::new(),
            store: handle,
            archive,
            pending: Vec::new(),
            changes: Vec::new(),
            descriptions: Vec::new(),
            notify: Arc::new(Notify::new()),
            shutdown,
            recording: None,
            health: Arc::default(),
        })
    }

    /// A delivery to the given sinks (the store none), for tests of the loop.
    #[cfg(test)]
    pub fn with_sinks(
        sinks: Vec<(LaneSettings, Box<dyn ficus_sinks::Sink>)>,
        store: Option<(LaneSettings, Store)>,
        shutdown: watch::Receiver<bool>,
    ) -> Delivery {
        let mut planned: Vec<Planned> = sinks
            .into_iter()
            .map(|(settings, sink)| Planned {
                settings,
                target: Target::Sink(sink),
            })
            .collect();
        let handle = store.as_ref().map(|(_, s)| s.clone());
        if let Some((settings, store)) = store {
            planned.push(Planned {
                settings,
                target: Target::Store {
                    sink: StoreSink::new(store, "test"),
                    gate: vec![],
                    source: String::new(),
                    recorded: Lsn(0),
                },
            });
        }
        Delivery {
            planned,
            lanes: Vec::new(),
            store: handle,
            archive: false,
            pending: Vec::new(),
            changes: Vec::new(),
            descriptions: Vec::new(),
            notify: Arc::new(Notify::new()),
            shutdown,
            recording: None,
            health: Arc::default(),
        }
    }

    /// Starts a lane per sink: each durable from `from` (where streaming starts), the store's
    /// from `recorded` (its checkpoint), recording `source` with its checkpoints. A sink failing
    /// transiently for `give_up_after` is given up on.
    pub fn start(&mut self, from: Lsn, recorded: Lsn, source: &str, give_up_after: Option<Duration>) {
        let store_woken = Arc::new(Notify::new());
        let mut wakers = Wakers(vec![self.notify.clone()]);
        if self.store.is_some() {
            wakers.0.push(store_woken.clone());
        }
        for mut p in std::mem::take(&mut self.planned) {
            p.settings.give_up_after = give_up_after;
            p.settings.from = from;
            let woken = match &mut p.target {
                Target::Sink(_) => None,
                Target::Store {
                    gate,
                    source: s,
                    recorded: r,
                    ..
                } => {
                    // Planned last: every other lane is running.
                    *gate = self.lanes.iter().map(|l| l.status.clone()).collect();
                    *s = source.to_owned();
                    *r = recorded;
                    p.settings.from = recorded;
                    wakers = Wakers(vec![self.notify.clone()]);
                    Some(store_woken.clone())
                }
            };
            self.lanes.push(Lane::start(
                p.settings,
                p.target,
                wakers.clone(),
                woken,
                self.health.clone(),
            ));
        }
    }

    /// Whether a store is configured.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Whether row changes are archived.
    pub fn archives(&self) -> bool {
        self.archive
    }

    /// The store's checkpoint for `slot`.
    pub async fn checkpoint(&self, slot: &str) -> Result<Option<SavedCheckpoint>, RunError> {
        match &self.store {
            Some(s) => Ok(s.checkpoint(slot).await?),
            None => Ok(None),
        }
    }

    /// Forgets the store's checkpoint for `slot` (the slot is gone).
    pub async fn forget_checkpoint(&self, slot: &str) -> Result<(), RunError> {
        if let Some(s) = &self.store {
            s.forget_checkpoint(slot).await?;
        }
        Ok(())
    }

    /// Archives a row change (when the store archives), with the events made of it.
    pub fn archive(&mut self, change: &RowChange, ctx: &EventContext) {
        if !self.archive {
            return;
        }
        let description = self.description(&change.relation, ctx);
        self.changes.push(archive::encode(change, &description));
    }

    /// Archives a logical decoding message of a mapped prefix (when the store archives).
    pub fn archive_message(&mut self, msg: &ficus_mapping::Message<'_>, ctx: &EventContext) {
        if !self.archive {
            return;
        }
        let description = RelationDescription::encode_messages(ctx);
        self.changes.push(archive::encode_message(msg, &description));
    }

    /// Records a change and its events, when `ficus record` records.
    pub fn record(&self, change: &RowChange, events: &[Event]) {
        if let Some(r) = &self.recording {
            let made = events.iter().map(ficus_project::fixtures::expectation).collect();
            r.lock().unwrap_or_else(|e| e.into_inner()).record(change, made);
        }
    }

    /// Records a mapped message and the events made of it, when `ficus record` records.
    pub fn record_message(&self, msg: &ficus_mapping::Message<'_>, events: &[Event]) {
        if let Some(r) = &self.recording {
            let made = events.iter().map(ficus_project::fixtures::expectation).collect();
            r.lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_message(msg.prefix, msg.content, msg.lsn, msg.tx, made);
        }
    }

    /// Records the events a commit made of a table's recorded changes, when `ficus record` records.
    pub fn record_commit(&self, table: &ficus_model::TableRef, events: &[Event]) {
        if let Some(r) = &self.recording
            && !events.is_empty()
        {
            let made = events.iter().map(ficus_project::fixtures::expectation).collect();
            r.lock().unwrap_or_else(|e| e.into_inner()).record_commit(table, made);
        }
    }

    /// A relation's description, as the archive stores it.
    pub fn description(&mut self, relation: &Arc<Relation>, ctx: &EventContext) -> Arc<str> {
        if let Some((_, d)) = self.descriptions.iter().find(|(r, _)| Arc::ptr_eq(r, relation)) {
            return d.clone();
        }
        let d: Arc<str> = RelationDescription::encode(relation, ctx).into();
        if self.descriptions.len() >= DESCRIPTIONS {
            self.descriptions.remove(0);
        }
        self.descriptions.push((relation.clone(), d.clone()));
        d
    }

    /// Writes events to every sink whose routes take them; returns how many. May wait for a
    /// sink with too many events in flight (backpressure).
    pub async fn write(&mut self, events: Vec<Event>) -> Result<usize, RunError> {
        let n = events.len();
        self.pending.extend(events.into_iter().map(Outgoing::new));
        if self.pending.len() >= BATCH {
            self.send_pending().await?;
        }
        Ok(n)
    }

    /// Writes events already made into outgoing ones, and archived changes.
    pub async fn write_outgoing(
        &mut self,
        events: Vec<Outgoing>,
        changes: Vec<ArchivedChange>,
    ) -> Result<(), RunError> {
        self.pending.extend(events);
        self.changes.extend(changes);
        if self.pending.len() >= BATCH {
            self.send_pending().await?;
        }
        Ok(())
    }

    /// Everything written so far completes the commits up to `lsn`: once durable in a sink, it
    /// is durable up to there.
    pub async fn mark(&mut self, lsn: Lsn) -> Result<(), RunError> {
        self.send_pending().await?;
        for i in 0..self.lanes.len() {
            self.send(i, Item::Mark(lsn)).await?;
        }
        Ok(())
    }

    /// Makes everything written durable in every sink (the store last) and returns the position
    /// every sink holds durable. Every sink is flushed even when one fails; the first failure is
    /// returned.
    pub async fn flush(&mut self) -> Result<Lsn, RunError> {
        let mut first_error = self.send_pending().await.err();
        let store = self.store.is_some().then(|| self.lanes.len() - 1);
        let others: Vec<usize> = (0..self.lanes.len()).filter(|i| Some(*i) != store).collect();
        for group in [others, store.into_iter().collect()] {
            let mut waiting = Vec::new();
            for i in group {
                let (done, answer) = oneshot::channel();
                match self.send(i, Item::Flush(done)).await {
                    Ok(()) => waiting.push((i, answer)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            for (i, answer) in waiting {
                let mut shutdown = self.shutdown.clone();
                if let Err(e) = until(&self.lanes[i], &mut shutdown, answer)
                    .await
                    .and_then(|answered| answered.map_err(|_| lane_ended(&self.lanes[i])))
                {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(self.durable()),
        }
    }

    /// The lowest commit every sink holds durable.
    pub fn durable(&self) -> Lsn {
        self.lanes
            .iter()
            .map(|l| l.status.borrow().durable)
            .min()
            .unwrap_or_default()
    }

    /// What the store's checkpoint records (the store's lane is durable up to it).
    pub fn store_recorded(&self) -> Lsn {
        match (&self.store, self.lanes.last()) {
            (Some(_), Some(lane)) => lane.status.borrow().durable,
            _ => Lsn(0),
        }
    }

    /// The error a sink stopped on, if one did.
    pub fn failed(&self) -> Option<RunError> {
        self.lanes
            .iter()
            .find_map(|l| l.status.borrow().failed.clone().map(RunError::Sink))
    }

    /// Waits until a lane's status changes.
    pub async fn progress(&self) {
        self.notify.notified().await
    }

    /// Stops the lanes (what is not flushed is not durable, and was not acknowledged) and closes
    /// the sinks; returns what they must say (dead letters).
    pub async fn close(&mut self) -> Vec<String> {
        let mut summaries = Vec::new();
        let lanes = std::mem::take(&mut self.lanes);
        for lane in lanes {
            let Lane { tx, task, name, .. } = lane;
            drop(tx);
            let abort = task.abort_handle();
            match tokio::time::timeout(LAST_FLUSH, task).await {
                Ok(Ok(target)) => summaries.extend(target.summary().map(|s| format!("sink {name}: {s}"))),
                Ok(Err(_)) => {}
                Err(_) => {
                    warn!(sink = %name, "the sink did not stop in time");
                    abort.abort();
                }
            }
        }
        for p in std::mem::take(&mut self.planned) {
            if let Target::Store { mut sink, .. } = p.target {
                sink.close().await;
            }
        }
        summaries
    }

    async fn send_pending(&mut self) -> Result<(), RunError> {
        if !self.changes.is_empty()
            && let Some(store) = self.store.is_some().then(|| self.lanes.len() - 1)
        {
            let changes = std::mem::take(&mut self.changes);
            self.send(store, Item::Changes(changes)).await?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(std::mem::take(&mut self.pending));
        for i in 0..self.lanes.len() {
            let lane = &self.lanes[i];
            let n = if lane.routes.all() {
                batch.len()
            } else {
                batch.iter().filter(|o| lane.routes.accepts(&o.event.ty)).count()
            };
            if n == 0 {
                continue;
            }
            let n = n.min(lane.max_in_flight) as u32;
            let mut shutdown = self.shutdown.clone();
            let permit = until(lane, &mut shutdown, lane.permits.clone().acquire_many_owned(n))
                .await?
                .map_err(|_| lane_ended(lane))?;
            self.send(i, Item::Events(batch.clone(), permit)).await?;
        }
        Ok(())
    }

    async fn send(&mut self, i: usize, item: Item) -> Result<(), RunError> {
        let lane = &self.lanes[i];
        let mut shutdown = self.shutdown.clone();
        until(lane, &mut shutdown, lane.tx.send(item))
            .await?
            .map_err(|_| lane_ended(lane))
    }
}

/// Waits for `f`, unless the lane fails first, or ficus is stopping (when it is stopping
/// already, for [`LAST_FLUSH`] at most).
async fn until<T>(
    lane: &Lane,
    shutdown: &mut watch::Receiver<bool>,
    f: impl std::future::Future<Output = T>,
) -> Result<T, RunError> {
    let mut status = lane.status.clone();
    let stopping = *shutdown.borrow();
    let deadline = tokio::time::sleep(LAST_FLUSH);
    tokio::pin!(f, deadline);
    loop {
        if let Some(e) = status.borrow_and_update().failed.clone() {
            return Err(RunError::Sink(e));
        }
        tokio::select! {
            v = &mut f => return Ok(v),
            changed = status.changed() => {
                if changed.is_err() {
                    return Err(lane_ended(lane));
                }
            }
            _ = shutdown.changed(), if !stopping => return Err(RunError::Interrupted { sink: lane.name.clone() }),
            _ = &mut deadline, if stopping => return Err(RunError::Interrupted { sink: lane.name.clone() }),
        }
    }
}

/// A lane whose task ended without saying why (it failed: its status says so).
fn lane_ended(lane: &Lane) -> RunError {
    match lane.status.borrow().failed.clone() {
        Some(e) => RunError::Sink(e),
        None => RunError::bug(format!("the delivery task of sink {} ended", lane.name)),
    }
}

/// The events of part of a chunk, made outgoing.
struct MappedPart {
    events: Vec<Outgoing>,
    /// The rows as archived changes, when the store archives.
    changes: Vec<ArchivedChange>,
    /// The rows as changes with their events, when `ficus record` records.
    recorded: Vec<(RowChange, Vec<serde_json::Value>)>,
    rows: u64,
}

/// Snapshot rows mapped per thread: at least this many rows for a thread.
const ROWS_PER_THREAD: usize = 1_000;

/// Writes the events of snapshot rows (with their keys), emitted at `at`;
/// returns how many rows. The outer error is the sinks' (it stops ficus), the
/// inner one a row the mappings cannot map (it stops the backfill).
///
/// Mapping and serializing are most of a backfill's work, and a chunk's rows
/// are independent: its parts are mapped on as many threads as there are
/// cores, each with its own binding of the mappings, and written in order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn emit_snapshot_rows(
    delivery: &mut Delivery,
    events: &mut u64,
    compiled: &Compiled,
    relation: &std::sync::Arc<ficus_model::Relation>,
    id: &std::sync::Arc<str>,
    ctx: &EventContext,
    rows: Vec<(ficus_model::Row, String)>,
    at: Lsn,
) -> Result<Result<u64, RunError>, RunError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_part = rows.len().div_ceil(threads).max(ROWS_PER_THREAD);
    let mut parts = Vec::new();
    let mut rows = rows.into_iter();
    loop {
        let part: Vec<_> = rows.by_ref().take(per_part).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let description = delivery.archives().then(|| delivery.description(relation, ctx));
    let recording = delivery.recording.is_some();
    let map_part = |part: Vec<(ficus_model::Row, String)>| -> Result<MappedPart, RunError> {
        let Some(bound) = compiled.bind(relation.clone(), ctx)? else {
            return Err(RunError::bug(format!(
                "snapshot rows of {}, which no mapping reads",
                relation.table
            )));
        };
        let (mut events, mut changes, mut recorded, mut emitted) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (row, key) in part {
            let change = snapshot_change(relation, id, row, key, at, now);
            let mapped = bound.apply(&change, ctx)?;
            if let Some(description) = &description {
                changes.push(archive::encode(&change, description));
            }
            if recording {
                let made = mapped.iter().map(ficus_project::fixtures::expectation).collect();
                recorded.push((change, made));
            }
            events.extend(mapped.into_iter().map(Outgoing::new));
            emitted += 1;
        }
        Ok(MappedPart {
            events,
            changes,
            recorded,
            rows: emitted,
        })
    };
    let mapped: Vec<Result<MappedPart, RunError>> = if parts.len() <= 1 {
        parts.into_iter().map(map_part).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts.into_iter().map(|part| scope.spawn(|| map_part(part))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(RunError::bug("mapping snapshot rows panicked")))
                })
                .collect()
        })
    };
    let mut emitted = 0;
    for part in mapped {
        let MappedPart {
            events: outgoing,
            changes,
            recorded,
            rows,
        } = match part {
            Ok(part) => part,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(r) = &delivery.recording {
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            for (change, made) in recorded {
                r.record(&change, made);
            }
        }
        *events += outgoing.len() as u64;
        delivery.write_outgoing(outgoing, changes).await?;
        emitted += rows;
    }
    Ok(Ok(emitted))
}

#[cfg(test)]
mod tests;
