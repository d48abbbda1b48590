//! `ficus backfill`: existing rows as `snapshot` events, consistent with the stream.
//!
//! ```text
//! coordinator (own connection)              stream session
//! ───────────────────────────               ──────────────
//! begin repeatable read                     tracks keys changed per xid (watermark::Tracker)
//!   snapshot S, COPY chunk, committed xip
//! commit
//! emit H  ─────────── WAL ──────────────▶   at H: keep rows the tracker allows,
//! send chunk ──── channel ──────────────▶        emit them, flush, acknowledge,
//! wait     ◀───── channel ──── done ─────        checkpoint, prune
//! ```
//!
//! See `docs/backfill.md` for why this is consistent. Tracking runs for
//! the whole backfill, so no low watermark is needed: every commit before `H`
//! has been tracked, or (for commits before tracking started) is caught by the
//! committed-xip check, which makes the chunk be read again.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ficus_mapping::{Compiled, EventContext};
use ficus_model::{Cell, Lsn, Op, Origin, Relation, Row, RowChange, TableRef, TxMeta};
use ficus_postgres::SourceError;
use ficus_postgres::backfill::{Keyset, RowVersion, keyset, read_chunk};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool};
use tokio::sync::mpsc;
use tracing::info;

use crate::RunError;
use crate::watermark::{Snapshot, Tracker};

/// The prefix of the backfill's watermark messages.
pub const MESSAGE_PREFIX: &str = "ficus.backfill";
/// The prefix of the message that asks the `ficus run` streaming from the slot
/// for a backfill (its content: the backfill's state, as JSON).
pub const REQUEST_PREFIX: &str = "ficus.backfill.request";
/// Rows per chunk, by default.
pub const DEFAULT_CHUNK_SIZE: usize = 10_000;

/// What `ficus backfill` was asked for.
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// Tables to backfill; every table with a `snapshot` mapping when empty.
    pub tables: Vec<String>,
    /// An SQL condition the rows must meet.
    pub filter: Option<String>,
    /// Rows per chunk.
    pub chunk_size: usize,
    /// Pause between chunks, to spare a busy source.
    pub pause: Duration,
    /// Read tables without a key by physical position.
    pub allow_full_scan: bool,
    /// Read at most this many rows per second, on average.
    pub max_rate: Option<u64>,
}

impl Default for BackfillOptions {
    /// Every table with a snapshot mapping, every row, chunks of [`DEFAULT_CHUNK_SIZE`], no pause.
    fn default() -> BackfillOptions {
        BackfillOptions {
            tables: vec![],
            filter: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            pause: Duration::ZERO,
            allow_full_scan: false,
            max_rate: None,
        }
    }
}

/// The checkpoint of a backfill, one file per backfill under `.ficus/backfills/`
/// next to the config, written after each chunk's events are durable.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackfillState {
    /// The backfill's id, in its events' ids and `backfill` attribute.
    pub id: String,
    /// The filter, if any.
    pub filter: Option<String>,
    /// Rows per chunk.
    pub chunk_size: usize,
    /// Pause between chunks, in milliseconds.
    #[serde(default)]
    pub pause_ms: u64,
    /// At most this many rows per second, on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u64>,
    /// Whether tables without a key are read by a full scan.
    #[serde(default)]
    pub allow_full_scan: bool,
    /// Per table, in order.
    pub tables: Vec<TableState>,
    /// Why the backfill stopped for good, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its tables just entered the publication: before reading them, wait for the transactions
    /// that were running then, whose earlier changes of them the stream does not carry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_publication_change: bool,
}

/// One table's progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableState {
    /// `schema.table`
    pub table: String,
    /// The key of the last row delivered.
    pub last_key: Option<Vec<String>>,
    /// Rows read, delivered or dropped.
    pub rows_read: u64,
    /// Rows emitted as snapshot row changes.
    pub rows_emitted: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Whether the table is done.
    pub done: bool,
    /// Rows the table had when the backfill planned it (`pg_class.reltuples`, an estimate).
    #[serde(default)]
    pub rows_estimated: Option<u64>,
}

