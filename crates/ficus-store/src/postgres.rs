//! The Postgres store: a schema `ficus` in any database (the source's own, or another server's).
//!
//! An append takes `LOCK TABLE ficus.events IN SHARE ROW EXCLUSIVE MODE`: one writer at a time,
//! readers never blocked, and positions commit in order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use crate::{
    Appended, ArchivedChange, COLUMNS, Checkpoint, EventStore, FORMAT, Filter, LinePage, Mode, RecordRef,
    SCHEMA_VERSION, SavedCheckpoint, StoreError, Stored, StoredChange, first_of_each_id, first_of_each_key, now_micros,
    page_from, page_query, push_filter, relations_of, stored_from,
};

const SCHEMA: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS ficus",
    "CREATE TABLE ficus.meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE ficus.events (
        position  bigint PRIMARY KEY,
        id        text NOT NULL UNIQUE,
        type      text NOT NULL,
        aggregate text NOT NULL,
        subject   text NOT NULL,
        version   bigint NOT NULL,
        time_us   bigint NOT NULL,
        lsn       bigint NOT NULL,
        event     text NOT NULL,
        UNIQUE (aggregate, subject, version)
    )",
    "CREATE TABLE ficus.checkpoints (slot text PRIMARY KEY, lsn bigint NOT NULL, updated_us bigint NOT NULL, source text)",
    "CREATE TABLE ficus.relations (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, description text NOT NULL UNIQUE)",
    "CREATE TABLE ficus.changes (
        position bigint PRIMARY KEY,
        key      text NOT NULL UNIQUE,
        lsn      bigint NOT NULL,
        time_us  bigint NOT NULL,
        relation bigint NOT NULL REFERENCES ficus.relations (id),
        change   text NOT NULL
    )",
];

/// A store in a Postgres database's schema `ficus`.
#[derive(Clone)]
pub struct PgStore {
    shown: String,
    pub(crate) pool: PgPool,
    /// Whether `checkpoints` has its `source` column (format version 2 on).
    source_column: bool,
}

