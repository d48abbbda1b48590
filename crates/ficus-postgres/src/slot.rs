//! The slot ficus owns on the source (and the teardown of the publication with it).
//!
//! An abandoned slot keeps every WAL segment from its confirmed position on:
//! the source's disk fills up. `ficus teardown` drops both.

use ficus_model::Lsn;
use sqlx::{PgPool, Row};
use tracing::info;

use crate::SourceError;

fn quote(s: &str) -> String {
    ficus_model::relation::quote_ident(s)
}

/// The slot as the server describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Everything before it was acknowledged.
    pub confirmed_flush: Lsn,
    /// `pg_replication_slots.wal_status`: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// The process streaming from it, if any.
    pub active_pid: Option<i32>,
}

impl SlotInfo {
    /// Whether the server removed WAL the slot needs: it cannot stream any more.
    pub fn is_invalidated(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The slot, `None` when there is none; a slot that is not a `pgoutput` slot of
/// `database` is an error (it is not ficus's).
pub async fn inspect(pool: &PgPool, name: &str, database: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = sqlx::query(
        "select plugin::text, database::text, confirmed_flush_lsn::text, wal_status, active_pid
         from pg_replication_slots where slot_name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading the slot", e))?;
    let Some(row) = row else { return Ok(None) };
    let (plugin, db, confirmed): (Option<String>, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if plugin.as_deref() != Some("pgoutput") || db.as_deref() != Some(database) {
        return Err(SourceError::definite(
            format!(
                "slot {name} exists but is not a pgoutput slot of database {database} (plugin {plugin:?}, database {db:?})"
            ),
            "give ficus a slot of its own ([source] slot = \"...\")",
        ));
    }
    let confirmed_flush = match confirmed.as_deref().map(str::parse::<Lsn>) {
        Some(Ok(lsn)) => lsn,
        Some(Err(e)) => return Err(SourceError::definite(e.to_string(), "report this as a bug")),
        None => Lsn(0),
    };
    Ok(Some(SlotInfo {
        confirmed_flush,
        wal_status: row.get(3),
        active_pid: row.get(4),
    }))
}

/// Creates the slot (`pgoutput`); returns where it starts.
pub async fn create(pool: &PgPool, name: &str) -> Result<Lsn, SourceError> {
    let lsn: String = sqlx::query_scalar("select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(name)
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx(&format!("creating slot {name}"), e))?;
    info!(slot = name, lsn = %lsn, "created slot");
    lsn.parse()
        .map_err(|e: ficus_model::lsn::ParseLsnError| SourceError::definite(e.to_string(), "report this as a bug"))
}

/// A backend whose transaction a slot being created waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// Its process on the server.
    pub pid: i32,
    /// How long its transaction has been open, in seconds.
    pub age_secs: i64,
    /// `idle in transaction`, `active`, ...
    pub state: Option<String>,
    /// Its user.
    pub user: Option<String>,
    /// Its application (`application_name`).
    pub application: Option<String>,
    /// Its last statement (the first 200 characters).
    pub query: Option<String>,
}

/// The transactions a slot being created waits for: every one holding a transaction id that was
/// open before the creation started (a logical slot starts where no transaction is in flight),
/// oldest first; not the creating backend itself (the slot's `active_pid`).
pub async fn blockers(pool: &PgPool, slot: &str) -> Result<Vec<Blocker>, SourceError> {
    type Row = (i32, i64, Option<String>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "select a.pid, extract(epoch from now() - a.xact_start)::bigint, a.state, a.usename::text,
                a.application_name, left(a.query, 200)
         from pg_stat_activity a
         where a.backend_xid is not null and a.pid <> pg_backend_pid()
           and a.pid not in (select active_pid from pg_replication_slots where slot_name = $1 and active_pid is not null)
           and a.xact_start < coalesce((select b.query_start from pg_stat_activity b
                                        join pg_replication_slots s on s.active_pid = b.pid
                                        where s.slot_name = $1), now())
         order by a.xact_start",
    )
    .bind(slot)
    .fetch_all(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading what the slot's creation waits for", e))?;
    Ok(rows
        .into_iter()
        .map(|(pid, age_secs, state, user, application, query)| Blocker {
            pid,
            age_secs,
            state,
            user,
            application,
            query,
        })
        .collect())
}

/// Cancels the creation of `slot` on the server (the backend creating it), so that no slot is
/// left behind once the transactions it waits for end.
pub async fn cancel_creation(pool: &PgPool, slot: &str) -> Result<bool, SourceError> {
    let cancelled: Option<bool> = sqlx::query_scalar(
        "select pg_cancel_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("cancelling the slot's creation", e))?;
    Ok(cancelled.unwrap_or(false))
}

/// Drops the slot, which nobody may be streaming from.
pub async fn drop(pool: &PgPool, name: &str) -> Result<(), SourceError> {
    if let Some(pid) = active_pid(pool, name).await? {
        return Err(SourceError::definite(
            format!("slot {name} is in use by process {pid}"),
            "stop the ficus that streams from it first",
        ));
    }
    sqlx::query("select pg_drop_replication_slot($1)")
        .bind(name)
        .execute(pool)
        .await
        .map_err(|e| SourceError::from_sqlx(&format!("dropping slot {name}"), e))?;
    info!(slot = name, "dropped slot");
    Ok(())
}

/// Whether the slot exists.
pub async fn exists(pool: &PgPool, name: &str) -> Result<bool, SourceError> {
    sqlx::query_scalar("select exists (select 1 from pg_replication_slots where slot_name = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx("reading the slot", e))
}

/// The slot's confirmed position, `None` when there is no such slot.
pub async fn confirmed_flush(pool: &PgPool, name: &str) -> Result<Option<Lsn>, SourceError> {
    let lsn: Option<Option<String>> =
        sqlx::query_scalar("select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(|e| SourceError::from_sqlx("reading the slot", e))?;
    Ok(lsn.flatten().and_then(|l| l.parse().ok()))
}

/// The process streaming from the slot, if any.
pub async fn active_pid(pool: &PgPool, name: &str) -> Result<Option<i32>, SourceError> {
    let pid: Option<Option<i32>> =
        sqlx::query_scalar("select active_pid from pg_replication_slots where slot_name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(|e| SourceError::from_sqlx("reading the slot", e))?;
    Ok(pid.flatten())
}

/// Drops the slot and the publication; what is absent is skipped.
pub async fn teardown(pool: &PgPool, slot: &str, publication: &str) -> Result<Vec<String>, SourceError> {
    let mut done = Vec::new();
    if exists(pool, slot).await? {
        self::drop(pool, slot).await?;
        done.push(format!("dropped slot {slot}"));
    } else {
        done.push(format!("no slot {slot}"));
    }
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_publication where pubname = $1)")
        .bind(publication)
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx("reading the publication", e))?;
    if exists {
        sqlx::query(&format!("drop publication {}", quote(publication)))
            .execute(pool)
            .await
            .map_err(|e| SourceError::from_sqlx("dropping the publication", e))?;
        done.push(format!("dropped publication {publication}"));
    } else {
        done.push(format!("no publication {publication}"));
    }
    Ok(done)
}

/// Whether the slot holds changes, up to `upto`, of transactions that commit at or after `after`
/// (what a consumer that confirmed `after` has not seen yet), decoded without consuming them
/// (`pg_logical_slot_peek_binary_changes`). `None` when someone streams from the slot meanwhile.
pub async fn holds_changes_after(
    pool: &PgPool,
    name: &str,
    publication: &str,
    after: Lsn,
    upto: Lsn,
) -> Result<Option<bool>, SourceError> {
    let rows: Result<Vec<Vec<u8>>, sqlx::Error> = sqlx::query_scalar(
        "select data from pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, null,
             'proto_version', '1', 'publication_names', $3)",
    )
    .bind(name)
    .bind(upto.to_string())
    .bind(publication)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(e)) if e.message().contains("is active for PID") => return Ok(None),
        Err(e) => return Err(SourceError::from_sqlx(&format!("reading what slot {name} holds"), e)),
    };
    let mut commits_after = false;
    for data in rows {
        match data.first() {
            // Begin: the transaction's commit LSN follows the tag.
            Some(b'B') if data.len() >= 9 => {
                let commit = u64::from_be_bytes(data[1..9].try_into().expect("8 bytes"));
                commits_after = commit >= after.0;
            }
            Some(b'I' | b'U' | b'D' | b'T') if commits_after => return Ok(Some(true)),
            _ => {}
        }
    }
    Ok(Some(false))
}

/// What `ficus status` shows of the slot and the server: positions and what they cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// The server's current WAL position.
    pub current: Lsn,
    /// The slot, when there is one.
    pub slot: Option<SlotRow>,
}

/// A row of `pg_replication_slots`, with the server's distances from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRow {
    /// Whether a walsender streams from it.
    pub active: bool,
    /// That walsender's process.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Everything before it was acknowledged.
    pub confirmed_flush: Option<Lsn>,
    /// The oldest WAL the slot keeps.
    pub restart: Option<Lsn>,
    /// WAL the server keeps for the slot: from its restart position to the current one.
    pub retained_bytes: Option<u64>,
    /// WAL written since what the slot confirmed: what ficus has yet to acknowledge.
    pub lag_bytes: Option<u64>,
}

/// The slot's state and the server's position, read in one statement (so the distances are
/// between positions of one moment).
pub async fn state(pool: &PgPool, name: &str) -> Result<SlotState, SourceError> {
    let row = sqlx::query(
        "select c.lsn::text, s.slot_name is not null, coalesce(s.active, false), s.active_pid, s.wal_status,
                s.confirmed_flush_lsn::text, s.restart_lsn::text,
                pg_wal_lsn_diff(c.lsn, s.restart_lsn)::int8, pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::int8
         from (select pg_current_wal_lsn() as lsn) c
         left join pg_replication_slots s on s.slot_name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .map_err(|e| SourceError::from_sqlx("reading the slot's state", e))?;
    // A position the server sends that does not parse is an error, not a missing position.
    let lsn = |s: Option<String>| -> Result<Option<Lsn>, SourceError> {
        s.map(|s| s.parse::<Lsn>())
            .transpose()
            .map_err(|e| SourceError::definite(format!("the slot's state: {e}"), "report this as a bug"))
    };
    let current = lsn(row.get(0))?
        .ok_or_else(|| SourceError::definite("the server gave no current WAL position", "report this as a bug"))?;
    let slot = match row.get::<bool, _>(1) {
        false => None,
        true => Some(SlotRow {
            active: row.get(2),
            active_pid: row.get(3),
            wal_status: row.get(4),
            confirmed_flush: lsn(row.get(5))?,
            restart: lsn(row.get(6))?,
            retained_bytes: row.get::<Option<i64>, _>(7).map(|b| b.max(0) as u64),
            lag_bytes: row.get::<Option<i64>, _>(8).map(|b| b.max(0) as u64),
        }),
    };
    Ok(SlotState { current, slot })
}