impl TableState {
    /// Records a chunk whose events are durable: `read` rows read, `emitted`
    /// emitted; the table is done when nothing comes after it, else the next
    /// chunk starts after `last_key`.
    pub(crate) fn chunk_delivered(&mut self, read: u64, emitted: u64, exhausted: bool, last_key: Option<Vec<String>>) {
        self.rows_read += read;
        self.rows_emitted += emitted;
        self.chunks += 1;
        metrics::counter!(crate::telemetry::BACKFILL_ROWS, "table" => self.table.clone()).increment(emitted);
        metrics::counter!(crate::telemetry::BACKFILL_CHUNKS, "table" => self.table.clone()).increment(1);
        if exhausted {
            self.done = true;
        } else if last_key.is_some() {
            self.last_key = last_key;
        }
    }
}

impl BackfillState {
    /// Why it failed, as the error of whoever waits for it.
    pub fn failure(&self) -> Option<RunError> {
        let error = self.error.as_ref()?;
        Some(RunError::Config(format!("backfill {} failed: {error}", self.id)))
    }

    /// A new backfill of these tables, with a fresh id.
    pub fn new(tables: Vec<String>, opts: &BackfillOptions) -> BackfillState {
        let id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
        );
        BackfillState {
            id,
            filter: opts.filter.clone(),
            chunk_size: opts.chunk_size.max(1),
            pause_ms: opts.pause.as_millis() as u64,
            max_rate: opts.max_rate.filter(|&r| r > 0),
            allow_full_scan: opts.allow_full_scan,
            tables: tables
                .into_iter()
                .map(|table| TableState {
                    table,
                    last_key: None,
                    rows_read: 0,
                    rows_emitted: 0,
                    chunks: 0,
                    done: false,
                    rows_estimated: None,
                })
                .collect(),
            error: None,
            after_publication_change: false,
        }
    }

    /// Whether it is in progress and reads `table` (with its filter, if it has one: the rows
    /// someone chose).
    pub fn covers(&self, table: &str) -> bool {
        self.in_progress() && self.tables.iter().any(|t| t.table == table)
    }

    /// The directory of a config's backfill files.
    pub fn dir(config_dir: &Path) -> PathBuf {
        config_dir.join(".ficus").join("backfills")
    }

    /// The file of the backfill `id`.
    pub fn path(config_dir: &Path, id: &str) -> PathBuf {
        BackfillState::dir(config_dir).join(format!("{id}.json"))
    }

    /// Reads a backfill file, `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<BackfillState>, RunError> {
        crate::state::load(path, "remove it to start the backfill over")
    }

    /// Every backfill of a config, oldest first.
    pub fn all(config_dir: &Path) -> Result<Vec<BackfillState>, RunError> {
        let mut all: Vec<BackfillState> =
            crate::state::load_all(&BackfillState::dir(config_dir), "remove it to start the backfill over")?;
        crate::state::oldest_first(&mut all, |b| &b.id);
        Ok(all)
    }

    /// Writes the backfill's file durably.
    pub fn save(&self, config_dir: &Path) -> Result<(), RunError> {
        let path = BackfillState::path(config_dir, &self.id);
        crate::state::write_durably(&path, &serde_json::to_vec_pretty(self).expect("state serializes"))
    }

    /// Whether every table is done.
    pub fn finished(&self) -> bool {
        self.tables.iter().all(|t| t.done)
    }

    /// Whether there is work left: not finished, not failed.
    pub fn in_progress(&self) -> bool {
        !self.finished() && self.error.is_none()
    }

    /// Whether it backfills the same rows as `other` (so one can go on for the other).
    pub fn same_rows(&self, other: &BackfillState) -> bool {
        self.filter == other.filter
            && self
                .tables
                .iter()
                .map(|t| &t.table)
                .eq(other.tables.iter().map(|t| &t.table))
    }

    /// How the backfill spaces its chunks.
    pub fn throttle(&self) -> Throttle {
        Throttle {
            pause: Duration::from_millis(self.pause_ms),
            max_rate: self.max_rate,
        }
    }
}

/// How a backfill spares a busy source: a pause after every chunk, and a
/// ceiling on the rows read per second (on average, chunk by chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Throttle {
    pub pause: Duration,
    pub max_rate: Option<u64>,
}

