//! `ficus remap`: the archived row changes through the current mappings, into one sink.
//!
//! Each change is mapped as it was live — with the relation as it was described then, in the
//! source's identity of then — so unchanged mappings give exactly the events the live run gave
//! (same ids, same order), and a new mapping, or a new version of one, gives its events for the
//! whole archive.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;

use ficus_mapping::{Bound, Compiled, EventContext};
use ficus_sinks::Outgoing;
use ficus_store::{EventStore, Filter, Mode, Store, StoreError};
use tokio::sync::watch;
use tracing::info;

use crate::archive::{self, RelationDescription};
use crate::config::Config;
use crate::target::Target;
use crate::{RunError, load_mappings};

/// Archived changes read at a time.
const PAGE: i64 = 1_000;

/// What to remap, with which mappings, and where.
#[derive(Clone, Debug, Default)]
pub struct RemapOptions {
    /// Which changes (positions in the archive, commit times and LSNs) and which of the events
    /// made of them (types, subjects).
    pub filter: Filter,
    /// A directory of mapping files to use instead of the config's.
    pub mappings: Option<PathBuf>,
    /// The name of the sink to write to.
    pub to_sink: String,
}

/// What a remap did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemapReport {
    /// Archived changes read.
    pub changes: u64,
    /// Events written.
    pub events: u64,
    /// What the sink had to say at the end: events it gave up on (dead letters).
    pub warnings: Vec<String>,
}

/// One archived relation, bound to the mappings; or the source's messages (`relation` `None`).
struct Described {
    ctx: EventContext,
    relation: Option<Arc<ficus_model::Relation>>,
    /// `None` when no current mapping reads the table.
    bound: Option<Bound>,
}

