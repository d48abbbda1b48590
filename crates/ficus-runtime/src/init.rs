//! `ficus init`: a starting `ficus.toml`, a mapping file and a fixture file per table, from the
//! live schema.
//! What the files say is `ficus_project::scaffold`'s; this reads the catalog and writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ficus_model::{CatalogTable, PgType, TableRef};
use ficus_project::recording::ColumnFacts;

use ficus_postgres::{SourceError, SourceUrl};
use ficus_project::scaffold::{self, Column, MAX_STATES, Table};
use sqlx::{PgPool, Row};

use crate::RunError;

/// What `init` wrote, and what the user should know.
#[derive(Debug)]
pub struct InitReport {
    /// The files written, `ficus.toml` first.
    pub written: Vec<PathBuf>,
    /// Tables without a primary key, old values that need `REPLICA IDENTITY FULL`, columns
    /// left out.
    pub warnings: Vec<String>,
}

/// Reads the tables (`only`: `schema.table` or `table` of `public`; all user tables when empty)
/// and writes `out/ficus.toml`, `out/mappings/<table>.toml` and `out/mappings/tests/<table>.toml`. Overwrites nothing unless
/// `force`: when a file is there, nothing is written.
pub async fn init(url: &str, only: &[String], out: &Path, force: bool) -> Result<InitReport, RunError> {
    let source = SourceUrl::parse(url)?;
    let pool = ficus_postgres::catalog::connect(&source).await?;
    let mut warnings = Vec::new();
    let catalog = ficus_postgres::catalog::tables(&pool).await?;
    let facts = crate::record::column_facts(&pool, &catalog).await?;
    let tables = read_tables(&pool, only, &facts, &catalog, &mut warnings).await?;
    if tables.is_empty() {
        return Err(RunError::Config(
            "no table to scaffold: the database has no user table, or --tables names none of them".into(),
        ));
    }
    let mut files = vec![(
        out.join("ficus.toml"),
        scaffold::config(url, &tables.iter().collect::<Vec<_>>()),
    )];
    for t in &tables {
        let s = scaffold::mapping(t);
        // Two schemas with a table of one name: the schema goes in the file's name.
        let twin = tables.iter().filter(|o| o.name == t.name).count() > 1;
        let name = if twin {
            format!("{}.{}", t.schema, s.file_name)
        } else {
            s.file_name.clone()
        };
        warnings.extend(s.warnings);
        files.push((out.join("mappings").join(&name), s.text));
        files.push((
            out.join("mappings").join("tests").join(&name),
            scaffold::fixture(t).text,
        ));
    }
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() && !force {
        return Err(RunError::Config(format!(
            "not overwriting {}: nothing was written\nhint: --force writes over them, or --out DIR writes elsewhere",
            existing.join(", ")
        )));
    }
    let write = |p: &Path, text: &str| -> std::io::Result<()> {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, text)
    };
    let mut written = Vec::new();
    for (p, text) in files {
        write(&p, &text).map_err(|e| RunError::Config(format!("writing {}: {e}", p.display())))?;
        written.push(p);
    }
    Ok(InitReport { written, warnings })
}

