//! The same checks against both backends: SQLite in a temporary file, Postgres in a throwaway
//! cluster's database.

use std::sync::Arc;

use ficus_testkit::{Cluster, TestDb};

use super::*;

fn record(n: u32, aggregate: &str, subject: &str) -> Record {
    Record {
        id: format!("id-{n}"),
        ty: if n.is_multiple_of(2) {
            "OrderPlaced"
        } else {
            "OrderPaid"
        }
        .into(),
        aggregate: aggregate.into(),
        subject: subject.into(),
        time_micros: 1_700_000_000_000_000 + i64::from(n),
        lsn: 0x1000 + u64::from(n),
        event: format!(r#"{{"id":"id-{n}","data":{{"n":{n}}}}}"#),
    }
}

/// A store of each backend, with what keeps it alive.
async fn stores() -> Vec<(Store, Option<TestDb>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&Location::Sqlite(dir.path().join("ficus.db")), Mode::Create)
        .await
        .unwrap();
    let db = Cluster::shared().database().await;
    let pg = Store::open(&Location::Postgres(db.url()), Mode::Create).await.unwrap();
    vec![(sqlite, None, dir), (pg, Some(db), tempfile::tempdir().unwrap())]
}

fn summary(events: &[Stored]) -> Vec<(i64, String, String, i64)> {
    events
        .iter()
        .map(|s| (s.position, s.record.id.clone(), s.record.subject.clone(), s.version))
        .collect()
}

#[tokio::test]
async fn append_numbers_positions_and_stream_versions_and_skips_repeats() {
    for (store, _db, _dir) in stores().await {
        let batch: Vec<Record> = (1..=5)
            .map(|n| record(n, "public.orders", if n.is_multiple_of(2) { "a" } else { "b" }))
            .collect();
        let checkpoint = Checkpoint {
            slot: "s",
            lsn: 0x2000,
            source: Some("source 1"),
        };
        let appended = store.append(&batch, &[], Some(checkpoint)).await.unwrap();
        assert_eq!(appended, Appended { stored: 5, repeated: 0 }, "{}", store.describe());
        // A repeat after a crash (ids 4 and 5 again) with new ones and a repeat inside the batch.
        let again = vec![
            record(4, "public.orders", "a"),
            record(5, "public.orders", "b"),
            record(6, "public.orders", "a"),
            record(6, "public.orders", "a"),
            record(7, "public.customers", "a"),
        ];
        let appended = store
            .append(
                &again,
                &[],
                Some(Checkpoint {
                    slot: "s",
                    lsn: 0x1f00,
                    source: None,
                }),
            )
            .await
            .unwrap();
        assert_eq!(appended, Appended { stored: 2, repeated: 3 }, "{}", store.describe());
        let all = store.read(&Filter::default(), 0, 100).await.unwrap();
        assert_eq!(
            summary(&all),
            vec![
                (1, "id-1".into(), "b".into(), 1),
                (2, "id-2".into(), "a".into(), 1),
                (3, "id-3".into(), "b".into(), 2),
                (4, "id-4".into(), "a".into(), 2),
                (5, "id-5".into(), "b".into(), 3),
                (6, "id-6".into(), "a".into(), 3),
                (7, "id-7".into(), "a".into(), 1),
            ],
            "{}",
            store.describe()
        );
        assert_eq!(all[0].record, batch[0], "{}: stored as appended", store.describe());
        assert_eq!(store.end().await.unwrap(), 7);
        // The checkpoint never goes back, and keeps the source it was given last.
        let saved = |lsn: u64, source: &str| {
            Some(SavedCheckpoint {
                lsn,
                source: Some(source.into()),
            })
        };
        assert_eq!(store.checkpoint("s").await.unwrap(), saved(0x2000, "source 1"));
        assert_eq!(store.checkpoint("other").await.unwrap(), None);
        store.forget_checkpoint("s").await.unwrap();
        assert_eq!(store.checkpoint("s").await.unwrap(), None);
        // An empty batch still moves the checkpoint.
        store
            .append(
                &[],
                &[],
                Some(Checkpoint {
                    slot: "s",
                    lsn: 0x3000,
                    source: Some("source 2"),
                }),
            )
            .await
            .unwrap();
        assert_eq!(store.checkpoint("s").await.unwrap(), saved(0x3000, "source 2"));
    }
}

