//! Starting a run: connecting and checking, then the slot — created, taken up, or found lost (a
//! gap), and repaired when asked (`--resync`) — and the publication.
//!
//! ```text
//! connect, preflight, mappings ──▶ IDENTIFY_SYSTEM + record + slot ──judge──▶ create | stream | gap
//!                                                                               gap + --resync: record the gap,
//!                                                                               queue a backfill, drop the slot,
//!                                                                               forget the record, create
//! ```

use std::time::Duration;

use ficus_mapping::{Compiled, Schema};
use ficus_model::{Lsn, Op, Unseen};
use ficus_postgres::publication::{self, Needs, Ops};
use ficus_postgres::{ExportedSlot, SourceError, SourceUrl, catalog, slot};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{CAUGHT_UP_PREFIX, Delivery, RunOptions, live_schema};
use crate::RunError;
use crate::backfill::{BackfillOptions, BackfillState};
use crate::backoff::Retry;
use crate::config::{Config, Loaded};
use crate::gap::GapRecord;
use crate::position::{self, Gap, Position, Source, Start};

/// Retries `f` on transient errors with exponential backoff, until it succeeds, fails definitely,
/// shutdown is asked for (then `None`), or `retry` gives up.
pub(crate) async fn retrying<T, F, Fut>(
    retry: &mut Retry,
    shutdown: &mut watch::Receiver<bool>,
    reconnects: &mut u64,
    mut f: F,
) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(RunError::Source(e)) if e.is_transient() => {
                let said = e.to_string();
                let wait = retry.failed(e)?;
                warn!(error = %said, retry_in = ?wait, "{} failed; retrying", retry.what());
                *reconnects += 1;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(None),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A run ready to stream.
pub(crate) struct Prepared {
    pub pool: PgPool,
    pub compiled: Compiled,
    /// What the publication must go on sending.
    pub needs: Needs,
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
    delivery: &Delivery,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Prepared>, RunError> {
    let slot_name = &config.source.slot;
    let pool = catalog::connect(url).await?;
    catalog::preflight(&pool).await?;
    let published = publication::read(&pool, &config.source.publication).await?;
    let schema = live_schema(&pool, published.as_ref()).await?;
    let compiled = files.compile(Some(&schema))?;
    for warning in compiled.warnings() {
        warn!("{warning}");
    }
    if compiled.mappings().is_empty() && compiled.messages().is_empty() && compiled.outboxes().is_empty() {
        return Err(RunError::Config(
            "the mapping files declare no [[event]], [[message]] or [[outbox]]: there is nothing to stream\nhint: see docs/mappings.md".into(),
        ));
    }
    let needs = publication_needs(&compiled, &schema, config.archives());
    let system = ficus_postgres::identify(url, slot_name, &config.source.publication).await?;
    let source = Source::of(&system, &url.database);
    let record = load_record(config, delivery).await?;
    let found = slot::inspect(&pool, slot_name, &url.database).await?;
    // A gap found before and not repaired stands, whatever was fixed since.
    let mut start = match GapRecord::unrepaired(&config.dir, slot_name)?.into_iter().next() {
        Some(open) => Start::Gap(open.gap),
        None => position::judge(slot_name, record.as_ref(), found.as_ref(), &source, &system),
    };
    let problems = published
        .as_ref()
        .map(|p| p.problems(&needs, false))
        .unwrap_or_default();
    if !problems.is_empty() {
        // Streamed before: the changes it did not send since are lost, fixed or not.
        let streamed = record.is_some() || found.is_some();
        if streamed && !matches!(start, Start::Gap(_)) {
            let after = record
                .as_ref()
                .map(|r| r.lsn)
                .or(found.as_ref().map(|s| s.confirmed_flush));
            start = Start::Gap(Gap::publication_changed(
                slot_name,
                &config.source.publication,
                &problems,
                after.unwrap_or_default(),
            ));
        }
        if !streamed || options.resync {
            let what: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
            let fix: Vec<&str> = problems.iter().map(|p| p.fix.as_str()).collect();
            return Err(SourceError::definite(
                what.join("\n"),
                format!(
                    "run: {}{}",
                    fix.join(" "),
                    if options.resync { ", then --resync again" } else { "" }
                ),
            )
            .into());
        }
    }
    // Never streamed from: every mapped table is new to ficus, whoever published it.
    let first_start = start == Start::Create && record.is_none();
    let mut recorded = record.as_ref().filter(|r| r.source.is_some()).map_or(Lsn(0), |r| r.lsn);

    match &start {
        Start::Gap(gap) => {
            let record = GapRecord::found(&config.dir, gap)?;
            if !options.resync {
                return Err(RunError::Gap(Box::new(gap.clone())));
            }
            resync(config, &pool, &compiled, record, found.is_some(), delivery).await?;
            start = Start::Create;
            recorded = Lsn(0);
        }
        _ if options.resync => info!(slot = %slot_name, "--resync: there is no gap to repair; streaming as usual"),
        _ => {}
    }
    // A table entering the publication (every one, at the first start): its rows from before
    // become snapshot events. Recorded
    // before the publication changes, so a crash in between does not forget it.
    let publishes = |t: &ficus_model::TableRef| published.as_ref().is_some_and(|p| p.tables.contains_key(t));
    let entering: Vec<_> = compiled
        .tables()
        .into_iter()
        .filter(|t| first_start || !publishes(t))
        .collect();
    backfill_entering(config, &pool, &compiled, &entering).await?;
    publication::ensure(
        &pool,
        &config.source.publication,
        &compiled.tables(),
        published.as_ref(),
    )
    .await?;
    let (from, exported) = match start {
        Start::Stream { from } => (from, None),
        // A backfill waits and the slot is new: create it with an exported snapshot, which
        // makes the backfill the cheap special case.
        Start::Create if backfills_waiting(config)? => {
            let create = ExportedSlot::create(url, slot_name, &config.source.publication);
            let Some(exported) = creating(&pool, slot_name, &mut shutdown, create).await? else {
                return Ok(None);
            };
            info!(slot = %slot_name, lsn = %exported.consistent_point, "created slot, with a snapshot for the backfill");
            (exported.consistent_point, Some(exported))
        }
        Start::Create => match creating(&pool, slot_name, &mut shutdown, slot::create(&pool, slot_name)).await? {
            Some(lsn) => (lsn, None),
            None => return Ok(None),
        },
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
    Ok(Some(Prepared {
        pool,
        compiled,
        needs,
        source,
        from,
        recorded,
        exported,
        target,
    }))
}

/// How often the creation of a slot says what it waits for.
const BLOCKED_REPORT: Duration = Duration::from_secs(5);

/// Creates the slot with `create`: a logical slot starts where no transaction is in flight, so
/// the server waits for every transaction open before it — a session of the monolith left idle in
/// a transaction holds it for as long as it stays so. Every few seconds of waiting, says which
/// (pid, age, state, query). SIGINT/SIGTERM cancel the creation on the server (`None`).
async fn creating<T>(
    pool: &PgPool,
    slot: &str,
    shutdown: &mut watch::Receiver<bool>,
    create: impl std::future::Future<Output = Result<T, SourceError>>,
) -> Result<Option<T>, RunError> {
    tokio::pin!(create);
    let mut report = tokio::time::interval_at(tokio::time::Instant::now() + BLOCKED_REPORT / 2, BLOCKED_REPORT);
    loop {
        tokio::select! {
            created = &mut create => return Ok(Some(created?)),
            _ = report.tick() => match slot::blockers(pool, slot).await {
                Ok(blockers) if !blockers.is_empty() => {
                    let named: Vec<String> = blockers
                        .iter()
                        .map(|b| {
                            format!(
                                "pid {} ({} for {}s, user {}, application {:?}): {}",
                                b.pid,
                                b.state.as_deref().unwrap_or("?"),
                                b.age_secs,
                                b.user.as_deref().unwrap_or("?"),
                                b.application.as_deref().unwrap_or(""),
                                b.query.as_deref().unwrap_or("").replace('\n', " ")
                            )
                        })
                        .collect();
                    warn!(
                        %slot,
                        "creating the slot waits for {} transaction(s) open before it (a logical slot starts where none is in flight): {}; hint: they must commit or roll back — an idle one can be ended with select pg_terminate_backend(pid)",
                        blockers.len(),
                        named.join("; ")
                    );
                }
                Ok(_) => info!(%slot, "creating the slot: still waiting for the server"),
                Err(e) => warn!(%slot, error = %e, "creating the slot: could not read what it waits for"),
            },
            _ = shutdown.changed() => {
                match slot::cancel_creation(pool, slot).await {
                    Ok(_) => warn!(%slot, "stopped while creating the slot: its creation was cancelled, nothing was created"),
                    Err(e) => warn!(%slot, error = %e, "stopped while creating the slot, and could not cancel its creation on the server: check pg_replication_slots"),
                }
                return Ok(None);
            }
        }
    }
}

/// What ficus recorded of its position: the store's checkpoint when there is a store (else the
/// file the config had before it had a store), the position file otherwise.
async fn load_record(config: &Config, delivery: &Delivery) -> Result<Option<Position>, RunError> {
    if let Some(saved) = delivery.checkpoint(&config.source.slot).await? {
        return Ok(Some(Position::from_checkpoint(&saved)));
    }
    position::load(&position::file(&config.dir, &config.source.slot))
}

fn backfills_waiting(config: &Config) -> Result<bool, RunError> {
    Ok(BackfillState::all(&config.dir)?.iter().any(BackfillState::in_progress))
}

/// Repairs a recorded gap: queues a backfill of every table with a snapshot mapping, marks the
/// gap repaired (its `ficus.gap` event is delivered once the new slot exists), drops the slot if
/// it is there and forgets the old position.
async fn resync(
    config: &Config,
    pool: &PgPool,
    compiled: &Compiled,
    mut gap: GapRecord,
    slot_exists: bool,
    delivery: &Delivery,
) -> Result<(), RunError> {
    let slot_name = &config.source.slot;
    warn!(slot = %slot_name, "{}; --resync: repairing it", gap.message);
    // A resync cut short by a crash is repaired already: it goes on with its backfill.
    if gap.repaired_at.is_none() {
        let tables: Vec<String> = compiled.snapshot_tables().iter().map(|t| t.to_string()).collect();
        for table in compiled.tables() {
            if !compiled.maps_snapshots(&table) {
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
            let state = BackfillState::new(tables, &BackfillOptions::default());
            state.save(&config.dir)?;
            Some(state.id)
        };
        gap.repaired(backfill, &config.dir)?;
    }
    if slot_exists {
        slot::drop(pool, slot_name).await?;
    }
    delivery.forget_checkpoint(&config.source.slot).await?;
    let file = position::file(&config.dir, slot_name);
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::Config(format!("removing {}: {e}", file.display()))),
    }
    Ok(())
}

/// What the publication must send for the mappings (and the archive, which keeps every change of
/// every column): their operations, and per table the columns they read and its key.
pub(crate) fn publication_needs(compiled: &Compiled, schema: &Schema, archives: bool) -> Needs {
    let mut needs = Needs::default();
    for m in compiled.readers() {
        for op in &m.ops {
            match op {
                Op::Insert => needs.ops.insert = true,
                Op::Update => needs.ops.update = true,
                Op::Delete => needs.ops.delete = true,
                Op::Truncate => needs.ops.truncate = true,
                Op::Snapshot => {}
            }
        }
        need_table(&mut needs, schema, &m.table, archives, |column| m.reads(column));
    }
    // Outbox tables: their inserts, and the columns an outbox row's event is made of.
    for o in compiled.outboxes() {
        needs.ops.insert = true;
        need_table(&mut needs, schema, &o.table, archives, |column| {
            o.columns().any(|read| read == column)
        });
    }
    if archives {
        needs.ops = Ops::ALL;
    }
    needs
}

/// What the publication must send of one table: its key columns and those `reads` (every column
/// when the store archives), the columns a column list hides included, so that hiding one is seen.
fn need_table(
    needs: &mut Needs,
    schema: &Schema,
    table: &ficus_model::TableRef,
    archives: bool,
    reads: impl Fn(&str) -> bool,
) {
    let needed = needs.tables.entry(table.clone()).or_default();
    let Some(table) = schema.get(table) else { return };
    needed.partitioned = table.partitioned;
    let streamed = table.relation.columns.iter().map(|c| (c.name.as_str(), c.identity));
    let hidden = table
        .unseen
        .iter()
        .filter(|u| matches!(u.why, Unseen::NotPublished { .. }))
        .map(|u| (u.name.as_str(), false));
    for (column, identity) in streamed.chain(hidden) {
        if archives || identity || reads(column) {
            needed.columns.insert(column.to_owned());
        }
    }
}

/// Queues a backfill of the mapped tables that are entering the publication — the first start,
/// or a mapping of a table added — unless one in progress reads them already; warns of those
/// whose rows from before will not become events: no mapping maps snapshot rows of them, they have
/// no key to read them by (a full scan is the user's choice), or `backfill_new_tables = false`.
async fn backfill_entering(
    config: &Config,
    pool: &PgPool,
    compiled: &Compiled,
    entering: &[ficus_model::TableRef],
) -> Result<(), RunError> {
    if entering.is_empty() {
        return Ok(());
    }
    let in_progress = BackfillState::all(&config.dir)?;
    let mut tables = Vec::new();
    for table in entering {
        let name = table.to_string();
        // An empty table has no rows from before to warn about (one that cannot be read: warn).
        // It is still backfilled: a transaction that wrote it before it entered the publication
        // may commit later, and the backfill waits for it.
        let empty: bool = sqlx::query_scalar(&format!("select not exists (select from {})", table.quoted()))
            .fetch_one(pool)
            .await
            .unwrap_or(false);
        let snapshot = compiled.maps_snapshots(table);
        if empty && !(snapshot && config.source.backfill_new_tables) {
            // Nothing from before to lose.
        } else if !config.source.backfill_new_tables {
            warn!(%table, "the table enters the publication, and backfill_new_tables = false: its rows from before now do not become events; `ficus backfill --table {name}` turns them into snapshot events");
        } else if !snapshot {
            warn!(%table, "the table enters the publication, and no mapping of it maps snapshot rows: its rows from before now do not become events; add \"snapshot\" to `on` of the mappings that should see them, then run `ficus backfill --table {name}`");
        } else if in_progress.iter().any(|b| b.covers(&name)) {
            // A backfill asked for reads it already.
        } else if ficus_postgres::backfill::keyset(pool, table, false).await.is_err() {
            warn!(%table, "the table enters the publication, and it has no primary key or unique NOT NULL index to read it by: its rows from before now do not become events; `ficus backfill --table {name} --allow-full-scan` reads it by physical position (docs/backfill.md)");
        } else {
            tables.push(name);
        }
    }
    if tables.is_empty() {
        return Ok(());
    }
    let mut state = BackfillState::new(tables, &BackfillOptions::default());
    state.after_publication_change = true;
    state.save(&config.dir)?;
    info!(id = %state.id, tables = ?state.tables.iter().map(|t| &t.table).collect::<Vec<_>>(), "backfill: the tables enter the publication, their rows from before become snapshot events");
    Ok(())
}
