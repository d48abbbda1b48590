//! Crashes, restarts, lost connections, signals, big transactions, busy unmapped tables.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ficus_testkit::wait_for;
use serde_json::Value;

use crate::support::Scanned;
use crate::support::{Project, insert_ticks_while_killing, signal, wait_exit};

const TICKS: &str = "create table ticks (id bigint primary key, n int not null);";
const TICK: &str = "[[event]]\nname = \"Ticked\"\ntable = \"ticks\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { id = \"new.id\", n = \"new.n\" }\n";

/// Every id 1..=n delivered; a repeated event only ever with the same id and content.
fn assert_exactly(events: &[Value], n: i64) {
    let mut by_subject: HashMap<&str, &Value> = HashMap::new();
    for e in events {
        let subject = e["subject"].as_str().unwrap();
        if let Some(seen) = by_subject.insert(subject, e) {
            assert_eq!(seen, e, "a repeated event must be the same event, same id");
        }
    }
    let subjects: HashSet<i64> = by_subject.keys().map(|s| s.parse().unwrap()).collect();
    let missing: Vec<i64> = (1..=n).filter(|i| !subjects.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "lost events for {} ids, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(subjects.len() as i64, n);
}

#[tokio::test]
async fn kill_9_and_restart_loses_nothing() {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.catch_up();
    const TXS: i64 = 400;
    const ROWS: i64 = 10;
    let kills = insert_ticks_while_killing(&p, TXS, ROWS).await;
    p.catch_up();
    let events = p.events();
    assert_exactly(&events, TXS * ROWS);
    // Within one key's stream nothing goes backwards: ids ascend with the WAL.
    let firsts: Vec<i64> = {
        let mut seen = HashSet::new();
        events
            .iter()
            .filter(|e| seen.insert(e["id"].clone()))
            .map(|e| e["data"]["id"].as_i64().unwrap())
            .collect()
    };
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "first deliveries come in commit order"
    );
    eprintln!("{kills} kills, {} lines for {} events", events.len(), TXS * ROWS);
}

#[tokio::test]
async fn dropped_connection_resumes_and_sigterm_acknowledges() {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.catch_up();
    let mut child = p.spawn_run();
    p.db.exec("insert into ticks select g, 1 from generate_series(1, 100) g")
        .await;
    p.wait_events(100).await;
    // The walsender goes away under ficus: it must come back by itself.
    let killed = p
        .scalar(&format!(
            "select count(pg_terminate_backend(active_pid))::text from pg_replication_slots where slot_name = '{}'",
            p.db.name
        ))
        .await;
    assert_eq!(killed, "1");
    p.db.exec("insert into ticks select g, 2 from generate_series(101, 200) g")
        .await;
    p.wait_events(200).await;
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("lost the source; resuming from the slot"), "{log}");
    assert_exactly(&p.events(), 200);
    // Everything was acknowledged before exiting: a new run has nothing to repeat.
    let before = p.events().len();
    p.catch_up();
    assert_eq!(p.events().len(), before);
}

#[tokio::test]
async fn unmapped_writes_never_hold_the_slot() {
    let p = Project::new("create table ticks (id bigint primary key, n int not null); create table noise (id bigserial primary key, body text);").await;
    p.mapping("ticks.toml", TICK);
    p.catch_up();
    let mut child = p.spawn_run();
    for _ in 0..20 {
        p.db.exec("insert into noise (body) select repeat('x', 200) from generate_series(1, 2000)")
            .await;
    }
    let written = p.scalar("select pg_current_wal_lsn()::text").await;
    wait_for("the slot to follow the WAL past unmapped writes", Duration::from_secs(30), || async {
        let lag = p
            .scalar(&format!(
                "select (pg_wal_lsn_diff('{written}', confirmed_flush_lsn) <= 0)::text from pg_replication_slots where slot_name = '{}'",
                p.db.name
            ))
            .await;
        (lag == "true").then_some(())
    })
    .await;
    assert!(p.events().is_empty());
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn a_dropped_column_stops_ficus_and_keeps_the_slot() {
    let p = Project::new("create table notes (id int primary key, body text not null);").await;
    p.mapping("notes.toml", "[[event]]\nname = \"Noted\"\ntable = \"notes\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { body = \"new.body\" }\n");
    p.catch_up();
    let mut child = p.spawn_run();
    p.db.exec("insert into notes values (1, 'first')").await;
    p.wait_events(1).await;
    let before = p.confirmed_flush().await.unwrap();
    p.db.exec("alter table notes drop column body; insert into notes values (2);")
        .await;
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains(r#"Noted reads column "body", which public.notes no longer has"#),
        "{log}"
    );
    assert!(log.contains("the slot stays where it is"), "{log}");
    assert_eq!(p.events().len(), 1);
    let after = p.confirmed_flush().await.unwrap();
    let undelivered = p.scalar("select pg_current_wal_lsn()::text").await;
    let held = p
        .scalar(&format!(
            "select (pg_wal_lsn_diff('{undelivered}', '{after}') > 0)::text"
        ))
        .await;
    assert_eq!(
        held, "true",
        "the slot did not move past the undelivered change ({before} → {after})"
    );
}

#[tokio::test]
async fn a_million_row_transaction_in_bounded_memory() {
    let p = Project::new("create table big (id bigint primary key, pad text not null);").await;
    p.mapping(
        "big.toml",
        "[[event]]\nname = \"BigRow\"\ntable = \"big\"\non = [\"insert\"]\nwhen = \"new.id % 1000 == 0\"\nkey = \"new.id\"\ndata = { id = \"new.id\" }\n",
    );
    p.catch_up();
    p.db.exec("insert into big select g, repeat('p', 100) from generate_series(1, 1000000) g")
        .await;
    // The child's peak RSS is its VmHWM, polled until it exits. (wait4's
    // ru_maxrss is no use here: it counts the test process's memory too, which
    // the child shares between spawn and exec.)
    let mut child = p
        .ficus(&["run", "--until-caught-up"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut max_rss_kib = 0u64;
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            max_rss_kib = max_rss_kib.max(hwm);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "ficus failed: {status}");
    let events = p.events();
    assert_eq!(events.len(), 1000);
    eprintln!("1,000,000-row transaction: peak RSS {} MiB", max_rss_kib / 1024);
    assert!(
        max_rss_kib < 150 * 1024,
        "peak RSS {} MiB: the transaction was held in memory",
        max_rss_kib / 1024
    );
}

#[tokio::test]
async fn a_renamed_table_stops_ficus_instead_of_losing_events() {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.catch_up();
    let mut child = p.spawn_run();
    p.db.exec("insert into ticks values (1, 1)").await;
    p.wait_events(1).await;
    p.db.exec("alter table ticks rename to tocks; insert into tocks values (2, 2);")
        .await;
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains("public.tocks is in the publication, but no mapping reads it"),
        "{log}"
    );
    // Started again on the old mappings: the live check says what changed.
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown table public.ticks"));
    assert_eq!(p.events().len(), 1);
    // Pointing the mapping at the new name delivers the change that waited.
    p.mapping("ticks.toml", &TICK.replace("\"ticks\"", "\"tocks\""));
    p.catch_up();
    assert_exactly(&p.events(), 2);
}