#[tokio::test]
async fn read_filters_by_position_time_lsn_type_and_subject() {
    for (store, _db, _dir) in stores().await {
        let batch: Vec<Record> = (1..=10)
            .map(|n| record(n, "public.orders", &(n % 3).to_string()))
            .collect();
        store.append(&batch, &[], None).await.unwrap();
        let ids = |events: Vec<Stored>| events.into_iter().map(|s| s.record.id).collect::<Vec<_>>();
        let read = |filter: Filter, after: i64, limit: i64| {
            let store = &store;
            async move { ids(store.read(&filter, after, limit).await.unwrap()) }
        };
        let positions = Filter {
            from: Some(3),
            to: Some(6),
            ..Filter::default()
        };
        assert_eq!(read(positions.clone(), 0, 100).await, ["id-3", "id-4", "id-5", "id-6"]);
        assert_eq!(read(positions, 4, 1).await, ["id-5"], "after and limit page through");
        let time = Filter {
            since_micros: Some(1_700_000_000_000_009),
            ..Filter::default()
        };
        assert_eq!(read(time, 0, 100).await, ["id-9", "id-10"]);
        let lsn = Filter {
            to_lsn: Some(0x1002),
            ..Filter::default()
        };
        assert_eq!(read(lsn, 0, 100).await, ["id-1", "id-2"]);
        let kinds = Filter {
            types: vec!["OrderPlaced".into()],
            subjects: vec!["1".into(), "2".into()],
            ..Filter::default()
        };
        assert_eq!(read(kinds, 0, 100).await, ["id-2", "id-4", "id-8", "id-10"]);
    }
}

/// A replay's read: the same events as `read`, under the same filters, in one page of their lines
/// with what a line does not say.
#[tokio::test]
async fn a_page_holds_the_stored_events_read_with_the_same_filters() {
    for (store, _db, _dir) in stores().await {
        let batch: Vec<Record> = (1..=10)
            .map(|n| {
                record(
                    n,
                    if n < 5 { "public.orders" } else { "public.lines" },
                    &(n % 3).to_string(),
                )
            })
            .collect();
        store.append(&batch, &[], None).await.unwrap();
        let filters = [
            Filter::default(),
            Filter {
                from: Some(3),
                to: Some(6),
                ..Filter::default()
            },
            Filter {
                types: vec!["OrderPlaced".into()],
                subjects: vec!["1".into(), "2".into()],
                since_micros: Some(1_700_000_000_000_003),
                ..Filter::default()
            },
        ];
        for filter in filters {
            for (after, limit) in [(0, 100), (4, 2)] {
                let page = store.read_page(&filter, after, limit).await.unwrap();
                let lines: Vec<(i64, &str, &str, i64, u64, &str)> = page
                    .lines()
                    .iter()
                    .map(|l| {
                        (
                            l.position,
                            page.ty(l),
                            page.aggregate(l),
                            l.time_micros,
                            l.lsn,
                            page.event(l),
                        )
                    })
                    .collect();
                let stored = store.read(&filter, after, limit).await.unwrap();
                let expected: Vec<(i64, &str, &str, i64, u64, &str)> = stored
                    .iter()
                    .map(|s| {
                        let r = &s.record;
                        (s.position, &*r.ty, &*r.aggregate, r.time_micros, r.lsn, &*r.event)
                    })
                    .collect();
                assert!(!expected.is_empty(), "{filter:?} after {after}");
                assert_eq!(lines, expected, "{filter:?} after {after}, {limit} at most");
            }
        }
        let past_the_end = store.read_page(&Filter::default(), 10, 100).await.unwrap();
        assert!(past_the_end.lines().is_empty());
    }
}

