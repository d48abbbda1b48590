//! `ficus status`: where ficus is, read from the outside — from the server (the slot: who streams
//! from it, what it confirmed, the WAL it holds, the WAL not yet acknowledged), from what ficus
//! recorded (the store's checkpoint or `.ficus/slots/SLOT.json`) and from its backfills. It takes
//! no lock and opens no replication connection, so it works while `ficus run` runs and while it
//! does not. The JSON shape (`--json`) is documented in docs/operations.md and kept stable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ficus_model::Lsn;
use serde::{Deserialize, Serialize};

use crate::backfill::BackfillState;
use crate::config::{Config, SinkKind};
use crate::health::{Health, LastEvent, Role};
use crate::{RunError, position};

/// What `ficus status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The slot, as the server describes it.
    pub slot: SlotStatus,
    /// The server's current WAL position.
    pub server_lsn: Lsn,
    /// What ficus recorded as delivered: every event up to it is durable in every sink.
    pub recorded: Option<Recorded>,
    /// Backfills, newest last: those in progress and the last finished one.
    pub backfills: Vec<BackfillStatus>,
    /// Who holds the lease on the slot (streams), and who waits for it.
    pub lease: LeaseStatus,
    /// What the last `ficus run` of the slot on this machine (or this shared directory) said of
    /// itself: written every 5 seconds while it runs, and when it stops.
    pub run: Option<RunState>,
}

/// A `ficus run`'s own account, in `.ficus/run/SLOT.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// Its process id.
    pub pid: u32,
    /// `starting`, `standby`, `streaming` or `stopping`.
    pub role: Role,
    /// When it wrote this (UTC, RFC 3339).
    pub updated: String,
    /// Since the commit of the oldest transaction it read and had not made durable everywhere.
    pub lag_seconds: f64,
    /// The last error it met and got past (or stopped on).
    pub last_error: Option<String>,
    /// Per sink, the last event it made durable.
    pub sinks: BTreeMap<String, LastEvent>,
}

/// Where a run keeps its account.
pub fn run_file(config_dir: &Path, slot: &str) -> PathBuf {
    config_dir.join(".ficus").join("run").join(format!("{slot}.json"))
}

/// Writes the run's account (best effort: a status that cannot be written must not stop the
/// stream; it is logged).
pub(crate) fn save_run_state(config: &Config, health: &Health) {
    let seen = health.seen();
    let state = RunState {
        pid: std::process::id(),
        role: seen.role,
        updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        lag_seconds: seen.lag_seconds,
        last_error: seen.last_error,
        sinks: seen.last_events,
    };
    let path = run_file(&config.dir, &config.source.slot);
    let bytes = serde_json::to_vec_pretty(&state).expect("a run state serializes");
    if let Err(e) = crate::state::write_durably(&path, &bytes) {
        tracing::warn!(error = %e, "could not write the run's status file");
    }
}

/// The lease.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LeaseStatus {
    /// The ficus that holds it: its lease connection.
    pub holder: Option<LeaseConnectionStatus>,
    /// The ficus processes waiting to take over.
    pub standbys: Vec<LeaseConnectionStatus>,
}

/// A ficus's lease connection, as the server sees it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseConnectionStatus {
    /// Its backend on the server.
    pub pid: i32,
    /// Where it connects from (null over a Unix socket).
    pub client_addr: Option<String>,
    /// Since when (the server's clock).
    pub since: Option<String>,
}

impl From<ficus_postgres::lease::Leaseholder> for LeaseConnectionStatus {
    fn from(h: ficus_postgres::lease::Leaseholder) -> LeaseConnectionStatus {
        LeaseConnectionStatus {
            pid: h.pid,
            client_addr: h.client_addr,
            since: h.since,
        }
    }
}

