//! Backfill: existing rows as snapshot events, consistent with the stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::Scanned;
use crate::support::{Project, signal, wait_exit};

/// Rows in the parity test: 20,000 by default, `FICUS_PARITY_ROWS` for more.
fn parity_rows() -> i64 {
    std::env::var("FICUS_PARITY_ROWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}
pub(crate) const MAPPINGS: &str = r#"
[[event]]
name = "AccountSeen"
table = "accounts"
on = ["insert", "update", "snapshot"]
key = "new.id"
data = "new"

[[event]]
name = "AccountClosed"
table = "accounts"
on = ["delete"]
key = "old.id"
"#;

/// The newest backfill's file (`.ficus/backfills/ID.json`), if any.
fn latest_backfill(p: &Project) -> Option<Value> {
    let mut files: Vec<_> = std::fs::read_dir(p.path(".ficus/backfills"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort_by_key(|f| (f.as_os_str().len(), f.clone()));
    serde_json::from_str(&std::fs::read_to_string(files.last()?).ok()?).ok()
}

/// Waits until the backfill's checkpoint shows `n` chunks of its first table.
async fn wait_chunks(p: &Project, n: u64) {
    ficus_testkit::wait_for(&format!("{n} chunks"), Duration::from_secs(60), || async {
        let chunks = latest_backfill(p)?["tables"][0]["chunks"].as_u64()?;
        (chunks >= n).then_some(())
    })
    .await;
}

/// A project whose `accounts` table has `rows` rows, mapped by [`MAPPINGS`].
pub(crate) async fn accounts(rows: i64) -> Project {
    let p = Project::new(&format!(
        "create table accounts (id int primary key, balance int not null, note text);
         insert into accounts select g, g % 1000, 'n' || g from generate_series(1, {rows}) g;
         alter table accounts replica identity full;"
    ))
    .await;
    p.mapping("accounts.toml", MAPPINGS);
    p
}

/// A project whose `items` table has `rows` rows, each an `ItemSeen` (insert or snapshot).
async fn items(rows: i64) -> Project {
    let p = Project::new(&format!(
        "create table items (id int primary key, name text not null);
         insert into items select g, 'item ' || g from generate_series(1, {rows}) g;"
    ))
    .await;
    p.mapping(
        "items.toml",
        "[[event]]\nname = \"ItemSeen\"\ntable = \"items\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\n",
    );
    p
}

/// Folds events by key into a table: the parity check.
fn fold(events: &[Value]) -> BTreeMap<i64, Value> {
    let mut table = BTreeMap::new();
    for e in events {
        let id: i64 = e["subject"].as_str().unwrap().parse().unwrap();
        match e["type"].as_str().unwrap() {
            "AccountSeen" => {
                table.insert(id, e["data"].clone());
            }
            "AccountClosed" => {
                table.remove(&id);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    table
}

async fn table_now(p: &Project) -> BTreeMap<i64, Value> {
    let mut conn = p.db.connect().await;
    let rows: Vec<(i32, i32, Option<String>)> = sqlx::query_as("select id, balance, note from accounts")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, balance, note)| {
            (
                i64::from(id),
                serde_json::json!({"id": id, "balance": balance, "note": note}),
            )
        })
        .collect()
}

/// Random inserts, updates and deletes of the same keys, in small transactions, until stopped.
pub(crate) fn writer(url: String, stop: tokio::sync::watch::Receiver<bool>, rows: i64) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut n = 0u64;
        let mut seed = 42u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        while !*stop.borrow() {
            let id = next() % (rows + rows / 10) + 1;
            let sql = match next() % 4 {
                0 => format!("delete from accounts where id = {id}"),
                1 => format!(
                    "insert into accounts values ({id}, 7, 'new') on conflict (id) do update set note = 'upserted'"
                ),
                _ => format!("update accounts set balance = balance + 1 where id = {id}"),
            };
            conn.execute(sql.as_str()).await.unwrap();
            n += 1;
        }
        n
    })
}

// Multi-threaded, so that the writer keeps writing while the test waits for ficus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_parity_under_concurrent_writes_with_a_crash() {
    let rows = parity_rows();
    let p = accounts(rows).await;
    p.catch_up();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writes = writer(p.db.url(), stop_rx, rows);
    // Crash it mid-way...
    let mut child = p
        .ficus(&["backfill", "--chunk-size", "500"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(p.path("backfill-1.log")).unwrap())
        .spawn()
        .unwrap();
    wait_chunks(&p, 5).await;
    signal(&child, libc::SIGKILL);
    wait_exit(&mut child, Duration::from_secs(10)).await;
    let before = latest_backfill(&p).unwrap();
    let chunks_before = before["tables"][0]["chunks"].as_u64().unwrap();
    assert!(!before["tables"][0]["done"].as_bool().unwrap());
    // ...and run it again: it goes on from its last chunk.
    let out = p.ok(&["backfill", "--chunk-size", "500"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("backfill: resuming"), "{log}");
    let after = latest_backfill(&p).unwrap();
    assert!(after["tables"][0]["done"].as_bool().unwrap());
    assert_eq!(after["id"], before["id"], "the same backfill, so the same event ids");
    // It read on from the checkpointed key, not from the start of the table.
    let checkpoint = before["tables"][0]["last_key"][0].as_str().unwrap();
    assert!(
        log.contains(&format!(
            "backfill: reading table=public.accounts from=Some([\"{checkpoint}\"])"
        )),
        "{log}"
    );
    assert!(!log.contains("from=None"), "{log}");
    assert!(after["tables"][0]["chunks"].as_u64().unwrap() > chunks_before);
    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    p.catch_up();
    let events = assert_parity(&p, n).await;
    let snapshot_events = events.iter().filter(|e| e.get("backfill").is_some()).count();
    assert!(
        snapshot_events as i64 >= rows * 3 / 4,
        "{snapshot_events} snapshot events"
    );
    eprintln!(
        "parity over {} rows with {n} concurrent writes, {snapshot_events} snapshot events, {} lines",
        table_now(&p).await.len(),
        events.len()
    );
    let status = p.ok(&["backfill", "--status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("public.accounts: "),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[tokio::test]
async fn backfill_with_a_filter_and_composite_keys() {
    let p = Project::new(
        "create table lines (order_id int, line int, qty int not null, primary key (order_id, line));
         insert into lines select o, l, o * l from generate_series(1, 50) o, generate_series(1, 4) l;",
    )
    .await;
    p.mapping("lines.toml", "[[event]]\nname = \"LineSeen\"\ntable = \"lines\"\non = [\"snapshot\"]\nkey = \"string(new.order_id) + '/' + string(new.line)\"\ndata = \"new\"\n");
    // 40 rows at 100 rows/s: at least 400 ms, however fast the source is.
    let began = std::time::Instant::now();
    p.ok(&[
        "backfill",
        "--chunk-size",
        "7",
        "--where",
        "order_id > 40",
        "--max-rate",
        "100",
    ]);
    assert!(began.elapsed() >= Duration::from_millis(390), "{:?}", began.elapsed());
    assert_eq!(latest_backfill(&p).unwrap()["max_rate"], 100);
    let events = p.events();
    assert_eq!(events.len(), 40);
    assert_eq!(events[0]["subject"], "41/1");
    assert_eq!(events[39]["subject"], "50/4");
    assert!(events.iter().all(|e| e["backfill"].is_string()));
}

#[tokio::test]
async fn a_table_without_a_key_is_refused_unless_a_full_scan_is_allowed() {
    let p = Project::new("create table loose (a int, b text); insert into loose values (1, 'x'), (2, 'y');").await;
    p.mapping(
        "loose.toml",
        "[[event]]\nname = \"Loose\"\ntable = \"loose\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.a\"\n",
    );
    // In the publication, a table without a replica identity would break the
    // monolith's updates and deletes: ficus refuses to put it there.
    let out = p.ficus(&["check"]).out();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("every UPDATE and DELETE of it would fail in the source"),
        "{err}"
    );
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    p.db.exec("alter table loose replica identity full").await;
    let out = p.ficus(&["backfill"]).out();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("public.loose has no primary key"), "{err}");
    assert!(err.contains("ADD PRIMARY KEY"), "{err}");
    assert!(err.contains("--allow-full-scan"), "{err}");
    p.ok(&["backfill", "--allow-full-scan"]);
    let events = p.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"], serde_json::json!({"a": 1, "b": "x"}));
}

const LOG_MAPPINGS: &str = r#"
[[event]]
name = "Row"
table = "log"
on = ["insert", "snapshot"]
key = "string(new.id)"
data = "new"

[[event]]
name = "RowChanged"
table = "log"
on = ["update"]
key = "string(new.id)"
data = { old = "old", new = "new" }

[[event]]
name = "RowGone"
table = "log"
on = ["delete"]
key = "string(old.id)"
data = "old"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_scan_parity_under_concurrent_writes() {
    let rows = 8_000;
    let p = Project::new(&format!(
        "create table log (id int not null, n int not null, note text);
         insert into log select g, g % 100, repeat('n', g % 200) from generate_series(1, {rows}) g;
         alter table log replica identity full;"
    ))
    .await;
    p.mapping("log.toml", LOG_MAPPINGS);
    p.catch_up();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // Inserts of new ids, updates and deletes of existing ones: row contents stay distinct.
    let url = p.db.url();
    let writes = tokio::spawn(async move {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let (mut n, mut next_id, mut seed) = (0u64, rows + 1, 7u64);
        while !*stop.borrow() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = (seed >> 33) as i64 % next_id + 1;
            let sql = match (seed >> 20) % 3 {
                0 => {
                    next_id += 1;
                    format!("insert into log values ({next_id}, 0, 'new')")
                }
                1 => format!("update log set n = n + 1, note = 'moved' where id = {id}"),
                _ => format!("delete from log where id = {id}"),
            };
            conn.execute(sql.as_str()).await.unwrap();
            n += 1;
        }
        n
    });
    let out = p.ok(&["backfill", "--allow-full-scan", "--chunk-size", "300"]);
    let log = String::from_utf8_lossy(&out.stderr);
    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    p.catch_up();
    // Fold: a multiset of row contents (they are distinct), a removal of an
    // absent row being a no-op, as a consumer without a key would do.
    let mut folded: BTreeMap<String, i64> = BTreeMap::new();
    let add = |m: &mut BTreeMap<String, i64>, v: &Value| *m.entry(v.to_string()).or_default() += 1;
    let remove = |m: &mut BTreeMap<String, i64>, v: &Value| {
        if let Some(c) = m.get_mut(&v.to_string()) {
            *c -= 1;
            if *c == 0 {
                m.remove(&v.to_string());
            }
        }
    };
    let events = p.events();
    for e in &events {
        match e["type"].as_str().unwrap() {
            "Row" => add(&mut folded, &e["data"]),
            "RowChanged" => {
                remove(&mut folded, &e["data"]["old"]);
                add(&mut folded, &e["data"]["new"]);
            }
            "RowGone" => remove(&mut folded, &e["data"]),
            other => panic!("unexpected event {other}"),
        }
    }
    let mut conn = p.db.connect().await;
    let real: Vec<(i32, i32, Option<String>)> = sqlx::query_as("select id, n, note from log")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let real: BTreeMap<String, i64> = real
        .into_iter()
        .map(|(id, n, note)| (serde_json::json!({"id": id, "n": n, "note": note}).to_string(), 1))
        .collect();
    let diff: Vec<_> = real
        .keys()
        .chain(folded.keys())
        .filter(|k| real.get(*k) != folded.get(*k))
        .take(5)
        .map(|k| (k, real.get(k), folded.get(k)))
        .collect();
    let snapshot_events = events.iter().filter(|e| e.get("backfill").is_some()).count();
    assert!(
        diff.is_empty(),
        "parity fails (row, in the table, folded) {diff:?} after {n} concurrent writes"
    );
    assert!(snapshot_events > rows as usize / 4, "{snapshot_events} snapshot events");
    assert!(n > 100, "only {n} concurrent writes");
    eprintln!(
        "full scan parity over {} rows, {n} concurrent writes, {snapshot_events} snapshot events\n{log}",
        real.len()
    );
}

#[tokio::test]
async fn run_until_caught_up_finishes_a_backfill_in_progress() {
    let p = items(3000).await;
    let mut child = p
        .ficus(&["backfill", "--chunk-size", "100", "--pause-ms", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_chunks(&p, 2).await;
    signal(&child, libc::SIGKILL);
    wait_exit(&mut child, Duration::from_secs(10)).await;
    let out = p.catch_up();
    assert!(String::from_utf8_lossy(&out.stderr).contains("a backfill is in progress: finishing it first"));
    let subjects: std::collections::HashSet<String> = p
        .events()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(subjects.len(), 3000);
}

/// Waits until a ficus streams from the project's slot.
async fn wait_until_streaming(p: &Project) {
    ficus_testkit::wait_for("ficus run to hold the slot", Duration::from_secs(30), || async {
        let active = p
            .scalar(&format!(
                "select coalesce((select active::text from pg_replication_slots where slot_name = '{}'), 'false')",
                p.db.name
            ))
            .await;
        (active == "true").then_some(())
    })
    .await;
}

async fn assert_parity(p: &Project, writes: u64) -> Vec<Value> {
    let events = p.events();
    let folded = fold(&events);
    let real = table_now(p).await;
    let diff: Vec<_> = real
        .keys()
        .chain(folded.keys())
        .filter(|k| real.get(k) != folded.get(k))
        .take(5)
        .collect();
    assert!(
        diff.is_empty(),
        "parity fails for ids {diff:?} (after {writes} concurrent writes)"
    );
    events
}

#[tokio::test]
async fn backfill_is_handed_to_the_running_ficus_and_taken_over_when_it_dies() {
    let rows = 6_000;
    let p = accounts(rows).await;
    p.catch_up();
    let mut run = p.spawn_run();
    wait_until_streaming(&p).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writes = writer(p.db.url(), stop_rx, rows);
    let mut cli = p
        .ficus(&["backfill", "--chunk-size", "200", "--pause-ms", "50"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(p.path("backfill.log")).unwrap())
        .spawn()
        .unwrap();
    // The running ficus does the work: it checkpoints chunks while `ficus backfill` waits...
    wait_chunks(&p, 3).await;
    let run_log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(run_log.contains("backfill: requested"), "{run_log}");
    assert!(run_log.contains("backfill: starting"), "{run_log}");
    // ...until it dies: `ficus backfill` takes over from the last checkpoint.
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run, Duration::from_secs(10)).await;
    let status = wait_exit(&mut cli, Duration::from_secs(120)).await;
    let log = std::fs::read_to_string(p.path("backfill.log")).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("backfill: handed to the ficus run"), "{log}");
    assert!(log.contains("backfill: running it here"), "{log}");
    assert!(log.contains("is complete and its events are delivered"), "{log}");
    assert!(
        !log.contains("from=None"),
        "the takeover starts from the checkpoint:\n{log}"
    );
    let state = latest_backfill(&p).unwrap();
    assert_eq!(state["tables"][0]["done"], true);
    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    p.catch_up();
    let events = assert_parity(&p, n).await;
    // Every row the checkpoints count as emitted is in the output (the writer
    // churns the table to about half its rows by the end).
    let snapshot_ids: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e.get("backfill").is_some())
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let emitted = state["tables"][0]["rows_emitted"].as_u64().unwrap();
    assert!(emitted as i64 > rows / 4, "{emitted} rows emitted");
    assert!(
        snapshot_ids.len() as u64 >= emitted,
        "{} snapshot events",
        snapshot_ids.len()
    );
}

#[tokio::test]
async fn backfill_no_wait_returns_at_once_and_the_run_does_it() {
    let p = items(500).await;
    // Nobody streams: the backfill is recorded, and the next run does it.
    let out = p.ok(&["backfill", "--no-wait", "--where", "id <= 100"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the next `ficus run` does it"), "{err}");
    assert!(p.events().is_empty());
    p.catch_up();
    assert_eq!(p.events().len(), 100);
    // A ficus run streams: the backfill is handed to it, and `--no-wait` returns before it is done.
    let mut run = p.spawn_run();
    wait_until_streaming(&p).await;
    let out = p.ok(&["backfill", "--no-wait", "--where", "id > 100", "--chunk-size", "50"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("backfill {id} handed to the ficus run")), "{err}");
    let events = p.wait_events(500).await;
    let second: Vec<_> = events.iter().filter(|e| e["backfill"] == id.as_str()).collect();
    assert_eq!(second.len(), 400);
    ficus_testkit::wait_for("the backfill to be complete", Duration::from_secs(30), || async {
        let status = p.ok(&["backfill", "--status"]);
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        text.contains(&format!("backfill {id}: complete")).then_some(())
    })
    .await;
    signal(&run, libc::SIGTERM);
    assert!(wait_exit(&mut run, Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn a_row_the_mappings_cannot_map_fails_the_backfill_not_the_stream() {
    let p = Project::new(
        "create table shares (id int primary key, parts int not null);
         insert into shares values (1, 2), (2, 0), (3, 4);",
    )
    .await;
    p.mapping(
        "shares.toml",
        "[[event]]\nname = \"ShareSeen\"\ntable = \"shares\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\ndata = { each = \"100 / new.parts\" }\n",
    );
    p.catch_up();
    let mut run = p.spawn_run();
    wait_until_streaming(&p).await;
    let out = p.ficus(&["backfill"]).out();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("failed"), "{err}");
    assert!(err.contains("ShareSeen"), "the error names the mapping:\n{err}");
    let status = String::from_utf8_lossy(&p.ok(&["backfill", "--status"]).stdout).into_owned();
    assert!(status.contains(": failed"), "{status}");
    assert!(status.contains("error: "), "{status}");
    // The stream goes on.
    p.db.exec("insert into shares values (4, 5)").await;
    let events = p.wait_events(1).await;
    assert_eq!(events.last().unwrap()["data"]["each"], 20);
    assert!(events.last().unwrap().get("backfill").is_none());
    signal(&run, libc::SIGTERM);
    assert!(wait_exit(&mut run, Duration::from_secs(10)).await.success());
    // A failed backfill is not taken up again by itself...
    let out = p.catch_up();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("a backfill is in progress"));
    // ...but once the mapping is fixed, asking again goes on with it, under the same id.
    let failed = latest_backfill(&p).unwrap();
    p.mapping(
        "shares.toml",
        "[[event]]\nname = \"ShareSeen\"\ntable = \"shares\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\ndata = { each = \"new.parts == 0 ? 0 : 100 / new.parts\" }\n",
    );
    let out = p.ok(&["backfill"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("backfill: going on with one that failed"), "{log}");
    let done = latest_backfill(&p).unwrap();
    assert_eq!(done["id"], failed["id"]);
    assert!(done.get("error").is_none(), "{done}");
    let subjects: Vec<_> = p
        .events()
        .iter()
        .filter(|e| e["backfill"] == done["id"])
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        subjects,
        ["1", "2", "3", "4"],
        "the rows as they are now, row 4 included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slot_exports_its_snapshot_for_the_backfill() {
    let rows = 20_000;
    let p = accounts(rows).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writes = writer(p.db.url(), stop_rx, rows);
    // No slot yet: the backfill reads the snapshot the new slot exports.
    let out = p.ok(&["backfill", "--chunk-size", "1000"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("created slot, with a snapshot for the backfill"), "{log}");
    assert!(log.contains("no watermarks needed"), "{log}");
    assert!(
        !log.contains("backfill: reading table="),
        "no chunk went through the watermarks:\n{log}"
    );
    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    assert!(n > 0);
    p.catch_up();
    let events = assert_parity(&p, n).await;
    // Every row of the snapshot is emitted, none dropped, and before any change.
    let first_live = events
        .iter()
        .position(|e| e.get("backfill").is_none())
        .unwrap_or(events.len());
    assert!(events[first_live..].iter().all(|e| e.get("backfill").is_none()));
    let state = latest_backfill(&p).unwrap();
    assert_eq!(state["tables"][0]["rows_read"], state["tables"][0]["rows_emitted"]);
    assert_eq!(first_live as u64, state["tables"][0]["rows_emitted"].as_u64().unwrap());
}
