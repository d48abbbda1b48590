//! Store append throughput, each backend against a plain insert of the same rows through the same
//! driver, in the same run (the reference: what the database takes without ficus's positions,
//! stream versions and deduplication).
//!
//! ```sh
//! cargo bench -p ficus-store --bench append            # FICUS_BENCH_EVENTS=200000 by default
//! ```

use std::time::{Duration, Instant};

use ficus_store::{Checkpoint, EventStore, Location, Mode, Record, Store};
use sqlx::{Connection, Executor, QueryBuilder};

/// The events of a flush (ficus flushes at most every 20,000 events).
const BATCH: usize = 20_000;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            // Scattered as ficus's ids (UUID v5: a hash) are, not in insertion order.
            let (a, b) = (mix(i as u64), mix(!(i as u64)));
            let id = format!(
                "{:08x}-{:04x}-5{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 48,
                b & 0xffff_ffff_ffff
            );
            let subject = (i % 5_000).to_string();
            let event = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/ficus/shop/public.orders","type":"OrderPlaced","subject":"{subject}","time":"2026-11-23T01:32:31.053941Z","datacontenttype":"application/json","eventversion":1,"lsn":"0/1D7A2C8","txid":"730","data":{{"order_id":{i},"customer_id":{subject},"total":120.50,"tags":["gift"]}}}}"#
            );
            Record {
                id,
                ty: "OrderPlaced".into(),
                aggregate: "public.orders".into(),
                subject,
                time_micros: 1_700_000_000_000_000 + i as i64,
                lsn: 0x1000 + i as u64,
                event,
            }
        })
        .collect()
}

/// splitmix64: a cheap, well-spread hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

async fn append_all(store: &Store, events: &[Record]) -> Duration {
    let began = Instant::now();
    for (n, batch) in events.chunks(BATCH).enumerate() {
        let checkpoint = Checkpoint {
            slot: "bench",
            lsn: n as u64,
            source: None,
        };
        store.append(batch, &[], Some(checkpoint)).await.unwrap();
    }
    began.elapsed()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("FICUS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let events = records(n);
    println!("{n} events of ~{} bytes, in batches of {BATCH}", events[0].event.len());

    // SQLite: the store, then a plain table in a file with the same settings.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Location::Sqlite(dir.path().join("ficus.db")), Mode::Create)
        .await
        .unwrap();
    let ficus = append_all(&store, &events).await;
    store.close().await;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("plain.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    conn.execute("CREATE TABLE plain (id TEXT, type TEXT, aggregate TEXT, subject TEXT, time_us INTEGER, lsn INTEGER, event TEXT)")
        .await
        .unwrap();
    let began = Instant::now();
    for batch in events.chunks(BATCH) {
        let mut tx = conn.begin().await.unwrap();
        for part in batch.chunks(2_000) {
            let mut q = QueryBuilder::new("INSERT INTO plain ");
            q.push_values(part, |mut row, r| {
                row.push_bind(&r.id)
                    .push_bind(&r.ty)
                    .push_bind(&r.aggregate)
                    .push_bind(&r.subject)
                    .push_bind(r.time_micros)
                    .push_bind(r.lsn as i64)
                    .push_bind(&r.event);
            });
            q.build().execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let plain = began.elapsed();
    report("sqlite", n, ficus, plain);

    // Postgres: a throwaway cluster's database; the store, then a plain table by unnest.
    let db = ficus_testkit::Cluster::shared().database().await;
    let store = Store::open(&Location::Postgres(db.url()), Mode::Create).await.unwrap();
    let ficus = append_all(&store, &events).await;
    store.close().await;
    let mut conn = db.connect().await;
    conn.execute(
        "CREATE TABLE plain (id text, type text, aggregate text, subject text, time_us bigint, lsn bigint, event text)",
    )
    .await
    .unwrap();
    let began = Instant::now();
    for batch in events.chunks(BATCH) {
        let col = |f: fn(&Record) -> &str| batch.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&Record) -> i64| batch.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO plain SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])",
        )
        .bind(col(|r| &r.id))
        .bind(col(|r| &r.ty))
        .bind(col(|r| &r.aggregate))
        .bind(col(|r| &r.subject))
        .bind(num(|r| r.time_micros))
        .bind(num(|r| r.lsn as i64))
        .bind(col(|r| &r.event))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let plain = began.elapsed();
    report("postgres", n, ficus, plain);
}

fn report(backend: &str, n: usize, ficus: Duration, plain: Duration) {
    println!(
        "{backend:>8}: store {:>9.0} events/s ({:.2} s), plain insert {:>9.0} rows/s ({:.2} s), ratio {:.2}",
        rate(n, ficus),
        ficus.as_secs_f64(),
        rate(n, plain),
        plain.as_secs_f64(),
        plain.as_secs_f64() / ficus.as_secs_f64()
    );
}
