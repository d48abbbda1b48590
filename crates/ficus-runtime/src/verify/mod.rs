//! `ficus verify`: what ficus captured, compared with the source, while the monolith writes.
//!
//! ```text
//! per chunk:  read it (REPEATABLE READ: snapshot S) ──▶ marker M into the WAL
//!             wait until the archive holds everything up to M (the store's checkpoint, or
//!             nothing pending in the slot when no ficus run streams)
//!             fold the archive by key as S sees it ──▶ compare each row: missing, different
//! at the end: rows the archive has and no chunk had, read again by key in one snapshot: extra
//! ```
//!
//! A row changed while a chunk is read is compared as of the same snapshot on both sides: the
//! archived changes of transactions S does not see are left out of the fold, as the backfill's
//! watermark rule leaves them out of a chunk (see `fold`). So nothing in flight is reported, and
//! nothing needs reading again.

mod fold;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_model::{Cell, Lsn, Relation, Row, TableRef, text_of};
use ficus_postgres::backfill::{Keyset, keyset, read_chunk, read_keys};
use ficus_postgres::{SourceError, catalog, publication, slot};
use ficus_store::{EventStore, Filter, Mode, Store};
use serde::Serialize;
use sqlx::{Connection, PgPool};
use tokio::sync::watch;
use tracing::info;

use self::fold::{Fold, Image};
use crate::archive::{self, RelationDescription};
use crate::backfill::{BackfillState, key_text};
use crate::config::Config;
use crate::gap::GapRecord;
use crate::run::live_schema;
use crate::watermark::Snapshot;
use crate::{RunError, load_mappings};

/// The prefix of the marker verify writes after reading a chunk.
pub const MARKER_PREFIX: &str = "ficus.verify";
/// Rows read per chunk, by default.
pub const DEFAULT_CHUNK_SIZE: usize = 5_000;
/// Differences of each kind listed per table (all are counted).
const LISTED: usize = 100;
/// Archived changes read at a time.
const PAGE: i64 = 5_000;

/// What `ficus verify` was asked for.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Tables to verify; every mapped table when empty.
    pub tables: Vec<String>,
    /// Rows per chunk.
    pub chunk_size: usize,
    /// How long to wait for the archive to reach a chunk's position.
    pub wait: Duration,
}

/// What verify found, per table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// One per table.
    pub tables: Vec<TableReport>,
}

impl Report {
    /// Rows missing, extra or different, over every table.
    pub fn differences(&self) -> u64 {
        self.tables.iter().map(|t| t.missing + t.extra + t.different).sum()
    }

    /// Whether any table could be verified.
    pub fn verified_any(&self) -> bool {
        self.tables.iter().any(|t| t.verified)
    }
}

/// What verify found of one table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableReport {
    /// `schema.table`
    pub table: String,
    /// Whether it could be compared; when not, why.
    pub verified: bool,
    /// Why it could not be verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_verified: Option<String>,
    /// Rows compared.
    pub compared: u64,
    /// Rows of the source the archive does not have.
    pub missing: u64,
    /// Rows of the archive the source does not have.
    pub extra: u64,
    /// Rows both have, with a column that differs.
    pub different: u64,
    /// The first differences, by key.
    pub differences: Vec<Difference>,
}

/// One row that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `missing`, `extra` or `different`.
    pub kind: &'static str,
    /// The row's key: its key columns' values, as text.
    pub key: Vec<String>,
    /// For `different`: the first column that differs, and its two values (`null` for NULL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The source's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Option<String>>,
    /// The archive's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<Option<String>>,
}

impl TableReport {
    fn not_verified(table: &TableRef, why: impl Into<String>) -> TableReport {
        TableReport {
            table: table.to_string(),
            not_verified: Some(why.into()),
            ..TableReport::default()
        }
    }

    fn found(&mut self, difference: Difference) {
        match difference.kind {
            "missing" => self.missing += 1,
            "extra" => self.extra += 1,
            _ => self.different += 1,
        }
        if self.differences.iter().filter(|d| d.kind == difference.kind).count() < LISTED {
            self.differences.push(difference);
        }
    }
}

