//! The stream session: one replication connection's events, mapped and written, the backfill's
//! chunks emitted at their watermarks, and acknowledgements (through the position record).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ficus_mapping::{Bound, Compiled, EventContext};
use ficus_model::Lsn;
use ficus_postgres::publication::{self, Needs};
use ficus_postgres::{ReplicationStream, SourceError, SourceEvent};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::observe::Observer;
use super::{CAUGHT_UP_PREFIX, Delivery, FLUSH_INTERVAL, Positions, RunReport, emit_snapshot_rows};
use crate::RunError;
use crate::backfill::{self, BackfillSession, BackfillState, Backfills, ChunkRead, Verdict, key_text, row_hash};
use crate::config::Config;
use crate::position::{Cause, Gap};
use crate::watermark::VersionVerdict;

pub(super) struct Session<'a> {
    pub config: &'a Config,
    pub pool: &'a PgPool,
    pub compiled: &'a Compiled,
    /// What the publication must go on sending: checked every [`PUBLICATION_CHECK`].
    pub needs: &'a Needs,
    /// When the publication was last found right, and what was recorded then.
    pub checked: (Instant, Lsn),
    pub ctx: EventContext,
    pub delivery: &'a mut Delivery,
    /// What is recorded of the position: the slot is acknowledged up to it only.
    pub positions: &'a mut Positions,
    /// Bound mappings per relation OID; `None` for relations no mapping reads.
    pub bound: HashMap<u32, Option<Bound>>,
    pub report: &'a mut RunReport,
    /// Everything up to here is durable in every sink: the slot may move here once it is recorded.
    pub wanted: Lsn,
    pub in_tx: bool,
    pub target: Option<Lsn>,
    /// Whether the stream passed the target (kept across reconnects).
    pub reached_target: &'a mut bool,
    pub current_xid: u32,
    pub backfills: &'a mut Backfills,
    /// What the metrics and `/readyz` are told.
    pub observer: Observer,
    /// The server saying nothing this long is a silence (`None`: never).
    pub silence: Option<Duration>,
    /// A heartbeat this often (`None`: none).
    pub heartbeat: Option<Duration>,
    /// When the server was last heard when the last probe was sent (one probe per quiet spell).
    pub probed: Option<Instant>,
    pub last_heartbeat: Instant,
    /// The transaction's events that collect rows, waiting for its commit.
    pub collecting: ficus_mapping::Transaction,
    /// The transaction being streamed.
    pub current_tx: Option<ficus_model::TxMeta>,
    /// With `ficus record`: the same per table, as the table's fixture file maps its changes.
    pub recording: HashMap<ficus_model::TableRef, ficus_mapping::Transaction>,
}

/// The session's periodic queries answer within this, or the source is taken to be silent
/// (generous: a backfill may hold the pool's connections a while).
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of heartbeats and probes (logical decoding messages; the stream ignores them).
pub(super) const HEARTBEAT_PREFIX: &str = "ficus.heartbeat";

/// How often the publication is checked while streaming: a change to it (a table taken out, an
/// operation or rows filtered) is caught within this long.
const PUBLICATION_CHECK: Duration = Duration::from_secs(5);

/// What woke the session up.
enum Step {
    Event(Option<SourceEvent>),
    /// A sink's lane moved (or failed).
    Progress,
    /// Time to record and acknowledge what is durable.
    Flush,
    Shutdown,
    Chunk(Option<ChunkRead>),
    CheckPublication,
    /// The server has been quiet half the silence limit: make it speak.
    Probe,
    Heartbeat,
}

