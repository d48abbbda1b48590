//! Transaction-scoped events: rows collected from the event's transaction.

use super::*;
use ficus_mapping::Transaction;

pub(crate) fn lines_relation() -> Arc<Relation> {
    relation(
        16420,
        "public.order_lines",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Int8, true),
            ("order_id", PgType::Int8, false),
            ("line_no", PgType::Int, false),
            ("sku", PgType::Text, false),
            ("quantity", PgType::Int, false),
            ("price", PgType::Numeric, false),
        ],
    )
}

fn schema() -> Schema {
    shop_schema()
}

const PLACED: &str = r#"
[[event]]
name  = "OrderPlaced"
table = "public.orders"
on    = ["insert"]
key   = "new.id"
aggregate = "Order"
data  = { order_id = "new.id", total = "new.total" }

[event.collect.lines]
table    = "public.order_lines"
key      = "new.order_id"
order_by = "new.line_no"
data     = { line = "new.line_no", sku = "new.sku", quantity = "new.quantity", amount = "new.price * double(new.quantity)" }
"#;

fn compiled_with(without_parent: &str) -> Compiled {
    let text = format!("{PLACED}without_parent = {without_parent}\n");
    compile_files(&[("mappings/orders.toml", &text)], Some(&schema())).unwrap()
}

/// An order (insert), committed at `0/1000 * xid`, the change at `lsn`.
fn order(xid: u32, lsn: u64, id: &str) -> RowChange {
    let (_, orders) = shop_relations();
    let placed = "2026-11-22 09:00:00+00";
    change(
        Op::Insert,
        &orders,
        xid,
        lsn,
        Some(&[
            Some(id),
            Some("1"),
            Some("placed"),
            Some("30.00"),
            Some("{}"),
            Some(placed),
            None,
        ]),
        None,
    )
}

fn line(xid: u32, lsn: u64, id: &str, order_id: &str, line_no: &str, sku: &str) -> RowChange {
    change(
        Op::Insert,
        &lines_relation(),
        xid,
        lsn,
        Some(&[
            Some(id),
            Some(order_id),
            Some(line_no),
            Some(sku),
            Some("2"),
            Some("5.00"),
        ]),
        None,
    )
}

/// Maps transactions as the runtime does: each change, then the commit at a new commit LSN.
fn run(compiled: &Compiled, changes: &[RowChange], tx: &mut Transaction) -> Result<Vec<Event>, MapError> {
    let ctx = ctx();
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        if let Some(bound) = compiled.bind(c.relation.clone(), &ctx)? {
            out.extend(bound.apply_in(c, &ctx, tx)?);
        }
        if changes
            .get(i + 1)
            .is_none_or(|next| next.tx.commit_lsn != c.tx.commit_lsn)
        {
            out.extend(tx.commit(&ctx)?);
        }
    }
    Ok(out)
}

fn summary(events: &[Event]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| serde_json::json!({ "type": &*e.ty, "subject": e.subject, "lsn": e.lsn.to_string(), "data": e.data.to_value() }))
        .collect()
}

#[test]
fn an_order_and_its_lines_in_one_transaction_are_one_event_with_the_lines_in_order() {
    let compiled = compiled_with("\"ignore\"");
    // Two orders' lines interleaved in one transaction, written out of line order.
    let changes = [
        order(1, 0x900, "7"),
        line(1, 0x910, "1", "7", "2", "tea"),
        order(1, 0x920, "8"),
        line(1, 0x930, "2", "8", "1", "mug"),
        line(1, 0x940, "3", "7", "1", "cup"),
        line(1, 0x950, "4", "7", "3", "pot"),
        // A line of an order outside the transaction: ignored.
        line(1, 0x960, "5", "6", "1", "lid"),
    ];
    let events = run(&compiled, &changes, &mut Transaction::default()).unwrap();
    insta::assert_snapshot!(json(&summary(&events)));
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].aggregate.as_ref(), "Order");
    // The same commit seen again gives the same events, ids included.
    let again = run(&compiled, &changes, &mut Transaction::default()).unwrap();
    assert_eq!(again, events);
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    // Mapped alone (a transaction of its own), an order has no lines.
    let ctx = ctx();
    let alone = compiled.bind(changes[0].relation.clone(), &ctx).unwrap().unwrap();
    let alone = alone.apply(&changes[0], &ctx).unwrap();
    assert_eq!(alone[0].data.to_value()["lines"], serde_json::json!([]));
    assert_eq!(alone[0].id, events[0].id);
}

