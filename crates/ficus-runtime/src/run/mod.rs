//! `ficus run`: the streaming loop, with acknowledgements, reconnects and shutdown. This file
//! only wires: starting is `startup`, the stream `session`, writing and the rule that moves the
//! slot `delivery`, the backfill in a new slot's snapshot `exported`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_mapping::{Compiled, EventContext, Schema};
use ficus_model::{Lsn, Unseen, UnseenColumn};
use ficus_postgres::publication::{self, Publication};
use ficus_postgres::{ReplicationStream, SourceError, SourceUrl, catalog, slot};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backfill::Backfills;
use crate::backoff::Retry;
use crate::config::{Config, Loaded};
use crate::gap::GapRecord;
use crate::health::{Health, Limits, Role};
use crate::position::{Cause, Gap};
use crate::{RunError, load_mappings};

mod delivery;
mod exported;
mod lane;
mod lease;
mod observe;
mod session;
mod startup;

pub use delivery::Recorder;
pub(crate) use delivery::{Delivery, Positions, emit_snapshot_rows};
use observe::Observer;
use session::Session;
pub(crate) use startup::{publication_needs, retrying};

/// Acknowledge at least this often while events flow.
const FLUSH_INTERVAL: Duration = lane::FLUSH_INTERVAL;
/// The prefix of the logical decoding message `--until-caught-up` writes to find the end.
const CAUGHT_UP_PREFIX: &str = "ficus.caught-up";

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop once everything committed before the start is delivered and
    /// acknowledged, and no backfill is left.
    pub until_caught_up: bool,
    /// Repair a gap (a lost slot): a new slot, a backfill of the mapped tables, a `ficus.gap`
    /// event. Without a gap, stream as usual.
    pub resync: bool,
    /// Give up once the source has been unreachable this long (`None`: retry for ever).
    pub give_up_after: Option<Duration>,
    /// `ficus record`: where the changes mapped and their events are recorded.
    pub recording: Option<Recorder>,
    /// What `/readyz` reports: the run keeps it up to date.
    pub health: Arc<Health>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Events written to the sinks.
    pub events: u64,
    /// Row changes of mapped tables read.
    pub changes: u64,
    /// Transactions committed.
    pub transactions: u64,
    /// The last acknowledged position.
    pub acknowledged: Lsn,
    /// Reconnects after transient errors.
    pub reconnects: u64,
    /// What sinks had to say at the end: events they gave up on (dead letters).
    pub warnings: Vec<String>,
}

/// Compiles the mappings against the live schema of the source, as the publication `publication`
/// (when it exists) will send it.
pub async fn check_live(loaded: &Loaded, pool: &PgPool, publication: &str) -> Result<Compiled, RunError> {
    let published = publication::read(pool, publication).await?;
    let schema = live_schema(pool, published.as_ref()).await?;
    Ok(loaded.compile(Some(&schema))?)
}

/// The source's tables as the stream describes them: the catalog's, less the columns the
/// publication's column lists leave out (they are among the columns the stream does not send).
pub(crate) async fn live_schema(pool: &PgPool, publication: Option<&Publication>) -> Result<Schema, RunError> {
    let mut schema = catalog::tables(pool).await?;
    let Some(publication) = publication else {
        return Ok(schema);
    };
    let fix = publication.set_every_column();
    for (table, published) in &publication.tables {
        let (Some(catalog), Some(columns)) = (schema.get_mut(table), &published.columns) else {
            continue;
        };
        let (kept, hidden): (Vec<_>, Vec<_>) = std::mem::take(&mut catalog.relation.columns)
            .into_iter()
            .partition(|c| columns.contains(&c.name));
        catalog.relation.columns = kept;
        catalog.unseen.extend(hidden.into_iter().map(|c| UnseenColumn {
            name: c.name,
            why: Unseen::NotPublished {
                publication: publication.name.clone(),
                fix: fix.clone(),
            },
        }));
    }
    Ok(schema)
}

