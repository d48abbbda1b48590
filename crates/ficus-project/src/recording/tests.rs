//! A recording written as fixture files reads back as the same changes, and `ficus test` makes
//! the same events of them as were recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use ficus_mapping::{Compiled, EventContext};
use ficus_model::{Cell, Column, Lsn, Op, Origin, PgType, Relation, ReplicaIdentity, Row, RowChange, TableRef, TxMeta};

use super::*;
use crate::fixtures::tests::shop;
use crate::fixtures::{Fixture, expectation};

fn column(name: &str, ty: PgType, type_name: &str, identity: bool) -> Column {
    Column {
        name: name.into(),
        ty,
        type_name: type_name.into(),
        identity,
    }
}

/// The orders table as the stream describes it: types by their resolved kind only.
fn orders() -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16390,
        table: TableRef::new("public", "orders"),
        replica_identity: ReplicaIdentity::Full,
        columns: vec![
            column("id", PgType::Int8, "int8", true),
            column("customer_id", PgType::Int8, "int8", false),
            column("status", PgType::Text, "text", false),
            column("total", PgType::Numeric, "numeric", false),
            column("tags", PgType::Array(Box::new(PgType::Text)), "array(text)", false),
            column("placed_at", PgType::Timestamptz, "timestamptz", false),
            column("paid_at", PgType::Timestamptz, "timestamptz", false),
        ],
    })
}

fn cells(values: &[Option<&str>]) -> Row {
    Row(values.iter().map(|v| v.map_or(Cell::Null, Cell::text)).collect())
}

fn change(op: Op, old: Option<Row>, new: Option<Row>, commit: u64, lsn: u64, xid: u32) -> RowChange {
    RowChange {
        op,
        relation: orders(),
        new,
        old,
        tx: TxMeta {
            xid,
            commit_lsn: Lsn(commit),
            commit_time_micros: 1_764_745_200_123_456 + commit as i64,
        },
        origin: Origin::Wal { lsn: Lsn(lsn), seq: 0 },
    }
}

/// An order placed and paid in one transaction, then shipped, then deleted.
fn changes() -> Vec<RowChange> {
    let placed = [
        Some("7"),
        Some("100"),
        Some("placed"),
        Some("120.50"),
        Some("{gift,\"express \\\"now\\\"\"}"),
        Some("2026-03-01 10:00:00+01"),
        None,
    ];
    let mut paid = placed;
    paid[2] = Some("paid");
    paid[6] = Some("2026-03-01 10:05:00+01");
    let mut shipped = paid;
    shipped[2] = Some("shipped");
    vec![
        change(Op::Insert, None, Some(cells(&placed)), 0x200, 0x100, 740),
        change(Op::Update, Some(cells(&placed)), Some(cells(&paid)), 0x200, 0x180, 740),
        change(Op::Update, Some(cells(&paid)), Some(cells(&shipped)), 0x300, 0x280, 741),
        change(Op::Delete, Some(cells(&shipped)), None, 0x400, 0x380, 742),
    ]
}

fn record_all(recording: &mut Recording, compiled: &Compiled, changes: &[RowChange]) -> Vec<serde_json::Value> {
    let ctx = EventContext::new("shop", "test");
    let mut made = Vec::new();
    for c in changes {
        let bound = compiled.bind(c.relation.clone(), &ctx).unwrap().unwrap();
        let events: Vec<_> = bound.apply(c, &ctx).unwrap().iter().map(expectation).collect();
        made.extend(events.clone());
        recording.record(c, events);
    }
    made
}

fn facts() -> BTreeMap<TableRef, ColumnFacts> {
    let mut f = ColumnFacts::default();
    for (c, t) in [
        ("id", "bigint"),
        ("customer_id", "bigint"),
        ("status", "order_status"),
        ("total", "positive_money"),
        ("tags", "text[]"),
        ("placed_at", "timestamp with time zone"),
        ("paid_at", "timestamp with time zone"),
    ] {
        f.type_names.insert(c.into(), t.into());
    }
    // A domain over numeric(12,2): declared by its base type, which converts as the domain does.
    f.base_types.insert("total".into(), "numeric(12,2)".into());
    f.not_null
        .extend(["id", "customer_id", "status", "total"].map(String::from));
    BTreeMap::from([(TableRef::new("public", "orders"), f)])
}

#[test]
fn a_recording_reads_back_as_the_changes_and_makes_the_same_events() {
    let compiled = shop();
    let mut recording = Recording::new(100);
    let made = record_all(&mut recording, &compiled, &changes());
    let files = recording.files(&facts()).unwrap();
    assert_eq!(files.len(), 1);
    let file = &files[0];
    assert_eq!(
        (file.name.as_str(), file.changes, file.left_out),
        ("orders.recorded.toml", 4, 0)
    );
    insta::assert_snapshot!(file.text);

    let fixture = Fixture::parse(&file.name, &file.text).unwrap();
    assert_eq!(fixture.expect.as_deref(), Some(&made[..]));
    assert_eq!(fixture.run(&compiled, "shop").unwrap(), made);
    // Each change comes back as it was, transaction ids and commit times included.
    for (read, original) in fixture.changes().zip(changes()) {
        assert_eq!(read.op, original.op);
        assert_eq!(read.new, original.new);
        assert_eq!(read.old, original.old);
        assert_eq!(read.tx.xid, original.tx.xid);
        assert_eq!(read.tx.commit_time_micros, original.tx.commit_time_micros);
    }
    let txs: Vec<u64> = fixture.changes().map(|c| c.tx.commit_lsn.0).collect();
    assert!(txs[0] == txs[1] && txs[1] < txs[2] && txs[2] < txs[3], "{txs:?}");
}