/// Verifies the config's archive against the source.
pub async fn verify(
    config: &Config,
    options: &VerifyOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Report, RunError> {
    let url = config.source_url()?;
    let pool = catalog::connect(&url).await?;
    let published = publication::read(&pool, &config.source.publication).await?;
    let schema = live_schema(&pool, published.as_ref()).await?;
    let compiled = load_mappings(config)?.compile(Some(&schema))?;
    let tables: Vec<TableRef> = if options.tables.is_empty() {
        compiled.tables().into_iter().collect()
    } else {
        options.tables.iter().map(|t| TableRef::parse(t)).collect()
    };
    let Some(location) = config.store_location().filter(|_| config.archives()) else {
        let why = "the config's store does not archive row changes: set archive = true on the store sink (docs/store.md); \
                   verify compares the archive with the source";
        return Ok(Report {
            tables: tables.iter().map(|t| TableReport::not_verified(t, why)).collect(),
        });
    };
    let store = Store::open(&location, Mode::Existing).await?;
    let system = ficus_postgres::identify(&url, &config.source.slot, &config.source.publication).await?;
    let identity = format!("{}/{}", system.system_id, url.database);
    let mut archive = Archive {
        store: &store,
        after: 0,
        identity,
        relations: HashMap::new(),
        folds: HashMap::new(),
        resyncs: GapRecord::all(&config.dir)?
            .into_iter()
            .filter_map(|g| g.backfill)
            .collect(),
        cleared: HashSet::new(),
    };
    let in_progress = BackfillState::all(&config.dir)?;
    // First what can be verified, so that every such table is folded from the archive's start
    // (the archive is read once, in order, for all of them).
    let mut report = Report::default();
    let mut planned = Vec::new();
    for table in &tables {
        let why_not = match schema.get(table) {
            None => Some("no such table in the source".to_owned()),
            Some(_) if !compiled.tables().contains(table) => {
                Some("no mapping reads it, so ficus does not archive it".to_owned())
            }
            Some(_) => in_progress.iter().find(|b| b.covers(&table.to_string())).map(|b| {
                format!(
                    "backfill {} of it is in progress: verify it once the backfill is done",
                    b.id
                )
            }),
        };
        if let Some(why) = why_not {
            report.tables.push(TableReport::not_verified(table, why));
            continue;
        }
        let Ok(keys) = keyset(&pool, table, false).await else {
            report.tables.push(TableReport::not_verified(
                table,
                "it has no primary key or unique NOT NULL index to match rows by",
            ));
            continue;
        };
        let relation = Arc::new(schema[table].relation.clone());
        archive.folds.insert(
            table.clone(),
            Fold::new(keys.columns.iter().map(|(c, _)| c.clone()).collect()),
        );
        planned.push((relation, keys));
    }
    let result = async {
        for (relation, keys) in &planned {
            if *shutdown.borrow() {
                break;
            }
            let t = verify_table(config, &pool, &mut archive, relation, keys, options).await?;
            info!(table = %relation.table, compared = t.compared, missing = t.missing, extra = t.extra, different = t.different, "verified");
            // Done with it: its fold need not grow any more.
            archive.folds.remove(&relation.table);
            report.tables.push(t);
        }
        Ok::<_, RunError>(())
    }
    .await;
    store.close().await;
    result.map(|()| report)
}

/// The archive, folded as far as it was read.
struct Archive<'a> {
    store: &'a Store,
    /// The last archived change read.
    after: i64,
    /// The source's identity: changes archived from another source are left out.
    identity: String,
    relations: HashMap<i64, Option<Arc<Relation>>>,
    /// The tables being verified, folded.
    folds: HashMap<TableRef, Fold>,
    /// Backfills that resyncs started: their snapshot rows are the whole table then.
    resyncs: HashSet<String>,
    cleared: HashSet<(TableRef, String)>,
}