/// Streams the source into the sinks until shutdown (or, with
/// `until_caught_up`, until everything committed before the start is delivered).
pub async fn run(config: &Config, options: RunOptions, shutdown: watch::Receiver<bool>) -> Result<RunReport, RunError> {
    let files = load_mappings(config)?;
    let url = config.source_url()?;
    let health = options.health.clone();
    health.set_limits(Limits {
        stall_after: Duration::from_secs(config.metrics.stall_after_secs),
        max_retained_wal: config.source.max_retained_wal,
    });
    health.role(Role::Starting);
    let result = leased(config, options, &url, files, shutdown).await;
    health.role(Role::Stopping);
    if let Err(e) = &result {
        crate::telemetry::error("fatal");
        health.update(|s| s.last_error = Some(e.to_string()));
    }
    if health.seen().streamed {
        // Its last word (a standby that never streamed leaves the holder's account alone).
        crate::status::save_run_state(config, &health);
    }
    result
}

/// Streams while this ficus holds the lease: waits as a standby until it gets it, stops streaming
/// when it loses it (and waits again), until shutdown.
async fn leased(
    config: &Config,
    options: RunOptions,
    url: &SourceUrl,
    files: Loaded,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    let health = options.health.clone();
    let slot = &config.source.slot;
    let mut files = Some(files);
    loop {
        let Some(mut lease) = lease::take(url, slot, &health, options.give_up_after, &mut shutdown).await? else {
            return Ok(RunReport::default());
        };
        health.role(Role::Starting);
        let files = match files.take() {
            Some(files) => files,
            None => load_mappings(config)?,
        };
        let (stop, stopped) = watch::channel(*shutdown.borrow());
        let streaming = stream(config, options.clone(), url, files, stopped);
        tokio::pin!(streaming);
        let mut lost = None;
        let result = {
            let watching = lease.lost();
            tokio::pin!(watching);
            loop {
                tokio::select! {
                    result = &mut streaming => break result,
                    e = &mut watching, if lost.is_none() => {
                        warn!(%slot, error = %e, "lost the lease: stopping, so that a standby can take the slot over");
                        crate::telemetry::error("lease");
                        lost = Some(e);
                        let _ = stop.send(true);
                    }
                    _ = shutdown.changed(), if !*stop.borrow() => {
                        let _ = stop.send(true);
                    }
                }
            }
        };
        if lost.is_some() && !*shutdown.borrow() && result.is_ok() {
            drop(lease);
            continue; // a standby again, until it can take the lease back
        }
        lease.release().await;
        return result;
    }
}

