//! `ficus run`: the streaming loop, with acknowledgements, reconnects and shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ficus_mapping::{Bound, Compiled, EventContext};
use ficus_model::Lsn;
use ficus_postgres::backfill::read_chunk;
use ficus_postgres::{ExportedSlot, ReplicationStream, SourceError, SourceEvent, SourceUrl, catalog, slot};
use sqlx::{Connection, PgPool};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backfill::{
    self, BackfillSession, BackfillState, Backfills, ChunkRead, Verdict, key_text, row_hash, snapshot_change,
};
use crate::config::{Config, Loaded};
use crate::sinks::{Sinks, record};
use crate::watermark::VersionVerdict;
use crate::{RunError, load_mappings};

/// Flush sinks and acknowledge at least this often while events flow.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// ...or after this many unflushed events.
const FLUSH_EVENTS: usize = 20_000;
/// The prefix of the logical decoding message `--until-caught-up` writes to find the end.
const CAUGHT_UP_PREFIX: &str = "ficus.caught-up";
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop once everything committed before the start is delivered and
    /// acknowledged, and no backfill is left.
    pub until_caught_up: bool,
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
}

/// Compiles the mappings against the live schema of the source.
pub async fn check_live(loaded: &Loaded, pool: &PgPool) -> Result<Compiled, RunError> {
    let schema = catalog::tables(pool).await?;
    loaded.compile(Some(&schema))
}

/// Retries `f` on transient errors with exponential backoff, until it succeeds,
/// fails definitely, or shutdown is asked for (then `None`).
async fn retrying<T, F, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    reconnects: &mut u64,
    mut f: F,
) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(RunError::Source(e)) if e.is_transient() => {
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

/// Streams the source into the sinks until shutdown (or, with
/// `until_caught_up`, until everything committed before the start is delivered).
pub async fn run(
    config: &Config,
    options: RunOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunReport, RunError> {
    // Backfills in progress go on, whoever started them; `--until-caught-up`
    // finishes them before it stops.
    let mut backfills = Backfills::load(&config.dir)?;
    for state in &backfills.queue {
        if options.until_caught_up {
            info!(id = %state.id, "a backfill is in progress: finishing it first");
        } else {
            info!(id = %state.id, "a backfill is in progress: going on with it");
        }
    }
    let files = load_mappings(config)?;
    let url = SourceUrl::parse(&config.url()?)?;
    let mut report = RunReport::default();
    // The sinks first: a sink that cannot take events must not get a slot created for it.
    let mut sinks = Sinks::open(config).await?;
    let prepared = retrying(
        "connecting to the source",
        &mut shutdown,
        &mut report.reconnects,
        || async {
            let pool = catalog::connect(&url).await?;
            catalog::preflight(&pool).await?;
            let compiled = check_live(&files, &pool).await?;
            if compiled.mappings().is_empty() {
                return Err(RunError::Config(
                    "the mapping files declare no [[event]]: there is nothing to stream\nhint: see docs/mappings.md"
                        .into(),
                ));
            }
            slot::ensure_publication(&pool, &config.source.publication, &compiled.tables()).await?;
            // A backfill waits and the slot is new: create it with an exported
            // snapshot, which makes the backfill the cheap special case.
            let (slot_state, exported) =
                if !backfills.queue.is_empty() && !slot::exists(&pool, &config.source.slot).await? {
                    let exported = ExportedSlot::create(&url, &config.source.slot, &config.source.publication).await?;
                    info!(slot = %config.source.slot, lsn = %exported.consistent_point, "created slot, with a snapshot for the backfill");
                    let state = slot::SlotState {
                        created: true,
                        confirmed_flush: exported.consistent_point,
                    };
                    (state, Some(exported))
                } else {
                    (slot::ensure_slot(&pool, &config.source.slot, &url.database).await?, None)
                };
            // The marker is transactional: its commit flushes the WAL, so the
            // stream brings it without waiting for the WAL writer.
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
            Ok((pool, compiled, slot_state, target, exported))
        },
    )
    .await?;
    let Some((pool, compiled, slot_state, target, exported)) = prepared else {
        return Ok(report);
    };
    report.acknowledged = slot_state.confirmed_flush;
    // The store holds every event up to its checkpoint (and every other sink too): stream from
    // there. Not for a new slot, which cannot go back, nor after the store's LSNs of another one.
    if let Some(checkpoint) = sinks.checkpoint().await?
        && checkpoint > slot_state.confirmed_flush
        && !slot_state.created
    {
        info!(slot = %config.source.slot, confirmed = %slot_state.confirmed_flush, %checkpoint, "the store holds the events up to its checkpoint: streaming from there");
        report.acknowledged = checkpoint;
    }
    let source_name = config.source.name.clone().unwrap_or_else(|| url.database.clone());
    // Closed however streaming ends: SQLite folds its WAL into the file.
    let result = async {
        if let Some(exported) = exported {
            let ctx = EventContext::new(&source_name, &format!("{}/{}", exported.system_id, url.database));
            backfill_in_exported_snapshot(
                &pool,
                &compiled,
                &ctx,
                &mut backfills,
                exported,
                &mut sinks,
                &mut report,
            )
            .await?;
        }
        info!(slot = %config.source.slot, publication = %config.source.publication, from = %slot_state.confirmed_flush, mappings = compiled.mappings().len(), "streaming");

        let mut reached_target = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            let acknowledged = report.acknowledged;
            let started = retrying(
                "starting replication",
                &mut shutdown,
                &mut report.reconnects,
                || async {
                    Ok(ReplicationStream::start(
                        &url,
                        pool.clone(),
                        &config.source.slot,
                        &config.source.publication,
                        acknowledged,
                    )
                    .await?)
                },
            )
            .await?;
            let Some(mut stream) = started else { return Ok(std::mem::take(&mut report)) };
            let ctx = EventContext::new(&source_name, &format!("{}/{}", stream.system_id, url.database));
            let mut session = Session {
                pool: &pool,
                compiled: &compiled,
                ctx,
                sinks: &mut sinks,
                bound: HashMap::new(),
                report: &mut report,
                pending: None,
                unflushed: 0,
                in_tx: false,
                last_flush: Instant::now(),
                target,
                reached_target: &mut reached_target,
                current_xid: 0,
                backfills: &mut backfills,
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
                        backoff = Duration::from_millis(100); // a session that ran a while starts the backoff over
                    }
                    warn!(error = %e, retry_in = ?backoff, "lost the source; resuming from the slot");
                    drop(stream);
                    report.reconnects += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return Ok(std::mem::take(&mut report)),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    confirm(&pool, &config.source.slot, acked).await;
                    stream.stop();
                    return Err(e);
                }
            }
        }
    }
    .await;
    sinks.close().await;
    result
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

