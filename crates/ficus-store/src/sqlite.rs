//! The SQLite store: one file, in WAL mode (readers never wait for the writer), synchronous=FULL
//! (a committed append survives a power loss, not only a crash).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite};

use crate::{
    Appended, ArchivedChange, COLUMNS, Checkpoint, EventStore, FORMAT, Filter, LinePage, Mode, RecordRef,
    SCHEMA_VERSION, SavedCheckpoint, StoreError, Stored, StoredChange, first_of_each_id, first_of_each_key, now_micros,
    page_from, page_query, push_filter, relations_of, stored_from,
};

/// Rows per INSERT statement: 10 parameters each, under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 2_000;
/// Parameters per lookup statement.
const ROWS_PER_LOOKUP: usize = 2_000;
// A statement of a batch's rows has as many parameters as the part of the batch it takes: only
// the full-size ones are kept prepared. Every size kept, the driver's cache of 100 prepared
// statements filled with statements of up to thousands of parameters each, one per batch size:
// the bench's mixed workload into the store peaked at 116 MiB, 78 MiB with only these kept (and
// ran no slower: 6.3–6.5 s instead of 6.7–7.1 s).

/// The page cache, in KiB. SQLite's default (2 MiB) is too small for the id index: pages of it
/// that a batch dirties are spilled to the WAL mid-transaction, and written again and again.
const CACHE_KIB: u64 = 16 * 1024;

/// The WAL is folded into the database file (a checkpoint) once about this much was appended
/// since the last time — by a connection of its own, off the append's path. SQLite's automatic
/// checkpoint (every 1,000 pages) runs in the commit that crosses the limit, which then waits for
/// it: tens of milliseconds added to a commit's latency once a second at 5,000 events a second.
const CHECKPOINT_AFTER_BYTES: u64 = 2 * 1024 * 1024;
/// What an append writes to the WAL besides its rows, at least (a page): a checkpoint-only
/// append adds up too, so a store that only records checkpoints still has its WAL folded in.
const APPEND_OVERHEAD_BYTES: u64 = 4096;

/// The events, as of format version 3: an id is found by its key (`id_key`, [`crate::id_key`]),
/// not by a unique index on its text — the append looks the keys of its batch up and compares the
/// ids found, under the writer's lock.
const EVENTS: &str = "CREATE TABLE events (
        position  INTEGER PRIMARY KEY,
        id        TEXT NOT NULL,
        id_key    INTEGER NOT NULL,
        type      TEXT NOT NULL,
        aggregate TEXT NOT NULL,
        subject   TEXT NOT NULL,
        version   INTEGER NOT NULL,
        time_us   INTEGER NOT NULL,
        lsn       INTEGER NOT NULL,
        event     TEXT NOT NULL,
        UNIQUE (aggregate, subject, version)
    )";
const EVENTS_ID_KEY: &str = "CREATE INDEX events_id_key ON events (id_key)";

const SCHEMA: &[&str] = &[
    "CREATE TABLE ficus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    EVENTS,
    EVENTS_ID_KEY,
    "CREATE TABLE checkpoints (slot TEXT PRIMARY KEY, lsn INTEGER NOT NULL, updated_us INTEGER NOT NULL, source TEXT)",
    "CREATE TABLE relations (id INTEGER PRIMARY KEY, description TEXT NOT NULL UNIQUE)",
    "CREATE TABLE changes (
        position INTEGER PRIMARY KEY,
        key      TEXT NOT NULL UNIQUE,
        lsn      INTEGER NOT NULL,
        time_us  INTEGER NOT NULL,
        relation INTEGER NOT NULL REFERENCES relations (id),
        change   TEXT NOT NULL
    )",
];

/// A store in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    pub(crate) pool: SqlitePool,
    /// Whether `checkpoints` has its `source` column (format version 2 on).
    source_column: bool,
    /// Whether `events` has its `id_key` column (format version 3 on): what an append needs.
    id_key_column: bool,
    wal: Arc<WalCheckpoints>,
}