/// The slot.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlotStatus {
    /// Its name.
    pub name: String,
    /// Whether the server has it.
    pub exists: bool,
    /// Whether a walsender streams from it (a `ficus run`).
    pub active: bool,
    /// The process of that walsender on the server.
    pub active_pid: Option<i32>,
    /// `reserved`, `extended`, `unreserved` or `lost` (the server removed WAL it needs).
    pub wal_status: Option<String>,
    /// What the slot confirmed: the server may recycle WAL before it.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// The oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
    /// WAL the server keeps for the slot, in bytes.
    pub retained_wal_bytes: Option<u64>,
    /// WAL written since what the slot confirmed, in bytes: how far ficus is behind.
    pub lag_bytes: Option<u64>,
}

/// Where ficus recorded its position.
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    /// The position.
    pub lsn: Lsn,
    /// `store` (the event store's checkpoint) or `file` (`.ficus/slots/SLOT.json`).
    #[serde(rename = "in")]
    pub kept_in: &'static str,
}

/// A backfill.
#[derive(Clone, Debug, Serialize)]
pub struct BackfillStatus {
    /// Its id.
    pub id: String,
    /// Whether it goes on.
    pub in_progress: bool,
    /// Why it stopped for good, when it did.
    pub error: Option<String>,
    /// Per table: rows emitted, the estimate, done.
    pub tables: Vec<BackfillTable>,
}

/// A backfill's table.
#[derive(Clone, Debug, Serialize)]
pub struct BackfillTable {
    /// `schema.table`.
    pub table: String,
    /// Rows emitted as snapshot events.
    pub rows_emitted: u64,
    /// Rows the table had when planned (an estimate).
    pub rows_estimated: Option<u64>,
    /// Whether it is done.
    pub done: bool,
}

/// Reads the status of the config's slot.
pub async fn status(config: &Config) -> Result<Status, RunError> {
    let source = config.source_url()?;
    let pool = ficus_postgres::catalog::connect(&source).await?;
    let state = ficus_postgres::slot::state(&pool, &config.source.slot).await;
    let lease = ficus_postgres::lease::holders(&pool, &config.source.slot).await;
    pool.close().await;
    let state = state?;
    let (holder, standbys) = lease?;
    let lease = LeaseStatus {
        holder: holder.map(Into::into),
        standbys: standbys.into_iter().map(Into::into).collect(),
    };
    let slot = match state.slot {
        Some(s) => SlotStatus {
            name: config.source.slot.clone(),
            exists: true,
            active: s.active,
            active_pid: s.active_pid,
            wal_status: s.wal_status,
            confirmed_flush_lsn: s.confirmed_flush,
            restart_lsn: s.restart,
            retained_wal_bytes: s.retained_bytes,
            lag_bytes: s.lag_bytes,
        },
        None => SlotStatus {
            name: config.source.slot.clone(),
            ..SlotStatus::default()
        },
    };
    let all = BackfillState::all(&config.dir)?;
    let last_finished = all.iter().rposition(|b| !b.in_progress());
    let backfills = all
        .iter()
        .enumerate()
        .filter(|(i, b)| b.in_progress() || Some(*i) == last_finished)
        .map(|(_, b)| BackfillStatus {
            id: b.id.clone(),
            in_progress: b.in_progress(),
            error: b.error.clone(),
            tables: b
                .tables
                .iter()
                .map(|t| BackfillTable {
                    table: t.table.clone(),
                    rows_emitted: t.rows_emitted,
                    rows_estimated: t.rows_estimated,
                    done: t.done,
                })
                .collect(),
        })
        .collect();
    Ok(Status {
        slot,
        server_lsn: state.current,
        recorded: recorded(config).await?,
        backfills,
        lease,
        run: crate::state::load(
            &run_file(&config.dir, &config.source.slot),
            "delete it: the next ficus run writes it again",
        )?,
    })
}