impl PgStore {
    /// Opens the store in the database at `url`; in [`Mode::Create`], creates the schema's tables
    /// when the schema has none.
    pub async fn open(url: &str, mode: Mode) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::new(
                format!("the store url does not parse: {e}"),
                "write it like postgres://user@host:5432/database",
            )
        })?;
        let shown = format!(
            "postgres {}:{}/{} (schema ficus)",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("?")
        );
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.application_name("ficus-store"))
            .await
            .map_err(|e| {
                StoreError::new(
                    format!("{shown}: cannot connect: {e}"),
                    "check the store sink's url, and that its server runs",
                )
            })?;
        let mut store = PgStore {
            shown,
            pool,
            source_column: true,
        };
        let err = |e| StoreError::sql(&store.shown, "opening the store", e);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'ficus' AND c.relkind IN ('r', 'p') ORDER BY 1",
        )
        .fetch_all(&store.pool)
        .await
        .map_err(err)?;
        if tables.is_empty() {
            if mode == Mode::Existing {
                return Err(StoreError::missing(
                    format!("no store in {}", store.shown),
                    "`ficus run` creates the store with its first events; check the store sink's url",
                ));
            }
            store.create().await?;
            return Ok(store);
        }
        if !tables.iter().any(|t| t == "meta") {
            return Err(StoreError::new(
                format!(
                    "{}: the schema ficus holds tables that are not a ficus store's ({})",
                    store.shown,
                    tables.join(", ")
                ),
                "use another database for the store; ficus does not write into another program's schema",
            ));
        }
        let meta: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM ficus.meta")
            .fetch_all(&store.pool)
            .await
            .map_err(err)?;
        let version = crate::check_meta(&store.shown, &meta)?;
        for table in crate::TABLES {
            if !tables.iter().any(|t| t == table) {
                return Err(crate::missing_table(&store.shown, &format!("ficus.{table}")));
            }
        }
        store.source_column = crate::has_source(version);
        if version < SCHEMA_VERSION && mode == Mode::Create {
            store.upgrade().await?;
        }
        Ok(store)
    }

    async fn create(&self) -> Result<(), StoreError> {
        let err = |e| StoreError::sql(&self.shown, "creating the store", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Two writers starting at once: the second waits, then finds the tables.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('ficus-store'))")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass('ficus.meta')::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        if exists.is_some() {
            return Ok(());
        }
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *tx).await.map_err(err)?;
        }
        sqlx::query("INSERT INTO ficus.meta (key, value) VALUES ('format', $1), ('schema_version', $2)")
            .bind(FORMAT)
            .bind(SCHEMA_VERSION.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    /// Brings a store of an older format version to the current one: `checkpoints.source`
    /// (version 2; version 3 changed the SQLite store only).
    async fn upgrade(&mut self) -> Result<(), StoreError> {
        let err = |e| StoreError::sql(&self.shown, "upgrading the store's format", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("ALTER TABLE ficus.checkpoints ADD COLUMN IF NOT EXISTS source text")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query("UPDATE ficus.meta SET value = $1 WHERE key = 'schema_version'")
            .bind(SCHEMA_VERSION.to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.source_column = true;
        Ok(())
    }

    /// How the store is named in messages.
    pub fn describe(&self) -> String {
        self.shown.clone()
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl EventStore for PgStore {
    async fn append_refs(
        &self,
        batch: &[RecordRef<'_>],
        changes: &[ArchivedChange],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<Appended, StoreError> {
        let err = |e| StoreError::sql(&self.shown, "appending events", e);
        let fresh = first_of_each_id(batch);
        let mut tx = self.pool.begin().await.map_err(err)?;
        // One writer at a time, so the positions and versions read are the last ones.
        sqlx::query("LOCK TABLE ficus.events IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        // The batch's ids that are stored already: a repeated id is a no-op.
        let ids: Vec<&str> = fresh.iter().map(|(_, r)| r.id).collect();
        let repeated: HashSet<String> = if ids.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT id FROM ficus.events WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?
                .into_iter()
                .collect()
        };
        let fresh: Vec<&RecordRef<'_>> = fresh
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| !repeated.contains(r.id))
            .collect();
        let stored = fresh.len() as u64;
        if !fresh.is_empty() {
            // Each stream's last version, once per batch.
            let mut seen = HashSet::new();
            let streams: Vec<(&str, &str)> = fresh
                .iter()
                .map(|r| (r.aggregate, r.subject))
                .filter(|s| seen.insert(*s))
                .collect();
            let (aggregates, subjects): (Vec<&str>, Vec<&str>) = streams.iter().copied().unzip();
            let last: Vec<i64> = sqlx::query_scalar(
                "SELECT (SELECT coalesce(max(e.version), 0) FROM ficus.events e
                         WHERE e.aggregate = s.aggregate AND e.subject = s.subject)
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s (aggregate, subject, n) ORDER BY n",
            )
            .bind(&aggregates)
            .bind(&subjects)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            let mut versions: HashMap<(&str, &str), i64> = streams.into_iter().zip(last).collect();
            let mut position: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM ficus.events")
                .fetch_one(&mut *tx)
                .await
                .map_err(err)?;
            let mut columns = Columns::default();
            for r in &fresh {
                position += 1;
                let version = versions.entry((r.aggregate, r.subject)).or_insert(0);
                *version += 1;
                columns.position.push(position);
                columns.version.push(*version);
                columns.id.push(r.id);
                columns.ty.push(r.ty);
                columns.aggregate.push(r.aggregate);
                columns.subject.push(r.subject);
                columns.time.push(r.time_micros);
                columns.lsn.push(r.lsn as i64);
                columns.event.push(r.event);
            }
            sqlx::query(APPEND)
                .bind(&columns.position)
                .bind(&columns.id)
                .bind(&columns.ty)
                .bind(&columns.aggregate)
                .bind(&columns.subject)
                .bind(&columns.version)
                .bind(&columns.time)
                .bind(&columns.lsn)
                .bind(&columns.event)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        let changes = first_of_each_key(changes);
        if !changes.is_empty() {
            let mut relation_ids = HashMap::new();
            for description in relations_of(&changes) {
                sqlx::query("INSERT INTO ficus.relations (description) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(&description)
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                let id: i64 = sqlx::query_scalar("SELECT id FROM ficus.relations WHERE description = $1")
                    .bind(&description)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(err)?;
                relation_ids.insert(description, id);
            }
            let seq: Vec<i64> = changes.iter().map(|(s, _)| *s).collect();
            let key: Vec<&str> = changes.iter().map(|(_, c)| c.key.as_str()).collect();
            let lsn: Vec<i64> = changes.iter().map(|(_, c)| c.lsn as i64).collect();
            let time: Vec<i64> = changes.iter().map(|(_, c)| c.time_micros).collect();
            let relation: Vec<i64> = changes.iter().map(|(_, c)| relation_ids[&c.relation]).collect();
            let change: Vec<&str> = changes.iter().map(|(_, c)| c.change.as_str()).collect();
            sqlx::query(ARCHIVE)
                .bind(&seq)
                .bind(&key)
                .bind(&lsn)
                .bind(&time)
                .bind(&relation)
                .bind(&change)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        if let Some(c) = checkpoint {
            sqlx::query(
                "INSERT INTO ficus.checkpoints (slot, lsn, updated_us, source) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (slot) DO UPDATE
                 SET lsn = greatest(ficus.checkpoints.lsn, excluded.lsn), updated_us = excluded.updated_us,
                     source = coalesce(excluded.source, ficus.checkpoints.source)",
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
        Ok(Appended {
            stored,
            repeated: batch.len() as u64 - stored,
        })
    }

    async fn checkpoint(&self, slot: &str) -> Result<Option<SavedCheckpoint>, StoreError> {
        let sql = if self.source_column {
            "SELECT lsn, source FROM ficus.checkpoints WHERE slot = $1"
        } else {
            "SELECT lsn, NULL::text FROM ficus.checkpoints WHERE slot = $1"
        };
        let row: Option<(i64, Option<String>)> = sqlx::query_as(sql)
            .bind(slot)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "reading the checkpoint", e))?;
        Ok(row.map(|(lsn, source)| SavedCheckpoint {
            lsn: lsn as u64,
            source,
        }))
    }

    async fn forget_checkpoint(&self, slot: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ficus.checkpoints WHERE slot = $1")
            .bind(slot)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "forgetting the checkpoint", e))?;
        Ok(())
    }

    async fn read(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM ficus.events WHERE position > "));
        q.push_bind(after);
        push_filter(&mut q, filter);
        q.push(" ORDER BY position LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "reading events", e))?;
        rows.iter()
            .map(stored_from)
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::sql(&self.shown, "reading events", e))
    }

    async fn read_page(&self, filter: &Filter, after: i64, limit: i64) -> Result<LinePage, StoreError> {
        let text: Option<String> =
            page_query::<Postgres>("ficus.events", |c| format!("octet_length({c})"), filter, after, limit)
                .build_query_scalar()
                .fetch_one(&self.pool)
                .await
                .map_err(|e| StoreError::sql(&self.shown, "reading events", e))?;
        page_from(&self.shown, text)
    }

    async fn read_changes(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        let mut q =
            QueryBuilder::<Postgres>::new("SELECT position, relation, change FROM ficus.changes WHERE position > ");
        q.push_bind(after);
        let bounds = filter.bounds();
        push_filter(&mut q, &bounds);
        q.push(" ORDER BY position LIMIT ").push_bind(limit);
        let rows: Vec<(i64, i64, String)> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "reading archived changes", e))?;
        Ok(rows.into_iter().map(StoredChange::from).collect())
    }

    async fn relation(&self, id: i64) -> Result<String, StoreError> {
        sqlx::query_scalar("SELECT description FROM ficus.relations WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "reading an archived relation", e))
    }

    async fn end(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(position), 0)::bigint FROM ficus.events")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::sql(&self.shown, "reading the last position", e))
    }
}

/// A batch as one array per column, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    position: Vec<i64>,
    id: Vec<&'a str>,
    ty: Vec<&'a str>,
    aggregate: Vec<&'a str>,
    subject: Vec<&'a str>,
    version: Vec<i64>,
    time: Vec<i64>,
    lsn: Vec<i64>,
    event: Vec<&'a str>,
}

/// Appends a batch given as arrays, numbered already (positions and versions).
const APPEND: &str = "
INSERT INTO ficus.events (position, id, type, aggregate, subject, version, time_us, lsn, event)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::text[])";

/// Archives changes given as arrays: leaves out archived keys, numbers the rest after the last
/// position.
const ARCHIVE: &str = "
INSERT INTO ficus.changes (position, key, lsn, time_us, relation, change)
SELECT (SELECT coalesce(max(position), 0) FROM ficus.changes) + row_number() OVER (ORDER BY seq),
       key, lsn, time_us, relation, change
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[])
  AS b (seq, key, lsn, time_us, relation, change)
WHERE NOT EXISTS (SELECT 1 FROM ficus.changes c WHERE c.key = b.key)
ORDER BY seq";