impl Archive<'_> {
    /// Folds the changes archived since the last read.
    async fn read_on(&mut self) -> Result<(), RunError> {
        loop {
            let page = self.store.read_changes(&Filter::default(), self.after, PAGE).await?;
            for stored in &page {
                self.after = stored.position;
                let relation = match self.relations.get(&stored.relation) {
                    Some(r) => r.clone(),
                    None => {
                        let text = self.store.relation(stored.relation).await?;
                        let d: RelationDescription = serde_json::from_str(&text).map_err(|e| damaged(self.store, e))?;
                        // Messages (no relation) are no rows of a table.
                        let r = d.relation.filter(|_| d.identity == self.identity).map(Arc::new);
                        self.relations.insert(stored.relation, r.clone());
                        r
                    }
                };
                let Some(relation) = relation else { continue };
                let Some(fold) = self.folds.get_mut(&relation.table) else {
                    continue;
                };
                let change = archive::decode(&stored.change, &relation).map_err(|e| damaged(self.store, e))?;
                if let ficus_model::Origin::Backfill { id, .. } = &change.origin
                    && self.resyncs.contains(&**id)
                    && self.cleared.insert((relation.table.clone(), id.to_string()))
                {
                    // A resync's backfill brings the whole table: what is not in it is gone.
                    fold.clear(0);
                }
                fold.add(&change);
            }
            if (page.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }
}

fn damaged(store: &Store, e: impl std::fmt::Display) -> RunError {
    ficus_store::StoreError::new(
        format!("{}: an archived change does not read back: {e}", store.describe()),
        "the archive was damaged: restore the store from a backup",
    )
    .into()
}

async fn verify_table(
    config: &Config,
    pool: &PgPool,
    archive: &mut Archive<'_>,
    relation: &Arc<Relation>,
    keys: &Keyset,
    options: &VerifyOptions,
) -> Result<TableReport, RunError> {
    let table = &relation.table;
    let mut report = TableReport {
        table: table.to_string(),
        verified: true,
        ..TableReport::default()
    };
    let positions: Vec<usize> = keys
        .columns
        .iter()
        .filter_map(|(c, _)| relation.column_index(c))
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut after: Option<Vec<String>> = None;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| SourceError::from_sqlx("verify: connecting", e))?;
    let last = loop {
        let (mut tx, snapshot) = in_snapshot(&mut conn).await?;
        let chunk = read_chunk(&mut tx, relation, keys, after.as_deref(), options.chunk_size, None).await?;
        done(tx).await?;
        covered(config, pool, archive.store, options.wait).await?;
        archive.read_on().await?;
        let fold = archive.folds.get_mut(table).expect("the table's fold");
        for row in &chunk.rows {
            let Some(key) = key_text(row, &positions) else { continue };
            report.compared += 1;
            if let Some(d) = compare(relation, row, fold.at(&key, &snapshot), &key) {
                report.found(d);
            }
            seen.insert(key);
        }
        if chunk.exhausted || chunk.last_key.is_none() {
            break snapshot;
        }
        after = chunk.last_key;
    };
    // Rows the archive has that no chunk had: inserted since their chunk was read, or extra.
    // Read again by key, in one snapshot.
    let fold = archive.folds.get_mut(table).expect("the table's fold");
    let unseen: Vec<String> = fold.present(&last).into_iter().filter(|k| !seen.contains(k)).collect();
    for batch in unseen.chunks(1_000) {
        let wanted: Vec<Vec<String>> = batch.iter().filter_map(|k| serde_json::from_str(k).ok()).collect();
        let (mut tx, snapshot) = in_snapshot(&mut conn).await?;
        let rows = read_keys(&mut tx, relation, keys, &wanted).await?;
        done(tx).await?;
        covered(config, pool, archive.store, options.wait).await?;
        archive.read_on().await?;
        let fold = archive.folds.get_mut(table).expect("the table's fold");
        let mut found: HashMap<String, Row> = rows
            .into_iter()
            .filter_map(|row| Some((key_text(&row, &positions)?, row)))
            .collect();
        for key in batch {
            let image = fold.at(key, &snapshot);
            let difference = match found.remove(key) {
                Some(row) => {
                    report.compared += 1;
                    compare(relation, &row, image, key)
                }
                None => image.map(|_| difference("extra", key)),
            };
            if let Some(d) = difference {
                report.found(d);
            }
        }
    }
    Ok(report)
}

