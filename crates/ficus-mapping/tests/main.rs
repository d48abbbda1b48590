//! The mapping engine as a pure function: mapping files + row changes → events.

use std::collections::BTreeMap;
use std::sync::Arc;

use ficus_mapping::{Compiled, Diagnostic, EventContext, MapError, Schema, compile, parse_file};
use ficus_model::{
    Cell, Column, Event, Lsn, Op, Origin, PgType, Relation, ReplicaIdentity, Row, RowChange, TableRef, TxMeta,
};

// ---- builders -------------------------------------------------------------

fn relation(oid: u32, table: &str, identity: ReplicaIdentity, columns: &[(&str, PgType, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid,
        table: TableRef::parse(table),
        replica_identity: identity,
        columns: columns
            .iter()
            .map(|(name, ty, key)| Column {
                name: name.to_string(),
                ty: ty.clone(),
                type_name: format!("{ty:?}").to_lowercase(),
                identity: *key,
            })
            .collect(),
    })
}

fn row(cells: &[Option<&str>]) -> Row {
    Row(cells.iter().map(|c| c.map_or(Cell::Null, Cell::text)).collect())
}

/// A row change in transaction `xid`, committed at LSN `0/1000 * xid`, at 2026-11-22T10:00:00Z + xid seconds.
fn change(
    op: Op,
    relation: &Arc<Relation>,
    xid: u32,
    lsn: u64,
    new: Option<&[Option<&str>]>,
    old: Option<&[Option<&str>]>,
) -> RowChange {
    RowChange {
        op,
        relation: relation.clone(),
        new: new.map(row),
        old: old.map(row),
        tx: TxMeta {
            xid,
            commit_lsn: Lsn(0x1000 * u64::from(xid)),
            commit_time_micros: 1_795_341_600_000_000 + i64::from(xid) * 1_000_000,
        },
        origin: Origin::Wal { lsn: Lsn(lsn), seq: 0 },
    }
}

/// Pretty JSON text: numbers exactly as ficus writes them.
fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

fn ctx() -> EventContext {
    EventContext::new("shop", "7300000000000000001/shop")
}

fn compile_files(files: &[(&str, &str)], schema: Option<&Schema>) -> Result<Compiled, Vec<Diagnostic>> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        let (file, errs) = parse_file(path, text);
        parsed.push(file);
        errors.extend(errs);
    }
    match compile(&parsed, schema) {
        Ok(c) if errors.is_empty() => return Ok(c),
        Ok(_) => {}
        Err(e) => errors.extend(e),
    }
    errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    Err(errors)
}

fn apply(compiled: &Compiled, changes: &[RowChange]) -> Vec<Event> {
    let ctx = ctx();
    let mut out = Vec::new();
    for c in changes {
        if let Some(bound) = compiled.bind(c.relation.clone(), &ctx).unwrap() {
            out.extend(bound.apply(c, &ctx).unwrap());
        }
    }
    out
}

fn shop_relations() -> (Arc<Relation>, Arc<Relation>) {
    let customers = relation(
        16400,
        "public.customers",
        ReplicaIdentity::Full,
        &[
            ("id", PgType::Int8, true),
            ("email", PgType::Text, false),
            ("name", PgType::Text, false),
            ("password_hash", PgType::Text, false),
            ("created_at", PgType::Timestamptz, false),
        ],
    );
    let orders = relation(
        16410,
        "public.orders",
        ReplicaIdentity::Full,
        &[
            ("id", PgType::Int8, true),
            ("customer_id", PgType::Int8, false),
            ("status", PgType::Text, false),
            ("total", PgType::Numeric, false),
            ("tags", PgType::Array(Box::new(PgType::Text)), false),
            ("placed_at", PgType::Timestamptz, false),
            ("paid_at", PgType::Timestamptz, false),
        ],
    );
    (customers, orders)
}

fn shop_schema() -> Schema {
    let (c, o) = shop_relations();
    let l = collect::lines_relation();
    let outbox = relation(
        16430,
        "public.outbox",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Text, true),
            ("aggregatetype", PgType::Text, false),
            ("aggregateid", PgType::Text, false),
            ("type", PgType::Text, false),
            ("payload", PgType::Json, false),
            ("tenant_id", PgType::Int, false),
            ("note", PgType::Text, false),
            ("blob", PgType::Bytea, false),
        ],
    );
    BTreeMap::from([
        (c.table.clone(), (*c).clone().into()),
        (o.table.clone(), (*o).clone().into()),
        (l.table.clone(), (*l).clone().into()),
        (outbox.table.clone(), (*outbox).clone().into()),
    ])
}

