//! Transaction-scoped events against a real database: an order and its lines as one event, with
//! checkouts interleaved on two connections, lines added later, a transaction of 100,000 lines
//! within the memory bound and past it, and remap giving what the live run gave.

use sqlx::Connection;

use crate::support::Scanned;
use crate::support::{Project, redacted, stderr};

/// The shop's project with the store (archiving) and a sink for remaps.
async fn shop_with_store() -> Project {
    let p = crate::pipeline::shop().await;
    p.config(
        "\n[[sink]]\ntype = \"store\"\nname = \"history\"\narchive = true\npath = \"history/ficus.db\"\n\n[[sink]]\ntype = \"jsonl\"\nname = \"replayed\"\nlive = false\npath = \"replayed.jsonl\"\n",
    );
    p
}

/// `ficus remap --to-sink replayed`: the file's text.
fn remapped(p: &Project) -> String {
    let _ = std::fs::remove_file(p.path("replayed.jsonl"));
    p.ok(&["remap", "--to-sink", "replayed"]);
    std::fs::read_to_string(p.path("replayed.jsonl")).unwrap_or_default()
}

#[tokio::test]
async fn checkouts_interleaved_on_two_connections_are_one_order_placed_each_and_remap_gives_the_same() {
    let p = shop_with_store().await;
    p.catch_up(); // the slot (and the backfill of the customer from before)
    // Two checkouts at once: their rows interleave, their commits too (B commits first).
    let mut a = p.db.connect().await;
    let mut b = p.db.connect().await;
    let mut ta = a.begin().await.unwrap();
    let mut tb = b.begin().await.unwrap();
    let steps: [(bool, &str); 10] = [
        (
            true,
            "insert into orders (id, customer_id, total) values (10, 100, 30.00)",
        ),
        (
            false,
            "insert into orders (id, customer_id, total) values (11, 100, 5.00)",
        ),
        (
            true,
            "insert into order_lines (order_id, line_no, sku, quantity, price) values (10, 3, 'C', 1, 10.00)",
        ),
        (
            false,
            "insert into order_lines (order_id, line_no, sku, quantity, price) values (11, 1, 'X', 1, 5.00)",
        ),
        (
            true,
            "insert into order_lines (order_id, line_no, sku, quantity, price) values (10, 1, 'A', 1, 10.00)",
        ),
        (
            true,
            "insert into order_lines (order_id, line_no, sku, quantity, price) values (10, 2, 'B', 1, 10.00)",
        ),
        (true, "update orders set status = 'paid' where id = 10"),
        // The application states events itself in A: a message, and an outbox row it deletes.
        (
            true,
            "select pg_logical_emit_message(true, 'shop.events', '{\"type\": \"CartAbandoned\", \"cart_id\": 5, \"items\": 1}')",
        ),
        (
            true,
            "insert into outbox values ('00000000-0000-4000-8000-000000000010', 'Customer', '100', 'LoyaltyPointsGranted', '{\"points\": 30}')",
        ),
        (
            true,
            "delete from outbox where id = '00000000-0000-4000-8000-000000000010'",
        ),
    ];
    for (on_a, sql) in steps {
        let tx = if on_a { &mut *ta } else { &mut *tb };
        sqlx::query(sql).execute(tx).await.unwrap();
    }
    tb.commit().await.unwrap();
    ta.commit().await.unwrap();
    // Later: a line added to order 10, and one to order 11, in one transaction.
    p.db.exec(
        "insert into order_lines (order_id, line_no, sku, quantity, price) values (10, 4, 'D', 1, 1.00), (11, 2, 'Y', 2, 1.00)",
    )
    .await;
    p.catch_up();
    let orders: Vec<serde_json::Value> = p.events().into_iter().filter(|e| e.get("backfill").is_none()).collect();
    insta::assert_snapshot!(redacted(&orders));
    let types: Vec<&str> = orders.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "OrderPlaced",
            "OrderPlaced",
            "OrderPaid",
            "CartAbandoned",
            "LoyaltyPointsGranted",
            "OrderLinesAdded",
            "OrderLinesAdded"
        ],
        "B's order first (it committed first); A's events in A's order, OrderPlaced first"
    );
    assert_eq!(
        orders[4]["id"], "00000000-0000-4000-8000-000000000010",
        "the outbox row's id"
    );
    assert_eq!(orders[4]["lsn"], orders[1]["lsn"]);
    let lines_of = |e: &serde_json::Value| -> Vec<String> {
        e["data"]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sku"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(lines_of(&orders[0]), ["X"]);
    assert_eq!(lines_of(&orders[1]), ["A", "B", "C"], "by line_no, not as written");
    assert_eq!(orders[2]["lsn"], orders[1]["lsn"], "one transaction");
    assert_eq!(lines_of(&orders[5]), ["D"]);
    assert_eq!(lines_of(&orders[6]), ["Y"]);

    // The archive holds the row changes and the messages: remap with the same mappings makes
    // the same events, ids, order and bytes, the collected lines, the outbox's and the
    // message's events included.
    let live = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
    assert_eq!(remapped(&p), live);
}

const LINES: &str = r#"
create table orders (id bigint primary key, note text not null default '');
create table order_lines (id bigint primary key, order_id bigint not null, line_no int not null, sku text not null);
"#;

const PLACED: &str = r#"
[[event]]
name  = "OrderPlaced"
table = "orders"
on    = ["insert"]
key   = "new.id"
data  = { order_id = "new.id" }

[event.collect.lines]
table    = "order_lines"
key      = "new.order_id"
order_by = "new.line_no"
data     = { line_no = "new.line_no", sku = "new.sku" }
"#;

