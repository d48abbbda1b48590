//! `ficus status` read from the outside: before the first start, after a run, and while a run
//! streams — its values checked against `pg_replication_slots` and the position file.

use std::time::Duration;

use ficus_testkit::wait_for;
use serde_json::Value;

use crate::support::{Project, signal, wait_exit};

fn status(p: &Project) -> Value {
    let out = p.ok(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `pg_replication_slots`' view of the slot: active, active_pid, confirmed_flush_lsn.
async fn slot_row(p: &Project) -> (bool, Option<i32>, String) {
    let mut conn = p.db.connect().await;
    sqlx::query_as::<_, (bool, Option<i32>, String)>(
        "select active, active_pid, confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
    )
    .bind(&p.db.name)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn status_shows_the_slot_the_record_and_the_backfill_from_outside() {
    let p = crate::pipeline::shop().await;
    let before = status(&p);
    assert_eq!(before["slot"]["exists"], false, "{before:#}");
    assert_eq!(before["recorded"], Value::Null, "{before:#}");
    assert!(before["server_lsn"].as_str().unwrap().contains('/'), "{before:#}");

    p.catch_up();
    p.db.exec("insert into customers (email, name, password_hash) values ('ada@example.com', 'Ada', 'x')")
        .await;
    p.catch_up();
    let after = status(&p);
    let (active, _, confirmed) = slot_row(&p).await;
    assert!(!active);
    assert_eq!(after["slot"]["exists"], true, "{after:#}");
    assert_eq!(after["slot"]["active"], false, "{after:#}");
    assert_eq!(after["slot"]["active_pid"], Value::Null, "{after:#}");
    assert_eq!(after["slot"]["wal_status"], "reserved", "{after:#}");
    assert_eq!(after["slot"]["confirmed_flush_lsn"], confirmed.as_str(), "{after:#}");
    let (retained, lag) = (
        after["slot"]["retained_wal_bytes"].as_u64().unwrap(),
        after["slot"]["lag_bytes"].as_u64().unwrap(),
    );
    assert!(
        retained >= lag,
        "the slot keeps at least what it has not confirmed: {after:#}"
    );
    // What ficus recorded (no store: the position file) is what the slot confirmed.
    assert_eq!(after["recorded"]["in"], "file", "{after:#}");
    assert_eq!(after["recorded"]["lsn"], confirmed.as_str(), "{after:#}");
    // The first start's backfill of the customers (a snapshot mapping), complete.
    let backfill = &after["backfills"][0];
    assert_eq!(backfill["in_progress"], false, "{after:#}");
    assert_eq!(backfill["tables"][0]["table"], "public.customers", "{after:#}");
    assert_eq!(backfill["tables"][0]["rows_emitted"], 1, "{after:#}");

    // While `ficus run` streams, from another process: the walsender streaming from the slot.
    let mut run = p.spawn_run();
    let pid = wait_for("the run to stream", Duration::from_secs(60), || async {
        match slot_row(&p).await {
            (true, Some(pid), _) => Some(pid),
            _ => None,
        }
    })
    .await;
    let during = status(&p);
    assert_eq!(during["slot"]["active"], true, "{during:#}");
    assert_eq!(during["slot"]["active_pid"], pid, "{during:#}");
    let words = String::from_utf8_lossy(&p.ok(&["status"]).stdout).into_owned();
    assert!(words.contains(&format!("streaming (walsender pid {pid})")), "{words}");
    assert!(words.contains("WAL held by the slot:"), "{words}");
    assert!(words.contains("public.customers: 1 rows"), "{words}");
    // The run's own account (written every 5 s): the last event each sink made durable.
    p.db.exec("insert into customers (email, name, password_hash) values ('bo@example.com', 'Bo', 'x')")
        .await;
    let events = p.wait_events(3).await;
    let last = events.last().unwrap()["id"].as_str().unwrap().to_owned();
    let account = wait_for(
        "the run's account of its last event",
        Duration::from_secs(30),
        || async {
            let s = status(&p);
            (s["run"]["sinks"]["jsonl"]["id"] == last.as_str()).then_some(s)
        },
    )
    .await;
    assert_eq!(account["run"]["role"], "streaming", "{account:#}");
    assert_eq!(account["run"]["pid"], run.id(), "{account:#}");
    assert!(account["run"]["lag_seconds"].is_number(), "{account:#}");
    assert_eq!(
        account["run"]["sinks"]["jsonl"]["type"], "CustomerRegistered",
        "{account:#}"
    );
    signal(&run, libc::SIGTERM);
    assert!(wait_exit(&mut run, Duration::from_secs(30)).await.success());
    let stopped = status(&p);
    assert_eq!(stopped["run"]["role"], "stopping", "its last word: {stopped:#}");
    let words = String::from_utf8_lossy(&p.ok(&["status"]).stdout).into_owned();
    assert!(
        words.contains(&format!("sink jsonl: last event {last} (CustomerRegistered")),
        "{words}"
    );
}

/// With the event store, the recorded position is its checkpoint, read beside the writer.
#[tokio::test]
async fn status_reads_the_store_checkpoint() {
    let p = crate::pipeline::shop().await;
    p.config("\n[[sink]]\ntype = \"store\"\n");
    let before = status(&p);
    assert_eq!(before["recorded"], Value::Null, "no store yet: {before:#}");
    p.catch_up();
    let after = status(&p);
    let (_, _, confirmed) = slot_row(&p).await;
    assert_eq!(after["recorded"]["in"], "store", "{after:#}");
    assert_eq!(after["recorded"]["lsn"], confirmed.as_str(), "{after:#}");
}