/// A reader following the store while a writer appends sees every position once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_follow_a_writer_without_skipping() {
    for (store, db, dir) in stores().await {
        let location = match &db {
            None => Location::Sqlite(dir.path().join("ficus.db")),
            Some(db) => Location::Postgres(db.url()),
        };
        let store = Arc::new(store);
        const BATCHES: u32 = 40;
        const PER_BATCH: u32 = 250;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let batch: Vec<Record> = (0..PER_BATCH)
                        .map(|i| record(b * PER_BATCH + i, "agg", &(i % 7).to_string()))
                        .collect();
                    store.append(&batch, &[], None).await.unwrap();
                }
            })
        };
        let mut readers = Vec::new();
        for _ in 0..2 {
            let location = location.clone();
            readers.push(tokio::spawn(async move {
                let reader = Store::open(&location, Mode::Existing).await.unwrap();
                let (mut last, mut seen) = (0, 0u32);
                while seen < BATCHES * PER_BATCH {
                    for s in reader.read(&Filter::default(), last, 1000).await.unwrap() {
                        assert_eq!(s.position, last + 1, "{}: a position skipped", reader.describe());
                        last = s.position;
                        seen += 1;
                    }
                }
                seen
            }));
        }
        writer.await.unwrap();
        for r in readers {
            assert_eq!(r.await.unwrap(), BATCHES * PER_BATCH);
        }
    }
}

#[tokio::test]
async fn a_foreign_or_corrupt_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let e = Store::open(&Location::Sqlite(garbage.clone()), Mode::Create)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("is not a ficus store"), "{e}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x5a; 8192],
        "the file is left as it was"
    );

    let foreign = dir.path().join("foreign.db");
    let other = SqliteStore::open(&foreign, Mode::Create).await.unwrap();
    sqlx::query("DROP TABLE ficus_meta").execute(&other.pool).await.unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER)")
        .execute(&other.pool)
        .await
        .unwrap();
    other.close().await;
    let e = Store::open(&Location::Sqlite(foreign), Mode::Create)
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains(
            "a SQLite database, but not a ficus store (its tables: changes, checkpoints, events, invoices, relations)"
        ),
        "{e}"
    );

    let missing = dir.path().join("missing.db");
    let e = Store::open(&Location::Sqlite(missing.clone()), Mode::Existing)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("no store at"), "{e}");
    assert!(!missing.exists(), "a reader creates nothing");
}

#[tokio::test]
async fn a_store_with_a_missing_table_or_a_newer_version_is_refused() {
    for (store, db, dir) in stores().await {
        let location = match &store {
            Store::Sqlite(s) => {
                sqlx::query("DROP TABLE events").execute(&s.pool).await.unwrap();
                Location::Sqlite(dir.path().join("ficus.db"))
            }
            Store::Postgres(s) => {
                sqlx::query("DROP TABLE ficus.events").execute(&s.pool).await.unwrap();
                Location::Postgres(db.as_ref().unwrap().url())
            }
        };
        store.close().await;
        let e = Store::open(&location, Mode::Create).await.err().unwrap();
        assert!(
            e.to_string().contains("its table") && e.to_string().contains("events is missing"),
            "{e}"
        );
        assert!(e.hint().contains("restore"), "{}", e.hint());
        drop(db);
    }
    let db = Cluster::shared().database().await;
    let store = PgStore::open(&db.url(), Mode::Create).await.unwrap();
    sqlx::query("UPDATE ficus.meta SET value = '99' WHERE key = 'schema_version'")
        .execute(&store.pool)
        .await
        .unwrap();
    let e = PgStore::open(&db.url(), Mode::Existing).await.err().unwrap();
    assert!(e.to_string().contains("format version 99"), "{e}");
    db.exec("DROP SCHEMA ficus CASCADE; CREATE SCHEMA ficus; CREATE TABLE ficus.jobs (id int)")
        .await;
    let e = PgStore::open(&db.url(), Mode::Create).await.err().unwrap();
    assert!(e.to_string().contains("not a ficus store's (jobs)"), "{e}");
}