/// A `REPEATABLE READ, READ ONLY` transaction, and its snapshot: what is read in it is read as of
/// that snapshot.
async fn in_snapshot(
    conn: &mut sqlx::PgConnection,
) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, Snapshot), RunError> {
    let err = |what: &'static str| move |e| SourceError::from_sqlx(what, e);
    let mut tx = conn.begin().await.map_err(err("verify: begin"))?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await
        .map_err(err("verify: set isolation"))?;
    let snapshot: String = sqlx::query_scalar("select pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await
        .map_err(err("verify: snapshot"))?;
    let snapshot = snapshot
        .parse()
        .map_err(|e: crate::watermark::ParseSnapshotError| RunError::bug(format!("verify's snapshot: {e}")))?;
    Ok((tx, snapshot))
}

async fn done(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), RunError> {
    tx.commit()
        .await
        .map_err(|e| SourceError::from_sqlx("verify: commit", e).into())
}

/// Waits until the archive holds every change committed before now: a marker goes into the WAL,
/// and the store's checkpoint must pass it (the running ficus records its position as it
/// acknowledges). When no ficus streams from the slot, the slot must hold no change the archive
/// lacks up to the marker.
async fn covered(config: &Config, pool: &PgPool, store: &Store, wait: Duration) -> Result<(), RunError> {
    let marker: String = sqlx::query_scalar("select pg_logical_emit_message(true, $1, 'ficus verify')::text")
        .bind(MARKER_PREFIX)
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx("verify: writing its marker", e))?;
    let marker: Lsn = marker
        .parse()
        .map_err(|e: ficus_model::lsn::ParseLsnError| RunError::bug(format!("verify's marker position: {e}")))?;
    let slot_name = &config.source.slot;
    let began = Instant::now();
    loop {
        let checkpoint = Lsn(store.checkpoint(slot_name).await?.map_or(0, |c| c.lsn));
        if checkpoint >= marker {
            return Ok(());
        }
        if slot::active_pid(pool, slot_name).await?.is_none() {
            // Nothing pending in the slot: the archive is complete up to the marker.
            let pending =
                slot::holds_changes_after(pool, slot_name, &config.source.publication, checkpoint, marker).await?;
            if pending == Some(false) {
                return Ok(());
            }
        }
        if began.elapsed() >= wait {
            return Err(SourceError::definite(
                format!(
                    "the archive holds the changes up to {checkpoint}, and the source is at {marker}: it did not catch up within {wait:?}"
                ),
                format!(
                    "verify compares what ficus archived with the source: run it beside a `ficus run` streaming from slot {slot_name}, \
                     or after `ficus run --until-caught-up`; --wait SECONDS waits longer for a ficus far behind"
                ),
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text(cell: Option<&Cell>) -> Option<String> {
    match cell {
        Some(Cell::Text(t)) => Some(text_of(t).into_owned()),
        _ => None,
    }
}

fn difference(kind: &'static str, key: &str) -> Difference {
    Difference {
        kind,
        key: serde_json::from_str(key).unwrap_or_else(|_| vec![key.to_owned()]),
        column: None,
        source: None,
        archive: None,
    }
}

/// A source row against the archive's image of it: nothing, `missing`, or the first column that
/// is `different`. Columns the image's version lacks, or whose value the archive never saw, are
/// not compared.
fn compare(relation: &Relation, row: &Row, image: Option<&Image>, key: &str) -> Option<Difference> {
    let Some(image) = image else {
        return Some(difference("missing", key));
    };
    for (i, column) in relation.columns.iter().enumerate() {
        let Some(archived) = image.cell(&column.name) else {
            continue;
        };
        let source = row.get(i).unwrap_or(&Cell::Null);
        if source != archived {
            return Some(Difference {
                column: Some(column.name.clone()),
                source: Some(text(Some(source))),
                archive: Some(text(Some(archived))),
                ..difference("different", key)
            });
        }
    }
    None
}
