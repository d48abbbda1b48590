//! `ficus backfill`: runs a backfill here, or hands it to the `ficus run`
//! streaming from the slot and waits for it.
//!
//! ```text
//! ficus backfill                    source                      ficus run (holds the slot)
//! ──────────────                    ──────                      ─────────────────────────
//! write .ficus/backfills/ID.json
//! slot in use? ── request message ─▶ WAL ─────────────────────▶ take it up (file first),
//! wait: read ID.json ◀──────────────────── checkpoint per chunk ─ run it between transactions
//! slot free (the run stopped)? take over: stream and backfill here, from the checkpoint
//! ```
//!
//! Waiting reads the backfill's file, so it needs the config directory the
//! `ficus run` uses; `--no-wait` returns once the request is written.

use std::time::Duration;

use ficus_mapping::EventContext;
use ficus_postgres::{SourceError, catalog, slot};
use tokio::sync::watch;
use tracing::info;

use crate::backfill::{self, BackfillOptions, BackfillState, Progress, REQUEST_PREFIX};
use crate::config::Config;
use crate::run::{RunOptions, check_live, run};
use crate::{RunError, load_mappings};

/// How often a waiting `ficus backfill` looks at the backfill's file.
const POLL: Duration = Duration::from_millis(250);
/// After this long without a chunk, a waiting `ficus backfill` says why that may be.
const QUIET: Duration = Duration::from_secs(60);

/// How a `ficus backfill` ended.
#[derive(Debug)]
pub enum Outcome {
    /// The backfill is complete and its events are delivered.
    Done(BackfillState),
    /// Handed to the `ficus run` of process `pid` (`--no-wait`).
    Handed { state: BackfillState, pid: i32 },
    /// No `ficus run` streams: the next one takes it up (`--no-wait`).
    Saved(BackfillState),
    /// Stopped by a signal; it goes on from its last chunk.
    Stopped(BackfillState),
}

/// Runs `ficus backfill`: checks the backfill can run, records it, then hands it
/// to the `ficus run` holding the slot, or runs it here when none does.
/// Without a `ficus run` to hand it to, it streams itself like `ficus run --until-caught-up`
/// with `running`'s other options (`--resync`, `--give-up-after`).
pub async fn backfill(
    config: &Config,
    opts: &BackfillOptions,
    no_wait: bool,
    running: &RunOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, RunError> {
    let files = load_mappings(config)?;
    let url = config.source_url()?;
    let pool = catalog::connect(&url).await?;
    catalog::preflight(&pool).await?;
    let compiled = check_live(&files, &pool, &config.source.publication).await?;
    let state = backfill::choose(&config.dir, &compiled, opts)?;
    // Keys, replica identity, snapshot mappings: fail here, not in the running ficus.
    backfill::plan(
        &pool,
        &config.source.publication,
        &compiled,
        &EventContext::new("check", "check"),
        &state,
    )
    .await?;
    // The slot and the publication are `ficus run`'s: it creates a new slot with
    // an exported snapshot when a backfill waits (the cheap special case).
    let path = BackfillState::path(&config.dir, &state.id);
    // New, or failed before (its error cleared): recorded for whoever does it.
    if BackfillState::load(&path)?.is_none_or(|saved| saved.error.is_some()) {
        state.save(&config.dir)?;
    }
    let mut requested = false;
    loop {
        // A walsender left by a ficus that was just killed may still show as
        // active: the request is then wasted, and the wait below takes over.
        let Some(pid) = slot::active_pid(&pool, &config.source.slot).await? else {
            if no_wait && !requested {
                return Ok(Outcome::Saved(state));
            }
            // Nobody streams (or the ficus run stopped while we waited): do it here.
            info!(id = %state.id, "backfill: running it here");
            let options = RunOptions {
                until_caught_up: true,
                ..running.clone()
            };
            run(config, options, shutdown.clone()).await?;
            return finished_or_stopped(&path, state);
        };
        if !requested {
            let lsn: String = sqlx::query_scalar("select pg_logical_emit_message(true, $1, $2)::text")
                .bind(REQUEST_PREFIX)
                .bind(serde_json::to_string(&state).expect("state serializes"))
                .fetch_one(&pool)
                .await
                .map_err(|e| SourceError::from_sqlx("writing the backfill request", e))?;
            requested = true;
            info!(id = %state.id, pid, at = %lsn, slot = %config.source.slot, "backfill: handed to the ficus run streaming from the slot");
            if no_wait {
                return Ok(Outcome::Handed { state, pid });
            }
        }
        match wait(&pool, &config.source.slot, &path, &mut shutdown).await? {
            Waited::Done(done) => return Ok(Outcome::Done(done)),
            Waited::Stopped => return Ok(Outcome::Stopped(BackfillState::load(&path)?.unwrap_or(state))),
            Waited::SlotFree => info!(id = %state.id, "the ficus run stopped before the backfill was done"),
        }
    }
}

fn finished_or_stopped(path: &std::path::Path, state: BackfillState) -> Result<Outcome, RunError> {
    let state = BackfillState::load(path)?.unwrap_or(state);
    if let Some(failure) = state.failure() {
        return Err(failure);
    }
    Ok(if state.finished() {
        Outcome::Done(state)
    } else {
        Outcome::Stopped(state)
    })
}

enum Waited {
    Done(BackfillState),
    SlotFree,
    Stopped,
}

/// Follows a handed-over backfill through its file until it is done, the
/// slot is free (the `ficus run` stopped), or a signal.
async fn wait(
    pool: &sqlx::PgPool,
    slot_name: &str,
    path: &std::path::Path,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Waited, RunError> {
    let mut progress: Option<(Progress, Vec<u64>)> = None;
    let mut last_chunk = std::time::Instant::now();
    let mut warned = false;
    loop {
        if let Some(state) = BackfillState::load(path)? {
            let (bars, seen) = progress.get_or_insert_with(|| (Progress::new(&state), vec![0; state.tables.len()]));
            for (i, table) in state.tables.iter().enumerate() {
                if seen.get(i).is_some_and(|&n| n != table.chunks) {
                    seen[i] = table.chunks;
                    bars.update(i, table);
                    last_chunk = std::time::Instant::now();
                }
            }
            if !warned && last_chunk.elapsed() > QUIET {
                warned = true;
                let behind = slot::confirmed_flush(pool, slot_name).await?;
                tracing::warn!(
                    id = %state.id,
                    slot_at = ?behind.map(|l| l.to_string()),
                    "no chunk delivered for a minute: the ficus run may be far behind its slot, or run with another \
                     config directory (then follow the backfill there with `ficus backfill --status`; this one only \
                     sees .ficus/backfills/ here)"
                );
            }
            if let Some(failure) = state.failure() {
                return Err(failure);
            }
            if state.finished() {
                return Ok(Waited::Done(state));
            }
        }
        if slot::active_pid(pool, slot_name).await?.is_none() {
            return Ok(Waited::SlotFree);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return Ok(Waited::Stopped),
        }
    }
}