impl Throttle {
    /// How long to wait after a chunk of `rows` rows that took `took` to read
    /// and deliver: the pause, or longer when the chunk came faster than the rate.
    pub fn wait(&self, rows: u64, took: Duration) -> Duration {
        let by_rate = match self.max_rate {
            Some(rate) if rate > 0 => Duration::from_secs_f64(rows as f64 / rate as f64).saturating_sub(took),
            _ => Duration::ZERO,
        };
        self.pause.max(by_rate)
    }

    /// Waits after a chunk, if there is anything to wait.
    pub async fn after(&self, rows: u64, took: Duration) {
        let wait = self.wait(rows, took);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One table ready to read.
pub(crate) struct TablePlan {
    pub rows_estimated: Option<u64>,
    pub relation: Arc<Relation>,
    pub keyset: Keyset,
    pub key_positions: Vec<usize>,
}

/// A chunk read by the coordinator, for the session to emit at its high watermark.
pub(crate) struct ChunkRead {
    pub table: usize,
    pub marker: String,
    pub snapshot: Snapshot,
    pub committed_xip: Vec<u64>,
    pub rows: Vec<Row>,
    pub last_key: Option<Vec<String>>,
    /// Of a full scan: each row's version.
    pub versions: Vec<RowVersion>,
    /// Nothing comes after this chunk.
    pub exhausted: bool,
}

/// What the session tells the coordinator after a chunk.
pub(crate) enum Verdict {
    /// Delivered and checkpointed: read the next chunk.
    Next,
    /// Read this chunk again (a transaction committed before tracking started).
    Again,
}

/// The key of a row as text: its key columns' values, as a JSON array.
pub(crate) fn key_text(row: &Row, positions: &[usize]) -> Option<String> {
    let values: Option<Vec<String>> = positions
        .iter()
        .map(|&i| match row.get(i)? {
            Cell::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
        .collect();
    values.map(|v| serde_json::to_string(&v).expect("strings serialize"))
}

/// Plans the backfill: which tables, their keys, their bound mappings. Rows are read with the
/// columns the stream sends (`publication`'s), so snapshot rows look like streamed ones.
pub(crate) async fn plan(
    pool: &PgPool,
    publication: &str,
    compiled: &Compiled,
    ctx: &EventContext,
    state: &BackfillState,
) -> Result<Vec<TablePlan>, RunError> {
    let published = ficus_postgres::publication::read(pool, publication).await?;
    let tables = crate::run::live_schema(pool, published.as_ref()).await?;
    let mut plans = Vec::new();
    for t in &state.tables {
        let table = TableRef::parse(&t.table);
        let Some(relation) = tables.get(&table) else {
            return Err(
                SourceError::definite(format!("unknown table {table}"), "name a mapped table (ficus check)").into(),
            );
        };
        let relation = Arc::new(relation.relation.clone());
        let keyset = keyset(pool, &table, state.allow_full_scan).await?;
        let key_positions: Vec<usize> = keyset
            .columns
            .iter()
            .filter_map(|(c, _)| relation.column_index(c))
            .collect();
        let identity_ok = relation.replica_identity == ficus_model::ReplicaIdentity::Full
            || key_positions.iter().all(|&i| relation.columns[i].identity);
        if !identity_ok {
            return Err(SourceError::definite(
                format!(
                    "{table} is read by {}, whose columns deletes do not carry (its replica identity is {})",
                    keyset.index, relation.replica_identity
                ),
                format!(
                    "run ALTER TABLE {} REPLICA IDENTITY FULL; or give it a primary key",
                    table.quoted()
                ),
            )
            .into());
        }
        if compiled.bind(relation.clone(), ctx)?.is_none() {
            return Err(
                SourceError::definite(format!("no mapping reads {table}"), "backfill mapped tables only").into(),
            );
        }
        if !compiled.maps_snapshots(&table) {
            return Err(RunError::Config(format!(
                "no mapping of {table} maps snapshot rows\nhint: add \"snapshot\" to `on` of the mappings that should see existing rows"
            )));
        }
        let estimate: f32 = sqlx::query_scalar("select reltuples from pg_class where oid = $1::int8::oid")
            .bind(i64::from(relation.oid))
            .fetch_one(pool)
            .await
            .map_err(|e| SourceError::from_sqlx("reading the table's size", e))?;
        plans.push(TablePlan {
            rows_estimated: (estimate >= 0.0).then_some(estimate as u64),
            relation,
            keyset,
            key_positions,
        });
    }
    Ok(plans)
}

/// Reads the chunks, one at a time: snapshot, chunk and committed xids in one
/// short repeatable-read transaction, then the high watermark, then the chunk
/// to the session, then waits for its verdict.
pub(crate) async fn coordinate(
    pool: PgPool,
    tables: Vec<(Arc<Relation>, Keyset)>,
    mut state: BackfillState,
    nonce: String,
    throttle: Throttle,
    to_session: mpsc::Sender<ChunkRead>,
    mut verdicts: mpsc::Receiver<Verdict>,
) -> Result<(), SourceError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| SourceError::from_sqlx("backfill connection", e))?;
    if state.after_publication_change {
        wait_for_older_transactions(&mut conn).await?;
    }
    let mut n = 0u64;
    for (i, (relation, keys)) in tables.iter().enumerate() {
        let table_state = &mut state.tables[i];
        if table_state.done {
            continue;
        }
        info!(table = %relation.table, from = ?table_state.last_key, "backfill: reading");
        loop {
            let ctx = |what: &str| format!("backfill of {}: {what}", relation.table);
            let began = std::time::Instant::now();
            let mut tx = conn
                .begin()
                .await
                .map_err(|e| SourceError::from_sqlx(&ctx("begin"), e))?;
            sqlx::query("set transaction isolation level repeatable read, read only")
                .execute(&mut *tx)
                .await
                .map_err(|e| SourceError::from_sqlx(&ctx("set isolation"), e))?;
            let snapshot: String = sqlx::query_scalar("select pg_current_snapshot()::text")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| SourceError::from_sqlx(&ctx("snapshot"), e))?;
            let chunk = read_chunk(
                &mut tx,
                relation,
                keys,
                table_state.last_key.as_deref(),
                state.chunk_size,
                state.filter.as_deref(),
            )
            .await?;
            let committed: Vec<String> = sqlx::query_scalar(
                "select x::text from pg_snapshot_xip($1::pg_snapshot) x where pg_xact_status(x) = 'committed'",
            )
            .bind(&snapshot)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| SourceError::from_sqlx(&ctx("transaction status"), e))?;
            tx.commit()
                .await
                .map_err(|e| SourceError::from_sqlx(&ctx("commit"), e))?;
            n += 1;
            let marker = format!("H/{}/{nonce}/{n}", state.id);
            // Transactional, so that its commit flushes the WAL and the stream
            // brings it at once (a non-transactional message waits for the WAL writer).
            sqlx::query("select pg_logical_emit_message(true, $1, $2)")
                .bind(MESSAGE_PREFIX)
                .bind(&marker)
                .execute(&mut *conn)
                .await
                .map_err(|e| SourceError::from_sqlx(&ctx("high watermark"), e))?;
            let snapshot = snapshot.parse().map_err(|e: crate::watermark::ParseSnapshotError| {
                // The task's errors are the source's; this one is ficus's own.
                SourceError::definite(format!("the high watermark's snapshot: {e}"), crate::error::BUG_HINT)
            })?;
            let exhausted = chunk.exhausted;
            let rows = chunk.rows.len() as u64;
            let last_key = chunk.last_key.clone();
            let read = ChunkRead {
                table: i,
                marker,
                snapshot,
                committed_xip: committed.iter().filter_map(|x| x.parse().ok()).collect(),
                rows: chunk.rows,
                last_key: chunk.last_key,
                versions: chunk.versions,
                exhausted,
            };
            if to_session.send(read).await.is_err() {
                return Ok(()); // the session ended
            }
            match verdicts.recv().await {
                None => return Ok(()),
                Some(Verdict::Again) => continue,
                Some(Verdict::Next) if exhausted => {
                    table_state.done = true;
                    break;
                }
                Some(Verdict::Next) => table_state.last_key = last_key,
            }
            throttle.after(rows, began.elapsed()).await;
        }
    }
    Ok(())
}

