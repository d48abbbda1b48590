//! The configured sinks, as the pipeline writes to them: line sinks (stdout, jsonl) get each event
//! as a JSON line; the store gets the same line with what it files the event under.
//!
//! A flush makes the line sinks durable first and appends to the store last, with the checkpoint:
//! whatever the store holds, every other sink holds too, so streaming from the store's checkpoint
//! after a crash loses nothing anywhere.

use std::sync::Arc;

use ficus_mapping::EventContext;
use ficus_model::{Event, Lsn, Relation, RowChange};
use ficus_sinks::Sink;
use ficus_store::{ArchivedChange, Checkpoint, EventStore, Mode, Record, SavedCheckpoint, Store};
use tracing::info;

use crate::RunError;
use crate::archive::{self, RelationDescription};
use crate::config::Config;

/// Every configured sink.
pub(crate) struct Sinks {
    lines: Vec<Sink>,
    store: Option<StoreSink>,
}

struct StoreSink {
    store: Store,
    slot: String,
    batch: Vec<Record>,
    /// Whether row changes are archived, and those not yet appended.
    archive: bool,
    changes: Vec<ArchivedChange>,
    /// Descriptions of the relations seen lately (the relation is kept, so that it is never
    /// taken for another one at the same address).
    descriptions: Vec<(Arc<Relation>, Arc<str>)>,
}

/// Relation descriptions remembered at most (relations change rarely).
const DESCRIPTIONS: usize = 256;

impl Sinks {
    /// Opens the config's live sinks (stdout when none is configured).
    pub(crate) async fn open(config: &Config) -> Result<Sinks, RunError> {
        let mut lines = Vec::new();
        let mut store = None;
        for sink in config.sinks.iter().filter(|s| s.live()) {
            if let Some(opened) = sink.open_lines(config) {
                lines.push(opened?);
            }
        }
        if let Some(location) = config.store_location() {
            let opened = Store::open(&location, Mode::Create).await?;
            info!(store = %opened.describe(), "event store");
            store = Some(StoreSink {
                store: opened,
                slot: config.source.slot.clone(),
                batch: Vec::new(),
                archive: config.archives(),
                changes: Vec::new(),
                descriptions: Vec::new(),
            });
        }
        if config.sinks.is_empty() {
            lines.push(Sink::stdout());
        }
        Ok(Sinks { lines, store })
    }

    /// Whether a store is configured (it needs [`record`]s besides lines).
    pub(crate) fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// Whether row changes are archived.
    pub(crate) fn archives(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.archive)
    }

    /// Archives a row change (when the store archives), before the events made of it; returns how
    /// many changes it buffered (0 or 1), which want a flush as much as events do.
    pub(crate) fn archive(&mut self, change: &RowChange, ctx: &EventContext) -> usize {
        let Some(s) = self.store.as_mut().filter(|s| s.archive) else {
            return 0;
        };
        let description = match s.descriptions.iter().find(|(r, _)| Arc::ptr_eq(r, &change.relation)) {
            Some((_, d)) => d.clone(),
            None => {
                let d: Arc<str> = RelationDescription::encode(&change.relation, ctx).into();
                if s.descriptions.len() >= DESCRIPTIONS {
                    s.descriptions.remove(0);
                }
                s.descriptions.push((change.relation.clone(), d.clone()));
                d
            }
        };
        s.changes.push(archive::encode(change, &description));
        1
    }

    /// The store's checkpoint for the config's slot.
    pub(crate) async fn checkpoint(&self) -> Result<Option<SavedCheckpoint>, RunError> {
        match &self.store {
            Some(s) => Ok(s.store.checkpoint(&s.slot).await?),
            None => Ok(None),
        }
    }

    /// Forgets the store's checkpoint for the config's slot (the slot is gone).
    pub(crate) async fn forget_checkpoint(&self) -> Result<(), RunError> {
        if let Some(s) = &self.store {
            s.store.forget_checkpoint(&s.slot).await?;
        }
        Ok(())
    }

    /// Records a position in the store's checkpoint alone (`source`: what is known of the source).
    pub(crate) async fn record(&mut self, lsn: Lsn, source: &str) -> Result<(), RunError> {
        if let Some(s) = &mut self.store {
            let checkpoint = Checkpoint {
                slot: &s.slot,
                lsn: lsn.0,
                source: Some(source),
            };
            s.store.append(&[], &[], Some(checkpoint)).await?;
        }
        Ok(())
    }

    /// Writes one event, serialized as `line` (without its newline); may buffer.
    pub(crate) fn write(&mut self, event: &Event, line: &[u8]) -> Result<(), RunError> {
        for sink in &mut self.lines {
            sink.write(line)?;
        }
        if let Some(s) = &mut self.store {
            s.batch.push(record(event, line));
        }
        Ok(())
    }

    /// Writes events already serialized: `lines` with their newlines, and, when a store is
    /// configured, their records.
    pub(crate) fn write_block(
        &mut self,
        lines: &[u8],
        records: Vec<Record>,
        changes: Vec<ArchivedChange>,
    ) -> Result<(), RunError> {
        for sink in &mut self.lines {
            sink.write_lines(lines)?;
        }
        if let Some(s) = &mut self.store {
            s.batch.extend(records);
            s.changes.extend(changes);
        }
        Ok(())
    }

    /// Makes every written event durable in every sink; the store records `checkpoint` (the last
    /// commit whose events are all written, with what is known of the source) in the same
    /// transaction. Returns whether it did (it does when it appended anything).
    pub(crate) async fn flush(&mut self, checkpoint: Option<(Lsn, &str)>) -> Result<bool, RunError> {
        for sink in &mut self.lines {
            sink.flush()?;
        }
        if let Some(s) = &mut self.store
            && (!s.batch.is_empty() || !s.changes.is_empty())
        {
            let checkpoint = checkpoint.map(|(lsn, source)| Checkpoint {
                slot: &s.slot,
                lsn: lsn.0,
                source: Some(source),
            });
            let recorded = checkpoint.is_some();
            s.store.append(&s.batch, &s.changes, checkpoint).await?;
            s.batch.clear();
            s.changes.clear();
            return Ok(recorded);
        }
        Ok(false)
    }

    /// Closes the store's connections.
    pub(crate) async fn close(&self) {
        if let Some(s) = &self.store {
            s.store.close().await;
        }
    }
}

/// What the store files an event under, with its line.
pub(crate) fn record(event: &Event, line: &[u8]) -> Record {
    Record {
        id: event.id.clone(),
        ty: event.ty.to_string(),
        aggregate: event.aggregate.to_string(),
        subject: event.subject.clone(),
        time_micros: chrono::DateTime::parse_from_rfc3339(&event.time).map_or(0, |t| t.timestamp_micros()),
        lsn: event.lsn.parse::<Lsn>().map_or(0, |l| l.0),
        event: String::from_utf8_lossy(line).into_owned(),
    }
}
