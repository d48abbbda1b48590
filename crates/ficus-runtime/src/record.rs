//! `ficus record`: a `ficus run` that also writes the row changes it maps, with the events it
//! delivers of them, as fixture files (`ficus_project::recording`).
//!
//! It is a run in every way — the sinks get the events, the slot moves only past what they made
//! durable — so recording never costs a consumer an event. What the stream does not say of the
//! tables' columns (Postgres' type names, domains' base types, `NOT NULL`) is read from the
//! catalog when the files are written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ficus_model::{CatalogTable, TableRef};
use ficus_project::recording::{ColumnFacts, RECORDED_SUFFIX, RecordedFile, Recording};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{Config, RunError, RunOptions, RunReport};

/// What the catalog says of every user table's columns that the stream does not; `tables` are
/// the user tables as `ficus_postgres::catalog::tables` read them.
pub async fn column_facts(
    pool: &PgPool,
    tables: &BTreeMap<TableRef, CatalogTable>,
) -> Result<BTreeMap<TableRef, ColumnFacts>, RunError> {
    let mut bases = ficus_postgres::catalog::domain_bases(pool).await?;
    Ok(tables
        .iter()
        .map(|(table, t)| {
            let facts = ColumnFacts {
                type_names: t
                    .relation
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_name.clone()))
                    .collect(),
                base_types: bases.remove(table).unwrap_or_default(),
                not_null: t.not_null.clone(),
            };
            (table.clone(), facts)
        })
        .collect())
}

/// What a recording came to.
#[derive(Debug)]
pub struct RecordReport {
    /// The run's own report, or what stopped it.
    pub run: Result<RunReport, RunError>,
    /// The fixture files written.
    pub written: Vec<(PathBuf, RecordedFile)>,
    /// What the user should know (the catalog unreachable, so the types are the stream's).
    pub warnings: Vec<String>,
}

/// The recorded fixture files already in `out`: `record` overwrites them only when told to.
pub fn recorded_files_in(out: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".toml") && n.contains(&format!("{RECORDED_SUFFIX}.")))
        })
        .collect();
    found.sort();
    found
}

/// Runs as `ficus run` does, recording up to `limit` changes per table, and writes them as
/// fixture files into `out` — also when the run stops with an error (what it mapped until then).
pub async fn record(
    config: &Config,
    mut options: RunOptions,
    shutdown: watch::Receiver<bool>,
    out: &Path,
    limit: usize,
) -> Result<RecordReport, RunError> {
    let recording = Arc::new(Mutex::new(Recording::new(limit)));
    options.recording = Some(recording.clone());
    let run = crate::run(config, options, shutdown).await;
    let recording = std::mem::replace(
        &mut *recording.lock().unwrap_or_else(|e| e.into_inner()),
        Recording::new(0),
    );
    let mut warnings = Vec::new();
    let facts = match facts_of_source(config).await {
        Ok(facts) => facts,
        Err(e) => {
            warnings.push(format!(
                "could not read the columns' types from the source ({e}): the files declare the types as the stream resolved them"
            ));
            BTreeMap::new()
        }
    };
    let mut written = Vec::new();
    if !recording.is_empty() {
        std::fs::create_dir_all(out).map_err(|e| RunError::Config(format!("creating {}: {e}", out.display())))?;
    }
    for file in recording.files(&facts)? {
        let path = out.join(&file.name);
        std::fs::write(&path, &file.text).map_err(|e| RunError::Config(format!("writing {}: {e}", path.display())))?;
        written.push((path, file));
    }
    Ok(RecordReport { run, written, warnings })
}

async fn facts_of_source(config: &Config) -> Result<BTreeMap<TableRef, ColumnFacts>, RunError> {
    let source = config.source_url()?;
    let pool = ficus_postgres::catalog::connect(&source).await?;
    let facts = async { column_facts(&pool, &ficus_postgres::catalog::tables(&pool).await?).await }.await;
    pool.close().await;
    facts
}
