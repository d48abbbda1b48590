//! `ficus run`: the streaming loop, with acknowledgements, reconnects and shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ficus_mapping::{Bound, Compiled, EventContext};
use ficus_model::Lsn;
use ficus_postgres::{ReplicationStream, SourceError, SourceEvent, SourceUrl, catalog, slot};
use ficus_sinks::Sink;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, Loaded, SinkConfig};
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
    /// Stop once everything committed before the start is delivered and acknowledged.
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

fn open_sinks(config: &Config) -> Result<Vec<Sink>, RunError> {
    if config.sinks.is_empty() {
        return Ok(vec![Sink::stdout()]);
    }
    config
        .sinks
        .iter()
        .map(|s| match s {
            SinkConfig::Stdout => Ok(Sink::stdout()),
            SinkConfig::Jsonl { path } => Ok(Sink::jsonl(&config.resolve(path))?),
        })
        .collect()
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
    let files = load_mappings(config)?;
    let url = SourceUrl::parse(&config.url()?)?;
    let mut report = RunReport::default();
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
            let slot_state = slot::ensure_slot(&pool, &config.source.slot, &url.database).await?;
            let target = if options.until_caught_up {
                let lsn: String = sqlx::query_scalar(
                    "select pg_logical_emit_message(false, $1, 'ficus run --until-caught-up')::text",
                )
                .bind(CAUGHT_UP_PREFIX)
                .fetch_one(&pool)
                .await
                .map_err(|e| SourceError::from_sqlx("writing the caught-up marker", e))?;
                lsn.parse().ok()
            } else {
                None
            };
            Ok((pool, compiled, slot_state, target))
        },
    )
    .await?;
    let Some((pool, compiled, slot_state, target)) = prepared else {
        return Ok(report);
    };
    let mut sinks = open_sinks(config)?;
    report.acknowledged = slot_state.confirmed_flush;
    info!(slot = %config.source.slot, publication = %config.source.publication, from = %slot_state.confirmed_flush, mappings = compiled.mappings().len(), "streaming");

    let source_name = config.source.name.clone().unwrap_or_else(|| url.database.clone());
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
        let Some(mut stream) = started else { return Ok(report) };
        let ctx = EventContext::new(&source_name, &format!("{}/{}", stream.system_id, url.database));
        let mut session = Session {
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
        };
        let began = Instant::now();
        let outcome = session.stream(&mut stream, &mut shutdown).await;
        let acked = session.report.acknowledged;
        match outcome {
            Ok(()) => {
                confirm(&pool, &config.source.slot, acked).await;
                stream.stop();
                info!(events = report.events, transactions = report.transactions, acknowledged = %report.acknowledged, "stopped");
                return Ok(report);
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
                    _ = shutdown.changed() => return Ok(report),
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
    compiled: &'a Compiled,
    ctx: EventContext,
    sinks: &'a mut Vec<Sink>,
    /// Bound mappings per relation OID; `None` for relations no mapping reads.
    bound: HashMap<u32, Option<Bound>>,
    report: &'a mut RunReport,
    /// A commit whose events are written but not yet flushed.
    pending: Option<Lsn>,
    unflushed: usize,
    in_tx: bool,
    last_flush: Instant,
    target: Option<Lsn>,
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
            && let Err(flush) = self.flush_and_ack(stream)
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
        loop {
            if *shutdown.borrow() {
                self.flush_and_ack(stream)?;
                return Ok(());
            }
            let ev = tokio::select! {
                ev = stream.next() => ev?,
                _ = tokio::time::sleep(FLUSH_INTERVAL), if self.pending.is_some() => {
                    self.flush_and_ack(stream)?;
                    continue;
                }
                _ = shutdown.changed() => continue,
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
                SourceEvent::Begin(_) => self.in_tx = true,
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
                    for event in bound.apply(&change, &self.ctx)? {
                        line.clear();
                        serde_json::to_writer(&mut line, &event).expect("an event always serializes");
                        for sink in self.sinks.iter_mut() {
                            sink.write(&line)?;
                        }
                        self.unflushed += 1;
                        self.report.events += 1;
                    }
                }
                SourceEvent::Commit { end_lsn, .. } => {
                    self.in_tx = false;
                    self.report.transactions += 1;
                    self.pending = Some(end_lsn);
                    if self.unflushed == 0
                        || self.unflushed >= FLUSH_EVENTS
                        || self.last_flush.elapsed() >= FLUSH_INTERVAL
                    {
                        self.flush_and_ack(stream)?;
                    }
                    if self.caught_up(end_lsn) {
                        self.flush_and_ack(stream)?;
                        return Ok(());
                    }
                }
                SourceEvent::KeepAlive { wal_end } => {
                    if !self.in_tx {
                        self.flush_and_ack(stream)?;
                        self.ack(stream, wal_end);
                        if self.caught_up(wal_end) {
                            return Ok(());
                        }
                    }
                }
                SourceEvent::Message { prefix, lsn, .. } => {
                    if prefix == CAUGHT_UP_PREFIX && !self.in_tx && self.caught_up(lsn) {
                        self.flush_and_ack(stream)?;
                        self.ack(stream, lsn);
                        return Ok(());
                    }
                }
            }
        }
    }

    fn caught_up(&self, lsn: Lsn) -> bool {
        self.target.is_some_and(|t| lsn >= t)
    }

    /// Makes every written event durable, then acknowledges the last commit.
    fn flush_and_ack(&mut self, stream: &ReplicationStream) -> Result<(), RunError> {
        if self.unflushed > 0 {
            for sink in self.sinks.iter_mut() {
                sink.flush()?;
            }
            self.unflushed = 0;
        }
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

/// Drops the slot and the publication.
pub async fn teardown(config: &Config) -> Result<Vec<String>, RunError> {
    let url = SourceUrl::parse(&config.url()?)?;
    let pool = catalog::connect(&url).await?;
    Ok(slot::teardown(&pool, &config.source.slot, &config.source.publication).await?)
}