async fn read_tables(
    pool: &PgPool,
    only: &[String],
    facts: &BTreeMap<TableRef, ColumnFacts>,
    catalog: &BTreeMap<TableRef, CatalogTable>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Table>, RunError> {
    let sql_error = |e| SourceError::from_sqlx("reading the schema", e);
    let rows = sqlx::query(
        "select c.oid::int8, n.nspname::text, c.relname::text, c.relreplident = 'f'
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p') and not c.relispartition
           and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
         order by 2, 3",
    )
    .fetch_all(pool)
    .await
    .map_err(sql_error)?;
    let wanted = |schema: &str, name: &str| {
        only.is_empty()
            || only.iter().any(|w| match w.split_once('.') {
                Some((s, n)) => s == schema && n == name,
                None => schema == "public" && w == name,
            })
    };
    let mut tables = Vec::new();
    for row in rows {
        let (oid, schema, name): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        if !wanted(&schema, &name) {
            continue;
        }
        let primary_key: Vec<String> = sqlx::query_scalar(
            "select a.attname::text from pg_index i
             cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
             where i.indrelid = $1::int8::oid and i.indisprimary order by k.ord",
        )
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(sql_error)?;
        let columns = sqlx::query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
                    (select array_agg(e.enumlabel::text order by e.enumsortorder) from pg_enum e where e.enumtypid = a.atttypid),
                    a.atttypid in ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype)
             from pg_attribute a
             where a.attrelid = $1::int8::oid and a.attnum > 0 and not a.attisdropped order by a.attnum",
        )
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(sql_error)?;
        let mut table = Table {
            schema: schema.clone(),
            name: name.clone(),
            columns: Vec::new(),
            primary_key,
            replica_identity_full: row.get(3),
        };
        for c in columns {
            let column: String = c.get(0);
            if c.get::<bool, _>(2) {
                warnings.push(format!(
                    "{schema}.{name}.{column} is generated: logical replication does not send it, so it is left out (compute it in CEL)"
                ));
                continue;
            }
            let mut states: Option<Vec<String>> = c.get(3);
            if states.is_none() && c.get::<bool, _>(4) && scaffold::named_like_state(&column) {
                states = few_values(pool, &schema, &name, &column).await?;
            }
            let table_ref = TableRef::new(schema.clone(), name.clone());
            let ty = catalog
                .get(&table_ref)
                .and_then(|t| t.relation.columns.iter().find(|k| k.name == column))
                .map_or(PgType::Text, |k| k.ty.clone());
            let facts = facts.get(&table_ref);
            table.columns.push(Column {
                base_type: facts.and_then(|f| f.base_types.get(&column).cloned()),
                not_null: facts.is_some_and(|f| f.not_null.contains(&column)),
                ty,
                name: column,
                type_name: c.get(1),
                states,
            });
        }
        tables.push(table);
    }
    for w in only {
        let found = tables
            .iter()
            .any(|t| w == &format!("{}.{}", t.schema, t.name) || (t.schema == "public" && w == &t.name));
        if !found {
            warnings.push(format!("--tables: no table {w}"));
        }
    }
    Ok(tables)
}

/// The distinct values of a text column, when there are at most [`MAX_STATES`]: from the
/// planner's statistics when `ANALYZE` made them (no scan), else from the first 100,000 rows (a
/// bounded read of a table that may be huge).
async fn few_values(pool: &PgPool, schema: &str, table: &str, column: &str) -> Result<Option<Vec<String>>, RunError> {
    let what = format!("reading the values of {schema}.{table}.{column}");
    let stats: Option<(f32, Option<Vec<String>>)> = sqlx::query_as(
        "select n_distinct, most_common_vals::text::text[] from pg_stats
         where schemaname = $1 and tablename = $2 and attname = $3",
    )
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_optional(pool)
    .await
    .map_err(|e| SourceError::from_sqlx(&what, e))?;
    let values = match stats {
        // Every value is a common one: the statistics list them all.
        Some((n, Some(mut common))) if n > 0.0 && n as usize == common.len() => {
            common.sort();
            common
        }
        Some(_) => return Ok(None),
        None => {
            let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            sqlx::query_scalar(&format!(
                "select distinct {c}::text as v from (select {c} from {s}.{t} limit 100000) r where {c} is not null order by v limit {limit}",
                c = ident(column),
                s = ident(schema),
                t = ident(table),
                limit = MAX_STATES + 1
            ))
            .fetch_all(pool)
            .await
            .map_err(|e| SourceError::from_sqlx(&what, e))?
        }
    };
    Ok((!values.is_empty() && values.len() <= MAX_STATES).then_some(values))
}
