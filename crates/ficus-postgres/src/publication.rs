//! The publication: which changes of which tables the slot sends. ficus creates its own and keeps
//! its tables equal to the mapped ones; whoever made it, it must send every change the mappings
//! read, or changes go missing without a word.
//!
//! ```text
//! read (pg_publication, pg_publication_tables) ──▶ Publication ──problems(Needs)──▶ what is wrong + the fix
//! ```

use std::collections::{BTreeMap, BTreeSet};

use ficus_model::TableRef;
use ficus_model::relation::quote_ident;
use sqlx::{PgPool, Row};
use tracing::info;

use crate::SourceError;

/// Makes the publication publish exactly `tables`: creates it (every operation, partitions
/// through their root) when there is none (`existing`), sets its tables when they differ. Its
/// other options are someone's choice: [`Publication::problems`] says when they lose changes.
pub async fn ensure(
    pool: &PgPool,
    name: &str,
    tables: &BTreeSet<TableRef>,
    existing: Option<&Publication>,
) -> Result<(), SourceError> {
    let ctx = |what: &str| format!("{what} publication {name}");
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let hint = |sql: &str| format!("run as the owner of the tables, or have an owner run: {sql}");
    // No table: a publication of logical decoding messages only ([[message]] mappings).
    let for_tables = if tables.is_empty() {
        String::new()
    } else {
        format!(" for table {list}")
    };
    let sql = match existing {
        None => format!(
            "create publication {}{for_tables} with (publish_via_partition_root = true)",
            quote_ident(name)
        ),
        Some(p) if p.all_tables => {
            return Err(SourceError::definite(
                format!("publication {name} is FOR ALL TABLES; ficus keeps its publication equal to the mapped tables"),
                "give ficus a publication of its own ([source] publication = \"...\"), or drop this one",
            ));
        }
        Some(p) if p.tables.keys().eq(tables.iter()) => return Ok(()),
        Some(p) if tables.is_empty() => format!(
            "alter publication {} drop table {}",
            quote_ident(name),
            p.tables.keys().map(|t| t.quoted()).collect::<Vec<_>>().join(", ")
        ),
        Some(_) => format!("alter publication {} set table {list}", quote_ident(name)),
    };
    sqlx::query(&sql).execute(pool).await.map_err(|e| {
        let what = if existing.is_some() { "updating" } else { "creating" };
        with_hint(SourceError::from_sqlx(&ctx(what), e), hint(&sql))
    })?;
    info!(publication = name, tables = %list, "{}", if existing.is_some() { "updated publication" } else { "created publication" });
    Ok(())
}

fn with_hint(e: SourceError, hint: String) -> SourceError {
    match e {
        SourceError::Definite { message, .. } => SourceError::Definite { message, hint },
        t => t,
    }
}

/// A publication as the source describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// Its name.
    pub name: String,
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    /// The operations it publishes (`publish = '...'`).
    pub ops: Ops,
    /// The tables it publishes (partitions under their root).
    pub tables: BTreeMap<TableRef, Published>,
}

/// The operations a publication publishes, or a mapping needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ops {
    /// `insert`
    pub insert: bool,
    /// `update`
    pub update: bool,
    /// `delete`
    pub delete: bool,
    /// `truncate`
    pub truncate: bool,
}

impl Ops {
    /// Every operation.
    pub const ALL: Ops = Ops {
        insert: true,
        update: true,
        delete: true,
        truncate: true,
    };

    fn names(self) -> Vec<&'static str> {
        [
            (self.insert, "insert"),
            (self.update, "update"),
            (self.delete, "delete"),
            (self.truncate, "truncate"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    fn union(self, other: Ops) -> Ops {
        Ops {
            insert: self.insert || other.insert,
            update: self.update || other.update,
            delete: self.delete || other.delete,
            truncate: self.truncate || other.truncate,
        }
    }

    fn missing(self, needed: Ops) -> Ops {
        Ops {
            insert: needed.insert && !self.insert,
            update: needed.update && !self.update,
            delete: needed.delete && !self.delete,
            truncate: needed.truncate && !self.truncate,
        }
    }
}

/// How a publication publishes one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The columns it sends (the table's, unless it has a column list); `None` before Postgres
    /// 15, which has no column lists.
    pub columns: Option<BTreeSet<String>>,
    /// Its row filter (`WHERE ...`), if any.
    pub row_filter: Option<String>,
}

/// What the mappings need the publication to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The operations mapped (every one when the store archives row changes).
    pub ops: Ops,
    /// Per mapped table, the columns read and whether it is partitioned.
    pub tables: BTreeMap<TableRef, Needed>,
}