struct Session<'a> {
    pool: &'a PgPool,
    compiled: &'a Compiled,
    ctx: EventContext,
    sinks: &'a mut Sinks,
    /// Bound mappings per relation OID; `None` for relations no mapping reads.
    bound: HashMap<u32, Option<Bound>>,
    report: &'a mut RunReport,
    /// A commit whose events are written but not yet flushed.
    pending: Option<Lsn>,
    unflushed: usize,
    in_tx: bool,
    last_flush: Instant,
    target: Option<Lsn>,
    /// Whether the stream passed the target (kept across reconnects).
    reached_target: &'a mut bool,
    current_xid: u32,
    backfills: &'a mut Backfills,
}

/// What woke the session up.
enum Step {
    Event(Option<SourceEvent>),
    Flush,
    Shutdown,
    Chunk(Option<ChunkRead>),
}

impl Session<'_> {
    /// Streams until shutdown, caught up, or an error. On a definite error, the
    /// commits completed before the failing change are still flushed and
    /// acknowledged: a restart repeats as little as possible, and nothing after.
    async fn stream(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        let result = self.stream_events(stream, shutdown).await;
        if let Err(e) = &result
            && !matches!(e, RunError::Source(s) if s.is_transient())
            && let Err(flush) = self.flush_and_ack(stream).await
        {
            warn!(error = %flush, "could not flush the sinks after the error");
        }
        result
    }

    async fn stream_events(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        let mut line = Vec::with_capacity(1024);
        self.next_backfill().await?;
        loop {
            if *shutdown.borrow() {
                self.flush_and_ack(stream).await?;
                return Ok(());
            }
            let flush_due = self.pending.is_some();
            let step = {
                let chunks = self.backfills.running().filter(|b| b.pending.is_none());
                tokio::select! {
                    ev = stream.next() => Step::Event(ev?),
                    _ = tokio::time::sleep(FLUSH_INTERVAL), if flush_due => Step::Flush,
                    _ = shutdown.changed() => Step::Shutdown,
                    read = async {
                        match chunks {
                            Some(b) => b.chunks.recv().await,
                            None => std::future::pending().await,
                        }
                    } => Step::Chunk(read),
                }
            };
            let ev = match step {
                Step::Event(ev) => ev,
                Step::Flush => {
                    self.flush_and_ack(stream).await?;
                    continue;
                }
                Step::Shutdown => continue,
                Step::Chunk(Some(read)) => {
                    if let Some(b) = self.backfills.running() {
                        b.pending = Some(read);
                    }
                    continue;
                }
                Step::Chunk(None) => {
                    self.coordinator_stopped().await?;
                    continue;
                }
            };
            let Some(ev) = ev else {
                return Err(SourceError::Transient("the server ended the replication stream".into()).into());
            };
            match ev {
                SourceEvent::Relation(relation) => {
                    // Partitions are described too (before their root), though their
                    // changes come under the root's OID: an unmapped relation is only
                    // a problem when a change of it arrives.
                    debug!(table = %relation.table, "relation");
                    let bound = self.compiled.bind(relation.clone(), &self.ctx)?;
                    self.bound.insert(relation.oid, bound);
                }
                SourceEvent::Begin(tx) => {
                    self.in_tx = true;
                    self.current_xid = tx.xid;
                }
                SourceEvent::Change(change) => {
                    let Some(Some(bound)) = self.bound.get(&change.relation.oid) else {
                        // The publication holds only mapped tables: a change of a table no
                        // mapping names means one was renamed (or added by hand). Skipping it
                        // would lose its events.
                        return Err(SourceError::definite(
                            format!(
                                "{} is in the publication, but no mapping reads it: was a mapped table renamed?",
                                change.relation.table
                            ),
                            "point the mappings at the table's new name (ficus check), then start ficus again: the slot stays where it is",
                        )
                        .into());
                    };
                    self.report.changes += 1;
                    if let Some(b) = self.backfills.running() {
                        b.track(&change);
                    }
                    let events = bound.apply(&change, &self.ctx)?;
                    // Archived changes count as unflushed: a transaction that gave no event must
                    // still be in the store before the slot moves past it.
                    self.unflushed += self.sinks.archive(&change, &self.ctx);
                    let written = write_events(self.sinks, &mut line, events)?;
                    self.unflushed += written;
                    self.report.events += written as u64;
                }
                SourceEvent::Commit { end_lsn, .. } => {
                    self.in_tx = false;
                    if let Some(b) = self.backfills.running() {
                        b.committed(self.current_xid);
                    }
                    // Between transactions: where a backfill may start tracking.
                    self.next_backfill().await?;
                    self.report.transactions += 1;
                    self.pending = Some(end_lsn);
                    if self.unflushed == 0
                        || self.unflushed >= FLUSH_EVENTS
                        || self.last_flush.elapsed() >= FLUSH_INTERVAL
                    {
                        self.flush_and_ack(stream).await?;
                    }
                    if self.finished_at(end_lsn) {
                        self.flush_and_ack(stream).await?;
                        return Ok(());
                    }
                }
                SourceEvent::KeepAlive { wal_end } => {
                    if !self.in_tx {
                        self.next_backfill().await?;
                        self.flush_and_ack(stream).await?;
                        self.ack(stream, wal_end);
                        if self.finished_at(wal_end) {
                            return Ok(());
                        }
                    }
                }
                SourceEvent::Message { prefix, content, lsn } => {
                    if prefix == backfill::REQUEST_PREFIX {
                        match serde_json::from_slice::<BackfillState>(&content) {
                            Ok(state) => self.backfills.request(state)?,
                            Err(e) => warn!(error = %e, %lsn, "ignoring a backfill request that does not parse"),
                        }
                    }
                    if prefix == backfill::MESSAGE_PREFIX {
                        self.high_watermark(stream, &String::from_utf8_lossy(&content), lsn)
                            .await?;
                    }
                    if (prefix == CAUGHT_UP_PREFIX || prefix == backfill::MESSAGE_PREFIX)
                        && !self.in_tx
                        && self.finished_at(lsn)
                    {
                        self.flush_and_ack(stream).await?;
                        self.ack(stream, lsn);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Whether to stop at `lsn`: the target is reached (now or before) and no
    /// backfill is left.
    fn finished_at(&mut self, lsn: Lsn) -> bool {
        if self.target.is_some_and(|t| lsn >= t) {
            *self.reached_target = true;
        }
        *self.reached_target && self.backfills.idle()
    }

    /// Starts the next backfill when none runs. Call it between transactions
    /// only: a backfill must track whole transactions.
    async fn next_backfill(&mut self) -> Result<(), RunError> {
        if self.backfills.running().is_some() {
            return Ok(());
        }
        self.backfills.current = None;
        while let Some(state) = self.backfills.queue.pop_front() {
            let config_dir = self.backfills.config_dir.clone();
            match BackfillSession::start(self.pool, self.compiled, &self.ctx, &config_dir, state.clone()).await {
                Ok(session) => {
                    self.backfills.current = Some(session);
                    break;
                }
                Err(RunError::Source(e)) if e.is_transient() => {
                    self.backfills.queue.push_front(state);
                    return Err(e.into());
                }
                Err(e) => self.backfills.fail(state, &e),
            }
        }
        Ok(())
    }

    /// At a backfill's high watermark: emit the chunk read before it, except
    /// the rows the stream changed since, then flush, acknowledge, checkpoint.
    async fn high_watermark(&mut self, stream: &ReplicationStream, marker: &str, at: Lsn) -> Result<(), RunError> {
        let Some(b) = self.backfills.running() else {
            return Ok(());
        };
        if !marker.starts_with(&b.marker_prefix) || b.delivered.contains(marker) {
            // A marker of an earlier run, or one the stream repeats after a reconnect.
            return Ok(());
        }
        b.delivered.insert(marker.to_owned());
        let read = match b.pending.take() {
            Some(read) => read,
            None => match b.chunks.recv().await {
                Some(read) => read,
                None => return self.coordinator_stopped().await,
            },
        };
        if read.marker != marker {
            return Err(SourceError::definite(
                format!("backfill marker {marker} arrived, {} was expected", read.marker),
                "report this as a bug",
            )
            .into());
        }
        let Some(b) = self.backfills.current.as_mut() else {
            return Ok(());
        };
        let plan = &b.plans[read.table];
        let tracker = &mut b.trackers[read.table];
        let unseen = tracker.unseen(&read.snapshot, &read.committed_xip);
        if !unseen.is_empty() {
            debug!(
                ?unseen,
                "backfill: transactions committed before tracking started; reading the chunk again"
            );
            let _ = b.verdicts.send(Verdict::Again).await;
            return Ok(());
        }
        // A full scan's rows are known by their place and content: each row's verdict.
        let verdicts: Vec<VersionVerdict> = if plan.keyset.is_full_scan() {
            let removed = tracker.removed_unseen(&read.snapshot);
            read.versions
                .iter()
                .zip(&read.rows)
                .map(|(v, row)| tracker.version(&read.snapshot, &removed, v.xmin, v.xmax, row_hash(row)))
                .collect()
        } else {
            vec![]
        };
        if verdicts.contains(&VersionVerdict::ReadAgain) {
            debug!("backfill: the stream deleted or updated rows the chunk still has; reading it again");
            let _ = b.verdicts.send(Verdict::Again).await;
            return Ok(());
        }
        let read_rows = read.rows.len() as u64;
        let truncated = !tracker.keeps(&read.snapshot, backfill::TRUNCATED);
        let full_scan = plan.keyset.is_full_scan();
        let mut versions = read.versions.into_iter().zip(verdicts);
        let keep = read.rows.into_iter().filter_map(|row| {
            let key = if full_scan {
                // Left out: rows the stream carried.
                match versions.next() {
                    Some((v, VersionVerdict::Emit)) => v.ctid,
                    _ => return None,
                }
            } else {
                match key_text(&row, &plan.key_positions) {
                    Some(key) if tracker.keeps(&read.snapshot, &key) => key,
                    _ => return None,
                }
            };
            (!truncated).then_some((row, key))
        });
        let keep: Vec<_> = keep.collect();
        let mut out = Output {
            sinks: self.sinks,
            unflushed: &mut self.unflushed,
            events: &mut self.report.events,
        };
        let emitted = match emit_snapshot_rows(&mut out, self.compiled, &plan.relation, &b.id, &self.ctx, keep, at)? {
            Ok(n) => n,
            Err(e) => {
                // A row the mappings cannot map stops the backfill, not the stream: the
                // chunk is not checkpointed, so running the backfill again repeats it.
                if let Some(b) = self.backfills.current.take() {
                    self.backfills.fail(b.state, &e);
                }
                return Ok(());
            }
        };
        tracker.prune(&read.snapshot);
        // Durable before the checkpoint: a crash in between reads the chunk again.
        flush_sinks(self.sinks, &mut self.unflushed, self.pending).await?;
        let table = &mut b.state.tables[read.table];
        table.chunk_delivered(read_rows, emitted, read.exhausted, read.last_key);
        b.progress.update(read.table, table);
        b.state.save(&b.config_dir)?;
        b.finished = b.state.finished();
        if b.finished {
            info!(id = %b.id, "backfill: done");
        }
        let _ = b.verdicts.send(Verdict::Next).await;
        self.flush_and_ack(stream).await?;
        self.ack(stream, at);
        Ok(())
    }

    /// The running backfill's coordinator stopped early: a transient error
    /// puts the backfill back in the queue and reconnects; any other stops the
    /// backfill (recorded in its file), not the stream.
    async fn coordinator_stopped(&mut self) -> Result<(), RunError> {
        let Some(mut b) = self.backfills.current.take() else {
            return Ok(());
        };
        let error: RunError = match b.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) if e.is_transient() => {
                    self.backfills.queue.push_front(b.state);
                    return Err(e.into());
                }
                Ok(Err(e)) => e.into(),
                Ok(Ok(())) => {
                    SourceError::definite("the backfill ended before its last chunk", "report this as a bug").into()
                }
                Err(e) => SourceError::definite(format!("the backfill failed: {e}"), "report this as a bug").into(),
            },
            None => SourceError::definite("the backfill stopped", "report this as a bug").into(),
        };
        self.backfills.fail(b.state, &error);
        Ok(())
    }

    /// Makes every written event durable, then acknowledges the last commit.
    async fn flush_and_ack(&mut self, stream: &ReplicationStream) -> Result<(), RunError> {
        flush_sinks(self.sinks, &mut self.unflushed, self.pending).await?;
        self.last_flush = Instant::now();
        if let Some(lsn) = self.pending.take() {
            self.ack(stream, lsn);
        }
        Ok(())
    }

    fn ack(&mut self, stream: &ReplicationStream, lsn: Lsn) {
        if lsn > self.report.acknowledged {
            stream.acknowledge(lsn);
            self.report.acknowledged = lsn;
            debug!(lsn = %lsn, "acknowledged");
        }
    }
}

/// The cheap special case of a backfill: the slot was just created, with the
/// snapshot it exported — the source exactly as of the slot's start. The
/// backfills waiting read their tables in that one snapshot, whole, before the
/// stream starts: every row is emitted, and every later change follows from the
/// slot. No watermark, no row dropped, no chunk read again (one long read-only
/// transaction is the price). A crash in the middle leaves the rest to the
/// watermark algorithm, from the last checkpoint.
async fn backfill_in_exported_snapshot(
    pool: &PgPool,
    compiled: &Compiled,
    ctx: &EventContext,
    backfills: &mut Backfills,
    exported: ExportedSlot,
    sinks: &mut Sinks,
    report: &mut RunReport,
) -> Result<(), RunError> {
    let sql_err = |what: &str| {
        let what = format!("backfill in the slot's snapshot: {what}");
        move |e| SourceError::from_sqlx(&what, e)
    };
    let mut conn = pool.acquire().await.map_err(sql_err("connecting"))?;
    let mut tx = conn.begin().await.map_err(sql_err("begin"))?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await
        .map_err(sql_err("set isolation"))?;
    sqlx::query(&format!(
        "set transaction snapshot '{}'",
        exported.snapshot.replace('\'', "''")
    ))
    .execute(&mut *tx)
    .await
    .map_err(sql_err("importing the snapshot"))?;
    let at = exported.consistent_point;
    drop(exported); // imported: the transaction holds the snapshot now
    let mut unflushed = 0;
    let mut queue = std::mem::take(&mut backfills.queue);
    'backfills: while let Some(mut state) = queue.pop_front() {
        let plans = match backfill::plan(pool, compiled, ctx, &state).await {
            Ok(plans) => plans,
            Err(RunError::Source(e)) if e.is_transient() => {
                warn!(id = %state.id, error = %e, "backfill: lost the source; going on with watermarks");
                queue.push_front(state);
                backfills.queue = queue;
                return Ok(());
            }
            Err(e) => {
                backfills.fail(state, &e);
                continue;
            }
        };
        for (t, p) in state.tables.iter_mut().zip(&plans) {
            t.rows_estimated = t.rows_estimated.or(p.rows_estimated);
        }
        info!(id = %state.id, "backfill: reading in the snapshot the slot exported (no watermarks needed)");
        let progress = backfill::Progress::new(&state);
        let id: std::sync::Arc<str> = state.id.clone().into();
        for (i, plan) in plans.iter().enumerate() {
            while !state.tables[i].done {
                let began = std::time::Instant::now();
                let chunk = match read_chunk(
                    &mut tx,
                    &plan.relation,
                    &plan.keyset,
                    state.tables[i].last_key.as_deref(),
                    state.chunk_size,
                    state.filter.as_deref(),
                )
                .await
                {
                    Ok(chunk) => chunk,
                    Err(e) if e.is_transient() => {
                        // The snapshot is lost with the connection: the watermarks take
                        // over from the last checkpoint.
                        warn!(id = %state.id, error = %e, "backfill: lost the slot's snapshot; going on with watermarks");
                        queue.push_front(state);
                        backfills.queue = queue;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                let read = chunk.rows.len() as u64;
                let keys: Vec<String> = if plan.keyset.is_full_scan() {
                    chunk.versions.into_iter().map(|v| v.ctid).collect()
                } else {
                    chunk
                        .rows
                        .iter()
                        .filter_map(|r| key_text(r, &plan.key_positions))
                        .collect()
                };
                let mut out = Output {
                    sinks,
                    unflushed: &mut unflushed,
                    events: &mut report.events,
                };
                let rows = chunk.rows.into_iter().zip(keys).collect();
                let emitted = match emit_snapshot_rows(&mut out, compiled, &plan.relation, &id, ctx, rows, at)? {
                    Ok(n) => n,
                    Err(e) => {
                        backfills.fail(state, &e);
                        continue 'backfills;
                    }
                };
                flush_sinks(sinks, &mut unflushed, None).await?;
                let table = &mut state.tables[i];
                table.chunk_delivered(read, emitted, chunk.exhausted, chunk.last_key);
                progress.update(i, table);
                state.save(&backfills.config_dir)?;
                state.throttle().after(read, began.elapsed()).await;
            }
        }
        info!(id = %state.id, "backfill: done");
    }
    if let Err(e) = tx.commit().await {
        warn!(error = %e, "backfill: ending the snapshot's transaction failed (it only read)");
    }
    Ok(())
}

/// Where snapshot rows' events go.
struct Output<'a> {
    sinks: &'a mut Sinks,
    unflushed: &'a mut usize,
    events: &'a mut u64,
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
fn emit_snapshot_rows(
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
fn write_events(sinks: &mut Sinks, line: &mut Vec<u8>, events: Vec<ficus_model::Event>) -> Result<usize, RunError> {
    for event in &events {
        line.clear();
        serde_json::to_writer(&mut *line, event).expect("an event always serializes");
        sinks.write(event, line)?;
    }
    Ok(events.len())
}

/// Makes every written event durable in every sink; the store records `checkpoint` with them.
async fn flush_sinks(sinks: &mut Sinks, unflushed: &mut usize, checkpoint: Option<Lsn>) -> Result<(), RunError> {
    if *unflushed > 0 {
        sinks.flush(checkpoint).await?;
        *unflushed = 0;
    }
    Ok(())
}

/// Drops the slot and the publication.
pub async fn teardown(config: &Config) -> Result<Vec<String>, RunError> {
    let url = SourceUrl::parse(&config.url()?)?;
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
    Ok(done)
}
