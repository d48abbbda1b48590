//! What comes out for what goes in.

use std::collections::HashSet;

use crate::support::{Project, redacted};

pub(crate) const SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/shop");

/// The quickstart's shop: its schema and mappings, streaming into events.jsonl.
pub(crate) async fn shop() -> Project {
    let schema = std::fs::read_to_string(format!("{SHOP}/schema.sql")).unwrap();
    let p = Project::new(&schema).await;
    for file in ["customers.toml", "orders.toml", "outbox.toml"] {
        p.mapping(
            file,
            &std::fs::read_to_string(format!("{SHOP}/mappings/{file}")).unwrap(),
        );
    }
    p
}

#[tokio::test]
async fn shop_example_end_to_end() {
    let p = shop().await;
    let out = p.ok(&["check"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("6 mapping(s) of 4 table(s) check out"));
    // The customer from before ficus, as a snapshot event (this creates the slot).
    p.ok(&["backfill"]);
    let existing = p.events();
    assert_eq!(existing.len(), 1);
    assert_eq!(existing[0]["subject"], "100");
    assert!(existing[0]["backfill"].is_string());
    p.db.exec(&std::fs::read_to_string(format!("{SHOP}/workload.sql")).unwrap())
        .await;
    let out = p.catch_up();
    let events = p.events();
    insta::assert_snapshot!(redacted(&events));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("delivered 11 events from"), "{log}");
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    let granted = events.iter().find(|e| e["type"] == "LoyaltyPointsGranted").unwrap();
    assert_eq!(
        granted["id"], "0b7e4a52-6f0e-4c1b-9d8e-2f64a7c1e001",
        "the outbox row's id"
    );
    // Caught up means acknowledged: a second run delivers nothing again.
    p.catch_up();
    assert_eq!(p.events().len(), events.len());
}