/// What one mapped table needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needed {
    /// The columns some mapping reads (or the archive keeps).
    pub columns: BTreeSet<String>,
    /// Whether the table is partitioned (its changes must come under its own name).
    pub partitioned: bool,
}

/// Something about the publication that would lose changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong, and what it loses.
    pub what: String,
    /// The statement that sets it right.
    pub fix: String,
}

/// Reads the publication, `None` when there is none.
pub async fn read(pool: &PgPool, name: &str) -> Result<Option<Publication>, SourceError> {
    let ctx = |what: &str| format!("reading publication {name}: {what}");
    let row = sqlx::query(
        "select puballtables, pubviaroot, pubinsert, pubupdate, pubdelete, pubtruncate
         from pg_publication where pubname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(|e| SourceError::from_sqlx(&ctx("its options"), e))?;
    let Some(row) = row else { return Ok(None) };
    // Row filters and column lists exist from Postgres 15 on.
    let version: i32 = sqlx::query_scalar("select current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await
        .map_err(|e| SourceError::from_sqlx(&ctx("the server version"), e))?;
    let details = if version >= 150_000 {
        "t.attnames::text[], t.rowfilter"
    } else {
        "null::text[], null::text"
    };
    let rows = sqlx::query(&format!(
        "select rn.nspname::text, r.relname::text, {details}
         from pg_publication_tables t
         join pg_namespace n on n.nspname = t.schemaname
         join pg_class c on c.relnamespace = n.oid and c.relname = t.tablename
         join pg_class r on r.oid = coalesce(pg_partition_root(c.oid), c.oid)
         join pg_namespace rn on rn.oid = r.relnamespace
         where t.pubname = $1"
    ))
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(|e| SourceError::from_sqlx(&ctx("its tables"), e))?;
    let mut tables = BTreeMap::new();
    for r in rows {
        let table = TableRef::new(r.get::<String, _>(0), r.get::<String, _>(1));
        let columns: Option<Vec<String>> = r.get(2);
        let published = Published {
            columns: columns.map(|c| c.into_iter().collect()),
            row_filter: r.get(3),
        };
        // Partitions published under their own names: the root's entry holds what they have in common.
        tables.entry(table).or_insert(published);
    }
    Ok(Some(Publication {
        name: name.to_owned(),
        all_tables: row.get(0),
        via_root: row.get(1),
        ops: Ops {
            insert: row.get(2),
            update: row.get(3),
            delete: row.get(4),
            truncate: row.get(5),
        },
        tables,
    }))
}

impl Publication {
    /// The statement that publishes the same tables with every column and every row (one
    /// statement: the tables stay published throughout, so nothing is lost while it runs).
    pub fn set_every_column(&self) -> String {
        let list: Vec<String> = self.tables.keys().map(TableRef::quoted).collect();
        format!(
            "ALTER PUBLICATION {} SET TABLE {};",
            quote_ident(&self.name),
            list.join(", ")
        )
    }

    /// What about the publication would lose changes the mappings need, each with its fix. A
    /// mapped table it does not publish is one only when `missing_tables` says so (at start, ficus
    /// adds it; while streaming, someone took it out).
    pub fn problems(&self, needs: &Needs, missing_tables: bool) -> Vec<Problem> {
        let name = quote_ident(&self.name);
        let mut problems = Vec::new();
        let missing = self.ops.missing(needs.ops);
        if missing != Ops::default() {
            let publish = self.ops.union(needs.ops).names().join(", ");
            problems.push(Problem {
                what: format!(
                    "publication {} publishes only {} (publish = '{}'), and the mappings need {} too: those changes never reach ficus",
                    self.name,
                    if self.ops.names().is_empty() { "nothing".to_owned() } else { self.ops.names().join(", ") },
                    self.ops.names().join(", "),
                    missing.names().join(", ")
                ),
                fix: format!("ALTER PUBLICATION {name} SET (publish = '{publish}');"),
            });
        }
        if !self.via_root
            && let Some((table, _)) = needs.tables.iter().find(|(_, n)| n.partitioned)
        {
            problems.push(Problem {
                what: format!(
                    "publication {} has publish_via_partition_root = false, so the changes of partitioned table {table} come under its partitions' names",
                    self.name
                ),
                fix: format!("ALTER PUBLICATION {name} SET (publish_via_partition_root = true);"),
            });
        }
        let set_table = || {
            let list: Vec<String> = needs.tables.keys().map(TableRef::quoted).collect();
            format!("ALTER PUBLICATION {name} SET TABLE {};", list.join(", "))
        };
        for (table, needed) in &needs.tables {
            let Some(published) = self.tables.get(table) else {
                if missing_tables {
                    problems.push(Problem {
                        what: format!("publication {} no longer publishes {table}", self.name),
                        fix: format!("ALTER PUBLICATION {name} ADD TABLE {};", table.quoted()),
                    });
                }
                continue;
            };
            if let Some(filter) = &published.row_filter {
                problems.push(Problem {
                    what: format!(
                        "publication {} publishes only the rows of {table} where {filter}: changes of the other rows never reach ficus",
                        self.name
                    ),
                    fix: set_table(),
                });
            }
            let hidden: Vec<&str> = needed
                .columns
                .iter()
                .filter(|c| published.columns.as_ref().is_some_and(|p| !p.contains(*c)))
                .map(String::as_str)
                .collect();
            if !hidden.is_empty() {
                problems.push(Problem {
                    what: format!(
                        "the column list of publication {} for {table} leaves out {}, which the mappings read",
                        self.name,
                        hidden.join(", ")
                    ),
                    fix: set_table(),
                });
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        let table = |cols: &[&str], partitioned| Needed {
            columns: cols.iter().map(|c| c.to_string()).collect(),
            partitioned,
        };
        Needs {
            ops: Ops {
                insert: true,
                update: true,
                ..Ops::default()
            },
            tables: BTreeMap::from([
                (TableRef::new("public", "orders"), table(&["id", "status"], false)),
                (TableRef::new("public", "events"), table(&["id"], true)),
            ]),
        }
    }

    fn published(cols: &[&str], row_filter: Option<&str>) -> Published {
        Published {
            columns: Some(cols.iter().map(|c| c.to_string()).collect()),
            row_filter: row_filter.map(str::to_owned),
        }
    }

    fn good() -> Publication {
        Publication {
            name: "ficus".into(),
            all_tables: false,
            via_root: true,
            ops: Ops::ALL,
            tables: BTreeMap::from([
                (
                    TableRef::new("public", "orders"),
                    published(&["id", "status", "total"], None),
                ),
                (TableRef::new("public", "events"), published(&["id"], None)),
            ]),
        }
    }

    #[test]
    fn a_publication_that_sends_what_the_mappings_read_has_no_problem() {
        assert_eq!(good().problems(&needs(), true), vec![]);
        // Truncates and deletes nobody maps may be left out.
        let inserts_and_updates = Publication {
            ops: Ops {
                insert: true,
                update: true,
                ..Ops::default()
            },
            ..good()
        };
        assert_eq!(inserts_and_updates.problems(&needs(), true), vec![]);
    }

    #[test]
    fn each_way_to_lose_changes_is_named_with_its_fix() {
        let inserts_only = Publication {
            ops: Ops {
                insert: true,
                ..Ops::default()
            },
            ..good()
        };
        let p = inserts_only.problems(&needs(), true);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].what.contains("publishes only insert (publish = 'insert')"),
            "{}",
            p[0].what
        );
        assert!(p[0].what.contains("need update too"), "{}", p[0].what);
        assert_eq!(
            p[0].fix,
            r#"ALTER PUBLICATION "ficus" SET (publish = 'insert, update');"#
        );

        let mut filtered = good();
        filtered.tables.insert(
            TableRef::new("public", "orders"),
            published(&["id", "total"], Some("(status <> 'draft')")),
        );
        filtered.via_root = false;
        let p = filtered.problems(&needs(), true);
        let whats: Vec<&str> = p.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(p.len(), 3, "{whats:?}");
        assert!(whats[0].contains("publish_via_partition_root = false"), "{whats:?}");
        assert!(
            whats[1].contains("only the rows of public.orders where (status <> 'draft')"),
            "{whats:?}"
        );
        assert!(
            whats[2].contains("leaves out status, which the mappings read"),
            "{whats:?}"
        );
        assert_eq!(
            p[2].fix,
            r#"ALTER PUBLICATION "ficus" SET TABLE "public"."events", "public"."orders";"#
        );

        let mut without = good();
        without.tables.remove(&TableRef::new("public", "events"));
        assert_eq!(without.problems(&needs(), false), vec![], "at start, ficus adds it");
        let p = without.problems(&needs(), true);
        assert_eq!(p[0].fix, r#"ALTER PUBLICATION "ficus" ADD TABLE "public"."events";"#);
    }
}
