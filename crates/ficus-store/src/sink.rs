//! The store as a sink: the events every other sink gets, each stored once, and the source's
//! checkpoint in the same transaction.
//!
//! Durable = committed (SQLite with `synchronous = FULL`, or Postgres): the events, the archived
//! row changes and the checkpoint together, or none of them. The store keeps a checkpoint no
//! further than what every other sink holds durable (the runtime's delivery gives it that
//! position), so streaming again from it after a crash loses nothing anywhere: the other sinks
//! may see events again, the store leaves out ids it has.

use ficus_sinks::{Outgoing, SinkError};

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ArchivedChange, Checkpoint, EventStore, Location, RecordRef, Store, StoreError};

/// The store's file when a store sink names neither `path` nor `url`.
pub const DEFAULT_STORE_PATH: &str = "ficus.db";

/// `[[sink]] type = "store"` (docs/store.md): a SQLite file (`path`, default `ficus.db`) or a
/// Postgres database (`url`, the store is its schema `ficus`).
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file (relative to the config's directory).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The Postgres database.
    #[serde(default)]
    pub url: Option<String>,
    /// Keep the row changes too, for `ficus remap` and `ficus verify`.
    #[serde(default)]
    pub archive: bool,
}

impl StoreConfig {
    /// Where the store is; a relative path is resolved against `dir`.
    pub fn location(&self, dir: &Path) -> Location {
        match (&self.url, &self.path) {
            (Some(url), _) => Location::Postgres(url.clone()),
            (None, path) => {
                let path = path.as_deref().unwrap_or(Path::new(DEFAULT_STORE_PATH));
                Location::Sqlite(if path.is_absolute() {
                    path.to_owned()
                } else {
                    dir.join(path)
                })
            }
        }
    }
}

/// The store sink. Unlike the other sinks, it does not keep the events it is to append: the lane
/// that drives it holds them until they are durable, and hands them over at each flush, so an
/// event in flight for the store is held once.
pub struct StoreSink {
    store: Store,
    slot: String,
    changes: Vec<ArchivedChange>,
    /// The checkpoint the next flush records (LSN and what is known of the source there).
    checkpoint: Option<(u64, String)>,
}

impl StoreSink {
    /// The sink of `store`, keeping checkpoints of the slot `slot`.
    pub fn new(store: Store, slot: &str) -> StoreSink {
        StoreSink {
            store,
            slot: slot.to_owned(),
            changes: Vec::new(),
            checkpoint: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Archives row changes with the next flush.
    pub fn archive(&mut self, changes: Vec<ArchivedChange>) {
        self.changes.extend(changes);
    }

    /// The next flush records this checkpoint (even with nothing to append).
    pub fn checkpoint_at(&mut self, lsn: u64, source: &str) {
        self.checkpoint = Some((lsn, source.to_owned()));
    }

    /// Appends `events` (in their order; ids stored already are left out), the changes to archive
    /// and the checkpoint, in one transaction; after an error, all of them are still to append.
    pub async fn flush(&mut self, events: &[&Outgoing]) -> Result<(), SinkError> {
        if events.is_empty() && self.changes.is_empty() && self.checkpoint.is_none() {
            return Ok(());
        }
        let batch = events.iter().map(|o| record(o)).collect::<Result<Vec<_>, _>>()?;
        let checkpoint = self.checkpoint.as_ref().map(|(lsn, source)| Checkpoint {
            slot: &self.slot,
            lsn: *lsn,
            source: Some(source),
        });
        self.store.append_refs(&batch, &self.changes, checkpoint).await?;
        self.changes.clear();
        self.checkpoint = None;
        Ok(())
    }

    /// Closes the store.
    pub async fn close(&mut self) {
        self.store.close().await;
    }
}

/// What the store files an event under, with its line: borrowed from the event in flight.
fn record<'a>(o: &'a Outgoing) -> Result<RecordRef<'a>, SinkError> {
    let e = &o.event;
    let event = std::str::from_utf8(&o.line).map_err(|err| {
        SinkError::definite(
            format!("event {} is not UTF-8 JSON ({err}): the store keeps JSON text", e.id),
            "this is a bug in ficus: report it with the event's mapping",
        )
    })?;
    Ok(RecordRef {
        id: &e.id,
        ty: &e.ty,
        aggregate: &e.aggregate,
        subject: &e.subject,
        time_micros: e.time.micros(),
        lsn: e.lsn.0,
        event,
    })
}

impl From<StoreError> for SinkError {
    fn from(e: StoreError) -> SinkError {
        let hint = e.hint().to_owned();
        SinkError::definite(e.to_string(), hint)
    }
}