#[tokio::test]
async fn a_second_slot_gives_the_same_ids() {
    let p = shop().await;
    p.catch_up();
    let second = format!("{}_b", p.db.name);
    p.write(
        "second.toml",
        &format!("[source]\nslot = \"{second}\"\n\n[[sink]]\ntype = \"jsonl\"\npath = \"second.jsonl\"\n"),
    );
    p.ok(&["run", "-c", "second.toml", "--until-caught-up"]);
    p.db.exec(&std::fs::read_to_string(format!("{SHOP}/workload.sql")).unwrap())
        .await;
    p.catch_up();
    p.ok(&["run", "-c", "second.toml", "--until-caught-up"]);
    // The first slot's first start backfilled the customer from before ficus; the second slot,
    // starting on a publication that has the tables already, did not.
    let ids = |events: Vec<serde_json::Value>| {
        events
            .iter()
            .filter(|e| e.get("backfill").is_none())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let first = ids(p.events());
    assert_eq!(first.len(), 11);
    assert_eq!(first, ids(p.events_in("second.jsonl")));
    // The exited ficus's walsender may hold the slot a moment longer.
    ficus_testkit::wait_for(
        "the second slot to be released",
        std::time::Duration::from_secs(10),
        || async {
            let active = p
                .scalar(&format!(
                    "select active::text from pg_replication_slots where slot_name = '{second}'"
                ))
                .await;
            (active == "false").then_some(())
        },
    )
    .await;
    p.db.exec(&format!("select pg_drop_replication_slot('{second}')")).await;
}

#[tokio::test]
async fn each_operation_and_truncate_table() {
    let p = Project::new(
        "create table items (id int primary key, name text not null); alter table items replica identity full;",
    )
    .await;
    p.mapping(
        "items.toml",
        r#"
[[event]]
name = "ItemAdded"
table = "items"
on = ["insert"]
key = "new.id"
data = { name = "new.name" }

[[event]]
name = "ItemRenamed"
table = "items"
on = ["update"]
when = "old.name != new.name"
key = "new.id"
data = { from = "old.name", to = "new.name", changed = "changed" }

[[event]]
name = "ItemRemoved"
table = "items"
on = ["delete"]
key = "old.id"
data = "old"

[[event]]
name = "ItemsCleared"
table = "items"
on = ["truncate"]
key = "table"
data = { op = "op" }
"#,
    );
    p.catch_up();
    p.db.exec(
        "insert into items values (1, 'apple'), (2, 'pear');
         update items set name = 'green apple' where id = 1;
         update items set name = name where id = 2;
         delete from items where id = 2;
         truncate items;",
    )
    .await;
    p.catch_up();
    insta::assert_snapshot!(redacted(&p.events()));
}

#[tokio::test]
async fn types_keep_their_meaning() {
    let p = Project::new(
        "create type mood as enum ('sad', 'happy');
         create domain positive as numeric(10, 3) check (value > 0);
         create table kinds (
           id int primary key, i2 int2, i8 int8, num numeric, nan numeric, f4 float4, f8 float8, inf float8,
           flag bool, txt text, vc varchar(10), ch char(3), u uuid, at timestamptz, local timestamp, day date,
           clock time, span interval, blob bytea, doc json, docb jsonb, nums int[], words text[], m mood,
           p positive, moods mood[], pt point, nothing text);",
    )
    .await;
    p.mapping(
        "kinds.toml",
        "[[event]]\nname = \"KindSeen\"\ntable = \"kinds\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = \"new\"\n",
    );
    p.catch_up();
    p.db.exec(
        r#"set timezone = 'Europe/Paris';
        insert into kinds values (
          1, -32768, 9223372036854775807, 12345678901234567890.000000000000000001, 'NaN', 1.5, 0.1, '-Infinity',
          true, 'tab	"quote" \back', 'varchar', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '2026-11-22 11:00:00.5+01', '2026-11-22 10:00:00', '2026-11-22', '10:00:00.25', '1 day 2 hours',
          '\xdeadbeef', '{"a": [1, 2.50, null]}', '{"b": {"c": 12345678901234567890}}', '{{1,2},{3,NULL}}',
          '{"a b","c,d",NULL,"NULL"}', 'happy', 42.5, '{sad,happy}', '(1,2)', null);"#,
    )
    .await;
    p.catch_up();
    let events = p.events();
    assert_eq!(events.len(), 1);
    let line = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
    assert!(
        line.contains(r#""num":12345678901234567890.000000000000000001"#),
        "numeric is exact in the text: {line}"
    );
    assert!(line.contains(r#""i8":9223372036854775807"#), "{line}");
    assert!(
        line.contains(r#""docb":{"b": {"c": 12345678901234567890}}"#),
        "jsonb as Postgres writes it: {line}"
    );
    assert!(
        line.contains(r#""doc":{"a": [1, 2.50, null]}"#),
        "json as it was written: {line}"
    );
    insta::assert_snapshot!(serde_json::to_string_pretty(&events[0]["data"]).unwrap());
}

#[tokio::test]
async fn transactions_in_commit_order_changes_in_statement_order() {
    let p = Project::new("create table steps (id int primary key, who text not null);").await;
    p.mapping("steps.toml", "[[event]]\nname = \"Step\"\ntable = \"steps\"\non = [\"insert\"]\nkey = \"new.who\"\ndata = { id = \"new.id\" }\n");
    p.catch_up();
    let mut a = p.db.connect().await;
    let mut b = p.db.connect().await;
    use sqlx::Executor;
    a.execute("begin; insert into steps values (1, 'a')").await.unwrap();
    b.execute("begin; insert into steps values (2, 'b')").await.unwrap();
    a.execute("insert into steps values (3, 'a')").await.unwrap();
    b.execute("insert into steps values (4, 'b'); insert into steps values (5, 'b')")
        .await
        .unwrap();
    b.execute("commit").await.unwrap();
    a.execute("insert into steps values (6, 'a'); commit").await.unwrap();
    p.catch_up();
    let order: Vec<(String, i64)> = p
        .events()
        .iter()
        .map(|e| {
            (
                e["subject"].as_str().unwrap().to_owned(),
                e["data"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64)> = [("b", 2), ("b", 4), ("b", 5), ("a", 1), ("a", 3), ("a", 6)]
        .iter()
        .map(|(w, i)| (w.to_string(), *i))
        .collect();
    assert_eq!(order, expected);
    let events = p.events();
    assert_eq!(events[0]["txid"], events[2]["txid"]);
    assert_ne!(events[2]["txid"], events[3]["txid"]);
    assert!(events[0]["lsn"] != events[3]["lsn"]);
}

#[tokio::test]
async fn partitioned_tables_publish_through_their_root() {
    let p = Project::new(
        "create table visits (id int, at date not null, primary key (id, at)) partition by range (at);
         create table visits_2026 partition of visits for values from ('2026-01-01') to ('2027-01-01');
         create table visits_2027 partition of visits for values from ('2027-01-01') to ('2028-01-01');",
    )
    .await;
    p.mapping(
        "visits.toml",
        "[[event]]\nname = \"Visited\"\ntable = \"visits\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    p.catch_up();
    p.db.exec("insert into visits values (1, '2026-05-01'), (2, '2027-05-01')")
        .await;
    p.catch_up();
    let events = p.events();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["source"].as_str().unwrap().ends_with("/public.visits"))
    );
}

#[tokio::test]
async fn teardown_drops_slot_and_publication() {
    let p = Project::new("create table t (id int primary key);").await;
    p.mapping(
        "t.toml",
        "[[event]]\nname = \"T\"\ntable = \"t\"\non = [\"insert\"]\nkey = \"new.id\"\n",
    );
    p.catch_up();
    assert!(p.confirmed_flush().await.is_some());
    let out = p.ok(&["teardown"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dropped slot") && text.contains("dropped publication"),
        "{text}"
    );
    assert!(p.confirmed_flush().await.is_none());
    assert_eq!(p.scalar("select count(*)::text from pg_publication").await, "0");
}
