//! No silent gaps: a slot lost, invalidated or re-created is refused with the lost range and
//! the repair, and `--resync` repairs it (a new slot, a backfill, a `ficus.gap` event first).

use std::time::Duration;

use ficus_testkit::{Cluster, wait_for};
use serde_json::Value;

use crate::support::{KillOnDrop, Project, refused, stderr, wait_exit};

const ITEMS: &str = "create table items (id int primary key, name text not null);";
const ITEM_SEEN: &str = "[[event]]\nname = \"ItemSeen\"\ntable = \"items\"\non = [\"insert\", \"update\", \"snapshot\"]\nkey = \"new.id\"\ndata = \"new\"\n";
/// A store beside events.jsonl, and a jsonl sink for replays.
const WITH_STORE: &str = "\n[[sink]]\ntype = \"store\"\n\n[[sink]]\ntype = \"jsonl\"\nname = \"replayed\"\nlive = false\npath = \"replayed.jsonl\"\n";

/// A project streaming `items` into events.jsonl and the store, with two rows delivered.
async fn items_delivered(cluster: &'static Cluster) -> Project {
    let p = Project::on(cluster, ITEMS).await;
    p.config(WITH_STORE);
    p.mapping("items.toml", ITEM_SEEN);
    p.catch_up();
    p.db.exec("insert into items values (1, 'a'), (2, 'b')").await;
    p.catch_up();
    assert_eq!(p.events().len(), 2);
    p
}

/// Repairs with `--resync`; checks the `ficus.gap` event and the snapshot events after it, in
/// events.jsonl and in the store; returns the gap event.
fn resynced(p: &Project, cause: &str, lost_after: &str, rows: &[(i64, &str)]) -> Value {
    let before = p.events().len();
    let out = p.ok(&["run", "--until-caught-up", "--resync"]);
    assert!(stderr(&out).contains("--resync: repairing it"), "{}", stderr(&out));
    let events = p.events();
    let new = &events[before..];
    let gap = &new[0];
    assert_eq!(gap["type"], "ficus.gap", "the gap comes first: {new:?}");
    assert_eq!(gap["subject"], p.db.name);
    assert_eq!(gap["data"]["cause"], cause);
    assert_eq!(gap["data"]["lost_after"], lost_after);
    assert!(gap["data"]["lost_before"].is_string(), "{gap}");
    let backfill = gap["data"]["backfill"]
        .as_str()
        .expect("a backfill brings the current state");
    let snapshot: Vec<(i64, String)> = new[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["backfill"], backfill, "{e}");
            (
                e["data"]["id"].as_i64().unwrap(),
                e["data"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = rows.iter().map(|(id, name)| (*id, name.to_string())).collect();
    assert_eq!(snapshot, expected, "the current rows, as snapshot events");
    // The store has it too, in the same place.
    let _ = std::fs::remove_file(p.path("replayed.jsonl"));
    p.ok(&["replay", "--to-sink", "replayed", "--type", "ficus.gap"]);
    let stored = crate::support::read_events(&p.path("replayed.jsonl"));
    assert_eq!(stored.last(), Some(gap));
    gap.clone()
}

#[tokio::test]
async fn a_slot_dropped_while_stopped_is_a_gap_that_resync_repairs() {
    let p = items_delivered(Cluster::shared()).await;
    let confirmed = p.confirmed_flush().await.unwrap();
    p.db.exec(&format!("select pg_drop_replication_slot('{}')", p.db.name))
        .await;
    p.db.exec("insert into items values (3, 'c'); update items set name = 'a2' where id = 1")
        .await;
    let err = refused(&p);
    assert!(err.contains(&format!("slot {} is gone", p.db.name)), "{err}");
    assert!(
        err.contains(&format!("lost: changes committed after {confirmed}")),
        "{err}"
    );
    assert!(err.contains("hint: run `ficus run --resync`"), "{err}");
    assert!(p.confirmed_flush().await.is_none(), "no slot is created silently");
    resynced(&p, "slot-missing", &confirmed, &[(1, "a2"), (2, "b"), (3, "c")]);
    // Repaired: the stream goes on, and --resync without a gap streams as usual.
    p.db.exec("insert into items values (4, 'd')").await;
    let out = p.ok(&["run", "--until-caught-up", "--resync"]);
    assert!(stderr(&out).contains("there is no gap to repair"), "{}", stderr(&out));
    let last = p.events().pop().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["subject"].as_str()),
        (Some("ItemSeen"), Some("4"))
    );
    assert!(last.get("backfill").is_none());
}