#[test]
fn lines_added_to_an_order_of_an_earlier_transaction_make_what_without_parent_says() {
    let changes = [
        order(1, 0x900, "7"),
        line(1, 0x910, "1", "7", "1", "tea"),
        // Later: two lines added to order 7, one to order 9 (placed before ficus).
        line(2, 0x1900, "2", "7", "3", "pot"),
        line(2, 0x1910, "3", "9", "1", "mug"),
        line(2, 0x1920, "4", "7", "2", "cup"),
    ];
    let ignore = run(&compiled_with("\"ignore\""), &changes, &mut Transaction::default()).unwrap();
    assert_eq!(summary(&ignore).len(), 1, "{}", json(&summary(&ignore)));
    let per_aggregate = run(
        &compiled_with("{ event = \"OrderLinesAdded\" }"),
        &changes,
        &mut Transaction::default(),
    )
    .unwrap();
    insta::assert_snapshot!("per_aggregate", json(&summary(&per_aggregate)));
    assert!(
        per_aggregate[1..]
            .iter()
            .all(|e| &*e.aggregate == "Order" && e.eventversion == 1)
    );
    let per_row = run(
        &compiled_with("{ event = \"OrderLineAdded\", version = 2, per = \"row\" }"),
        &changes,
        &mut Transaction::default(),
    )
    .unwrap();
    insta::assert_snapshot!("per_row", json(&summary(&per_row)));
    let ids: std::collections::BTreeSet<&str> = per_row.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), per_row.len(), "every event has an id of its own");
}

#[test]
fn collected_rows_are_bounded_in_memory() {
    let compiled = compiled_with("\"ignore\"");
    let mut changes = vec![order(1, 0x900, "7")];
    for i in 0..100_000u64 {
        let (id, no) = (i.to_string(), (100_000 - i).to_string());
        changes.push(line(1, 0x1000 + i, &id, "7", &no, "tea"));
    }
    // 100,000 lines within the default 64MB: one event, every line, in line order.
    let mut tx = Transaction::new(64_000_000);
    let events = run(&compiled, &changes, &mut tx).unwrap();
    assert_eq!(events.len(), 1);
    let lines = events[0].data.to_value()["lines"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[99_999]["line"], 100_000);
    assert!(tx.is_empty() && tx.bytes() == 0, "the commit leaves nothing behind");
    // Past the limit: an error naming the mapping and the limit, no event.
    let mut small = Transaction::new(1_000_000);
    let err = run(&compiled, &changes, &mut small).unwrap_err();
    assert!(matches!(err, MapError::CollectLimit(_)), "{err}");
    insta::assert_snapshot!("limit", format!("{err}\nhint: {}", err.hint()));
    // Rows no mapping collects cost nothing.
    let unmapped = compile_files(
        &[(
            "mappings/orders.toml",
            "[[event]]\nname = \"OrderPlaced\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.id\"\n",
        )],
        Some(&schema()),
    )
    .unwrap();
    let mut tx = Transaction::new(1);
    let events = run(&unmapped, &changes, &mut tx).unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn collected_rows_are_described_in_the_events_shape() {
    let compiled = compiled_with("\"ignore\"");
    let m = &compiled.mappings()[0];
    let shape = m.shape_in(&schema());
    let lines = shape.fields.iter().find(|f| f.name == "lines").unwrap();
    let ficus_mapping::JsonType::Rows(rows) = &lines.ty else {
        panic!("lines is {:?}", lines.ty)
    };
    let names: Vec<&str> = rows.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["line", "sku", "quantity", "amount"]);
    assert_eq!(rows.fields[0].ty, ficus_mapping::JsonType::Integer);
    assert!(compiled.tables().contains(&TableRef::parse("public.order_lines")));
}