#[test]
fn a_resumed_stream_is_not_recorded_twice_and_the_limit_holds() {
    let compiled = shop();
    let all = changes();
    let mut recording = Recording::new(100);
    record_all(&mut recording, &compiled, &all[..2]);
    // A lost connection: the stream sends again from the last acknowledged commit.
    record_all(&mut recording, &compiled, &all[..1]);
    record_all(&mut recording, &compiled, &all);
    assert_eq!(recording.len(), 4);

    let mut limited = Recording::new(3);
    record_all(&mut limited, &compiled, &all);
    let files = limited.files(&BTreeMap::new()).unwrap();
    assert_eq!((files[0].changes, files[0].left_out), (3, 1));
    assert!(
        files[0]
            .text
            .contains("# 1 more changes of public.orders were seen and left out"),
        "{}",
        files[0].text
    );
    // With no facts from the catalog, the types are the resolved kinds' names.
    assert!(
        files[0].text.contains("tags = \"text[]\", placed_at = \"timestamptz\""),
        "{}",
        files[0].text
    );
    let fixture = Fixture::parse(&files[0].name, &files[0].text).unwrap();
    assert_eq!(fixture.run(&compiled, "shop").unwrap(), fixture.expect.unwrap());
}

#[test]
fn a_table_whose_columns_change_is_recorded_in_a_second_file() {
    let compiled = shop();
    let mut all = changes();
    let mut relation = (*orders()).clone();
    relation.columns.push(column("note", PgType::Text, "text", false));
    let wider = Arc::new(relation);
    let mut last = all.pop().unwrap();
    last.relation = wider;
    last.old.as_mut().unwrap().0.push(Cell::text("fragile"));
    let mut recording = Recording::new(100);
    record_all(&mut recording, &compiled, &all);
    record_all(&mut recording, &compiled, &[last]);
    let files = recording.files(&BTreeMap::new()).unwrap();
    let names: Vec<_> = files.iter().map(|f| (f.name.as_str(), f.changes)).collect();
    assert_eq!(names, [("orders.recorded.toml", 3), ("orders.recorded.2.toml", 1)]);
    assert!(files[1].text.contains("note = \"fragile\""), "{}", files[1].text);
}

#[test]
fn types_are_declared_so_that_they_convert_as_the_source_resolved_them() {
    assert_eq!(fixture_type("numeric(10,2)", &PgType::Numeric, None), "numeric(10,2)");
    assert_eq!(fixture_type("order_status", &PgType::Text, None), "order_status");
    assert_eq!(
        fixture_type("money_amount", &PgType::Numeric, Some("numeric(12,2)")),
        "numeric(12,2)"
    );
    assert_eq!(fixture_type("int8", &PgType::Int8, None), "int8");
    assert_eq!(
        fixture_type("array(int)", &PgType::Array(Box::new(PgType::Int)), None),
        "integer[]"
    );
    for ty in [
        PgType::Bool,
        PgType::Int,
        PgType::Int8,
        PgType::Float,
        PgType::Numeric,
        PgType::Text,
        PgType::Bytea,
        PgType::Json,
        PgType::Timestamptz,
        PgType::Timestamp,
        PgType::Date,
        PgType::Time,
        PgType::Interval,
        PgType::Array(Box::new(PgType::Array(Box::new(PgType::Json)))),
    ] {
        assert_eq!(PgType::from_name(&pg_name(&ty)), ty);
    }
}

#[test]
fn mapped_messages_are_recorded_in_a_file_of_their_own_that_reads_back_into_the_same_events() {
    let compiled = crate::fixtures::tests::shop_outbox();
    let ctx = EventContext::new("shop", "7300000000000000001/shop");
    let tx = |commit: u64, xid: u32| TxMeta {
        xid,
        commit_lsn: Lsn(commit),
        commit_time_micros: 1_764_745_200_123_456 + commit as i64,
    };
    let messages = [
        (
            tx(0x2000, 740),
            0x1f00,
            r#"{"type": "CartAbandoned", "cart_id": 9, "items": 3}"#,
        ),
        (
            tx(0x2000, 740),
            0x1f80,
            r#"{"type": "CartAbandoned", "cart_id": 10, "items": 1}"#,
        ),
        (
            tx(0x3000, 741),
            0x2f00,
            r#"{"type": "CartAbandoned", "cart_id": 11, "items": "two \"quoted\""}"#,
        ),
    ];
    let mut made = Vec::new();
    let mut recording = Recording::new(100);
    // The first transaction twice: a resumed stream sends it again.
    for i in [0, 1, 0, 1, 2] {
        let (tx, lsn, content) = &messages[i];
        let m = ficus_mapping::Message {
            prefix: "shop.events",
            content: content.as_bytes(),
            lsn: Lsn(*lsn),
            transactional: true,
            tx,
        };
        let mut own = ficus_mapping::Transaction::default();
        let events: Vec<_> = compiled
            .apply_message(&m, &ctx, &mut own)
            .unwrap()
            .iter()
            .map(expectation)
            .collect();
        if made.len() == i {
            made.extend(events.clone());
        }
        recording.record_message(m.prefix, m.content, m.lsn, m.tx, events);
    }
    assert_eq!(
        recording.len(),
        3,
        "the resumed stream's repeats are not recorded twice"
    );
    let files = recording.files(&BTreeMap::new()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "pg_logical_emit_message.recorded.toml");
    insta::assert_snapshot!(files[0].text);
    let fixture = Fixture::parse(&files[0].name, &files[0].text).unwrap();
    assert_eq!(fixture.expect.as_deref(), Some(&made[..]));
    assert_eq!(fixture.run(&compiled, "shop").unwrap(), made);
}