async fn stream(
    config: &Config,
    options: RunOptions,
    url: &SourceUrl,
    files: Loaded,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    let mut report = RunReport::default();
    let health = options.health.clone();
    // The sinks first: a sink that cannot take events must not get a slot created for it.
    let mut delivery = Delivery::open(config, shutdown.clone()).await?;
    delivery.health = health.clone();
    let stop = shutdown.clone();
    delivery.recording = options.recording.clone();
    let prepared = retrying(
        &mut Retry::new("connecting to the source", options.give_up_after),
        &mut shutdown,
        &mut report.reconnects,
        || startup::prepare(config, url, &files, &options, &delivery, stop.clone()),
    )
    .await;
    let prepared = match prepared {
        Ok(Some(Some(prepared))) => prepared,
        Ok(Some(None) | None) => {
            delivery.close().await;
            return Ok(report);
        }
        Err(e) => {
            delivery.close().await;
            return Err(gap_recorded(config, e));
        }
    };
    let startup::Prepared {
        pool,
        compiled,
        needs,
        source,
        from,
        recorded,
        exported,
        target,
    } = prepared;
    // Backfills in progress go on, whoever started them (the start may have queued some);
    // `--until-caught-up` finishes them before it stops.
    let mut backfills = Backfills::load(config)?;
    for state in &backfills.queue {
        if options.until_caught_up {
            info!(id = %state.id, "a backfill is in progress: finishing it first");
        } else {
            info!(id = %state.id, "a backfill is in progress: going on with it");
        }
    }
    let mut positions = Positions::new(config, source.clone(), recorded, delivery.has_store());
    delivery.start(from, recorded, positions.encoded(), options.give_up_after);
    report.acknowledged = from;
    let source_name = config.source.name.clone().unwrap_or_else(|| url.database.clone());
    let ctx = EventContext::new(&source_name, &source.identity());
    // Closed however streaming ends: SQLite folds its WAL into the file.
    let result = async {
        // Where ficus is, before anything is streamed: from now on the slot is known to be its own.
        delivery.mark(from).await?;
        positions.record(&mut delivery, from, true).await?;
        deliver_gaps(config, &ctx, from, &mut delivery).await?;
        if let Some(exported) = exported {
            exported::backfill_in_exported_snapshot(
                &pool,
                &compiled,
                &ctx,
                &mut backfills,
                exported,
                &mut delivery,
                &mut report,
            )
            .await?;
        }
        info!(slot = %config.source.slot, publication = %config.source.publication, %from, mappings = compiled.mappings().len(), "streaming");
        health.role(Role::Streaming);

        let mut reached_target = false;
        // One run of failures, whichever step fails: reconnecting, starting replication, streaming.
        let mut retry = Retry::new("streaming from the source", options.give_up_after);
        let silence = silence_limit(config, &pool).await;
        let mut pool = pool;
        // After a silence the connections are not trusted: the query connections are made anew too.
        let mut renew_pool = false;
        loop {
            let acknowledged = report.acknowledged;
            let (renew, current) = (renew_pool, pool.clone());
            let started = retrying(&mut retry, &mut shutdown, &mut report.reconnects, || {
                let current = current.clone();
                async move {
                    let pool = if renew { catalog::connect(url).await? } else { current };
                    let stream = ReplicationStream::start(
                        url,
                        pool.clone(),
                        &config.source.slot,
                        &config.source.publication,
                        acknowledged,
                    )
                    .await?;
                    Ok((pool, stream))
                }
            })
            .await
            .map_err(|e| as_gap(e, config, positions.recorded()))?;
            let Some((fresh, mut stream)) = started else { return Ok(std::mem::take(&mut report)) };
            (pool, renew_pool) = (fresh, false);
            let mut session = Session {
                config,
                pool: &pool,
                compiled: &compiled,
                needs: &needs,
                checked: (Instant::now(), acknowledged),
                ctx: ctx.clone(),
                delivery: &mut delivery,
                positions: &mut positions,
                bound: HashMap::new(),
                report: &mut report,
                wanted: acknowledged,
                in_tx: false,
                target,
                reached_target: &mut reached_target,
                current_xid: 0,
                backfills: &mut backfills,
                observer: Observer::new(health.clone(), acknowledged, config.source.max_retained_wal),
                silence,
                heartbeat: (config.source.heartbeat_secs > 0).then(|| Duration::from_secs(config.source.heartbeat_secs)),
                probed: None,
                last_heartbeat: Instant::now(),
                collecting: ficus_mapping::Transaction::new(config.source.collect_memory),
                recording: HashMap::new(),
                current_tx: None,
            };
            let began = Instant::now();
            let outcome = session.stream(&mut stream, &mut shutdown).await;
            let acked = session.report.acknowledged;
            match outcome {
                Ok(()) => {
                    confirm(&pool, &config.source.slot, acked).await;
                    stream.stop();
                    info!(events = report.events, transactions = report.transactions, acknowledged = %report.acknowledged, "stopped");
                    return Ok(std::mem::take(&mut report));
                }
                Err(RunError::Source(e)) if e.is_transient() => {
                    if began.elapsed() > Duration::from_secs(30) {
                        retry.succeeded(); // a session that ran a while starts the backoff over
                    }
                    let said = e.to_string();
                    let silent = matches!(e, SourceError::Silent(_));
                    let wait = retry.failed(e)?;
                    if silent {
                        warn!(error = %said, retry_in = ?wait, "the source went silent: dropping its connections and making new ones; resuming from the slot");
                        renew_pool = true;
                    } else {
                        warn!(error = %said, retry_in = ?wait, "lost the source; resuming from the slot");
                    }
                    drop(stream);
                    report.reconnects += 1;
                    health.update(|s| s.last_error = Some(said));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return Ok(std::mem::take(&mut report)),
                    }
                }
                Err(e) => {
                    confirm(&pool, &config.source.slot, acked).await;
                    stream.stop();
                    return Err(as_gap(e, config, positions.recorded()));
                }
            }
        }
    }
    .await;
    let warnings = delivery.close().await;
    for w in &warnings {
        warn!("{w}");
    }
    result
        .map(|report| RunReport { warnings, ..report })
        .map_err(|e| gap_recorded(config, e))
}