/// Waits until every transaction running now has ended. A table just added to the publication
/// has its changes streamed from the publication change on; a transaction that changed it before
/// and commits later has those changes neither in the stream nor, if it commits after a chunk's
/// snapshot, in the chunk. Once it has ended, every chunk's snapshot sees it.
async fn wait_for_older_transactions(conn: &mut sqlx::PgConnection) -> Result<(), SourceError> {
    let err = |e| SourceError::from_sqlx("backfill: waiting for older transactions", e);
    let horizon: String = sqlx::query_scalar("select pg_snapshot_xmax(pg_current_snapshot())::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(err)?;
    let horizon: u64 = horizon.parse().unwrap_or(0);
    let mut said: Option<std::time::Instant> = None;
    loop {
        let xmin: String = sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        if xmin.parse::<u64>().unwrap_or(u64::MAX) >= horizon {
            return Ok(());
        }
        if said.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
            said = Some(std::time::Instant::now());
            let oldest: Option<(i32, String)> = sqlx::query_as(
                "select pid, coalesce(backend_xid::text, backend_xmin::text) from pg_stat_activity
                 where backend_xid is not null or backend_xmin is not null order by age(coalesce(backend_xid, backend_xmin)) desc limit 1",
            )
            .fetch_optional(&mut *conn)
            .await
            .map_err(err)?;
            info!(
                ?oldest,
                "backfill: its tables just entered the publication; waiting for the transactions older than that (pid, xid)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Builds the snapshot row changes of a chunk's rows, emitted at `at`.
pub(crate) fn snapshot_change(
    relation: &Arc<Relation>,
    id: &Arc<str>,
    row: Row,
    key: String,
    at: Lsn,
    now_micros: i64,
) -> RowChange {
    RowChange {
        op: Op::Snapshot,
        relation: relation.clone(),
        new: Some(row),
        old: None,
        tx: TxMeta {
            xid: 0,
            commit_lsn: at,
            commit_time_micros: now_micros,
        },
        origin: Origin::Backfill {
            id: id.clone(),
            key: key.into(),
        },
    }
}

/// The backfill's side of the stream session.
pub(crate) struct BackfillSession {
    pub id: Arc<str>,
    pub plans: Vec<TablePlan>,
    /// Which plan a stream relation's changes are tracked for, by table.
    pub by_table: HashMap<TableRef, usize>,
    pub trackers: Vec<Tracker>,
    pub state: BackfillState,
    pub config_dir: PathBuf,
    pub chunks: mpsc::Receiver<ChunkRead>,
    pub verdicts: mpsc::Sender<Verdict>,
    /// A chunk received before its high watermark arrived.
    pub pending: Option<ChunkRead>,
    /// Progress bars on a terminal, log lines otherwise.
    pub progress: Progress,
    /// The markers handled (a reconnect may replay them).
    pub delivered: std::collections::HashSet<String>,
    /// This run's markers start with it: markers of earlier runs are ignored.
    pub marker_prefix: String,
    /// The coordinator, for its error.
    pub task: Option<tokio::task::JoinHandle<Result<(), SourceError>>>,
    pub finished: bool,
}

impl BackfillSession {
    /// Tracks a streamed change of a table being backfilled.
    pub fn track(&mut self, change: &RowChange) {
        let Some(&i) = self.by_table.get(&change.relation.table) else {
            return;
        };
        let plan = &self.plans[i];
        let positions: Vec<usize> = plan
            .keyset
            .columns
            .iter()
            .filter_map(|(c, _)| change.relation.column_index(c))
            .collect();
        let tracker = &mut self.trackers[i];
        if change.op == Op::Truncate {
            tracker.record(change.tx.xid, TRUNCATED);
            return;
        }
        if plan.keyset.is_full_scan() {
            tracker.wrote(
                change.tx.xid,
                change.new.as_ref().map(row_hash),
                change.old.as_ref().map(row_hash),
            );
            return;
        }
        for row in [&change.old, &change.new].into_iter().flatten() {
            if let Some(key) = key_text(row, &positions) {
                tracker.record(change.tx.xid, &key);
            }
        }
    }

    /// Records a commit, whatever it changed.
    pub fn committed(&mut self, xid: u32) {
        for t in &mut self.trackers {
            t.committed(xid);
        }
    }
}

impl BackfillSession {
    /// Plans a backfill and starts its coordinator.
    pub async fn start(
        pool: &PgPool,
        publication: &str,
        compiled: &Compiled,
        ctx: &EventContext,
        config_dir: &Path,
        mut state: BackfillState,
    ) -> Result<BackfillSession, RunError> {
        let plans = plan(pool, publication, compiled, ctx, &state).await?;
        for (t, p) in state.tables.iter_mut().zip(&plans) {
            t.rows_estimated = t.rows_estimated.or(p.rows_estimated);
        }
        state.save(config_dir)?;
        info!(id = %state.id, tables = state.tables.len(), "backfill: starting");
        let progress = Progress::new(&state);
        let (chunk_tx, chunk_rx) = mpsc::channel(1);
        let (verdict_tx, verdict_rx) = mpsc::channel(1);
        let tables = plans.iter().map(|p| (p.relation.clone(), p.keyset.clone())).collect();
        let nonce = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let task = tokio::spawn(coordinate(
            pool.clone(),
            tables,
            state.clone(),
            nonce.clone(),
            state.throttle(),
            chunk_tx,
            verdict_rx,
        ));
        Ok(BackfillSession {
            id: state.id.clone().into(),
            marker_prefix: format!("H/{}/{nonce}/", state.id),
            by_table: plans
                .iter()
                .enumerate()
                .map(|(i, p)| (p.relation.table.clone(), i))
                .collect(),
            trackers: plans.iter().map(|_| Default::default()).collect(),
            plans,
            state,
            config_dir: config_dir.to_owned(),
            chunks: chunk_rx,
            verdicts: verdict_tx,
            pending: None,
            progress,
            delivered: Default::default(),
            task: Some(task),
            finished: false,
        })
    }
}

/// The backfills a stream session works through: one at a time, in the order
/// they were asked for.
pub(crate) struct Backfills {
    /// The one running.
    pub current: Option<BackfillSession>,
    /// The ones waiting.
    pub queue: VecDeque<BackfillState>,
    pub config_dir: PathBuf,
    /// The publication: its columns are the ones read.
    pub publication: String,
}

impl Backfills {
    /// The backfills in progress of a config, to go on with.
    pub fn load(config: &crate::Config) -> Result<Backfills, RunError> {
        Ok(Backfills {
            current: None,
            queue: BackfillState::all(&config.dir)?
                .into_iter()
                .filter(BackfillState::in_progress)
                .collect(),
            config_dir: config.dir.clone(),
            publication: config.source.publication.clone(),
        })
    }

    /// Whether no backfill runs or waits.
    pub fn idle(&self) -> bool {
        self.current.as_ref().is_none_or(|b| b.finished) && self.queue.is_empty()
    }

    /// The backfill running, unless it has finished.
    pub fn running(&mut self) -> Option<&mut BackfillSession> {
        self.current.as_mut().filter(|b| !b.finished)
    }

    /// Takes up a backfill asked for through the stream; its file is written
    /// before the request's position is acknowledged, so it survives a crash.
    /// A request seen before (a reconnect repeats it) changes nothing.
    pub fn request(&mut self, state: BackfillState) -> Result<(), RunError> {
        if self.current.as_ref().is_some_and(|b| *b.id == *state.id) || self.queue.iter().any(|q| q.id == state.id) {
            return Ok(());
        }
        match BackfillState::load(&BackfillState::path(&self.config_dir, &state.id))? {
            Some(saved) if saved.finished() => return Ok(()),
            Some(mut saved) => {
                // Asked for again after it failed: it goes on from its checkpoint.
                if saved.error.take().is_some() {
                    saved.save(&self.config_dir)?;
                }
                self.queue.push_back(saved);
            }
            None => {
                state.save(&self.config_dir)?;
                self.queue.push_back(state);
            }
        }
        info!(id = %self.queue.back().map_or("", |s| &s.id), queued = self.queue.len(), "backfill: requested");
        Ok(())
    }

    /// Records that a backfill stopped for good, in its file, for whoever waits for it.
    pub fn fail(&self, mut state: BackfillState, error: &RunError) {
        let message = match error.hint() {
            Some(hint) => format!("{error}\nhint: {hint}"),
            None => error.to_string(),
        };
        tracing::error!(id = %state.id, error = %message, "backfill failed; streaming goes on");
        state.error = Some(message);
        if let Err(e) = state.save(&self.config_dir) {
            tracing::error!(error = %e, "could not record the backfill's failure");
        }
    }
}

/// The backfill a `ficus backfill` asks for: the one in progress, or failed,
/// that reads the same rows (so it goes on from its checkpoint, with the same
/// id), else a new one.
pub fn choose(config_dir: &Path, compiled: &Compiled, opts: &BackfillOptions) -> Result<BackfillState, RunError> {
    let mut tables: Vec<String> = if opts.tables.is_empty() {
        compiled.snapshot_tables().iter().map(TableRef::to_string).collect()
    } else {
        opts.tables.iter().map(|t| TableRef::parse(t).to_string()).collect()
    };
    tables.dedup();
    if tables.is_empty() {
        return Err(RunError::Config(
            "no mapping maps snapshot rows, so a backfill has nothing to emit\nhint: add \"snapshot\" to `on` of the mappings that should see existing rows".into(),
        ));
    }
    let new = BackfillState::new(tables, opts);
    if let Some(mut state) = BackfillState::all(config_dir)?
        .into_iter()
        .rev()
        .find(|s| !s.finished() && s.same_rows(&new))
    {
        if let Some(error) = state.error.take() {
            info!(id = %state.id, %error, "backfill: going on with one that failed");
        }
        info!(id = %state.id, "backfill: resuming");
        return Ok(state);
    }
    Ok(new)
}

/// A row's hash, to recognise in a full scan a row version the stream delivered.
pub(crate) fn row_hash(row: &Row) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

/// The tracker key of a truncate: every row of the table changed.
pub(crate) const TRUNCATED: &str = "*";

/// Shows the backfill's progress: a bar per table (rows done of the estimate,
/// rows/s, ETA) when stderr is a terminal, a log line per chunk otherwise.
pub(crate) struct Progress {
    bars: Option<Vec<indicatif::ProgressBar>>,
    _multi: Option<indicatif::MultiProgress>,
}

impl Progress {
    pub fn new(state: &BackfillState) -> Progress {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress {
                bars: None,
                _multi: None,
            };
        }
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bars = state
            .tables
            .iter()
            .map(|t| {
                let bar = multi.add(indicatif::ProgressBar::new(
                    t.rows_estimated.unwrap_or(0).max(t.rows_read),
                ));
                bar.set_style(style.clone());
                bar.set_prefix(t.table.clone());
                bar.set_position(t.rows_read);
                if t.done {
                    bar.finish();
                }
                bar
            })
            .collect();
        Progress {
            bars: Some(bars),
            _multi: Some(multi),
        }
    }

    pub fn update(&self, index: usize, table: &TableState) {
        match &self.bars {
            Some(bars) => {
                let bar = &bars[index];
                if table.rows_read > bar.length().unwrap_or(0) {
                    bar.set_length(table.rows_read);
                }
                bar.set_position(table.rows_read);
                if table.done {
                    bar.finish();
                }
            }
            None => info!(
                table = %table.table,
                rows = table.rows_read,
                estimated = ?table.rows_estimated,
                emitted = table.rows_emitted,
                chunks = table.chunks,
                done = table.done,
                "backfill: chunk delivered"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_waits_the_pause_or_what_the_rate_asks() {
        let ms = Duration::from_millis;
        let none = Throttle::default();
        assert_eq!(none.wait(10_000, ms(5)), Duration::ZERO);
        let pause = Throttle {
            pause: ms(200),
            max_rate: None,
        };
        assert_eq!(pause.wait(10_000, ms(5)), ms(200));
        let rate = Throttle {
            pause: ms(0),
            max_rate: Some(1_000),
        };
        assert_eq!(rate.wait(500, ms(100)), ms(400), "500 rows at 1,000/s take 500 ms");
        assert_eq!(rate.wait(500, ms(700)), Duration::ZERO, "slower than the rate already");
        let both = Throttle {
            pause: ms(50),
            max_rate: Some(1_000),
        };
        assert_eq!(both.wait(500, ms(100)), ms(400));
        assert_eq!(both.wait(10, ms(100)), ms(50));
    }
}