impl Session<'_> {
    /// Streams until shutdown, caught up, or an error. On a definite error, the
    /// commits completed before the failing change are still flushed and
    /// acknowledged: a restart repeats as little as possible, and nothing after.
    pub async fn stream(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        match self.stream_events(stream, shutdown).await {
            Ok(()) => self.stop_and_ack(stream).await,
            Err(RunError::Interrupted { sink }) => {
                warn!(%sink, acknowledged = %self.report.acknowledged, "stopped while a sink was not taking events; what it had not made durable is delivered again at the next start");
                self.ack_durable(stream, false).await
            }
            Err(e) if matches!(&e, RunError::Source(s) if s.is_transient()) => Err(e),
            Err(e) => {
                if let Err(flush) = self.stop_and_ack(stream).await {
                    warn!(error = %flush, "could not flush the sinks after the error");
                }
                Err(e)
            }
        }
    }

    async fn stream_events(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunError> {
        self.next_backfill().await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let ack_due = self.wanted.max(self.delivery.durable()) > self.report.acknowledged;
            let step = {
                let chunks = self.backfills.running().filter(|b| b.pending.is_none());
                let heard = stream.heard();
                let probe_at = self
                    .silence
                    .filter(|_| self.probed != Some(heard))
                    .map(|limit| heard + limit / 2);
                let heartbeat_at = self.heartbeat.map(|every| self.last_heartbeat + every);
                tokio::select! {
                    ev = stream.next_within(self.silence) => match ev {
                        Ok(ev) => Step::Event(ev),
                        Err(e) => {
                            if matches!(e, SourceError::Silent(_)) {
                                crate::telemetry::error("silence");
                            }
                            return Err(e.into());
                        }
                    },
                    _ = sleep_until(probe_at), if probe_at.is_some() => Step::Probe,
                    _ = sleep_until(heartbeat_at), if heartbeat_at.is_some() => Step::Heartbeat,
                    _ = self.delivery.progress() => Step::Progress,
                    _ = tokio::time::sleep(FLUSH_INTERVAL), if ack_due => Step::Flush,
                    _ = tokio::time::sleep(PUBLICATION_CHECK.saturating_sub(self.checked.0.elapsed())) => Step::CheckPublication,
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
                Step::Progress | Step::Flush => {
                    if let Some(e) = self.delivery.failed() {
                        return Err(e);
                    }
                    self.ack_durable(stream, false).await?;
                    continue;
                }
                Step::Shutdown => continue,
                Step::CheckPublication => {
                    match tokio::time::timeout(QUERY_TIMEOUT, self.check_publication()).await {
                        Ok(checked) => checked?,
                        Err(_) => return Err(silent_query().into()),
                    }
                    if tokio::time::timeout(QUERY_TIMEOUT, self.check_retained_wal())
                        .await
                        .is_err()
                    {
                        return Err(silent_query().into());
                    }
                    crate::status::save_run_state(self.config, &self.delivery.health);
                    continue;
                }
                Step::Probe => {
                    self.probed = Some(stream.heard());
                    debug!("the server has been quiet: a heartbeat makes it speak");
                    heartbeat(self.pool);
                    continue;
                }
                Step::Heartbeat => {
                    self.last_heartbeat = Instant::now();
                    heartbeat(self.pool);
                    continue;
                }
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
                    self.current_tx = Some(tx.clone());
                    self.collecting.clear();
                    self.recording.values_mut().for_each(ficus_mapping::Transaction::clear);
                    self.current_xid = tx.xid;
                    self.observer.begin(&tx);
                }
                SourceEvent::Change(mut change) => {
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
                    let reselect = bound.to_reselect(&change);
                    if !reselect.is_empty() {
                        reselect_unsent(self.pool, &mut change, &reselect).await?;
                    }
                    self.report.changes += 1;
                    self.observer.change(&change);
                    if let Some(b) = self.backfills.running() {
                        b.track(&change);
                    }
                    let events = bound.apply_in(&change, &self.ctx, &mut self.collecting)?;
                    // Archived with its events: a transaction that gave no event must still be in
                    // the store before the slot moves past it.
                    self.delivery.archive(&change, &self.ctx);
                    if self.delivery.recording.is_some() {
                        // A fixture is of one table's changes: what they make mapped as
                        // `ficus test` maps the file (an event that collects rows collects those
                        // of its own table only).
                        let tx = self.recording.entry(change.relation.table.clone()).or_default();
                        self.delivery.record(&change, &bound.apply_in(&change, &self.ctx, tx)?);
                    }
                    let written = self.delivery.write(events).await?;
                    self.report.events += written as u64;
                }
                SourceEvent::Commit { end_lsn, .. } => {
                    self.in_tx = false;
                    for (table, tx) in &mut self.recording {
                        let made = tx.commit(&self.ctx)?;
                        self.delivery.record_commit(table, &made);
                    }
                    // The events that collect rows, with what they collected.
                    let events = self.collecting.commit(&self.ctx)?;
                    if !events.is_empty() {
                        self.report.events += self.delivery.write(events).await? as u64;
                    }
                    if let Some(b) = self.backfills.running() {
                        b.committed(self.current_xid);
                    }
                    // Between transactions: where a backfill may start tracking.
                    self.next_backfill().await?;
                    self.report.transactions += 1;
                    self.observer.commit(end_lsn);
                    self.delivery.mark(end_lsn).await?;
                    if self.finished_at(end_lsn) {
                        return Ok(()); // `stream` flushes and acknowledges on the way out
                    }
                }
                SourceEvent::KeepAlive { wal_end } => {
                    self.observer.server(wal_end);
                    if !self.in_tx {
                        self.next_backfill().await?;
                        // Nothing in flight: the sinks are durable up to the server's position
                        // as soon as they are up to what was written.
                        self.delivery.mark(wal_end).await?;
                        self.ack_durable(stream, false).await?;
                        if self.finished_at(wal_end) {
                            return Ok(());
                        }
                    }
                }
                SourceEvent::Message {
                    prefix,
                    content,
                    lsn,
                    transactional,
                } => {
                    if self.compiled.maps_prefix(&prefix) {
                        self.message(&prefix, &content, lsn, transactional).await?;
                        continue;
                    }
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
                        self.delivery.mark(lsn).await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A logical decoding message of a mapped prefix: its events (waiting behind the
    /// transaction's collecting events, if any), archived for remap. One emitted outside a
    /// transaction is refused (or, with `non_transactional = "skip"`, passed over and said so).
    async fn message(&mut self, prefix: &str, content: &[u8], lsn: Lsn, transactional: bool) -> Result<(), RunError> {
        let tx = match (&self.current_tx, transactional && self.in_tx) {
            (Some(tx), true) => tx.clone(),
            _ => ficus_model::TxMeta {
                xid: 0,
                commit_lsn: lsn,
                commit_time_micros: 0,
            },
        };
        let msg = ficus_mapping::Message {
            prefix,
            content,
            lsn,
            transactional: transactional && self.in_tx,
            tx: &tx,
        };
        let events = self.compiled.apply_message(&msg, &self.ctx, &mut self.collecting)?;
        if !msg.transactional {
            warn!(%prefix, %lsn, bytes = content.len(), "passed over a message emitted outside a transaction (non_transactional = \"skip\"): it is not delivered");
            return Ok(());
        }
        self.delivery.archive_message(&msg, &self.ctx);
        if self.delivery.recording.is_some() {
            // A fixture of messages holds no rows: nothing there waits for the commit.
            let mut own = ficus_mapping::Transaction::default();
            let mut made = self.compiled.apply_message(&msg, &self.ctx, &mut own)?;
            made.extend(own.commit(&self.ctx)?);
            self.delivery.record_message(&msg, &made);
        }
        self.report.events += self.delivery.write(events).await? as u64;
        Ok(())
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
            let (config_dir, publication) = (self.backfills.config_dir.clone(), self.backfills.publication.clone());
            match BackfillSession::start(
                self.pool,
                &publication,
                self.compiled,
                &self.ctx,
                &config_dir,
                state.clone(),
            )
            .await
            {
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
            return Err(RunError::bug(format!(
                "backfill marker {marker} arrived, {} was expected",
                read.marker
            )));
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
        let emitted = match emit_snapshot_rows(
            self.delivery,
            &mut self.report.events,
            self.compiled,
            &plan.relation,
            &b.id,
            &self.ctx,
            keep,
            at,
        )
        .await?
        {
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
        self.delivery.flush().await?;
        let table = &mut b.state.tables[read.table];
        table.chunk_delivered(read_rows, emitted, read.exhausted, read.last_key);
        b.progress.update(read.table, table);
        b.state.save(&b.config_dir)?;
        b.finished = b.state.finished();
        if b.finished {
            info!(id = %b.id, "backfill: done");
        }
        let _ = b.verdicts.send(Verdict::Next).await;
        self.delivery.mark(at).await?;
        self.ack_durable(stream, false).await
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
                Ok(Ok(())) => RunError::bug("the backfill ended before its last chunk"),
                Err(e) => RunError::bug(format!("the backfill's task failed: {e}")),
            },
            None => RunError::bug("the backfill's task stopped"),
        };
        self.backfills.fail(b.state, &error);
        Ok(())
    }

    /// Checks that the publication still sends what the mappings read; a publication dropped or
    /// changed so that it does not is a gap from the last time it was found right.
    async fn check_publication(&mut self) -> Result<(), RunError> {
        let name = &self.config.source.publication;
        let problems = match publication::read(self.pool, name).await {
            Ok(Some(p)) => p.problems(self.needs, true),
            Ok(None) => {
                return Err(RunError::Gap(Box::new(Gap {
                    slot: self.config.source.slot.clone(),
                    cause: Cause::PublicationDropped {
                        publication: name.clone(),
                    },
                    after: self.checked.1,
                    before: None,
                })));
            }
            // Reading it failed for a passing reason: the next check, or the stream, tells.
            Err(e) if e.is_transient() => {
                warn!(error = %e, "could not check the publication");
                self.checked.0 = Instant::now();
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if problems.is_empty() {
            self.checked = (Instant::now(), self.positions.recorded());
            return Ok(());
        }
        Err(RunError::Gap(Box::new(Gap::publication_changed(
            &self.config.source.slot,
            name,
            &problems,
            self.checked.1,
        ))))
    }

    /// Before stopping: everything durable in every sink, recorded, and acknowledged; a sink
    /// that failed holds the slot at what it made durable.
    async fn stop_and_ack(&mut self, stream: &ReplicationStream) -> Result<(), RunError> {
        let flushed = self.delivery.flush().await;
        self.ack_durable(stream, true).await?;
        flushed.map(drop)
    }

    /// Acknowledges what every sink holds durable, once it is recorded (at once with `now`, else
    /// at most every [`super::delivery::RECORD_INTERVAL`]).
    async fn ack_durable(&mut self, stream: &ReplicationStream, now: bool) -> Result<(), RunError> {
        let durable = self.delivery.durable();
        self.wanted = self.wanted.max(durable);
        if self.wanted > self.report.acknowledged {
            self.positions.record(self.delivery, self.wanted, now).await?;
            self.acknowledge_recorded(stream);
        }
        self.observer.progress(durable, self.report.acknowledged);
        Ok(())
    }

    /// Reads the WAL the slot holds, for the metric, `/readyz` and the warning past
    /// `max_retained_wal`. A failure to read it is left to the next check (the stream tells
    /// of a source that is gone).
    async fn check_retained_wal(&mut self) {
        match ficus_postgres::slot::state(self.pool, &self.config.source.slot).await {
            Ok(state) => {
                if let Some(bytes) = state.slot.and_then(|s| s.retained_bytes) {
                    self.observer.retained(bytes, &self.config.source.slot);
                }
            }
            Err(e) => debug!(error = %e, "could not read the WAL the slot holds"),
        }
    }

    /// The one place the slot moves: up to what is both durable and recorded.
    fn acknowledge_recorded(&mut self, stream: &ReplicationStream) {
        let lsn = self.wanted.min(self.positions.recorded());
        if lsn > self.report.acknowledged {
            stream.acknowledge(lsn);
            self.report.acknowledged = lsn;
            debug!(lsn = %lsn, "acknowledged");
        }
    }
}

/// Sleeps until `at` (for ever when `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A query of the session that got no answer in time: the connections are not trusted any more.
fn silent_query() -> SourceError {
    SourceError::Silent(format!(
        "the source did not answer a query within {}s: the route to it may be dead",
        QUERY_TIMEOUT.as_secs()
    ))
}

/// Writes a heartbeat: a transactional logical decoding message, so the stream carries it (and
/// the slot can move) with no table written. In its own task, bounded in time: a source that does
/// not answer is the stream's to notice, never a wait of the session.
fn heartbeat(pool: &PgPool) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let write = sqlx::query("select pg_logical_emit_message(true, $1, '')")
            .bind(HEARTBEAT_PREFIX)
            .execute(&pool);
        match tokio::time::timeout(QUERY_TIMEOUT, write).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "could not write a heartbeat"),
            Err(_) => debug!("a heartbeat got no answer in time"),
        }
    });
}

/// Puts into an update's new row the values it did not send (unchanged TOASTed values) that a
/// mapping with `unchanged_toast = "reselect"` reads, read again by the row's replica identity:
/// the values now — the change's, unless the row changed again since (that change follows in the
/// stream). A row that is gone, or has no identity, leaves them out: the mapping lists them in
/// `ficusunavailable`.
async fn reselect_unsent(
    pool: &PgPool,
    change: &mut ficus_model::RowChange,
    columns: &[usize],
) -> Result<(), RunError> {
    use ficus_model::Cell;
    let relation = change.relation.clone();
    let key: Option<Vec<(String, String)>> = relation
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.identity)
        .map(|(i, c)| {
            let value = [change.new.as_ref(), change.old.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|row| match row.get(i) {
                    Some(Cell::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
                    _ => None,
                })?;
            Some((c.name.clone(), value))
        })
        .collect();
    let names: Vec<String> = columns.iter().map(|&i| relation.columns[i].name.clone()).collect();
    let key = key.filter(|k| !k.is_empty());
    let values = match &key {
        Some(key) => ficus_postgres::backfill::read_row(pool, &relation, key, &names).await?,
        None => None,
    };
    let Some(values) = values else {
        warn!(table = %relation.table, key = ?key, columns = ?names, lsn = %change.tx.commit_lsn, "unchanged_toast = \"reselect\": the row is gone (or has no replica identity), so its unsent values are left out and listed in ficusunavailable");
        return Ok(());
    };
    if let Some(new) = change.new.as_mut() {
        for (&i, value) in columns.iter().zip(values) {
            new.0[i] = value.map_or(Cell::Null, |v| Cell::Text(v.into()));
        }
    }
    Ok(())
}
