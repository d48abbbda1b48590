//! The event store: an append-only, deduplicated log of events.
//!
//! Every stored event has
//! - a **position**: global, gap-free, increasing from 1 in the order events were delivered;
//! - a **stream** — its aggregate and subject (`public.orders` / `42`) — and a **version** in that
//!   stream, from 1;
//! - its **id**, unique: appending an event whose id is stored already is a no-op, so a repeat
//!   after a crash is not a duplicate;
//! - the event itself, the exact JSON line the other sinks received, so a replay is byte for byte
//!   the original delivery.
//!
//! An append stores a batch of events and the source's **checkpoint** (the last commit LSN whose
//! events are all stored) in one transaction: delivery into the store is exactly-once.
//!
//! Two backends implement [`EventStore`]: SQLite ([`SqliteStore`], one file, zero setup) and
//! Postgres ([`PgStore`], a schema `ficus` in any database). Both take one writer at a time (a lock
//! held for the append's transaction) and any number of readers while it writes; positions become
//! visible in order, so a reader following the store never skips one.

mod page;
mod postgres;
mod sink;
mod sqlite;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;

pub(crate) use page::paged_event;
pub use page::{LinePage, PagedLine};
pub use postgres::PgStore;
pub use sink::{DEFAULT_STORE_PATH, StoreConfig, StoreSink};
pub use sqlite::SqliteStore;

/// The store format's version, written in the store; a store of a newer version is refused.
pub const SCHEMA_VERSION: i64 = 3;
/// Format versions: 1, the first; 2 adds `checkpoints.source` (what the runtime knows of the
/// source at the checkpoint); 3: the SQLite store finds a stored id by its key
/// (`events.id_key`, [`id_key`], indexed) instead of a unique index on the id's text (the Postgres
/// store's tables are those of version 2). A writer upgrades an older store in place; a reader
/// reads every version.
const FIRST_WITH_SOURCE: i64 = 2;
/// The first format version whose SQLite `events` has `id_key`.
const FIRST_WITH_ID_KEY: i64 = 3;
/// The value of `format` in a store's metadata: how ficus knows a store from a foreign database.
pub const FORMAT: &str = "ficus-store";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    message: String,
    hint: String,
    missing: bool,
}

impl StoreError {
    /// An error with its hint.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> StoreError {
        StoreError {
            message: message.into(),
            hint: hint.into(),
            missing: false,
        }
    }

    /// There is no store there (opening a reader, [`Mode::Existing`]).
    pub(crate) fn missing(message: impl Into<String>, hint: impl Into<String>) -> StoreError {
        StoreError {
            missing: true,
            ..StoreError::new(message, hint)
        }
    }

    /// Whether the error is that there is no store there yet (`ficus run` creates it).
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    /// A failed statement.
    pub(crate) fn sql(store: &str, what: &str, e: sqlx::Error) -> StoreError {
        StoreError::new(
            format!("store {store}: {what}: {e}"),
            "nothing undelivered was acknowledged: fix the store's database, then start ficus again",
        )
    }

    /// How to fix it.
    pub fn hint(&self) -> &str {
        &self.hint
    }
}

/// Where a store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A Postgres database (the store is its schema `ficus`).
    Postgres(String),
}

/// Whether opening may create the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The writer: creates the store when there is none.
    Create,
    /// A reader: the store must exist.
    Existing,
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The event id.
    pub id: String,
    /// The event's type (`OrderPaid`).
    pub ty: String,
    /// The aggregate its stream belongs to (`public.orders`).
    pub aggregate: String,
    /// The subject: the aggregate id.
    pub subject: String,
    /// The event's time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The commit LSN it comes from.
    pub lsn: u64,
    /// The event as delivered: one JSON line, without its newline.
    pub event: String,
}

impl Record {
    /// The record, borrowed.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            id: &self.id,
            ty: &self.ty,
            aggregate: &self.aggregate,
            subject: &self.subject,
            time_micros: self.time_micros,
            lsn: self.lsn,
            event: &self.event,
        }
    }
}

/// An event to append, borrowed from what holds it (the store sink appends the events in
/// flight, which the lane holds until they are durable, without copying them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The event id.
    pub id: &'a str,
    /// The event's type.
    pub ty: &'a str,
    /// The aggregate its stream belongs to.
    pub aggregate: &'a str,
    /// The subject: the aggregate id.
    pub subject: &'a str,
    /// The event's time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The commit LSN it comes from.
    pub lsn: u64,
    /// The event as delivered: one JSON line, without its newline.
    pub event: &'a str,
}

