//! Delivery: writing events to the sinks, making them durable, and the rule that moves the slot.
//!
//! ```text
//! events ──write──▶ sinks ──flush (store last, with the checkpoint)──▶ record the position ──▶ acknowledge
//! ```
//!
//! The slot is acknowledged only up to a position that is recorded ([`Positions`]): in the store's
//! checkpoint (free, with the events it appends) or in `.ficus/slots/SLOT.json`. A record alone is
//! written at most every [`RECORD_INTERVAL`], so commits that give no event do not cost a write
//! each: their acknowledgement waits a little instead. So the slot never confirms more than ficus
//! recorded, and a slot ahead of the record was moved by someone else (see `position`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ficus_mapping::{Compiled, EventContext};
use ficus_model::Lsn;
use ficus_postgres::SourceError;
use tracing::debug;

use crate::RunError;
use crate::backfill::snapshot_change;
use crate::config::Config;
use crate::position::{self, Source};
use crate::sinks::{Sinks, record};

/// A position recorded alone (no events to append with it) at most this often.
pub(crate) const RECORD_INTERVAL: Duration = Duration::from_millis(200);

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

    /// What the store records with a flush that makes `lsn` durable.
    pub fn checkpoint(&self, lsn: Option<Lsn>) -> Option<(Lsn, &str)> {
        lsn.map(|lsn| (lsn, self.encoded.as_str()))
    }

    /// The store recorded `lsn` with the events it appended.
    pub fn stored(&mut self, lsn: Lsn) {
        self.recorded = self.recorded.max(lsn);
        if let Some(stale) = self.stale_file.take() {
            let _ = std::fs::remove_file(stale);
        }
    }

    /// Records `lsn` (every sink has everything up to it) unless it is recorded already, or a
    /// record was written less than [`RECORD_INTERVAL`] ago and `now` is false; returns what is
    /// recorded.
    pub async fn record(&mut self, sinks: &mut Sinks, lsn: Lsn, now: bool) -> Result<Lsn, RunError> {
        if lsn <= self.recorded || (!now && self.written.is_some_and(|t| t.elapsed() < RECORD_INTERVAL)) {
            return Ok(self.recorded);
        }
        match &self.file {
            Some(path) => position::save(path, &self.slot, lsn, &self.source)?,
            None => {
                sinks.record(lsn, &self.encoded).await?;
                self.stored(lsn);
            }
        }
        self.recorded = lsn;
        self.written = Some(Instant::now());
        debug!(%lsn, "recorded position");
        Ok(lsn)
    }
}

/// Where snapshot rows' events go.
pub(crate) struct Output<'a> {
    pub sinks: &'a mut Sinks,
    pub unflushed: &'a mut usize,
    pub events: &'a mut u64,
}

/// The events of part of a chunk, as JSON lines.
struct MappedPart {
    lines: Vec<u8>,
    /// The events' records, when a store is configured.
    records: Vec<ficus_store::Record>,
    /// The rows as archived changes, when the store archives.
    changes: Vec<ficus_store::ArchivedChange>,
    events: usize,
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
pub(crate) fn emit_snapshot_rows(
    out: &mut Output<'_>,
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
    let with_records = out.sinks.has_store();
    let description = out
        .sinks
        .archives()
        .then(|| crate::archive::RelationDescription::encode(relation, ctx));
    let map_part = |part: Vec<(ficus_model::Row, String)>| -> Result<MappedPart, RunError> {
        let Some(bound) = compiled.bind(relation.clone(), ctx)? else {
            return Err(
                SourceError::definite(format!("no mapping reads {}", relation.table), "report this as a bug").into(),
            );
        };
        let (mut lines, mut records, mut changes, mut events, mut emitted) = (Vec::new(), Vec::new(), Vec::new(), 0, 0);
        for (row, key) in part {
            let change = snapshot_change(relation, id, row, key, at, now);
            let mapped = bound.apply(&change, ctx)?;
            if let Some(description) = &description {
                changes.push(crate::archive::encode(&change, description));
            }
            for event in mapped {
                let start = lines.len();
                serde_json::to_writer(&mut lines, &event).expect("an event always serializes");
                if with_records {
                    records.push(record(&event, &lines[start..]));
                }
                lines.push(b'\n');
                events += 1;
            }
            emitted += 1;
        }
        Ok(MappedPart {
            lines,
            records,
            changes,
            events,
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
                    h.join().unwrap_or_else(|_| {
                        Err(SourceError::definite("mapping snapshot rows panicked", "report this as a bug").into())
                    })
                })
                .collect()
        })
    };
    let mut emitted = 0;
    for part in mapped {
        let MappedPart {
            lines,
            records,
            changes,
            events,
            rows,
        } = match part {
            Ok(part) => part,
            Err(e) => return Ok(Err(e)),
        };
        *out.unflushed += events + changes.len();
        out.sinks.write_block(&lines, records, changes)?;
        *out.events += events as u64;
        emitted += rows;
    }
    Ok(Ok(emitted))
}

/// Writes events to every sink, one JSON line each; returns how many.
pub(crate) fn write_events(
    sinks: &mut Sinks,
    line: &mut Vec<u8>,
    events: Vec<ficus_model::Event>,
) -> Result<usize, RunError> {
    for event in &events {
        line.clear();
        serde_json::to_writer(&mut *line, event).expect("an event always serializes");
        sinks.write(event, line)?;
    }
    Ok(events.len())
}

/// Makes every written event durable in every sink; the store records `checkpoint` with them.
pub(crate) async fn flush_sinks(
    sinks: &mut Sinks,
    positions: &mut Positions,
    unflushed: &mut usize,
    checkpoint: Option<Lsn>,
) -> Result<(), RunError> {
    if *unflushed > 0 {
        if sinks.flush(positions.checkpoint(checkpoint)).await?
            && let Some(lsn) = checkpoint
        {
            positions.stored(lsn);
        }
        *unflushed = 0;
    }
    Ok(())
}
