//! The source's queries against a real, throwaway Postgres.

use ficus_model::{Cell, TableRef};
use ficus_postgres::backfill::{Chunk, keyset, read_chunk};
use ficus_postgres::{SourceUrl, catalog};
use ficus_testkit::{Cluster, TestDb};

async fn setup(schema: &str) -> (TestDb, sqlx::PgPool) {
    let db = Cluster::shared().database().await;
    db.exec(schema).await;
    let pool = catalog::connect(&SourceUrl::parse(&db.url()).unwrap()).await.unwrap();
    (db, pool)
}

fn text(c: &Cell) -> String {
    match c {
        Cell::Text(t) => String::from_utf8_lossy(t).into_owned(),
        Cell::Null => "NULL".into(),
        Cell::Unsent => "?".into(),
    }
}

/// Reads the whole table chunk by chunk; returns the rows as text and the number of chunks.
async fn read_all(pool: &sqlx::PgPool, table: &str, limit: usize, filter: Option<&str>) -> (Vec<Vec<String>>, usize) {
    let table = TableRef::parse(table);
    let relation = catalog::tables(pool).await.unwrap().remove(&table).unwrap().relation;
    let keys = keyset(pool, &table, true).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let (mut rows, mut chunks, mut after) = (Vec::new(), 0, None::<Vec<String>>);
    loop {
        let Chunk {
            rows: got,
            last_key,
            versions,
            exhausted,
        } = read_chunk(&mut conn, &relation, &keys, after.as_deref(), limit, filter)
            .await
            .unwrap();
        if exhausted {
            return (rows, chunks);
        }
        assert_eq!(versions.len(), if keys.is_full_scan() { got.len() } else { 0 });
        chunks += 1;
        rows.extend(got.iter().map(|r| r.0.iter().map(text).collect::<Vec<_>>()));
        after = last_key;
    }
}

/// The same rows through one ordered query, as text.
async fn select_all(pool: &sqlx::PgPool, sql: &str) -> Vec<Vec<String>> {
    sqlx::query_scalar::<_, Vec<Option<String>>>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v.unwrap_or_else(|| "NULL".into())).collect())
        .collect()
}

#[tokio::test]
async fn composite_keys_page_in_key_order() {
    let (_db, pool) = setup(
        "create table lines (order_id int, line int, sku text not null, primary key (order_id, line));
         insert into lines select o, l, 'sku-' || o || '-' || l from generate_series(1, 37) o, generate_series(1, 3) l;",
    )
    .await;
    let (rows, chunks) = read_all(&pool, "lines", 10, None).await;
    assert_eq!(chunks, 12);
    let expected = select_all(
        &pool,
        "select array[order_id::text, line::text, sku] from lines order by order_id, line",
    )
    .await;
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn uuid_text_and_enum_keys() {
    let (_db, pool) = setup(
        r#"create type tier as enum ('gold', 'silver', 'bronze');
           create table by_uuid (id uuid primary key, n int);
           insert into by_uuid select gen_random_uuid(), g from generate_series(1, 50) g;
           create table by_text (name text primary key, note text);
           insert into by_text values ('a''quote', 'tab	in'), ('back\slash', E'new\nline'), ('ünï', null), ('', 'empty'), ('Z', 'upper');
           create table by_enum (t tier, n int, primary key (t, n));
           insert into by_enum select t, n from unnest(enum_range(null::tier)) t, generate_series(1, 4) n;"#,
    )
    .await;
    let (rows, _) = read_all(&pool, "by_uuid", 7, None).await;
    assert_eq!(
        rows,
        select_all(&pool, "select array[id::text, n::text] from by_uuid order by id").await
    );
    let (rows, chunks) = read_all(&pool, "by_text", 2, None).await;
    assert_eq!(chunks, 3);
    assert_eq!(
        rows,
        select_all(&pool, "select array[name, note] from by_text order by name").await
    );
    let (rows, _) = read_all(&pool, "by_enum", 5, None).await;
    assert_eq!(rows[0][0], "gold");
    assert_eq!(
        rows.last().unwrap()[0],
        "bronze",
        "enum keys page in the enum's order, not alphabetically"
    );
    assert_eq!(
        rows,
        select_all(&pool, "select array[t::text, n::text] from by_enum order by t, n").await
    );
}

#[tokio::test]
async fn a_filter_reads_part_of_the_table() {
    let (_db, pool) = setup(
        "create table orders (id int primary key, created_at timestamptz not null);
         insert into orders select g, '2024-01-01'::timestamptz + g * interval '1 day' from generate_series(1, 100) g;",
    )
    .await;
    let (rows, _) = read_all(&pool, "orders", 9, Some("created_at > '2024-03-01'")).await;
    assert_eq!(rows.len(), 40);
    // the session's settings: timestamptz in ISO form, in UTC, as pgoutput sends it
    assert_eq!(rows[0][1], "2024-03-02 00:00:00+00");
}

#[tokio::test]
async fn tables_without_a_key() {
    let (_db, pool) = setup(
        "create table loose (a int, b text);
         create table unique_nullable (a int unique, b text);
         create table unique_not_null (a int not null, b text not null, c text);
         create unique index on unique_not_null (b, a);",
    )
    .await;
    for table in ["loose", "unique_nullable"] {
        let err = keyset(&pool, &TableRef::parse(table), false).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("has no primary key and no unique index of NOT NULL columns"),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("ADD PRIMARY KEY"), "{:?}", err.hint());
    }
    let keys = keyset(&pool, &TableRef::parse("unique_not_null"), false).await.unwrap();
    assert!(!keys.is_full_scan());
    assert_eq!(
        keys.columns.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["b", "a"]
    );
}

#[tokio::test]
async fn a_full_scan_reads_every_row_once_by_pages() {
    let (_db, pool) = setup(
        "create table log (at int, line text);
         insert into log select g % 700, repeat('x', g % 300) from generate_series(1, 5000) g;
         delete from log where at % 7 = 0;
         analyze log;",
    )
    .await;
    let keys = keyset(&pool, &TableRef::parse("log"), true).await.unwrap();
    assert!(keys.is_full_scan());
    let sorted = |mut rows: Vec<Vec<String>>| {
        rows.sort();
        rows
    };
    let (rows, chunks) = read_all(&pool, "log", 300, None).await;
    assert!(chunks > 10, "{chunks} chunks");
    assert_eq!(
        sorted(rows),
        sorted(select_all(&pool, "select array[at::text, line] from log").await)
    );
    let (rows, _) = read_all(&pool, "log", 300, Some("at < 100")).await;
    assert_eq!(
        sorted(rows),
        sorted(select_all(&pool, "select array[at::text, line] from log where at < 100").await)
    );
}