fn shop_mappings() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop/mappings");
    // The mapping files; their fixtures (mappings/tests/) are not mappings.
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            (
                format!("mappings/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read_to_string(p).unwrap(),
            )
        })
        .collect()
}

// ---- tests ----------------------------------------------------------------

#[test]
fn shop_order_lifecycle() {
    let files = shop_mappings();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let compiled = compile_files(&files, Some(&shop_schema())).unwrap();
    let (customers, orders) = shop_relations();
    let placed = [
        Some("1"),
        Some("7"),
        Some("placed"),
        Some("120.50"),
        Some("{gift,\"big box\"}"),
        Some("2026-11-22 09:59:00.25+00"),
        None,
    ];
    let paid = [
        Some("1"),
        Some("7"),
        Some("paid"),
        Some("120.50"),
        Some("{gift}"),
        Some("2026-11-22 09:59:00.25+00"),
        Some("2026-11-22 10:00:01+00"),
    ];
    let shipped = [
        Some("1"),
        Some("7"),
        Some("shipped"),
        Some("120.50"),
        Some("{gift}"),
        Some("2026-11-22 09:59:00.25+00"),
        Some("2026-11-22 10:00:01+00"),
    ];
    let cancelled = [
        Some("1"),
        Some("7"),
        Some("cancelled"),
        Some("120.50"),
        Some("{gift}"),
        Some("2026-11-22 09:59:00.25+00"),
        Some("2026-11-22 10:00:01+00"),
    ];
    let events = apply(
        &compiled,
        &[
            change(
                Op::Insert,
                &customers,
                1,
                0x0f00,
                Some(&[
                    Some("7"),
                    Some("ada@example.com"),
                    Some("Ada"),
                    Some("secret"),
                    Some("2026-11-22 09:00:00+00"),
                ]),
                None,
            ),
            change(Op::Insert, &orders, 2, 0x1f00, Some(&placed), None),
            // Paying twice is one OrderPaid: `when` looks at the old status.
            change(Op::Update, &orders, 3, 0x2f00, Some(&paid), Some(&placed)),
            change(Op::Update, &orders, 4, 0x3f00, Some(&paid), Some(&paid)),
            change(Op::Update, &orders, 5, 0x4f00, Some(&shipped), Some(&paid)),
            change(Op::Update, &orders, 6, 0x5f00, Some(&cancelled), Some(&shipped)),
            change(
                Op::Update,
                &customers,
                7,
                0x6f00,
                Some(&[
                    Some("7"),
                    Some("ada@lovelace.example"),
                    Some("Ada"),
                    Some("secret"),
                    Some("2026-11-22 09:00:00+00"),
                ]),
                Some(&[
                    Some("7"),
                    Some("ada@example.com"),
                    Some("Ada"),
                    Some("secret"),
                    Some("2026-11-22 09:00:00+00"),
                ]),
            ),
            // A name change is not an email change.
            change(
                Op::Update,
                &customers,
                8,
                0x7f00,
                Some(&[
                    Some("7"),
                    Some("ada@lovelace.example"),
                    Some("Ada L."),
                    Some("secret"),
                    Some("2026-11-22 09:00:00+00"),
                ]),
                Some(&[
                    Some("7"),
                    Some("ada@lovelace.example"),
                    Some("Ada"),
                    Some("secret"),
                    Some("2026-11-22 09:00:00+00"),
                ]),
            ),
        ],
    );
    insta::assert_snapshot!(json(&events));
}

