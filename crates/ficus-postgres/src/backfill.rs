//! Reading existing rows in chunks, for the backfill (the watermark
//! coordination lives in the runtime, see `docs/backfill.md`).
//!
//! A table is read by keyset pagination on its primary key (or a unique index
//! of not-null columns): `where (k1, k2) > (last1, last2) order by k1, k2 limit n`,
//! through `COPY (...) TO STDOUT`, whose text form is the same as pgoutput's, so
//! snapshot rows and streamed rows convert alike.
//!
//! A table without such a key can be read by a full scan instead (when asked
//! for): in ranges of pages (`where ctid >= '(a,0)' and ctid < '(b,0)'`, a TID
//! range scan), each row with its `ctid`, `xmin` and `xmax`, which stand in for
//! the key in the watermark rule (see `docs/backfill.md`).

use bytes::Bytes;
use ficus_model::relation::quote_ident;
use ficus_model::{Cell, Relation, Row, TableRef};
use futures_util::TryStreamExt;
use sqlx::{PgConnection, PgPool, Row as _};

use crate::SourceError;

/// The columns a table is paged by, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyset {
    /// The table.
    pub table: TableRef,
    /// The key's columns and their types, as `format_type` writes them.
    pub columns: Vec<(String, String)>,
    /// The index the key comes from, or what a full scan reads by.
    pub index: String,
}

impl Keyset {
    /// Whether the table has no key and is read by physical position.
    pub fn is_full_scan(&self) -> bool {
        self.columns.is_empty()
    }
}

/// Finds the key to page a table by: its primary key, else its smallest unique
/// index whose columns are all `NOT NULL` (no expressions, no predicate); else,
/// with `allow_full_scan`, a full scan by physical position.
pub async fn keyset(pool: &PgPool, table: &TableRef, allow_full_scan: bool) -> Result<Keyset, SourceError> {
    let rows = sqlx::query(
        "select i.indexrelid::regclass::text, a.attname::text, format_type(a.atttypid, a.atttypmod), k.ord
         from pg_index i
         join pg_class c on c.oid = i.indrelid
         join pg_namespace n on n.oid = c.relnamespace
         cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
         join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
         where n.nspname = $1 and c.relname = $2 and i.indisunique and i.indisvalid and i.indpred is null
           and i.indexprs is null
           and not exists (select 1 from unnest(i.indkey) x(attnum)
                           join pg_attribute b on b.attrelid = c.oid and b.attnum = x.attnum
                           where not b.attnotnull)
         order by i.indisprimary desc, i.indnatts, i.indexrelid, k.ord",
    )
    .bind(&table.schema)
    .bind(&table.name)
    .fetch_all(pool)
    .await
    .map_err(|e| SourceError::from_sqlx(&format!("reading the keys of {table}"), e))?;
    let Some(first) = rows.first() else {
        if allow_full_scan {
            return Ok(Keyset {
                table: table.clone(),
                columns: vec![],
                index: "a full scan (by ctid)".into(),
            });
        }
        return Err(SourceError::definite(
            format!("{table} has no primary key and no unique index of NOT NULL columns to read it in chunks by"),
            format!(
                "add one (ALTER TABLE {} ADD PRIMARY KEY (...), or a unique index on NOT NULL columns), \
                 or read it by physical position with --allow-full-scan (docs/backfill.md says what that gives up)",
                table.quoted()
            ),
        ));
    };
    let index: String = first.get(0);
    let columns = rows
        .iter()
        .filter(|r| r.get::<String, _>(0) == index)
        .map(|r| (r.get::<String, _>(1), r.get::<String, _>(2)))
        .collect();
    Ok(Keyset {
        table: table.clone(),
        columns,
        index,
    })
}