/// How long the server may say nothing on the replication connection: `replication_timeout_secs`
/// (0: no limit), else twice the server's `wal_sender_timeout` (it ends a walsender that hears
/// nothing that long, and asks for a reply at half of it), two minutes when that is off.
async fn silence_limit(config: &Config, pool: &PgPool) -> Option<Duration> {
    match config.source.replication_timeout_secs {
        Some(0) => return None,
        Some(secs) => return Some(Duration::from_secs(secs)),
        None => {}
    }
    let millis: Option<i64> =
        sqlx::query_scalar("select setting::bigint from pg_settings where name = 'wal_sender_timeout'")
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    Some(match millis {
        Some(ms) if ms > 0 => Duration::from_millis(2 * ms as u64),
        _ => Duration::from_secs(120),
    })
}

/// A gap is recorded where it is found: until `--resync` repairs it, every start refuses, even
/// if what caused it was put right meanwhile (what the slot did not send stays lost).
fn gap_recorded(config: &Config, e: RunError) -> RunError {
    if let RunError::Gap(gap) = &e
        && let Err(save) = GapRecord::found(&config.dir, gap)
    {
        warn!(error = %save, "could not record the gap");
    }
    e
}

/// A lost slot or publication, as the gap it makes: everything after what ficus recorded.
fn as_gap(e: RunError, config: &Config, recorded: Lsn) -> RunError {
    let cause = match &e {
        RunError::Source(SourceError::SlotMissing { .. }) => Cause::SlotMissing,
        RunError::Source(SourceError::SlotInvalidated { .. }) => Cause::SlotInvalidated,
        RunError::Source(SourceError::PublicationMissing { publication, .. }) => Cause::PublicationDropped {
            publication: publication.clone(),
        },
        _ => return e,
    };
    RunError::Gap(Box::new(Gap {
        slot: config.source.slot.clone(),
        cause,
        after: recorded,
        before: None,
    }))
}

/// Delivers the `ficus.gap` events of the gaps a resync repaired, now that the new slot starts
/// at `from`: before any event of the new slot, the backfill's first.
async fn deliver_gaps(config: &Config, ctx: &EventContext, from: Lsn, delivery: &mut Delivery) -> Result<(), RunError> {
    for mut gap in GapRecord::undelivered(&config.dir, &config.source.slot)? {
        gap.resumed_at.get_or_insert(from);
        gap.save(&config.dir)?;
        delivery.write(vec![gap.event(ctx)]).await?;
        delivery.flush().await?;
        gap.delivered = true;
        gap.save(&config.dir)?;
        warn!(slot = %gap.gap.slot, lost_after = %gap.gap.after, resumed_at = %from, backfill = ?gap.backfill, "resync: delivered the ficus.gap event");
    }
    Ok(())
}

/// Waits (briefly) until the server has taken the acknowledgement, so that a
/// clean stop does not deliver the same events again on the next start.
async fn confirm(pool: &PgPool, slot_name: &str, acked: Lsn) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match slot::confirmed_flush(pool, slot_name).await {
            Ok(Some(lsn)) if lsn >= acked => return,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "could not read the slot's position");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warn!(slot = slot_name, lsn = %acked, "the server did not confirm the last acknowledgement in time; the next start may repeat events (with the same ids)");
}

/// Drops the slot and the publication, and forgets where ficus was in them.
pub async fn teardown(config: &Config) -> Result<Vec<String>, RunError> {
    let url = config.source_url()?;
    let pool = catalog::connect(&url).await?;
    let mut done = slot::teardown(&pool, &config.source.slot, &config.source.publication).await?;
    // The store's checkpoint is a position of the dropped slot: a new slot starts elsewhere.
    if let Some(location) = config.store_location()
        && let Ok(store) = ficus_store::Store::open(&location, ficus_store::Mode::Existing).await
    {
        use ficus_store::EventStore;
        if store.checkpoint(&config.source.slot).await?.is_some() {
            store.forget_checkpoint(&config.source.slot).await?;
            done.push(format!(
                "forgot the store's checkpoint for slot {} (its events stay)",
                config.source.slot
            ));
        }
        store.close().await;
    }
    let file = crate::position::file(&config.dir, &config.source.slot);
    if std::fs::remove_file(&file).is_ok() {
        done.push(format!("forgot the position recorded in {}", file.display()));
    }
    Ok(done)
}