/// The store's own WAL checkpoints: the bytes appended since the last one, and the one running.
struct WalCheckpoints {
    /// The store, as messages name it.
    shown: String,
    options: SqliteConnectOptions,
    appended: AtomicU64,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WalCheckpoints {
    /// After an append of `bytes`: past the limit, a checkpoint on a connection of its own, unless
    /// one is running.
    fn appended(&self, rows_bytes: u64) {
        let bytes = rows_bytes + APPEND_OVERHEAD_BYTES;
        if self.appended.fetch_add(bytes, Ordering::Relaxed) + bytes < CHECKPOINT_AFTER_BYTES {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.appended.store(0, Ordering::Relaxed);
        let options = self.options.clone();
        let shown = self.shown.clone();
        *running = Some(tokio::spawn(async move {
            // PASSIVE: copies what no reader still needs, never waits for the writer. A failed
            // checkpoint loses nothing (the WAL keeps the pages): the next one, or the file's
            // close, folds them in.
            let checkpointed = async {
                let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
                sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await?;
                conn.close().await
            };
            if let Err(e) = checkpointed.await {
                tracing::warn!(store = %shown, error = %e, "a WAL checkpoint failed; the next one will fold the WAL in");
            }
        }));
    }

    /// Waits for the checkpoint running, if one is.
    async fn finish(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = running {
            let _ = task.await;
        }
    }
}

impl SqliteStore {
    /// Opens the store in `path`; in [`Mode::Create`], creates the file and its tables when absent.
    pub async fn open(path: &Path, mode: Mode) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        if mode == Mode::Existing && !path.exists() {
            return Err(StoreError::missing(
                format!("no store at {shown}"),
                "`ficus run` creates the store with its first events; check the store sink's path in ficus.toml",
            ));
        }
        let not_a_store = |e: sqlx::Error| {
            StoreError::new(
                format!("{shown} is not a ficus store: {e}"),
                "point the store sink's path at a ficus store, or at a file that does not exist yet (ficus creates it)",
            )
        };
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(not_a_store)?
            .filename(path)
            .create_if_missing(mode == Mode::Create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .pragma("cache_size", format!("-{}", CACHE_KIB))
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "0")
            .busy_timeout(Duration::from_secs(30));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::new(
                    format!("{shown}: {e}"),
                    "check the store sink's path and its permissions",
                )
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(not_a_store)?;
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(&pool)
                .await
                .map_err(not_a_store)?;
        let mut store = SqliteStore {
            path: path.to_owned(),
            pool,
            source_column: true,
            id_key_column: true,
            wal: Arc::new(WalCheckpoints {
                shown: shown.clone(),
                options: options.create_if_missing(false),
                appended: AtomicU64::new(0),
                running: Mutex::new(None),
            }),
        };
        if tables.is_empty() {
            if mode == Mode::Existing {
                return Err(StoreError::new(
                    format!("{shown} is an empty database, not a ficus store yet"),
                    "`ficus run` creates the store with its first events",
                ));
            }
            store.create().await?;
            return Ok(store);
        }
        if !tables.iter().any(|t| t == "ficus_meta") {
            return Err(StoreError::new(
                format!(
                    "{shown} is a SQLite database, but not a ficus store (its tables: {})",
                    tables.join(", ")
                ),
                "point the store sink's path at a ficus store, or at a file that does not exist yet (ficus creates it); ficus does not write into another program's database",
            ));
        }
        let meta: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM ficus_meta")
            .fetch_all(&store.pool)
            .await
            .map_err(not_a_store)?;
        let version = crate::check_meta(&shown, &meta)?;
        for table in crate::TABLES {
            if !tables.iter().any(|t| t == table) {
                return Err(crate::missing_table(&shown, table));
            }
        }
        store.source_column = crate::has_source(version);
        store.id_key_column = crate::has_id_key(version);
        if version < SCHEMA_VERSION && mode == Mode::Create {
            store.upgrade().await?;
        }
        Ok(store)
    }

    async fn create(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::sql(&self.describe(), "creating the store", e);
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
        }
        sqlx::query("INSERT INTO ficus_meta (key, value) VALUES ('format', ?), ('schema_version', ?)")
            .bind(FORMAT)
            .bind(SCHEMA_VERSION.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// Brings a store of an older format version to the current one, in one transaction:
    /// `checkpoints.source` (version 2), and `events` with its `id_key` (version 3) — the table is
    /// written again, its events as they were (positions, versions, lines), each with its key.
    async fn upgrade(&mut self) -> Result<(), StoreError> {
        let err = |e| StoreError::sql(&self.describe(), "upgrading the store's format", e);
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        // Another writer opening the store at the same moment may have upgraded it first: what
        // is to be done follows from the version read again under the lock.
        let meta: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM ficus_meta")
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        let version = crate::check_meta(&self.describe(), &meta)?;
        if !crate::has_source(version) {
            sqlx::query("ALTER TABLE checkpoints ADD COLUMN source TEXT")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        if !crate::has_id_key(version) {
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            // About 100,000 events a second (2 CPUs); the file keeps the old table's pages, free,
            // for the next appends.
            tracing::info!(store = %self.describe(), events, "upgrading the store to format version 3: its events are written again, each with its id's key (once)");
            for statement in [
                "ALTER TABLE events RENAME TO events_before_v3",
                // The events of a store whose version was set back by hand may have it already.
                "DROP INDEX IF EXISTS events_id_key",
                EVENTS,
                EVENTS_ID_KEY,
            ] {
                sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
            }
            let (mut after, mut written, began) = (0_i64, 0_i64, std::time::Instant::now());
            loop {
                let ids: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT position, id FROM events_before_v3 WHERE position > ? ORDER BY position LIMIT ?",
                )
                .bind(after)
                .bind(ROWS_PER_LOOKUP as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
                let Some((last, _)) = ids.last() else { break };
                after = *last;
                let mut q = QueryBuilder::<Sqlite>::new("WITH k (position, id_key) AS (");
                q.push_values(&ids, |mut row, (position, id)| {
                    row.push_bind(*position).push_bind(crate::id_key(id));
                });
                q.push(
                    ") INSERT INTO events (position, id, id_key, type, aggregate, subject, version, time_us, lsn, event)
                     SELECT e.position, e.id, k.id_key, e.type, e.aggregate, e.subject, e.version, e.time_us, e.lsn, e.event
                     FROM k JOIN events_before_v3 e ON e.position = k.position",
                );
                q.build().execute(&mut *tx).await.map_err(err)?;
                written += ids.len() as i64;
                // A long upgrade says where it is, about every ten seconds.
                if written % 1_000_000 < ROWS_PER_LOOKUP as i64 {
                    tracing::info!(store = %self.describe(), written, of = events, elapsed = ?began.elapsed(), "upgrading the store to format version 3");
                }
            }
            sqlx::query("DROP TABLE events_before_v3")
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        sqlx::query("UPDATE ficus_meta SET value = ? WHERE key = 'schema_version'")
            .bind(SCHEMA_VERSION.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.source_column = true;
        self.id_key_column = true;
        Ok(())
    }

    /// How the store is named in messages.
    pub fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    /// Closes the file (its last connection folds the WAL in).
    pub async fn close(&self) {
        self.wal.finish().await;
        self.pool.close().await;
    }
}

impl EventStore for SqliteStore {
    async fn append_refs(
        &self,
        batch: &[RecordRef<'_>],
        changes: &[ArchivedChange],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<Appended, StoreError> {
        let err = |e| StoreError::sql(&self.describe(), "appending events", e);
        if !self.id_key_column {
            return Err(StoreError::new(
                format!(
                    "{} is of an older format (no events.id_key): it was opened to be read, not written",
                    self.describe()
                ),
                "`ficus run` opens the store as its writer and upgrades it first",
            ));
        }
        // Each event with its id's key, computed once.
        let fresh: Vec<(i64, &RecordRef<'_>)> = first_of_each_id(batch)
            .into_iter()
            .map(|(_, r)| (crate::id_key(r.id), r))
            .collect();
        let mut conn = self.pool.acquire().await.map_err(err)?;
        // IMMEDIATE: the write lock first, so the positions and versions read are the last ones.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        // The batch's ids that are stored already: a repeated id is a no-op. The keys find the
        // stored events that may have one of them; their ids are what is compared.
        let mut repeated = HashSet::new();
        for part in fresh.chunks(ROWS_PER_LOOKUP) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT id FROM events WHERE id_key IN (");
            let mut keys = q.separated(", ");
            for (key, _) in part {
                keys.push_bind(*key);
            }
            q.push(")");
            let found: Vec<String> = q
                .build_query_scalar()
                .persistent(part.len() == ROWS_PER_LOOKUP)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            repeated.extend(found);
        }
        let fresh: Vec<(i64, &RecordRef<'_>)> = fresh.into_iter().filter(|(_, r)| !repeated.contains(r.id)).collect();
        // Each stream's last version, once per batch.
        let mut versions: HashMap<(&str, &str), i64> = HashMap::new();
        let streams: Vec<(&str, &str)> = {
            let mut seen = HashSet::new();
            fresh
                .iter()
                .map(|(_, r)| (r.aggregate, r.subject))
                .filter(|s| seen.insert(*s))
                .collect()
        };
        for part in streams.chunks(ROWS_PER_LOOKUP / 2) {
            let mut q = QueryBuilder::<Sqlite>::new("WITH s (n, aggregate, subject) AS (");
            q.push_values(part.iter().enumerate(), |mut row, (n, (aggregate, subject))| {
                row.push_bind(n as i64).push_bind(*aggregate).push_bind(*subject);
            });
            q.push(
                ") SELECT n, (SELECT coalesce(max(e.version), 0) FROM events e
                   WHERE e.aggregate = s.aggregate AND e.subject = s.subject) FROM s",
            );
            let found: Vec<(i64, i64)> = q
                .build_query_as()
                .persistent(part.len() == ROWS_PER_LOOKUP / 2)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            for (n, version) in found {
                versions.insert(part[n as usize], version);
            }
        }
        let mut position: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        for part in fresh.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (position, id, id_key, type, aggregate, subject, version, time_us, lsn, event) ",
            );
            q.push_values(part, |mut row, (key, r)| {
                position += 1;
                let version = versions.entry((r.aggregate, r.subject)).or_insert(0);
                *version += 1;
                row.push_bind(position)
                    .push_bind(r.id)
                    .push_bind(*key)
                    .push_bind(r.ty)
                    .push_bind(r.aggregate)
                    .push_bind(r.subject)
                    .push_bind(*version)
                    .push_bind(r.time_micros)
                    .push_bind(r.lsn as i64)
                    .push_bind(r.event);
            });
            q.build()
                .persistent(part.len() == ROWS_PER_STATEMENT)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let stored = fresh.len() as u64;
        let changes = first_of_each_key(changes);
        let mut relation_ids = HashMap::new();
        for description in relations_of(&changes) {
            sqlx::query("INSERT INTO relations (description) VALUES (?) ON CONFLICT DO NOTHING")
                .bind(&description)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            let id: i64 = sqlx::query_scalar("SELECT id FROM relations WHERE description = ?")
                .bind(&description)
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            relation_ids.insert(description, id);
        }
        for part in changes.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("WITH batch (seq, key, lsn, time_us, relation, change) AS (");
            q.push_values(part, |mut row, (seq, c)| {
                row.push_bind(*seq)
                    .push_bind(c.key.as_str())
                    .push_bind(c.lsn as i64)
                    .push_bind(c.time_micros)
                    .push_bind(relation_ids[&c.relation])
                    .push_bind(c.change.as_str());
            });
            q.push(ARCHIVE);
            q.build()
                .persistent(part.len() == ROWS_PER_STATEMENT)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        if let Some(c) = checkpoint {
            sqlx::query(
                "INSERT INTO checkpoints (slot, lsn, updated_us, source) VALUES (?, ?, ?, ?)
                 ON CONFLICT (slot) DO UPDATE SET lsn = max(lsn, excluded.lsn), updated_us = excluded.updated_us,
                 source = coalesce(excluded.source, source)",
            )
            .bind(c.slot)
            .bind(c.lsn as i64)
            .bind(now_micros())
            .bind(c.source)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        let bytes = fresh.iter().map(|(_, r)| r.event.len()).sum::<usize>()
            + changes.iter().map(|(_, c)| c.change.len()).sum::<usize>();
        self.wal.appended(bytes as u64);
        Ok(Appended {
            stored,
            repeated: batch.len() as u64 - stored,
        })
    }

    async fn checkpoint(&self, slot: &str) -> Result<Option<SavedCheckpoint>, StoreError> {
        let sql = if self.source_column {
            "SELECT lsn, source FROM checkpoints WHERE slot = ?"
        } else {
            "SELECT lsn, NULL FROM checkpoints WHERE slot = ?"
        };
        let row: Option<(i64, Option<String>)> = sqlx::query_as(sql)
            .bind(slot)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "reading the checkpoint", e))?;
        Ok(row.map(|(lsn, source)| SavedCheckpoint {
            lsn: lsn as u64,
            source,
        }))
    }

    async fn forget_checkpoint(&self, slot: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM checkpoints WHERE slot = ?")
            .bind(slot)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "forgetting the checkpoint", e))?;
        Ok(())
    }

    async fn read(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM events WHERE position > "));
        q.push_bind(after);
        push_filter(&mut q, filter);
        q.push(" ORDER BY position LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "reading events", e))?;
        rows.iter()
            .map(stored_from)
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::sql(&self.describe(), "reading events", e))
    }

    async fn read_page(&self, filter: &Filter, after: i64, limit: i64) -> Result<LinePage, StoreError> {
        let text: Option<String> =
            page_query::<Sqlite>("events", |c| format!("length(CAST({c} AS BLOB))"), filter, after, limit)
                .build_query_scalar()
                .fetch_one(&self.pool)
                .await
                .map_err(|e| StoreError::sql(&self.describe(), "reading events", e))?;
        page_from(&self.describe(), text)
    }

    async fn read_changes(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT position, relation, change FROM changes WHERE position > ");
        q.push_bind(after);
        let bounds = filter.bounds();
        push_filter(&mut q, &bounds);
        q.push(" ORDER BY position LIMIT ").push_bind(limit);
        let rows: Vec<(i64, i64, String)> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "reading archived changes", e))?;
        Ok(rows.into_iter().map(StoredChange::from).collect())
    }

    async fn relation(&self, id: i64) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT description FROM relations WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "reading an archived relation", e))
    }

    async fn end(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.describe(), "reading the last position", e))
    }
}