/// Quotes a string as an SQL literal (`standard_conforming_strings` is on since Postgres 9.1).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One chunk of rows, in key order.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The rows, with a cell per column of the relation.
    pub rows: Vec<Row>,
    /// The key of the last row, as text: where the next chunk starts. For a
    /// full scan, the first page of the next chunk.
    pub last_key: Option<Vec<String>>,
    /// Of a full scan, each row's version: where it is, who wrote and who
    /// deleted it (empty for chunks read by key).
    pub versions: Vec<RowVersion>,
    /// Whether there is nothing after this chunk.
    pub exhausted: bool,
}

/// Where a row version read by a full scan sits, and which transactions
/// created it (`xmin`) and deleted or locked it (`xmax`, 0 if none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowVersion {
    /// `(page,item)`
    pub ctid: String,
    pub xmin: u32,
    pub xmax: u32,
}

/// The statement that reads the chunk after `after` (from the start when `None`).
pub fn chunk_sql(
    relation: &Relation,
    keyset: &Keyset,
    after: Option<&[String]>,
    limit: usize,
    filter: Option<&str>,
) -> String {
    let columns: Vec<String> = relation.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let keys: Vec<String> = keyset.columns.iter().map(|(c, _)| quote_ident(c)).collect();
    let mut conditions = Vec::new();
    if let Some(after) = after {
        let values: Vec<String> = after
            .iter()
            .zip(&keyset.columns)
            .map(|(v, (_, ty))| format!("{}::{ty}", literal(v)))
            .collect();
        conditions.push(format!("({}) > ({})", keys.join(", "), values.join(", ")));
    }
    if let Some(filter) = filter {
        conditions.push(format!("({filter})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" where {}", conditions.join(" and "))
    };
    format!(
        "copy (select {} from {}{filter} order by {} limit {limit}) to stdout",
        columns.join(", "),
        relation.table.quoted(),
        keys.join(", ")
    )
}

/// The statement that reads the pages `from..to` of a table without a key,
/// each row with its ctid, xmin and xmax first.
pub fn pages_sql(relation: &Relation, from: u64, to: u64, filter: Option<&str>) -> String {
    let columns: Vec<String> = relation.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let filter = filter.map(|f| format!(" and ({f})")).unwrap_or_default();
    format!(
        "copy (select ctid, xmin, xmax, {} from {} where ctid >= '({from},0)'::tid and ctid < '({to},0)'::tid{filter}) to stdout",
        columns.join(", "),
        relation.table.quoted(),
    )
}

/// Reads one chunk with `COPY`. Run it in a short transaction of its own.
pub async fn read_chunk(
    conn: &mut PgConnection,
    relation: &Relation,
    keyset: &Keyset,
    after: Option<&[String]>,
    limit: usize,
    filter: Option<&str>,
) -> Result<Chunk, SourceError> {
    if keyset.is_full_scan() {
        return read_pages(conn, relation, after, limit, filter).await;
    }
    let sql = chunk_sql(relation, keyset, after, limit, filter);
    let key_positions: Vec<usize> = keyset
        .columns
        .iter()
        .map(|(k, _)| {
            relation.column_index(k).ok_or_else(|| {
                SourceError::definite(
                    format!("key column {k} is not a column of {}", relation.table),
                    "report this as a bug",
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let mut chunk = Chunk {
        rows: copy_rows(conn, relation, &sql, 0).await?,
        ..Chunk::default()
    };
    chunk.exhausted = chunk.rows.is_empty();
    chunk.last_key = chunk.rows.last().map(|row| {
        key_positions
            .iter()
            .map(|&i| match &row.0[i] {
                Cell::Text(t) => String::from_utf8_lossy(t).into_owned(),
                _ => String::new(),
            })
            .collect()
    });
    Ok(chunk)
}

/// Reads the next pages of a table without a key: about `limit` rows' worth,
/// from the page in `after` (from the first when `None`).
async fn read_pages(
    conn: &mut PgConnection,
    relation: &Relation,
    after: Option<&[String]>,
    limit: usize,
    filter: Option<&str>,
) -> Result<Chunk, SourceError> {
    let ctx = format!("reading pages of {}", relation.table);
    let from: u64 = match after.and_then(|a| a.first()) {
        Some(page) => page.parse().map_err(|_| {
            SourceError::definite(
                format!("{ctx}: bad page number {page:?}"),
                "remove the backfill's file and start over",
            )
        })?,
        None => 0,
    };
    let (pages, rows_per_page): (i64, f64) = sqlx::query_as(
        "select (pg_relation_size(c.oid) / current_setting('block_size')::int8),
                case when c.relpages > 0 and c.reltuples > 0 then c.reltuples::float8 / c.relpages else 0 end
         from pg_class c where c.oid = $1::int8::oid",
    )
    .bind(i64::from(relation.oid))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| SourceError::from_sqlx(&ctx, e))?;
    let pages = pages.max(0) as u64;
    if from >= pages {
        return Ok(Chunk {
            exhausted: true,
            ..Chunk::default()
        });
    }
    // Without statistics, guess 50 rows per page (8 kB pages of ~160-byte rows).
    let rows_per_page = if rows_per_page >= 1.0 { rows_per_page } else { 50.0 };
    let step = ((limit as f64 / rows_per_page).ceil() as u64).max(1);
    let to = from.saturating_add(step);
    let lines = copy_rows(conn, relation, &pages_sql(relation, from, to, filter), 3).await?;
    let mut chunk = Chunk {
        last_key: Some(vec![to.to_string()]),
        ..Chunk::default()
    };
    for mut row in lines {
        let system: Vec<String> = row
            .0
            .drain(..3)
            .map(|c| match c {
                Cell::Text(t) => String::from_utf8_lossy(&t).into_owned(),
                _ => String::new(),
            })
            .collect();
        let (Ok(xmin), Ok(xmax)) = (system[1].parse(), system[2].parse()) else {
            return Err(SourceError::definite(
                format!("{ctx}: a row without xmin and xmax"),
                "report this as a bug",
            ));
        };
        let ctid = system[0].clone();
        chunk.versions.push(RowVersion { ctid, xmin, xmax });
        chunk.rows.push(row);
    }
    Ok(chunk)
}

/// Runs a `COPY ... TO STDOUT` and parses its rows: `extra` leading fields,
/// then a cell per column of the relation.
async fn copy_rows(
    conn: &mut PgConnection,
    relation: &Relation,
    sql: &str,
    extra: usize,
) -> Result<Vec<Row>, SourceError> {
    let ctx = format!("reading a chunk of {}", relation.table);
    let mut stream = conn
        .copy_out_raw(sql)
        .await
        .map_err(|e| SourceError::from_sqlx(&ctx, e))?;
    let mut rows = Vec::new();
    // Postgres sends a message per row: lines are cut out of the messages
    // without copying, and cells are slices of them.
    let mut pending = bytes::BytesMut::new();
    while let Some(mut data) = stream.try_next().await.map_err(|e| SourceError::from_sqlx(&ctx, e))? {
        if !pending.is_empty() {
            pending.extend_from_slice(&data);
            data = pending.split().freeze();
        }
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            let line = data.split_to(end + 1).slice(..end);
            let row = parse_copy_line(&line).ok_or_else(|| {
                SourceError::definite(format!("{ctx}: a COPY line does not parse"), "report this as a bug")
            })?;
            if row.0.len() != relation.columns.len() + extra {
                return Err(SourceError::definite(
                    format!(
                        "{ctx}: a row has {} columns, not {}",
                        row.0.len() - extra.min(row.0.len()),
                        relation.columns.len()
                    ),
                    "the table changed while it was read; start the backfill again",
                ));
            }
            rows.push(row);
        }
        pending.extend_from_slice(&data);
    }
    Ok(rows)
}

/// Parses one line of `COPY ... TO STDOUT` text format: tab-separated, `\N` for
/// NULL, backslash escapes. Cells without escapes are slices of the line.
pub fn parse_copy_line(line: &Bytes) -> Option<Row> {
    let mut cells = Vec::new();
    let mut start = 0;
    for field in line.split(|&b| b == b'\t') {
        let range = start..start + field.len();
        start = range.end + 1;
        if field == b"\\N" {
            cells.push(Cell::Null);
            continue;
        }
        if !field.contains(&b'\\') {
            cells.push(Cell::Text(line.slice(range)));
            continue;
        }
        let mut out = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            let b = field[i];
            if b != b'\\' {
                out.push(b);
                i += 1;
                continue;
            }
            let next = *field.get(i + 1)?;
            i += 2;
            match next {
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'0'..=b'7' => {
                    let mut v = u32::from(next - b'0');
                    for _ in 0..2 {
                        match field.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push(v as u8);
                }
                b'x' => {
                    let mut v = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                v = v * 16 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    out.push(v as u8);
                }
                other => out.push(other),
            }
        }
        cells.push(Cell::Text(Bytes::from(out)));
    }
    Some(Row(cells))
}

/// Reads the rows of these keys (each the key columns' values, as text, in key order), in one
/// statement through `COPY`, so that their text is the stream's. Run it in a transaction of its
/// own to read them in one snapshot.
pub async fn read_keys(
    conn: &mut PgConnection,
    relation: &Relation,
    keyset: &Keyset,
    keys: &[Vec<String>],
) -> Result<Vec<Row>, SourceError> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let columns: Vec<String> = relation.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let key_columns: Vec<String> = keyset.columns.iter().map(|(c, _)| quote_ident(c)).collect();
    let tuples: Vec<String> = keys
        .iter()
        .map(|key| {
            let values: Vec<String> = key
                .iter()
                .zip(&keyset.columns)
                .map(|(v, (_, ty))| format!("{}::{ty}", literal(v)))
                .collect();
            format!("({})", values.join(", "))
        })
        .collect();
    let sql = format!(
        "copy (select {} from {} where ({}) in ({})) to stdout",
        columns.join(", "),
        relation.table.quoted(),
        key_columns.join(", "),
        tuples.join(", ")
    );
    copy_rows(conn, relation, &sql, 0).await
}

/// Reads columns of one row again, by its replica identity (`key`: column and value, as text):
/// the values now, each `None` when NULL; `None` when the row is gone.
pub async fn read_row(
    pool: &PgPool,
    relation: &Relation,
    key: &[(String, String)],
    columns: &[String],
) -> Result<Option<Vec<Option<String>>>, SourceError> {
    let select: Vec<String> = columns.iter().map(|c| format!("{}::text", quote_ident(c))).collect();
    let condition: Vec<String> = key
        .iter()
        .map(|(c, v)| format!("{} = {}", quote_ident(c), literal(v)))
        .collect();
    let sql = format!(
        "select {} from {} where {}",
        select.join(", "),
        relation.table.quoted(),
        condition.join(" and ")
    );
    let row = sqlx::query(&sql)
        .fetch_optional(pool)
        .await
        .map_err(|e| SourceError::from_sqlx(&format!("reading a row of {} again", relation.table), e))?;
    Ok(row.map(|r| (0..columns.len()).map(|i| r.get::<Option<String>, _>(i)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_unescape() {
        let row = parse_copy_line(&Bytes::from_static(b"1\t\\N\ta\\tb\\nc\\\\d\t\\x41\\101")).unwrap();
        assert_eq!(
            row.0,
            vec![Cell::text("1"), Cell::Null, Cell::text("a\tb\nc\\d"), Cell::text("AA")]
        );
        assert_eq!(parse_copy_line(&Bytes::new()).unwrap().0, vec![Cell::text("")]);
        assert_eq!(
            parse_copy_line(&Bytes::from_static(b"a\t\tb")).unwrap().0,
            vec![Cell::text("a"), Cell::text(""), Cell::text("b")]
        );
        assert!(parse_copy_line(&Bytes::from_static(b"bad\\")).is_none());
    }
}
