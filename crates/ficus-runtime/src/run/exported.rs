//! The cheap special case of a backfill: in the snapshot a new slot exported.

use ficus_mapping::{Compiled, EventContext};
use ficus_postgres::backfill::read_chunk;
use ficus_postgres::{ExportedSlot, SourceError};
use sqlx::{Connection, PgPool};
use tracing::{info, warn};

use super::{Delivery, RunReport, emit_snapshot_rows};
use crate::RunError;
use crate::backfill::{self, Backfills, key_text};

/// The cheap special case of a backfill: the slot was just created, with the
/// snapshot it exported — the source exactly as of the slot's start. The
/// backfills waiting read their tables in that one snapshot, whole, before the
/// stream starts: every row is emitted, and every later change follows from the
/// slot. No watermark, no row dropped, no chunk read again (one long read-only
/// transaction is the price). A crash in the middle leaves the rest to the
/// watermark algorithm, from the last checkpoint.
pub(super) async fn backfill_in_exported_snapshot(
    pool: &PgPool,
    compiled: &Compiled,
    ctx: &EventContext,
    backfills: &mut Backfills,
    exported: ExportedSlot,
    delivery: &mut Delivery,
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
    let mut queue = std::mem::take(&mut backfills.queue);
    'backfills: while let Some(mut state) = queue.pop_front() {
        let plans = match backfill::plan(pool, &backfills.publication, compiled, ctx, &state).await {
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
                let rows = chunk.rows.into_iter().zip(keys).collect();
                let emitted = match emit_snapshot_rows(
                    delivery,
                    &mut report.events,
                    compiled,
                    &plan.relation,
                    &id,
                    ctx,
                    rows,
                    at,
                )
                .await?
                {
                    Ok(n) => n,
                    Err(e) => {
                        backfills.fail(state, &e);
                        continue 'backfills;
                    }
                };
                delivery.flush().await?;
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