/// The rest of an archive statement, after the batch's VALUES: leaves out archived keys, numbers
/// the rest after the last position.
const ARCHIVE: &str = ")
INSERT INTO changes (position, key, lsn, time_us, relation, change)
SELECT (SELECT coalesce(max(position), 0) FROM changes) + row_number() OVER (ORDER BY seq),
       key, lsn, time_us, relation, change
FROM batch b WHERE NOT EXISTS (SELECT 1 FROM changes c WHERE c.key = b.key) ORDER BY seq";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Record;

    /// SQLite's automatic checkpoint is off (it would hold up the commit that crosses its
    /// limit): the store folds its WAL into the file itself, once about 2 MiB were appended.
    #[tokio::test]
    async fn the_wal_is_folded_into_the_file_without_sqlites_automatic_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ficus.db");
        let store = SqliteStore::open(&path, Mode::Create).await.unwrap();
        let created = std::fs::metadata(&path).unwrap().len();
        let data = "x".repeat(1_000);
        for batch in 0..6u32 {
            let records: Vec<Record> = (0..500)
                .map(|i| {
                    let n = batch * 500 + i;
                    Record {
                        id: format!("id-{n}"),
                        ty: "OrderPlaced".into(),
                        aggregate: "public.orders".into(),
                        subject: n.to_string(),
                        time_micros: i64::from(n),
                        lsn: u64::from(n),
                        event: format!(r#"{{"id":"id-{n}","data":"{data}"}}"#),
                    }
                })
                .collect();
            store.append(&records, &[], None).await.unwrap();
        }
        store.wal.finish().await;
        let folded = std::fs::metadata(&path).unwrap().len();
        assert!(
            folded > created + 1024 * 1024,
            "the database file holds {folded} bytes (created with {created}): its WAL was not checkpointed"
        );
        store.close().await;
    }
}