#[tokio::test]
async fn a_slot_recreated_by_someone_else_is_a_gap() {
    let p = items_delivered(Cluster::shared()).await;
    let confirmed = p.confirmed_flush().await.unwrap();
    p.db.exec(&format!("select pg_drop_replication_slot('{}')", p.db.name))
        .await;
    p.db.exec("insert into items values (3, 'c')").await;
    // Someone makes a slot of that name again: it starts after the insert.
    p.db.exec(&format!(
        "select pg_create_logical_replication_slot('{}', 'pgoutput')",
        p.db.name
    ))
    .await;
    let err = refused(&p);
    assert!(
        err.contains(&format!("but ficus confirmed only up to {confirmed}")),
        "{err}"
    );
    assert!(
        err.contains("re-created, or advanced by something other than ficus"),
        "{err}"
    );
    assert!(
        err.contains(&format!("lost: changes committed after {confirmed} and before")),
        "{err}"
    );
    resynced(&p, "slot-moved", &confirmed, &[(1, "a"), (2, "b"), (3, "c")]);
}

#[tokio::test]
async fn a_slot_dropped_while_running_stops_ficus() {
    let p = items_delivered(Cluster::shared()).await;
    let mut run = KillOnDrop(p.spawn_run());
    p.db.exec("insert into items values (3, 'c')").await;
    p.wait_events(3).await;
    // The operator ends the walsender and drops the slot before ficus reconnects.
    wait_for("the slot to be dropped", Duration::from_secs(20), || async {
        let mut conn = p.db.connect().await;
        let _ = sqlx::query("select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1")
            .bind(&p.db.name)
            .execute(&mut conn)
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query("select pg_drop_replication_slot($1)")
            .bind(&p.db.name)
            .execute(&mut conn)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    p.db.exec("insert into items values (4, 'd')").await;
    let status = wait_exit(&mut run.0, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains(&format!("slot {} is gone", p.db.name)), "{log}");
    assert!(log.contains("hint: run `ficus run --resync`"), "{log}");
    assert_eq!(p.events().len(), 3, "nothing after the drop was made up");
}

#[tokio::test]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_is_a_gap() {
    static SMALL_WAL: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();
    let cluster =
        SMALL_WAL.get_or_init(|| Cluster::start(&["-c", "wal_level=logical", "-c", "max_slot_wal_keep_size=1"]));
    let p = items_delivered(cluster).await;
    let confirmed = p.confirmed_flush().await.unwrap();
    // ficus is stopped while the monolith writes more WAL than the slot may hold.
    for i in 0..4 {
        p.db.exec(&format!(
            "insert into items select g, repeat('x', 100) from generate_series({0}, {0} + 999) g; select pg_switch_wal();",
            100 + i * 1000
        ))
        .await;
    }
    p.db.exec("checkpoint").await;
    let status = p
        .scalar(&format!(
            "select wal_status from pg_replication_slots where slot_name = '{}'",
            p.db.name
        ))
        .await;
    assert_eq!(status, "lost");
    let err = refused(&p);
    assert!(err.contains("was invalidated (wal_status = lost)"), "{err}");
    assert!(
        err.contains(&format!("lost: changes committed after {confirmed}")),
        "{err}"
    );
    let gap = {
        let before = p.events().len();
        p.ok(&["run", "--until-caught-up", "--resync"]);
        p.events()[before].clone()
    };
    assert_eq!(gap["type"], "ficus.gap");
    assert_eq!(gap["data"]["cause"], "slot-invalidated");
    let snapshot = p.events().iter().filter(|e| e.get("backfill").is_some()).count();
    assert_eq!(snapshot, 4002, "every row now, as a snapshot event");
}