#[tokio::test]
async fn a_hundred_thousand_lines_are_one_event_within_collect_memory_and_past_it_ficus_stops_before_the_transaction() {
    let p = Project::new(LINES).await;
    p.mapping("orders.toml", PLACED);
    let config = |limit: &str| {
        p.write(
            "ficus.toml",
            &format!(
                "[source]\nname = \"shop\"\nslot = \"{}\"\npublication = \"ficus\"\ncollect_memory = \"{limit}\"\n\n[[sink]]\ntype = \"jsonl\"\npath = \"events.jsonl\"\n",
                p.db.name
            ),
        )
    };
    config("4MB");
    p.catch_up();
    p.db.exec("insert into orders (id, note) select g, 'x' from generate_series(1, 5) g")
        .await;
    // One order with 100,000 lines, written in reverse line order.
    p.db.exec(
        "begin;
         insert into orders (id) values (7);
         insert into order_lines (id, order_id, line_no, sku) select g, 7, 100001 - g, 'SKU-' || g from generate_series(1, 100000) g;
         commit;",
    )
    .await;
    // Past the bound (4MB; the lines take about 12MB): ficus stops, names the mapping and the
    // limit, and does not acknowledge the transaction.
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("mappings/orders.toml:10: OrderPlaced.lines collects rows of public.order_lines"),
        "{said}"
    );
    assert!(said.contains("collect_memory allows (4000000 bytes)"), "{said}");
    assert!(said.contains("hint: raise collect_memory"), "{said}");
    let before: Vec<serde_json::Value> = p.events();
    assert_eq!(before.len(), 5, "the five orders before it, and nothing of it");
    // Within the bound (the default 64MB): the transaction is delivered, one event, every line
    // in line order.
    config("64MB");
    p.catch_up();
    let events = p.events();
    assert_eq!(events.len(), 6);
    let placed = &events[5];
    assert_eq!(placed["subject"], "7");
    let lines = placed["data"]["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 100_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| l["line_no"] == serde_json::json!(i + 1))
    );
    assert_eq!(lines[0]["sku"], "SKU-100000");
}

#[tokio::test]
async fn a_message_outside_a_transaction_stops_ficus_before_it_unless_the_mapping_skips_such() {
    let p = Project::new("create table t (id int primary key)").await;
    let mapping =
        |extra: &str| format!("[[message]]\nprefix = \"RewardGranted\"\nkey = \"string(payload.customer)\"\n{extra}");
    p.mapping("messages.toml", &mapping(""));
    p.catch_up();
    p.db.exec(
        "select pg_logical_emit_message(true, 'RewardGranted', '{\"customer\": 1, \"points\": 10}');
         select pg_logical_emit_message(false, 'RewardGranted', '{\"customer\": 2, \"points\": 20}');
         select pg_logical_emit_message(true, 'RewardGranted', '{\"customer\": 3, \"points\": 30}');",
    )
    .await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("the message was emitted outside a transaction"), "{said}");
    assert!(said.contains("non_transactional = \"skip\""), "{said}");
    let subjects = |p: &Project| -> Vec<String> { p.events().iter().map(|e| e["subject"].to_string()).collect() };
    assert_eq!(subjects(&p), Vec::<String>::new(), "nothing after it is delivered");
    // Passed over when the mapping says so, and said so; the transactional ones are delivered.
    p.mapping("messages.toml", &mapping("non_transactional = \"skip\"\n"));
    let out = p.catch_up();
    assert!(
        stderr(&out).contains("passed over a message emitted outside a transaction"),
        "{}",
        stderr(&out)
    );
    assert_eq!(subjects(&p), ["\"1\"", "\"3\""]);
}

#[tokio::test]
async fn an_event_per_transaction_is_made_once_per_row_of_its_net_change_and_remapped_the_same() {
    let p = Project::new(
        "create table orders (id int primary key, status text not null, total numeric not null);
         alter table orders replica identity full;",
    )
    .await;
    p.mapping(
        "orders.toml",
        r#"
[[event]]
name  = "OrderChanged"
table = "orders"
on    = ["insert", "update"]
per   = "transaction"
key   = "new.id"
data  = { op = "op", changed = "changed", status = "new.status", total = "new.total" }
"#,
    );
    p.config(
        "\n[[sink]]\ntype = \"store\"\nname = \"history\"\narchive = true\npath = \"history/ficus.db\"\n\n[[sink]]\ntype = \"jsonl\"\nname = \"replayed\"\nlive = false\npath = \"replayed.jsonl\"\n",
    );
    p.catch_up();
    p.db.exec("insert into orders values (1, 'placed', 10), (2, 'placed', 20)")
        .await;
    p.db.exec(
        "begin;
         update orders set status = 'paid' where id = 1;
         update orders set total = 25 where id = 2;
         update orders set total = 12 where id = 1;
         update orders set status = 'shipped', total = 12 where id = 1;
         commit;",
    )
    .await;
    p.catch_up();
    let seen: Vec<String> = p
        .events()
        .iter()
        .map(|e| format!("{} {} {}", e["subject"], e["data"]["op"], e["data"]["changed"]))
        .collect();
    assert_eq!(
        seen,
        [
            r#""1" "insert" []"#,
            r#""2" "insert" []"#,
            r#""1" "update" ["status","total"]"#,
            r#""2" "update" ["total"]"#
        ],
        "one event per row and transaction, in the order of each row's first change"
    );
    let live = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
    assert_eq!(remapped(&p), live);
}