/// A row change to archive (`archive = true`): what `ficus remap` maps again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedChange {
    /// What identifies the change (its origin): a repeat is left out.
    pub key: String,
    /// The commit LSN.
    pub lsn: u64,
    /// The commit time, microseconds since the Unix epoch.
    pub time_micros: i64,
    /// The relation as described when the change was made, with the source it came from: one
    /// row of `relations` per distinct description (its schema version).
    pub relation: String,
    /// The change itself (operation, transaction, origin, values), as JSON.
    pub change: String,
}

/// An archived row change, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChange {
    /// Its position in the archive, from 1, in the order changes were processed.
    pub position: i64,
    /// The id of its relation's description ([`EventStore::relation`]).
    pub relation: i64,
    /// The change, as archived.
    pub change: String,
}

impl From<(i64, i64, String)> for StoredChange {
    /// From a row of `position, relation, change`.
    fn from((position, relation, change): (i64, i64, String)) -> StoredChange {
        StoredChange {
            position,
            relation,
            change,
        }
    }
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// Its global position, from 1.
    pub position: i64,
    /// Its version in its stream, from 1.
    pub version: i64,
    /// What was appended.
    pub record: Record,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Events stored.
    pub stored: u64,
    /// Events left out because their id was stored already (or repeated in the batch).
    pub repeated: u64,
}

/// The source's checkpoint, written with an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint<'a> {
    /// The slot the LSN is a position of.
    pub slot: &'a str,
    /// The last position whose events are all stored.
    pub lsn: u64,
    /// What the runtime knows of the source there (opaque to the store), kept with the LSN.
    pub source: Option<&'a str>,
}

/// A checkpoint as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCheckpoint {
    /// The last position whose events are all stored.
    pub lsn: u64,
    /// What the runtime recorded of the source with it (`None` from stores of format version 1).
    pub source: Option<String>,
}

/// Which stored events to read. Bounds are inclusive; empty lists mean all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Lowest position.
    pub from: Option<i64>,
    /// Highest position.
    pub to: Option<i64>,
    /// Earliest event time, microseconds since the Unix epoch.
    pub since_micros: Option<i64>,
    /// Latest event time.
    pub until_micros: Option<i64>,
    /// Lowest commit LSN.
    pub from_lsn: Option<u64>,
    /// Highest commit LSN.
    pub to_lsn: Option<u64>,
    /// Event types.
    pub types: Vec<String>,
    /// Subjects.
    pub subjects: Vec<String>,
}

impl Filter {
    /// The filter's position, time and LSN bounds only (what applies to archived changes).
    pub fn bounds(&self) -> Filter {
        Filter {
            types: vec![],
            subjects: vec![],
            ..self.clone()
        }
    }
}

/// The tables of a store.
pub(crate) const TABLES: [&str; 4] = ["events", "checkpoints", "relations", "changes"];

