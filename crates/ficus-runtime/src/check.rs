//! `ficus check` against the live source: what `ficus run` and `ficus backfill` will need of it,
//! found before they need it, each with the statement that provides it.
//!
//! ```text
//! wal_level, REPLICATION ──┐
//! the publication ─────────┼──▶ findings: what is missing + the fix (GRANT, ALTER ...)
//! SELECT, CREATE, owners ──┘
//! ```

use ficus_mapping::Compiled;
use ficus_model::relation::quote_ident;
use ficus_postgres::{SourceError, catalog, publication};
use sqlx::{PgPool, Row};

use crate::RunError;
use crate::config::{Config, SinkKind};
use crate::run::{live_schema, publication_needs};

/// Something the source lacks for ficus to stream and backfill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What is missing, and what it stops.
    pub message: String,
    /// How to provide it: the statement to run, or the step to take.
    pub hint: String,
}

/// Everything the source lacks for the compiled mappings: settings, privileges, the publication.
pub async fn source(config: &Config, pool: &PgPool, compiled: &Compiled) -> Result<Vec<Finding>, RunError> {
    let err = |what: &'static str| move |e| SourceError::from_sqlx(what, e);
    let mut found: Vec<Finding> = catalog::preflight_problems(pool)
        .await?
        .into_iter()
        .map(|problem| Finding {
            message: problem.to_string(),
            hint: problem.hint().unwrap_or_default().to_owned(),
        })
        .collect();
    let row = sqlx::query(
        "select current_user::text, r.rolsuper, current_database()::text,
                has_database_privilege(current_database(), 'CREATE'),
                has_function_privilege('pg_logical_emit_message(boolean,text,text)', 'EXECUTE')
         from pg_roles r where r.rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .map_err(err("reading the user's privileges"))?;
    let (user, superuser, database, create, emit): (String, bool, String, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let role = quote_ident(&user);
    if !superuser && !emit {
        found.push(Finding {
            message: format!(
                "user {user} may not write logical decoding messages, which backfill watermarks and --until-caught-up need"
            ),
            hint: format!("run: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) TO {role};"),
        });
    }
    let mut owns_every_table = true;
    for table in compiled.tables() {
        let row = sqlx::query(
            "select has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE')
             from pg_class c where c.oid = $1::regclass",
        )
        .bind(table.quoted())
        .fetch_one(pool)
        .await
        .map_err(err("reading the tables' privileges"))?;
        let (select, owner): (bool, bool) = (row.get(0), row.get(1));
        owns_every_table &= superuser || owner;
        if !select {
            found.push(Finding {
                message: format!("user {user} may not read {table}: a backfill (and TOAST's reselect) reads its rows"),
                hint: format!("run: GRANT SELECT ON {} TO {role};", table.quoted()),
            });
        }
    }
    // The publication: right as it is, or ficus must create or change it (and may not, or not yet).
    let name = &config.source.publication;
    let published = publication::read(pool, name).await?;
    let schema = live_schema(pool, published.as_ref()).await?;
    let needs = publication_needs(compiled, &schema, config.archives());
    let tables: Vec<String> = needs.tables.keys().map(|t| t.quoted()).collect();
    let tables = tables.join(", ");
    match &published {
        Some(p) => {
            for problem in p.problems(&needs, false) {
                found.push(Finding {
                    message: problem.what,
                    hint: format!("run: {}", problem.fix),
                });
            }
            let missing: Vec<String> = needs
                .tables
                .keys()
                .filter(|t| !p.tables.contains_key(*t))
                .map(|t| t.to_string())
                .collect();
            if !missing.is_empty() && !superuser && !owns_every_table {
                found.push(Finding {
                    message: format!(
                        "publication {name} does not publish {}, and user {user} may not add it (it must own the tables)",
                        missing.join(", ")
                    ),
                    hint: format!(
                        "have an owner of the tables run: ALTER PUBLICATION {} SET TABLE {tables};",
                        quote_ident(name)
                    ),
                });
            }
        }
        None if !superuser && (!create || !owns_every_table) => {
            let fix = format!(
                "CREATE PUBLICATION {} FOR TABLE {tables} WITH (publish_via_partition_root = true);",
                quote_ident(name)
            );
            found.push(Finding {
                message: format!(
                    "there is no publication {name}, and user {user} may not create it ({})",
                    match (create, owns_every_table) {
                        (false, false) =>
                            format!("it needs CREATE on database {database} and to own the mapped tables"),
                        (false, true) => format!("it needs CREATE on database {database}"),
                        _ => "it must own the mapped tables".to_owned(),
                    }
                ),
                hint: if owns_every_table {
                    format!("run: GRANT CREATE ON DATABASE {} TO {role};", quote_ident(&database))
                } else {
                    format!("have an owner of the tables run: {fix}")
                },
            });
        }
        None => {}
    }
    Ok(found)
}

/// Every configured sink, built and checked as `ficus run` checks it before it creates a slot
/// (reachable, credentials accepted, its target there): each problem with the sink's name and the
/// hint. A store that does not exist yet is fine (`ficus run` creates it).
pub async fn sinks(config: &Config) -> Vec<Finding> {
    let mut found = Vec::new();
    for sink in &config.sinks {
        let checked = match &sink.kind {
            SinkKind::Store(c) => {
                match ficus_store::Store::open(&c.location(&config.dir), ficus_store::Mode::Existing).await {
                    Ok(store) => {
                        store.close().await;
                        Ok(())
                    }
                    Err(e) if e.is_missing() => Ok(()),
                    Err(e) => Err(ficus_sinks::SinkError::from(e)),
                }
            }
            _ => match sink.build(config) {
                Ok(mut built) => {
                    let checked = built.health().await;
                    built.close().await;
                    checked
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = checked {
            let e = e.named(sink.name());
            found.push(Finding {
                message: e.to_string(),
                hint: e.hint().unwrap_or("see docs/sinks.md").to_owned(),
            });
        }
    }
    found
}
