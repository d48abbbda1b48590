//! Starting a run: connecting and checking, then the slot — created, taken up, or found lost (a
//! gap), and repaired when asked (`--resync`) — and the publication.
//!
//! ```text
//! connect, preflight, mappings ──▶ IDENTIFY_SYSTEM + record + slot ──judge──▶ create | stream | gap
//!                                                                               gap + --resync: record the gap,
//!                                                                               queue a backfill, drop the slot,
//!                                                                               forget the record, create
//! ```

use std::time::{Duration, Instant};

use ficus_mapping::Compiled;
use ficus_model::{Lsn, Op};
use ficus_postgres::{ExportedSlot, SourceError, SourceUrl, catalog, slot};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{CAUGHT_UP_PREFIX, MAX_BACKOFF, RunOptions, check_live};
use crate::RunError;
use crate::backfill::{BackfillOptions, BackfillState, DEFAULT_CHUNK_SIZE};
use crate::config::{Config, Loaded};
use crate::gap::GapRecord;
use crate::position::{self, Gap, Position, Source, Start};
use crate::sinks::Sinks;

/// Retries `f` on transient errors with exponential backoff, until it succeeds, fails definitely,
/// shutdown is asked for (then `None`), or it has failed for longer than `give_up`.
pub(crate) async fn retrying<T, F, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    reconnects: &mut u64,
    give_up: Option<Duration>,
    mut f: F,
) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let mut backoff = Duration::from_millis(100);
    let began = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(RunError::Source(e)) if e.is_transient() => {
                if let Some(limit) = give_up
                    && began.elapsed() >= limit
                {
                    return Err(RunError::GaveUp {
                        what: what.to_owned(),
                        after: limit,
                        error: e,
                    });
                }
                warn!(error = %e, retry_in = ?backoff, "{what} failed; retrying");
                *reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A run ready to stream.
pub(crate) struct Prepared {
    pub pool: PgPool,
    pub compiled: Compiled,
    /// The source, as it describes itself.
    pub source: Source,
    /// Where streaming starts.
    pub from: Lsn,
    /// Up to where the record (with its source) already says ficus was.
    pub recorded: Lsn,
    /// The slot was just created with a snapshot, for the backfills waiting.
    pub exported: Option<ExportedSlot>,
    /// With `--until-caught-up`: the position of the caught-up marker.
    pub target: Option<Lsn>,
}

/// Connects, checks, and finds (or creates) the slot; refuses a gap unless asked to resync.
pub(crate) async fn prepare(
    config: &Config,
    url: &SourceUrl,
    files: &Loaded,
    options: &RunOptions,
    sinks: &Sinks,
) -> Result<Prepared, RunError> {
    let slot_name = &config.source.slot;
    let pool = catalog::connect(url).await?;
    catalog::preflight(&pool).await?;
    let compiled = check_live(files, &pool).await?;
    if compiled.mappings().is_empty() {
        return Err(RunError::Config(
            "the mapping files declare no [[event]]: there is nothing to stream\nhint: see docs/mappings.md".into(),
        ));
    }
    let system = ficus_postgres::identify(url, slot_name, &config.source.publication).await?;
    let source = Source::of(&system, &url.database);
    let record = load_record(config, sinks).await?;
    let found = slot::inspect(&pool, slot_name, &url.database).await?;
    let mut start = position::judge(slot_name, record.as_ref(), found.as_ref(), &source, &system);
    let mut recorded = record.as_ref().filter(|r| r.source.is_some()).map_or(Lsn(0), |r| r.lsn);
    match &start {
        Start::Gap(gap) if options.resync => {
            resync(config, &pool, &compiled, gap, found.is_some(), sinks).await?;
            start = Start::Create;
            recorded = Lsn(0);
        }
        Start::Gap(gap) => return Err(RunError::Gap(Box::new(gap.clone()))),
        _ if options.resync => info!(slot = %slot_name, "--resync: there is no gap to repair; streaming as usual"),
        _ => {}
    }
    slot::ensure_publication(&pool, &config.source.publication, &compiled.tables()).await?;
    let (from, exported) = match start {
        Start::Stream { from } => (from, None),
        // A backfill waits and the slot is new: create it with an exported snapshot, which
        // makes the backfill the cheap special case.
        Start::Create if backfills_waiting(config)? => {
            let exported = ExportedSlot::create(url, slot_name, &config.source.publication).await?;
            info!(slot = %slot_name, lsn = %exported.consistent_point, "created slot, with a snapshot for the backfill");
            (exported.consistent_point, Some(exported))
        }
        Start::Create => (slot::create(&pool, slot_name).await?, None),
        Start::Gap(_) => unreachable!("a gap is refused or repaired above"),
    };
    // The marker is transactional: its commit flushes the WAL, so the stream brings it without
    // waiting for the WAL writer.
    let target = if options.until_caught_up {
        let lsn: String =
            sqlx::query_scalar("select pg_logical_emit_message(true, $1, 'ficus run --until-caught-up')::text")
                .bind(CAUGHT_UP_PREFIX)
                .fetch_one(&pool)
                .await
                .map_err(|e| SourceError::from_sqlx("writing the caught-up marker", e))?;
        lsn.parse().ok()
    } else {
        None
    };
    Ok(Prepared {
        pool,
        compiled,
        source,
        from,
        recorded,
        exported,
        target,
    })
}

/// What ficus recorded of its position: the store's checkpoint when there is a store (else the
/// file the config had before it had a store), the position file otherwise.
async fn load_record(config: &Config, sinks: &Sinks) -> Result<Option<Position>, RunError> {
    if let Some(saved) = sinks.checkpoint().await? {
        return Ok(Some(Position::from_checkpoint(&saved)));
    }
    position::load(&position::file(&config.dir, &config.source.slot))
}

fn backfills_waiting(config: &Config) -> Result<bool, RunError> {
    Ok(BackfillState::all(&config.dir)?.iter().any(BackfillState::in_progress))
}

/// Repairs a gap: records it (its `ficus.gap` event is delivered once the new slot exists),
/// queues a backfill of every table with a snapshot mapping, drops the slot if it is there and
/// forgets the record. A resync cut short by a crash goes on with the gap it recorded.
async fn resync(
    config: &Config,
    pool: &PgPool,
    compiled: &Compiled,
    gap: &Gap,
    slot_exists: bool,
    sinks: &Sinks,
) -> Result<(), RunError> {
    let slot_name = &config.source.slot;
    warn!(slot = %slot_name, "{gap}; --resync: repairing it");
    if GapRecord::undelivered(&config.dir, slot_name)?.is_empty() {
        let mut tables: Vec<String> = Vec::new();
        for m in compiled.mappings() {
            let table = m.table.to_string();
            if m.ops.contains(&Op::Snapshot) && !tables.contains(&table) {
                tables.push(table);
            }
        }
        for table in compiled.tables() {
            if !tables.contains(&table.to_string()) {
                warn!(
                    %table,
                    "--resync: no mapping of this table maps snapshot rows, so its current rows will not become \
                     events; add \"snapshot\" to `on` of the mappings that should see them, then run `ficus backfill`"
                );
            }
        }
        let backfill = if tables.is_empty() {
            None
        } else {
            let options = BackfillOptions {
                chunk_size: DEFAULT_CHUNK_SIZE,
                ..BackfillOptions::default()
            };
            let state = BackfillState::new(tables, &options);
            state.save(&config.dir)?;
            Some(state.id)
        };
        GapRecord::new(gap, backfill).save(&config.dir)?;
    }
    if slot_exists {
        slot::drop(pool, slot_name).await?;
    }
    sinks.forget_checkpoint().await?;
    let file = position::file(&config.dir, slot_name);
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::Config(format!("removing {}: {e}", file.display()))),
    }
    Ok(())
}
