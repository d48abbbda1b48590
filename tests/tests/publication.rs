//! The publication: tables that enter it are backfilled, and one that would not send what the
//! mappings read — whoever made it, and whenever it changed — is refused with the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::{KillOnDrop, Project, refused, wait_exit};

const ORDERS: &str = "create table orders (id int primary key, status text not null);";
const ORDER_MAPPINGS: &str = r#"
[[event]]
name = "OrderSeen"
table = "orders"
on = ["insert", "update", "snapshot"]
key = "new.id"
data = "new"
"#;

/// The last event of each subject of one type: what a consumer's read model holds.
fn folded(events: &[Value], ty: &str) -> BTreeMap<String, Value> {
    events
        .iter()
        .filter(|e| e["type"] == ty)
        .map(|e| (e["subject"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_mapped_while_stopped_is_backfilled() {
    let p = Project::new(&format!(
        "{ORDERS}
         create table refunds (id int primary key, amount int not null);
         create table notes (id int primary key, body text not null);
         insert into refunds select g, g * 10 from generate_series(1, 300) g;
         insert into notes values (1, 'before ficus');"
    ))
    .await;
    p.mapping("orders.toml", ORDER_MAPPINGS);
    p.catch_up();
    p.db.exec("insert into orders values (1, 'placed')").await;
    p.catch_up();
    // New mappings while ficus is stopped; the monolith keeps writing, and one of its
    // transactions, begun before ficus adds the table to the publication, is still open.
    p.mapping(
        "refunds.toml",
        "[[event]]\nname = \"RefundSeen\"\ntable = \"refunds\"\non = [\"insert\", \"update\", \"snapshot\"]\nkey = \"new.id\"\ndata = \"new\"\n",
    );
    p.mapping(
        "notes.toml",
        "[[event]]\nname = \"NoteAdded\"\ntable = \"notes\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    p.db.exec("insert into refunds values (301, 3010); update refunds set amount = 11 where id = 1")
        .await;
    let mut open = p.db.connect().await;
    sqlx::Executor::execute(&mut open, "begin; update refunds set amount = 22 where id = 2")
        .await
        .unwrap();
    let _run = KillOnDrop(p.spawn_run());
    // The backfill waits for the open transaction: nothing of refunds is emitted meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        folded(&p.events(), "RefundSeen").is_empty(),
        "no chunk before the older transaction ends"
    );
    sqlx::Executor::execute(&mut open, "commit").await.unwrap();
    p.wait_events(1 + 301).await;
    let refunds = folded(&p.events(), "RefundSeen");
    assert_eq!(refunds.len(), 301);
    assert_eq!(refunds["1"]["amount"], 11);
    assert_eq!(
        refunds["2"]["amount"], 22,
        "the open transaction's change is in the snapshot"
    );
    assert_eq!(refunds["301"]["amount"], 3010);
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains("the tables enter the publication, their rows from before become snapshot events"),
        "{log}"
    );
    assert!(
        log.contains("table=public.notes") && log.contains("no mapping of it maps snapshot rows"),
        "a table whose rows from before cannot become events is named: {log}"
    );
    assert!(log.contains("waiting for the transactions older"), "{log}");
    // From now on, its changes stream.
    p.db.exec("update refunds set amount = 0 where id = 300").await;
    p.wait_events(1 + 301 + 1).await;
    assert_eq!(folded(&p.events(), "RefundSeen")["300"]["amount"], 0);
}

/// The statement the hint says to run.
fn fix_in(err: &str) -> String {
    let hint = err
        .lines()
        .filter(|l| l.contains("hint: "))
        .find_map(|l| l.find("ALTER PUBLICATION").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no statement in the hint: {err}"));
    hint.trim_end_matches(", then --resync again").to_owned()
}

#[tokio::test]
async fn a_publication_someone_made_must_send_what_the_mappings_read() {
    let p = Project::new(&format!(
        "{ORDERS}
         create table readings (id int, at int, value int not null, primary key (id, at)) partition by range (at);
         create table readings_1 partition of readings for values from (0) to (100);"
    ))
    .await;
    p.mapping("orders.toml", ORDER_MAPPINGS);
    p.mapping(
        "readings.toml",
        "[[event]]\nname = \"Read\"\ntable = \"readings\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { value = \"new.value\" }\n",
    );
    let cases = [
        (
            "create publication ficus for table orders, readings with (publish = 'insert', publish_via_partition_root = true)",
            "publishes only insert (publish = 'insert'), and the mappings need update too",
        ),
        (
            "create publication ficus for table orders where (status <> 'draft'), readings with (publish_via_partition_root = true)",
            "publishes only the rows of public.orders where (status <> 'draft'::text)",
        ),
        (
            "create publication ficus for table orders (id), readings with (publish_via_partition_root = true)",
            "status of public.orders is left out by the column list of publication ficus",
        ),
        (
            "create publication ficus for table orders, readings",
            "publish_via_partition_root = false, so the changes of partitioned table public.readings come under its partitions' names",
        ),
    ];
    for (made, problem) in cases {
        p.db.exec(&format!("drop publication if exists ficus; {made}")).await;
        let err = refused(&p);
        assert!(err.contains(problem), "{made}:\n{err}");
        assert!(
            p.confirmed_flush().await.is_none(),
            "{made}: no slot for a publication that loses changes"
        );
        // The fix it names is the fix.
        p.db.exec(&fix_in(&err)).await;
        p.catch_up();
        p.ok(&["teardown"]);
    }
}

#[tokio::test]
async fn a_publication_changed_or_dropped_under_a_running_ficus_is_a_gap() {
    let p = Project::new(ORDERS).await;
    p.mapping("orders.toml", ORDER_MAPPINGS);
    p.catch_up();
    p.db.exec("insert into orders values (1, 'placed')").await;
    let mut run = KillOnDrop(p.spawn_run());
    p.wait_events(1).await;
    // A DBA narrows the publication: updates stop coming.
    p.db.exec("alter publication ficus set (publish = 'insert'); update orders set status = 'paid' where id = 1")
        .await;
    let status = wait_exit(&mut run.0, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains("publication ficus was changed while ficus streamed"),
        "{log}"
    );
    assert!(log.contains("publishes only insert"), "{log}");
    // Put right, the publication does not bring back the update it did not send: still a gap.
    p.db.exec("alter publication ficus set (publish = 'insert, update, delete, truncate')")
        .await;
    let err = refused(&p);
    assert!(
        err.contains("publication ficus was changed while ficus streamed"),
        "{err}"
    );
    let before = p.events().len();
    p.ok(&["run", "--until-caught-up", "--resync"]);
    let events = p.events();
    assert_eq!(events[before]["type"], "ficus.gap");
    assert_eq!(events[before]["data"]["cause"], "publication-changed");
    assert_eq!(
        folded(&events, "OrderSeen")["1"]["status"],
        "paid",
        "the snapshot brings the missed update"
    );

    // Dropped under a running ficus: the slot cannot decode past the drop.
    let mut run = KillOnDrop(p.spawn_run());
    p.db.exec("insert into orders values (2, 'placed')").await;
    p.wait_events(events.len() + 1).await;
    p.db.exec("drop publication ficus; insert into orders values (3, 'placed')")
        .await;
    let status = wait_exit(&mut run.0, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("publication ficus was dropped"), "{log}");
    let err = refused(&p);
    assert!(err.contains("publication ficus was dropped"), "{err}");
    p.ok(&["run", "--until-caught-up", "--resync"]);
    assert_eq!(folded(&p.events(), "OrderSeen").len(), 3);
}