#[tokio::test]
async fn archived_changes_are_kept_once_in_order_with_their_relation() {
    for (store, _db, _dir) in stores().await {
        let change = |key: &str, relation: &str| ArchivedChange {
            key: key.into(),
            lsn: 0x100,
            time_micros: 7,
            relation: relation.into(),
            change: format!(r#"{{"key":"{key}"}}"#),
        };
        let first = [
            change("a", "orders v1"),
            change("b", "orders v1"),
            change("c", "customers v1"),
        ];
        store.append(&[record(1, "x", "1")], &first, None).await.unwrap();
        // A repeat after a crash, a repeat within the batch, and a new version of the orders table.
        let again = [
            change("b", "orders v1"),
            change("d", "orders v2"),
            change("d", "orders v2"),
        ];
        store.append(&[], &again, None).await.unwrap();
        let read = store.read_changes(&Filter::default(), 0, 100).await.unwrap();
        let got: Vec<(i64, String, String)> = {
            let mut got = Vec::new();
            for c in &read {
                got.push((c.position, c.change.clone(), store.relation(c.relation).await.unwrap()));
            }
            got
        };
        assert_eq!(
            got,
            vec![
                (1, r#"{"key":"a"}"#.into(), "orders v1".into()),
                (2, r#"{"key":"b"}"#.into(), "orders v1".into()),
                (3, r#"{"key":"c"}"#.into(), "customers v1".into()),
                (4, r#"{"key":"d"}"#.into(), "orders v2".into()),
            ],
            "{}",
            store.describe()
        );
        assert_eq!(read[0].relation, read[1].relation, "one description, one row");
        let from_three = Filter {
            from: Some(3),
            types: vec!["ignored for changes".into()],
            ..Filter::default()
        };
        assert_eq!(store.read_changes(&from_three, 0, 100).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_store_of_format_version_1_is_read_as_it_is_and_upgraded_by_a_writer() {
    for (store, db, dir) in stores().await {
        let checkpoint = Checkpoint {
            slot: "s",
            lsn: 0x10,
            source: None,
        };
        store
            .append(&[record(1, "a", "1")], &[], Some(checkpoint))
            .await
            .unwrap();
        // What a store of format version 1 looks like: no checkpoints.source.
        let location = match &store {
            Store::Sqlite(s) => {
                sqlx::query("ALTER TABLE checkpoints DROP COLUMN source")
                    .execute(&s.pool)
                    .await
                    .unwrap();
                sqlx::query("UPDATE ficus_meta SET value = '1' WHERE key = 'schema_version'")
                    .execute(&s.pool)
                    .await
                    .unwrap();
                Location::Sqlite(dir.path().join("ficus.db"))
            }
            Store::Postgres(s) => {
                sqlx::query("ALTER TABLE ficus.checkpoints DROP COLUMN source")
                    .execute(&s.pool)
                    .await
                    .unwrap();
                sqlx::query("UPDATE ficus.meta SET value = '1' WHERE key = 'schema_version'")
                    .execute(&s.pool)
                    .await
                    .unwrap();
                Location::Postgres(db.as_ref().unwrap().url())
            }
        };
        store.close().await;
        let reader = Store::open(&location, Mode::Existing).await.unwrap();
        let old = Some(SavedCheckpoint {
            lsn: 0x10,
            source: None,
        });
        assert_eq!(reader.checkpoint("s").await.unwrap(), old, "{}", reader.describe());
        reader.close().await;
        let writer = Store::open(&location, Mode::Create).await.unwrap();
        assert_eq!(writer.checkpoint("s").await.unwrap(), old);
        let checkpoint = Checkpoint {
            slot: "s",
            lsn: 0x20,
            source: Some("known"),
        };
        writer.append(&[], &[], Some(checkpoint)).await.unwrap();
        assert_eq!(
            writer.checkpoint("s").await.unwrap(),
            Some(SavedCheckpoint {
                lsn: 0x20,
                source: Some("known".into())
            }),
            "{}",
            writer.describe()
        );
        assert_eq!(writer.read(&Filter::default(), 0, 10).await.unwrap().len(), 1);
        writer.close().await;
        drop(db);
    }
}

/// A SQLite store of format version 1 or 2, as those versions made them (2 has
/// `checkpoints.source`; neither has `events.id_key`), in `path`, holding `n` events at positions
/// from 1 (seven streams in turn); the events it holds.
async fn an_old_sqlite_store(path: &std::path::Path, version: u32, n: u32) -> Vec<Record> {
    let events: Vec<Record> = (1..=n)
        .map(|n| record(n, "public.orders", &(n % 7).to_string()))
        .collect();
    // In WAL mode, as every ficus store is: a reader never waits for the writer.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let (source_column, source) = if version >= 2 {
        (", source TEXT", ", 'source 1'")
    } else {
        ("", "")
    };
    sqlx::raw_sql(&format!(
        "CREATE TABLE ficus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO ficus_meta VALUES ('format', 'ficus-store'), ('schema_version', '{version}');
         CREATE TABLE events (
             position INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
             aggregate TEXT NOT NULL, subject TEXT NOT NULL, version INTEGER NOT NULL,
             time_us INTEGER NOT NULL, lsn INTEGER NOT NULL, event TEXT NOT NULL,
             UNIQUE (aggregate, subject, version));
         CREATE TABLE checkpoints (slot TEXT PRIMARY KEY, lsn INTEGER NOT NULL, updated_us INTEGER NOT NULL{source_column});
         INSERT INTO checkpoints VALUES ('s', 4096, 0{source});
         CREATE TABLE relations (id INTEGER PRIMARY KEY, description TEXT NOT NULL UNIQUE);
         CREATE TABLE changes (position INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, lsn INTEGER NOT NULL,
             time_us INTEGER NOT NULL, relation INTEGER NOT NULL REFERENCES relations (id), change TEXT NOT NULL);"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    for (i, r) in events.iter().enumerate() {
        sqlx::query("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(i as i64 + 1)
            .bind(&r.id)
            .bind(&r.ty)
            .bind(&r.aggregate)
            .bind(&r.subject)
            .bind(i as i64 / 7 + 1)
            .bind(r.time_micros)
            .bind(r.lsn as i64)
            .bind(&r.event)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::Connection::close(conn).await.unwrap();
    events
}

#[tokio::test]
async fn a_sqlite_store_of_format_version_2_is_read_as_it_is_and_rewritten_with_id_keys_by_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ficus.db");
    let old = an_old_sqlite_store(&path, 2, 2_500).await;
    let location = Location::Sqlite(path.clone());

    let reader = Store::open(&location, Mode::Existing).await.unwrap();
    let before = reader.read(&Filter::default(), 0, 10_000).await.unwrap();
    assert_eq!(before.len(), 2_500);
    let refused = reader.append(&old[..1], &[], None).await.unwrap_err();
    assert!(refused.to_string().contains("older format"), "{refused}");
    reader.close().await;

    // The writer rewrites the events with their keys (in pages of 2,000: more than one here).
    let writer = Store::open(&location, Mode::Create).await.unwrap();
    assert_eq!(writer.read(&Filter::default(), 0, 10_000).await.unwrap(), before);
    let again = vec![old[0].clone(), old[2_499].clone(), record(2_501, "public.orders", "1")];
    let appended = writer.append(&again, &[], None).await.unwrap();
    assert_eq!(appended, Appended { stored: 1, repeated: 2 });
    assert_eq!(writer.end().await.unwrap(), 2_501);
    assert_eq!(
        writer.checkpoint("s").await.unwrap(),
        Some(SavedCheckpoint {
            lsn: 4096,
            source: Some("source 1".into())
        })
    );
    let Store::Sqlite(s) = &writer else { unreachable!() };
    let meta: (String, i64, i64) = sqlx::query_as(
        "SELECT (SELECT value FROM ficus_meta WHERE key = 'schema_version'),
                (SELECT count(*) FROM sqlite_master WHERE name IN ('events_id_key', 'events_before_v3')),
                (SELECT count(*) FROM events WHERE id_key = 0)",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(meta, (SCHEMA_VERSION.to_string(), 1, 0));
    writer.close().await;
}

#[test]
fn an_id_key_is_the_ids_fnv_1a_hash_and_never_changes() {
    // FNV-1a 64 test vectors: the keys of stores already written depend on them.
    assert_eq!(id_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
    assert_eq!(id_key("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
    assert_eq!(id_key("foobar"), 0x8594_4171_f739_67e8_u64 as i64);
}

#[tokio::test]
async fn two_writers_opening_an_old_sqlite_store_at_once_upgrade_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ficus.db");
    // Version 1: the second writer to take the lock would add checkpoints.source again.
    let old = an_old_sqlite_store(&path, 1, 100).await;
    let location = Location::Sqlite(path.clone());
    let (a, b) = tokio::join!(
        Store::open(&location, Mode::Create),
        Store::open(&location, Mode::Create)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for store in [&a, &b] {
        assert_eq!(store.read(&Filter::default(), 0, 1_000).await.unwrap().len(), 100);
        assert_eq!(store.checkpoint("s").await.unwrap().map(|c| c.lsn), Some(4096));
    }
    let appended = b
        .append(&[old[0].clone(), record(101, "public.orders", "1")], &[], None)
        .await
        .unwrap();
    assert_eq!(appended, Appended { stored: 1, repeated: 1 });
    a.close().await;
    b.close().await;
}