/// Remaps the config's archive into the sink `options.to_sink` names.
pub async fn remap(
    config: &Config,
    options: &RemapOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<RemapReport, RunError> {
    let location = config.store_location().ok_or_else(|| {
        RunError::Config(
            "the config has no store sink: there is no archive to remap\nhint: add [[sink]] type = \"store\" with archive = true (docs/store.md)"
                .into(),
        )
    })?;
    let compiled = compile(config, options)?;
    let mut target = Target::open(config, &options.to_sink).await?;
    let store = Store::open(&location, Mode::Existing).await?;
    let result = remap_from(&store, &compiled, &mut target, options, config.archives(), shutdown).await;
    store.close().await;
    let warning = target.close().await;
    result.map(|mut report| {
        report.warnings.extend(warning);
        report
    })
}

/// The mappings to remap with: `--mappings DIR`, else the config's; checked offline (the archive
/// has the relations).
fn compile(config: &Config, options: &RemapOptions) -> Result<Compiled, RunError> {
    let loaded = match &options.mappings {
        None => load_mappings(config)?,
        Some(dir) => {
            let dir = std::path::absolute(dir).map_err(|e| RunError::Config(format!("{}: {e}", dir.display())))?;
            let mut source = config.source.clone();
            source.mappings = vec![dir.join("*.toml").to_string_lossy().into_owned()];
            load_mappings(&Config {
                source,
                sinks: vec![],
                dir: config.dir.clone(),
                metrics: config.metrics.clone(),
            })?
        }
    };
    Ok(loaded.compile(None)?)
}

async fn remap_from(
    store: &Store,
    compiled: &Compiled,
    target: &mut Target,
    options: &RemapOptions,
    archiving: bool,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RemapReport, RunError> {
    let filter = &options.filter;
    let mut after = filter.from.map_or(0, |f| f - 1);
    let mut report = RemapReport::default();
    let mut described: HashMap<i64, Described> = HashMap::new();
    let progress = crate::progress::Positions::new("remap: archived changes", after, None);
    // The transaction being remapped: its events that collect rows wait for its last change.
    let mut tx = ficus_mapping::Transaction::default();
    let mut in_tx: Option<(ficus_model::Lsn, EventContext)> = None;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let page = store.read_changes(filter, after, PAGE).await?;
        if page.is_empty() && after == 0 && report.changes == 0 && filter.from.is_none() {
            let hint = if archiving {
                "ficus archives the row changes it streams from now on; remap maps them once there are some"
            } else {
                "set archive = true on the store sink: ficus archives the row changes it streams from then on"
            };
            return Err(StoreError::new(format!("{} holds no archived row changes", store.describe()), hint).into());
        }
        let mut outgoing = Vec::new();
        for stored in &page {
            after = stored.position;
            report.changes += 1;
            let d = match described.entry(stored.relation) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let text = store.relation(stored.relation).await?;
                    let d: RelationDescription =
                        serde_json::from_str(&text).map_err(|e| damaged(store, stored.position, e))?;
                    let ctx = EventContext::new(&d.source, &d.identity);
                    let relation = d.relation.map(Arc::new);
                    let bound = match &relation {
                        Some(r) => compiled.bind(r.clone(), &ctx)?,
                        None => None,
                    };
                    e.insert(Described { ctx, relation, bound })
                }
            };
            // A row change of a mapped table, or a logical decoding message of a mapped prefix.
            let entry = match (&d.relation, &d.bound) {
                (Some(relation), Some(_)) => Archived::Change(
                    archive::decode(&stored.change, relation).map_err(|e| damaged(store, stored.position, e))?,
                ),
                (Some(_), None) => continue,
                (None, _) => {
                    let message =
                        archive::decode_message(&stored.change).map_err(|e| damaged(store, stored.position, e))?;
                    if !compiled.maps_prefix(&message.0) {
                        continue;
                    }
                    Archived::Message(message)
                }
            };
            // A new transaction: the last one's waiting events first.
            let commit = match &entry {
                Archived::Change(change) => change.tx.commit_lsn,
                Archived::Message((_, _, _, meta)) => meta.commit_lsn,
            };
            if in_tx.as_ref().is_none_or(|(at, _)| *at != commit) {
                if let Some((_, ctx)) = &in_tx {
                    keep(tx.commit(ctx)?, filter, target, &mut outgoing, &mut report);
                }
                in_tx = Some((commit, d.ctx.clone()));
            }
            let events = match &entry {
                Archived::Change(change) => match &d.bound {
                    Some(bound) => bound.apply_in(change, &d.ctx, &mut tx)?,
                    None => continue,
                },
                Archived::Message((prefix, content, lsn, meta)) => {
                    let msg = ficus_mapping::Message {
                        prefix,
                        content: content.as_bytes(),
                        lsn: *lsn,
                        transactional: true,
                        tx: meta,
                    };
                    compiled.apply_message(&msg, &d.ctx, &mut tx)?
                }
            };
            keep(events, filter, target, &mut outgoing, &mut report);
        }
        if (page.len() as i64) < PAGE
            && let Some((_, ctx)) = in_tx.take()
        {
            keep(tx.commit(&ctx)?, filter, target, &mut outgoing, &mut report);
        }
        target.deliver(&outgoing, &mut shutdown).await?;
        progress.at(after);
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    progress.finish();
    info!(changes = report.changes, events = report.events, "remapped");
    Ok(report)
}

/// An archived entry, read back.
enum Archived {
    Change(ficus_model::RowChange),
    /// Prefix, content, LSN, transaction.
    Message((String, String, ficus_model::Lsn, ficus_model::TxMeta)),
}

/// Adds the events the filter and the sink's routes take to what goes out.
fn keep(
    events: Vec<ficus_model::Event>,
    filter: &Filter,
    target: &Target,
    outgoing: &mut Vec<Outgoing>,
    report: &mut RemapReport,
) {
    for event in events {
        let wanted = (filter.types.is_empty() || filter.types.iter().any(|t| **t == *event.ty))
            && (filter.subjects.is_empty() || filter.subjects.contains(&event.subject))
            && target.accepts(&event.ty);
        if wanted {
            outgoing.push(Outgoing::new(event));
            report.events += 1;
        }
    }
}

fn damaged(store: &Store, position: i64, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        format!(
            "{}: the archived change at position {position} does not read back: {e}",
            store.describe()
        ),
        "the archive was damaged: restore the store from a backup, or remap from a later position (--from)",
    )
}