#[test]
fn types_numeric_time_bytea_json_arrays() {
    let rel = relation(
        16500,
        "public.kinds",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Int, true),
            ("big", PgType::Int8, false),
            ("price", PgType::Numeric, false),
            ("nan", PgType::Numeric, false),
            ("ratio", PgType::Float, false),
            ("inf", PgType::Float, false),
            ("flag", PgType::Bool, false),
            ("at", PgType::Timestamptz, false),
            ("local", PgType::Timestamp, false),
            ("day", PgType::Date, false),
            ("clock", PgType::Time, false),
            ("span", PgType::Interval, false),
            ("blob", PgType::Bytea, false),
            ("doc", PgType::Json, false),
            ("matrix", PgType::Array(Box::new(PgType::Int)), false),
            ("mood", PgType::Text, false),
            ("nothing", PgType::Text, false),
        ],
    );
    let mut schema = Schema::new();
    schema.insert(rel.table.clone(), (*rel).clone().into());
    let compiled = compile_files(
        &[(
            "kinds.toml",
            r#"
[[event]]
name = "KindSeen"
table = "kinds"
on = ["insert"]
key = "new.id"
data = "new"

[[event]]
name = "KindComputed"
table = "kinds"
on = ["insert"]
key = "new.id"
data = { doubled = "new.price * 2.0", year = "new.at.getFullYear()", first = "new.matrix[0][1]", doc_a = "new.doc.a", big = "new.big + 1" }
"#,
        )],
        Some(&schema),
    )
    .unwrap();
    let events = apply(
        &compiled,
        &[change(
            Op::Insert,
            &rel,
            9,
            0x8f00,
            Some(&[
                Some("1"),
                Some("9223372036854775806"),
                Some("12345678901234567890.12345678901234567890"),
                Some("NaN"),
                Some("0.1"),
                Some("-Infinity"),
                Some("t"),
                Some("2026-11-22 10:00:00.123456+00"),
                Some("2026-11-22 10:00:00"),
                Some("2026-11-22"),
                Some("10:00:00"),
                Some("P1Y2M3DT4H5M6S"),
                Some("\\xdeadbeef"),
                Some(r#"{"a": [1, 2.50, {"b": null}], "big": 123456789012345678901234567890}"#),
                Some("{{1,2},{3,NULL}}"),
                Some("happy"),
                None,
            ]),
            None,
        )],
    );
    insta::assert_snapshot!(json(&events.iter().map(|e| (&e.ty, &e.data)).collect::<Vec<_>>()));
    // numeric stays exact in the JSON text, not only in the value
    let line = serde_json::to_string(&events[0]).unwrap();
    assert!(
        line.contains(r#""price":12345678901234567890.12345678901234567890"#),
        "{line}"
    );
    assert!(line.contains(r#""big":9223372036854775806"#), "{line}");
}

#[test]
fn event_ids_are_deterministic() {
    let files = shop_mappings();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let compiled = compile_files(&files, None).unwrap();
    let (customers, _) = shop_relations();
    let new = [
        Some("7"),
        Some("a@b.c"),
        Some("Ada"),
        Some("x"),
        Some("2026-11-22 09:00:00+00"),
    ];
    let c = change(Op::Insert, &customers, 1, 0x0f00, Some(&new), None);
    let first = apply(&compiled, std::slice::from_ref(&c));
    let again = apply(&compiled, std::slice::from_ref(&c));
    assert_eq!(first, again, "the same change maps to the same events, ids included");
    let mut second_row = c.clone();
    second_row.origin = Origin::Wal {
        lsn: Lsn(0x0f00),
        seq: 1,
    };
    assert_ne!(
        apply(&compiled, &[second_row])[0].id,
        first[0].id,
        "rows of one COPY record get their own ids"
    );
    let other_source = EventContext::new("shop", "7300000000000000002/shop");
    let bound = compiled.bind(customers.clone(), &other_source).unwrap().unwrap();
    assert_ne!(
        bound.apply(&c, &other_source).unwrap()[0].id,
        first[0].id,
        "another database gives other ids"
    );
}

#[test]
fn unchanged_toast_values_stop_ficus_or_are_left_out_with_a_trace() {
    let rel = relation(
        16600,
        "docs",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Int, true),
            ("title", PgType::Text, false),
            ("body", PgType::Text, false),
        ],
    );
    let with = |policy: &str| {
        let toml = format!(
            "[[event]]\nname = \"DocTouched\"\ntable = \"docs\"\non = [\"update\"]\nkey = \"new.id\"\ndata = {{ id = \"new.id\", body = \"new.body\" }}\n{policy}\n[[event]]\nname = \"DocSeen\"\ntable = \"docs\"\non = [\"update\"]\nkey = \"new.id\"\ndata = \"new\"\n{policy}"
        );
        compile_files(&[("docs.toml", &toml)], None).unwrap()
    };
    let mut c = change(Op::Update, &rel, 1, 0x10, Some(&[Some("1"), Some("t"), None]), None);
    c.new.as_mut().unwrap().0[2] = Cell::Unsent;
    // By default: stop, naming the table, the key and the column.
    let ctx = ctx();
    let stopped = with("");
    let bound = stopped.bind(rel.clone(), &ctx).unwrap().unwrap();
    let err = bound.apply(&c, &ctx).err().unwrap();
    insta::assert_snapshot!(format!("{err}\nhint: {}", err.hint()));
    assert!(bound.to_reselect(&c).is_empty());
    // "omit": left out, and said so in the event.
    let events = apply(&with("unchanged_toast = \"omit\"\n"), std::slice::from_ref(&c));
    assert_eq!(events[0].data.to_value(), serde_json::json!({"id": 1}));
    assert_eq!(events[0].unavailable.as_deref(), Some("body"));
    assert_eq!(events[1].data.to_value(), serde_json::json!({"id": 1, "title": "t"}));
    assert_eq!(events[1].unavailable.as_deref(), Some("body"));
    let line = serde_json::to_string(&events[0]).unwrap();
    assert!(line.contains(r#""ficusunavailable":"body""#), "{line}");
    // "reselect": the runtime is asked for the column, and maps the row it puts it in.
    let reselecting = with("unchanged_toast = \"reselect\"\n");
    let bound = reselecting.bind(rel.clone(), &ctx).unwrap().unwrap();
    assert_eq!(bound.to_reselect(&c), vec![2]);
    let mut filled = c.clone();
    filled.new.as_mut().unwrap().0[2] = Cell::text("read again");
    let events = bound.apply(&filled, &ctx).unwrap();
    assert_eq!(
        events[0].data.to_value(),
        serde_json::json!({"id": 1, "body": "read again"})
    );
    assert_eq!(events[0].unavailable, None);
    // The old row has it (REPLICA IDENTITY FULL): delivered, whatever the policy.
    c.old = Some(row(&[Some("1"), Some("t"), Some("long text")]));
    let events = apply(&stopped, &[c]);
    assert_eq!(
        events[0].data.to_value(),
        serde_json::json!({"id": 1, "body": "long text"})
    );
    assert_eq!(events[0].unavailable, None);
}

#[test]
fn check_warns_of_toastable_columns_an_update_may_not_send() {
    let docs = relation(
        16610,
        "docs",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Int, true),
            ("body", PgType::Text, false),
            ("n", PgType::Int, false),
        ],
    );
    let mut table = ficus_model::CatalogTable::from((*docs).clone());
    table.toastable.insert("body".into());
    let schema = Schema::from([(docs.table.clone(), table)]);
    let file = |extra: &str, data: &str| {
        format!(
            "[[event]]\nname = \"DocEdited\"\ntable = \"docs\"\non = [\"insert\", \"update\"]\nkey = \"new.id\"\ndata = {data}\n{extra}"
        )
    };
    let warned = compile_files(&[("docs.toml", &file("", "\"new\""))], Some(&schema)).unwrap();
    insta::assert_snapshot!(
        warned
            .warnings()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    for quiet in [
        file("unchanged_toast = \"stop\"", "\"new\""),
        file("", "{ n = \"new.n\" }"),
    ] {
        let c = compile_files(&[("docs.toml", &quiet)], Some(&schema)).unwrap();
        assert!(c.warnings().is_empty(), "{quiet}");
    }
    let errors = compile_files(
        &[("docs.toml", &file("unchanged_toast = \"keep\"", "\"new\""))],
        Some(&schema),
    )
    .err()
    .unwrap();
    assert!(
        errors[0].message.contains("unknown unchanged_toast \"keep\""),
        "{errors:?}"
    );
}

#[test]
fn truncate_and_delete_mappings() {
    let rel = relation(
        16700,
        "carts",
        ReplicaIdentity::Default,
        &[("id", PgType::Int, true), ("owner", PgType::Text, false)],
    );
    let compiled = compile_files(
        &[(
            "carts.toml",
            r#"
[[event]]
name = "CartsCleared"
table = "carts"
on = ["truncate"]
key = "table"
data = { table = "table", op = "op" }

[[event]]
name = "CartAbandoned"
table = "carts"
on = ["delete"]
key = "old.id"
"#,
        )],
        None,
    )
    .unwrap();
    let events = apply(
        &compiled,
        &[
            // a key-only old row: the source leaves `owner` out (Cell::Unsent)
            {
                let mut c = change(Op::Delete, &rel, 1, 0x10, None, Some(&[Some("3"), None]));
                c.old.as_mut().unwrap().0[1] = Cell::Unsent;
                c
            },
            change(Op::Truncate, &rel, 2, 0x20, None, None),
        ],
    );
    insta::assert_snapshot!(json(
        &events.iter().map(|e| (&e.ty, &e.subject, &e.data)).collect::<Vec<_>>()
    ));
}

#[test]
fn runtime_errors_say_what_and_how() {
    let rel = relation(
        16800,
        "orders",
        ReplicaIdentity::Default,
        &[("id", PgType::Int, true), ("status", PgType::Text, false)],
    );
    let compiled = compile_files(
        &[(
            "orders.toml",
            r#"
[[event]]
name = "OrderPaid"
table = "orders"
on = ["update"]
when = "old.status != 'paid' && new.status == 'paid'"
key = "new.id"
"#,
        )],
        None,
    )
    .unwrap();
    let ctx = ctx();
    let bound = compiled.bind(rel.clone(), &ctx).unwrap().unwrap();
    // REPLICA IDENTITY DEFAULT sends no old row for this update
    let err = bound
        .apply(
            &change(Op::Update, &rel, 1, 0x10, Some(&[Some("1"), Some("paid")]), None),
            &ctx,
        )
        .unwrap_err();
    insta::assert_snapshot!(format!("{err}\nhint: {}", err.hint()));

    let keyless = compile_files(
        &[(
            "k.toml",
            "[[event]]\nname = \"X\"\ntable = \"orders\"\non = [\"insert\"]\nkey = \"new.status\"\n",
        )],
        None,
    )
    .unwrap();
    let bound = keyless.bind(rel.clone(), &ctx).unwrap().unwrap();
    let err = bound
        .apply(&change(Op::Insert, &rel, 1, 0x10, Some(&[Some("1"), None]), None), &ctx)
        .unwrap_err();
    assert!(
        matches!(err, MapError::Eval(ref e) if e.what == "key" && e.message == "is null"),
        "{err}"
    );

    // a mapped column dropped from the table
    let dropped = relation(16800, "orders", ReplicaIdentity::Default, &[("id", PgType::Int, true)]);
    let err = compiled.bind(dropped, &ctx).err().unwrap();
    insta::assert_snapshot!(format!("{err}\nhint: {}", err.hint()));
}

#[test]
fn bad_mappings() {
    let schema = {
        let mut s = shop_schema();
        let plain = relation(
            16900,
            "public.plain",
            ReplicaIdentity::Default,
            &[
                ("id", PgType::Int, true),
                ("status", PgType::Text, false),
                ("meta", PgType::Json, false),
            ],
        );
        s.insert(plain.table.clone(), (*plain).clone().into());
        s
    };
    insta::glob!("fixtures/bad/*.toml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let name = format!("fixtures/bad/{}", path.file_name().unwrap().to_string_lossy());
        let errors = compile_files(&[(&name, &text)], Some(&schema))
            .err()
            .expect("a bad mapping does not compile");
        insta::assert_snapshot!(errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n"));
    });
}

#[test]
fn snapshot_rows_map_like_inserts_with_ids_of_their_own() {
    let (customers, _) = shop_relations();
    let compiled = compile_files(
        &[(
            "customers.toml",
            "[[event]]\nname = \"CustomerRegistered\"\ntable = \"customers\"\non = [\"insert\", \"snapshot\"]\nkey = \"new.id\"\ndata = { email = \"new.email\", op = \"op\" }\n",
        )],
        Some(&shop_schema()),
    )
    .unwrap();
    let row = [
        Some("7"),
        Some("ada@example.com"),
        Some("Ada"),
        Some("x"),
        Some("2026-11-22 09:00:00+00"),
    ];
    let live = change(Op::Insert, &customers, 1, 0x0f00, Some(&row), None);
    let mut snapshot = change(Op::Snapshot, &customers, 2, 0x1f00, Some(&row), None);
    snapshot.origin = Origin::Backfill {
        id: "bf-1".into(),
        key: "7".into(),
    };
    let events = apply(&compiled, &[live, snapshot.clone()]);
    assert_eq!(
        events[1].data,
        serde_json::json!({"email": "ada@example.com", "op": "snapshot"}).into()
    );
    assert_eq!(events[1].backfill.as_deref(), Some("bf-1"));
    assert!(events[0].backfill.is_none());
    assert!(
        !serde_json::to_string(&events[0]).unwrap().contains("backfill"),
        "live events carry no backfill attribute"
    );
    assert_ne!(events[0].id, events[1].id);
    // same row, same backfill: same id, wherever it is emitted in the stream
    let mut again = snapshot.clone();
    again.tx.commit_lsn = Lsn(0x9f00);
    assert_eq!(apply(&compiled, &[again])[0].id, events[1].id);
    let mut other = snapshot;
    other.origin = Origin::Backfill {
        id: "bf-2".into(),
        key: "7".into(),
    };
    assert_ne!(apply(&compiled, &[other])[0].id, events[1].id);
}

#[test]
fn columns_the_stream_does_not_send_are_errors_with_what_to_do_instead() {
    let lines = relation(
        16950,
        "public.lines",
        ReplicaIdentity::Default,
        &[
            ("id", PgType::Int, true),
            ("price", PgType::Numeric, false),
            ("qty", PgType::Int, false),
        ],
    );
    let mut table = ficus_model::CatalogTable::from((*lines).clone());
    table.unseen = vec![
        ficus_model::UnseenColumn {
            name: "total".into(),
            why: ficus_model::Unseen::Generated {
                expression: "(price * qty)".into(),
            },
        },
        ficus_model::UnseenColumn {
            name: "secret".into(),
            why: ficus_model::Unseen::NotPublished {
                publication: "ficus".into(),
                fix: "ALTER PUBLICATION \"ficus\" SET TABLE \"public\".\"lines\";".into(),
            },
        },
    ];
    let schema = Schema::from([(lines.table.clone(), table)]);
    let errors = compile_files(
        &[(
            "lines.toml",
            r#"[[event]]
name = "LinePriced"
table = "lines"
on = ["insert"]
key = "new.id"
data = { total = "new.total", secret = "new.secret" }

[[event]]
name = "LineSeen"
table = "lines"
on = ["insert"]
key = "new.id"
data = "new"
exclude = ["secret"]
"#,
        )],
        Some(&schema),
    )
    .err()
    .unwrap();
    insta::assert_snapshot!(errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n"));
    // Excluded, or not read: fine.
    let compiled = compile_files(
        &[(
            "lines.toml",
            "[[event]]\nname = \"LineSeen\"\ntable = \"lines\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = \"new\"\nexclude = [\"secret\", \"total\"]\n",
        )],
        Some(&schema),
    )
    .unwrap();
    let m = &compiled.mappings()[0];
    assert!(m.reads("price") && m.reads("id") && !m.reads("total") && !m.reads("secret"));
}

#[test]
fn a_mapping_says_which_columns_it_reads() {
    let files = shop_mappings();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let compiled = compile_files(&files, Some(&shop_schema())).unwrap();
    let by_name = |n: &str| compiled.mappings().iter().find(|m| &*m.name == n).unwrap().clone();
    let registered = by_name("CustomerRegistered");
    assert_eq!(
        registered.reads_new,
        ficus_mapping::ColumnsRead::AllBut(["password_hash".to_owned()].into())
    );
    let paid = by_name("OrderPaid");
    assert_eq!(
        paid.reads_new,
        ficus_mapping::ColumnsRead::Only(["id", "paid_at", "status", "total"].map(String::from).into())
    );
    assert_eq!(
        paid.reads_old,
        ficus_mapping::ColumnsRead::Only(["status".to_owned()].into())
    );
    // `changed` compares every column.
    assert_eq!(
        by_name("CustomerEmailChanged").reads_old,
        ficus_mapping::ColumnsRead::AllBut(Default::default())
    );
}

#[test]
fn the_source_is_a_uri_reference_for_any_name() {
    let ctx = EventContext::new("my shop", "7/shop");
    let table = ficus_model::TableRef::new("Sales Dept", "Örders/2024");
    assert_eq!(
        ctx.source_uri(Some(&table)),
        "/ficus/my%20shop/Sales%20Dept.%C3%96rders%2F2024"
    );
    assert_eq!(ctx.source_uri(None), "/ficus/my%20shop");
    assert_eq!(
        ctx.source_uri(Some(&ficus_model::TableRef::new("public", "orders"))),
        "/ficus/my%20shop/public.orders"
    );
}

mod collect;
mod messages;