/// The position ficus recorded: the store's checkpoint when the config has a store (read as a
/// reader, beside a running writer), else the position file.
async fn recorded(config: &Config) -> Result<Option<Recorded>, RunError> {
    for sink in &config.sinks {
        if let SinkKind::Store(c) = &sink.kind {
            let location = c.location(&config.dir);
            if let ficus_store::Location::Sqlite(path) = &location
                && !path.exists()
            {
                // No store yet: nothing was delivered.
                return Ok(None);
            }
            let store = ficus_store::Store::open(&location, ficus_store::Mode::Existing).await?;
            use ficus_store::EventStore;
            let saved = store.checkpoint(&config.source.slot).await?;
            return Ok(saved.map(|s| Recorded {
                lsn: Lsn(s.lsn),
                kept_in: "store",
            }));
        }
    }
    Ok(
        position::load(&position::file(&config.dir, &config.source.slot))?.map(|p| Recorded {
            lsn: p.lsn,
            kept_in: "file",
        }),
    )
}

/// The status in words, a line each.
pub fn describe(status: &Status) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let slot = &status.slot;
    if !slot.exists {
        let _ = writeln!(s, "slot {}: none on the server (ficus run creates it)", slot.name);
    } else {
        let who = match (slot.active, slot.active_pid) {
            (true, Some(pid)) => format!("streaming (walsender pid {pid})"),
            _ => "not streaming".to_owned(),
        };
        let _ = writeln!(
            s,
            "slot {}: {who}, wal_status {}",
            slot.name,
            slot.wal_status.as_deref().unwrap_or("unknown")
        );
        if let Some(confirmed) = slot.confirmed_flush_lsn {
            let _ = writeln!(
                s,
                "  confirmed {confirmed}; server at {}; behind by {}",
                status.server_lsn,
                bytes(slot.lag_bytes)
            );
        }
        let _ = writeln!(s, "  WAL held by the slot: {}", bytes(slot.retained_wal_bytes));
    }
    match &status.lease.holder {
        Some(h) => {
            let _ = writeln!(
                s,
                "lease: held by the ficus whose lease connection is pid {}{}",
                h.pid,
                h.client_addr
                    .as_ref()
                    .map(|a| format!(" (from {a})"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(s, "lease: free (no ficus run holds it)");
        }
    }
    for standby in &status.lease.standbys {
        let _ = writeln!(
            s,
            "  standby: lease connection pid {}{}",
            standby.pid,
            standby
                .client_addr
                .as_ref()
                .map(|a| format!(" (from {a})"))
                .unwrap_or_default()
        );
    }
    if let Some(run) = &status.run {
        let role = serde_json::to_value(run.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "ficus run pid {}: {role} (as of {}); lag {:.1}s",
            run.pid, run.updated, run.lag_seconds
        );
        if let Some(e) = &run.last_error {
            let _ = writeln!(s, "  last error: {e}");
        }
        for (sink, e) in &run.sinks {
            let _ = writeln!(
                s,
                "  sink {sink}: last event {} ({} {}), lsn {}",
                e.id, e.ty, e.subject, e.lsn
            );
        }
    }
    match &status.recorded {
        Some(r) => {
            let _ = writeln!(s, "recorded: {} (in the {})", r.lsn, r.kept_in);
        }
        None => {
            let _ = writeln!(s, "recorded: nothing yet");
        }
    }
    for b in &status.backfills {
        let state = match (&b.error, b.in_progress) {
            (Some(e), _) => format!("failed: {e}"),
            (None, true) => "in progress".to_owned(),
            (None, false) => "complete".to_owned(),
        };
        let _ = writeln!(s, "backfill {}: {state}", b.id);
        for t in &b.tables {
            let of = t.rows_estimated.map(|e| format!(" of about {e}")).unwrap_or_default();
            let done = if t.done { ", done" } else { "" };
            let _ = writeln!(s, "  {}: {} rows{of}{done}", t.table, t.rows_emitted);
        }
    }
    s
}

/// Bytes for people: `0 B`, `12.3 MB`.
fn bytes(b: Option<u64>) -> String {
    let Some(b) = b else { return "unknown".into() };
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