/// What every store backend does.
pub trait EventStore {
    /// Appends events in order, leaving out those whose id is stored already, archives row changes
    /// likewise (by key), and records the checkpoint, all in one transaction.
    fn append(
        &self,
        batch: &[Record],
        changes: &[ArchivedChange],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send
    where
        Self: Sync,
    {
        async move {
            let batch: Vec<RecordRef<'_>> = batch.iter().map(Record::as_ref).collect();
            self.append_refs(&batch, changes, checkpoint).await
        }
    }

    /// [`EventStore::append`], of borrowed events.
    fn append_refs(
        &self,
        batch: &[RecordRef<'_>],
        changes: &[ArchivedChange],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Up to `limit` archived changes after position `after` that pass the filter's position,
    /// time and LSN bounds, in position order.
    fn read_changes(
        &self,
        filter: &Filter,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StoredChange>, StoreError>> + Send;

    /// A relation's description, by id.
    fn relation(&self, id: i64) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// The slot's checkpoint, if any.
    fn checkpoint(&self, slot: &str) -> impl Future<Output = Result<Option<SavedCheckpoint>, StoreError>> + Send;

    /// Forgets the slot's checkpoint (the slot was dropped); the events stay.
    fn forget_checkpoint(&self, slot: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` events after position `after` that pass the filter, in position order.
    fn read(
        &self,
        filter: &Filter,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;

    /// [`EventStore::read`] as a replay reads it: the events' lines, and what a line does not say,
    /// in one page. [`Store`] reads fewer than `limit` events when the page would not fit in one
    /// value: only an empty page says there is nothing after `after`.
    fn read_page(
        &self,
        filter: &Filter,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<LinePage, StoreError>> + Send;

    /// The last position (0 when the store is empty).
    fn end(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// A store of either backend.
#[derive(Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(SqliteStore),
    /// Postgres.
    Postgres(PgStore),
}

impl Store {
    /// Opens (and in [`Mode::Create`], creates) the store at a location.
    pub async fn open(location: &Location, mode: Mode) -> Result<Store, StoreError> {
        Ok(match location {
            Location::Sqlite(path) => Store::Sqlite(SqliteStore::open(path, mode).await?),
            Location::Postgres(url) => Store::Postgres(PgStore::open(url, mode).await?),
        })
    }

    /// How the store is named in messages.
    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite(s) => s.describe(),
            Store::Postgres(s) => s.describe(),
        }
    }

    /// Closes the store's connections.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

impl EventStore for Store {
    async fn append_refs(
        &self,
        batch: &[RecordRef<'_>],
        changes: &[ArchivedChange],
        checkpoint: Option<Checkpoint<'_>>,
    ) -> Result<Appended, StoreError> {
        match self {
            Store::Sqlite(s) => s.append_refs(batch, changes, checkpoint).await,
            Store::Postgres(s) => s.append_refs(batch, changes, checkpoint).await,
        }
    }

    async fn read_changes(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<StoredChange>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read_changes(filter, after, limit).await,
            Store::Postgres(s) => s.read_changes(filter, after, limit).await,
        }
    }

    async fn relation(&self, id: i64) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => s.relation(id).await,
            Store::Postgres(s) => s.relation(id).await,
        }
    }

    async fn checkpoint(&self, slot: &str) -> Result<Option<SavedCheckpoint>, StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint(slot).await,
            Store::Postgres(s) => s.checkpoint(slot).await,
        }
    }

    async fn forget_checkpoint(&self, slot: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.forget_checkpoint(slot).await,
            Store::Postgres(s) => s.forget_checkpoint(slot).await,
        }
    }

    async fn read(&self, filter: &Filter, after: i64, limit: i64) -> Result<Vec<Stored>, StoreError> {
        match self {
            Store::Sqlite(s) => s.read(filter, after, limit).await,
            Store::Postgres(s) => s.read(filter, after, limit).await,
        }
    }

    async fn read_page(&self, filter: &Filter, after: i64, limit: i64) -> Result<LinePage, StoreError> {
        let mut limit = limit;
        loop {
            let read = match self {
                Store::Sqlite(s) => s.read_page(filter, after, limit).await,
                Store::Postgres(s) => s.read_page(filter, after, limit).await,
            };
            match read {
                // A page is one value, and a value has a limit (1 GB in SQLite and Postgres): a
                // page of events of a megabyte and more is read in fewer events at a time, down
                // to one, whose error (if it still fails) is the one to show.
                Err(e) if limit > 1 => {
                    limit = (limit / 16).max(1);
                    tracing::debug!(store = %self.describe(), after, limit, error = %e, "a page failed; reading fewer events at a time");
                }
                read => return read,
            }
        }
    }

    async fn end(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.end().await,
            Store::Postgres(s) => s.end().await,
        }
    }
}

/// The items without repeats of a key (the first one stays), each with its place.
fn first_of_each<T>(items: &[T], key: impl Fn(&T) -> &str) -> Vec<(i64, &T)> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| seen.insert(key(item)))
        .map(|(i, item)| (i as i64, item))
        .collect()
}

/// The batch without repeats of an id, with each event's place in it.
pub(crate) fn first_of_each_id<'a, 'r>(batch: &'a [RecordRef<'r>]) -> Vec<(i64, &'a RecordRef<'r>)> {
    first_of_each(batch, |r| r.id)
}

/// The archived changes without repeats of a key, with each one's place.
pub(crate) fn first_of_each_key(changes: &[ArchivedChange]) -> Vec<(i64, &ArchivedChange)> {
    first_of_each(changes, |c| &c.key)
}

/// The distinct relation descriptions of a batch of changes, in order of appearance.
pub(crate) fn relations_of(changes: &[(i64, &ArchivedChange)]) -> Vec<String> {
    let mut seen = HashSet::new();
    changes
        .iter()
        .filter(|(_, c)| seen.insert(c.relation.as_str()))
        .map(|(_, c)| c.relation.clone())
        .collect()
}

/// The current time, microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The columns of a stored event, in the order the backends select them.
pub(crate) const COLUMNS: &str = "position, version, id, type, aggregate, subject, time_us, lsn, event";

/// A stored event from a row selected with [`COLUMNS`].
pub(crate) fn stored_from<'r, R>(row: &'r R) -> Result<Stored, sqlx::Error>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Stored {
        position: row.try_get(0)?,
        version: row.try_get(1)?,
        record: Record {
            id: row.try_get(2)?,
            ty: row.try_get(3)?,
            aggregate: row.try_get(4)?,
            subject: row.try_get(5)?,
            time_micros: row.try_get(6)?,
            lsn: row.try_get::<i64, _>(7)? as u64,
            event: row.try_get(8)?,
        },
    })
}

/// The query of a page of events (`read_page`) in `table`, with the backend's byte `length`.
pub(crate) fn page_query<'a, DB>(
    table: &str,
    length: impl Fn(&str) -> String,
    filter: &'a Filter,
    after: i64,
    limit: i64,
) -> sqlx::QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::QueryBuilder::new(format!(
        "SELECT string_agg({}, '') FROM (SELECT * FROM {table} WHERE position > ",
        paged_event(length)
    ));
    q.push_bind(after);
    push_filter(&mut q, filter);
    q.push(" ORDER BY position LIMIT ").push_bind(limit).push(") page");
    q
}

/// The page a store built, or what is wrong with it.
pub(crate) fn page_from(store: &str, text: Option<String>) -> Result<LinePage, StoreError> {
    LinePage::parse(text).map_err(|e| {
        StoreError::new(
            format!("{store}: {e}"),
            "the store was damaged: restore it from a backup, or replay from a later position (--from)",
        )
    })
}

/// Adds a filter's conditions (after `WHERE position > after`) to a query.
pub(crate) fn push_filter<'a, DB>(q: &mut sqlx::QueryBuilder<'a, DB>, filter: &'a Filter)
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let bounds = [
        ("position >= ", filter.from),
        ("position <= ", filter.to),
        ("time_us >= ", filter.since_micros),
        ("time_us <= ", filter.until_micros),
        ("lsn >= ", filter.from_lsn.map(|l| l as i64)),
        ("lsn <= ", filter.to_lsn.map(|l| l as i64)),
    ];
    for (condition, value) in bounds {
        if let Some(v) = value {
            q.push(" AND ").push(condition).push_bind(v);
        }
    }
    for (column, values) in [("type", &filter.types), ("subject", &filter.subjects)] {
        if values.is_empty() {
            continue;
        }
        q.push(" AND ").push(column).push(" IN (");
        let mut list = q.separated(", ");
        for v in values {
            list.push_bind(v.as_str());
        }
        q.push(")");
    }
}

#[cfg(test)]
mod tests;

/// Checks a store's metadata: ficus's format, a version this ficus reads; returns the version.
pub(crate) fn check_meta(store: &str, meta: &[(String, String)]) -> Result<i64, StoreError> {
    let get = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("format") != Some(FORMAT) {
        return Err(StoreError::new(
            format!("{store} is not a ficus store (its metadata names no format {FORMAT:?})"),
            "point the store sink at a ficus store, or at a new one",
        ));
    }
    match get("schema_version").and_then(|v| v.parse::<i64>().ok()) {
        Some(v) if v <= SCHEMA_VERSION => Ok(v),
        Some(v) => Err(StoreError::new(
            format!("{store} is a ficus store of format version {v}; this ficus reads up to {SCHEMA_VERSION}"),
            "use the ficus release that wrote the store, or a newer one",
        )),
        None => Err(StoreError::new(
            format!("{store}: the store's metadata has no schema_version"),
            "the store was damaged: restore it from a backup",
        )),
    }
}

/// A store table is gone.
pub(crate) fn missing_table(store: &str, table: &str) -> StoreError {
    StoreError::new(
        format!("{store} is a ficus store, but its table {table} is missing"),
        "restore the store from a backup; ficus does not create the table again, so that no history is silently lost",
    )
}

/// Whether a store of this format version has `checkpoints.source`.
pub(crate) fn has_source(version: i64) -> bool {
    version >= FIRST_WITH_SOURCE
}

/// Whether a SQLite store of this format version has `events.id_key`.
pub(crate) fn has_id_key(version: i64) -> bool {
    version >= FIRST_WITH_ID_KEY
}

/// The key the SQLite store finds an event id by: the id's 64-bit FNV-1a hash, as a signed
/// integer. Part of the store's format (version 3 on): it never changes.
///
/// An index of 8-byte keys is a fraction of one of 36-character ids, and an append rewrites every
/// page of it that its events land on — at random, as ids are hashes (UUID v5). Two ids may share
/// a key: the key only finds candidates, and the ids themselves are compared.
pub(crate) fn id_key(id: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = id.bytes().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    hash as i64
}