#[test]
fn bad_collects_are_errors_with_file_line_and_hint() {
    let text = r#"
[[event]]
name  = "OrderPlaced"
table = "public.orders"
on    = ["insert", "snapshot"]
key   = "new.id"
data  = { order_id = "new.id", lines = "new.total" }

[event.collect.lines]
table    = "public.order_lines"
on       = ["truncate"]
key      = "new.order_number"
order_by = "new.position"
without_parent = { event = "Order Lines" }

[event.collect.notes]
table = "public.order_notes"
key   = "new.order_id"

[event.collect.items]
table = "public.order_lines"
key   = "new.order_id"
without_parent = "drop"
sort  = "new.line_no"
"#;
    let errors = compile_files(&[("mappings/orders.toml", text)], Some(&schema()))
        .err()
        .expect("bad collects do not compile");
    insta::assert_snapshot!(errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n"));
}

#[test]
fn an_event_per_transaction_is_made_once_per_key_of_the_rows_net_change() {
    let text = r#"
[[event]]
name  = "OrderChanged"
table = "public.orders"
on    = ["insert", "update", "delete"]
per   = "transaction"
key   = "op == 'delete' ? old.id : new.id"
data  = { op = "op", changed = "changed", status = "op == 'delete' ? old.status : new.status", was = "op == 'insert' ? null : old.status" }
"#;
    let compiled = compile_files(&[("mappings/orders.toml", text)], Some(&schema())).unwrap();
    let (_, orders) = shop_relations();
    let placed = "2026-11-22 09:00:00+00";
    fn row<'a>(id: &'a str, status: &'a str, total: &'a str, placed: &'a str) -> [Option<&'a str>; 7] {
        [
            Some(id),
            Some("1"),
            Some(status),
            Some(total),
            Some("{}"),
            Some(placed),
            None,
        ]
    }
    let row = |id, status, total| row(id, status, total, placed);
    let (a1, a2, a3) = (
        row("7", "placed", "30.00"),
        row("7", "paid", "30.00"),
        row("7", "paid", "35.00"),
    );
    let (b1, b2) = (row("8", "placed", "5.00"), row("8", "paid", "5.00"));
    let c1 = row("9", "placed", "1.00");
    let changes = [
        // Transaction 1: order 7 updated twice, order 8 once between, order 9 inserted and deleted.
        change(Op::Update, &orders, 1, 0x900, Some(&a2), Some(&a1)),
        change(Op::Update, &orders, 1, 0x910, Some(&b2), Some(&b1)),
        change(Op::Insert, &orders, 1, 0x915, Some(&c1), None),
        change(Op::Update, &orders, 1, 0x920, Some(&a3), Some(&a2)),
        change(Op::Delete, &orders, 1, 0x930, None, Some(&c1)),
        // Transaction 2: order 8 inserted (again) and updated: one insert of the last row.
        change(Op::Insert, &orders, 2, 0x1900, Some(&b1), None),
        change(Op::Update, &orders, 2, 0x1910, Some(&b2), Some(&b1)),
    ];
    let events = run(&compiled, &changes, &mut Transaction::default()).unwrap();
    insta::assert_snapshot!(json(&summary(&events)));
    let seen: Vec<(String, serde_json::Value)> = events
        .iter()
        .map(|e| (e.subject.clone(), e.data.to_value()["changed"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("7".to_owned(), serde_json::json!(["status", "total"])),
            ("8".to_owned(), serde_json::json!(["status"])),
            ("8".to_owned(), serde_json::json!([])),
        ],
        "order 7 once, with everything that changed in the transaction, before order 8 as it came first; order 9 not at all"
    );
    assert_eq!(
        run(&compiled, &changes, &mut Transaction::default()).unwrap(),
        events,
        "the same ids again"
    );
}

#[test]
fn a_row_updated_a_hundred_thousand_times_in_a_transaction_takes_the_memory_of_one_event() {
    let text = r#"
[[event]]
name  = "OrderChanged"
table = "public.orders"
on    = ["update"]
per   = "transaction"
key   = "new.id"
data  = { total = "new.total", changed = "changed" }
"#;
    let compiled = compile_files(&[("mappings/orders.toml", text)], Some(&schema())).unwrap();
    let (_, orders) = shop_relations();
    let totals: Vec<String> = (0..=100_000).map(|i| format!("{i}.00")).collect();
    let row = |total: &str| -> Vec<Option<String>> {
        ["7", "1", "placed", total, "{}", "2026-11-22 09:00:00+00"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None])
            .collect()
    };
    let changes: Vec<RowChange> = totals
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (old, new) = (row(&w[0]), row(&w[1]));
            let old: Vec<Option<&str>> = old.iter().map(|c| c.as_deref()).collect();
            let new: Vec<Option<&str>> = new.iter().map(|c| c.as_deref()).collect();
            change(Op::Update, &orders, 1, 0x1000 + i as u64, Some(&new), Some(&old))
        })
        .collect();
    let events = run(&compiled, &changes, &mut Transaction::new(10_000)).unwrap();
    assert_eq!(events.len(), 1);
    let mut data = Vec::new();
    events[0].write_data(&mut data);
    assert_eq!(
        String::from_utf8(data).unwrap(),
        r#"{"total":100000.00,"changed":["total"]}"#,
        "the last total, and what changed since the first old row"
    );
}
