//! Events the application states itself: logical decoding messages, mapped by `[[message]]`.

use super::*;
use ficus_mapping::{Message, Transaction};

const REFUNDS: &str = r#"
[[message]]
prefix    = "shop.events"
name      = "OrderRefunded"
when      = "payload.type == 'OrderRefunded'"
key       = "payload.order_id"
aggregate = "Order"

[[message]]
prefix    = "shop.events"
name      = "CouponRedeemed"
version   = 2
when      = "payload.type == 'CouponRedeemed'"
key       = "payload.code"
data      = { code = "payload.code", percent = "payload.percent * 100.0", at = "tx.commit_time" }

[[message]]
prefix = "RewardGranted"
key    = "string(payload.customer)"
"#;

fn tx() -> TxMeta {
    TxMeta {
        xid: 700,
        commit_lsn: Lsn(0x5000),
        commit_time_micros: 1_795_341_600_000_000,
    }
}

fn message<'a>(prefix: &'a str, content: &'a str, lsn: u64, tx: &'a TxMeta) -> Message<'a> {
    Message {
        prefix,
        content: content.as_bytes(),
        lsn: Lsn(lsn),
        transactional: true,
        tx,
    }
}

#[test]
fn messages_become_the_events_their_prefix_and_payload_say() {
    let compiled = compile_files(&[("mappings/messages.toml", REFUNDS)], None).unwrap();
    let tx = tx();
    let ctx = ctx();
    let mut events = Vec::new();
    for (prefix, content, lsn) in [
        (
            "shop.events",
            r#"{"type":"OrderRefunded","order_id":7,"amount":12.50,"amount":13}"#,
            0x4000,
        ),
        (
            "shop.events",
            r#"{"type":"CouponRedeemed","code":"WINTER","percent":0.15}"#,
            0x4100,
        ),
        ("RewardGranted", r#"{"customer":42,"points":100}"#, 0x4200),
        // A prefix no mapping names: not ours.
        ("audit", "not json at all", 0x4300),
    ] {
        let mut t = Transaction::default();
        events.extend(
            compiled
                .apply_message(&message(prefix, content, lsn, &tx), &ctx, &mut t)
                .unwrap(),
        );
    }
    insta::assert_snapshot!(json(&events));
    assert!(compiled.maps_prefix("RewardGranted") && !compiled.maps_prefix("audit"));
    // The same commit seen again: the same ids.
    let mut t = Transaction::default();
    let again = compiled
        .apply_message(
            &message(
                "shop.events",
                r#"{"type":"OrderRefunded","order_id":7,"amount":12.50,"amount":13}"#,
                0x4000,
                &tx,
            ),
            &ctx,
            &mut t,
        )
        .unwrap();
    assert_eq!(again[0].id, events[0].id);
}

#[test]
fn a_message_that_cannot_be_mapped_is_an_error_never_dropped() {
    let compiled = compile_files(&[("mappings/messages.toml", REFUNDS)], None).unwrap();
    let tx = tx();
    let ctx = ctx();
    let mut out = Vec::new();
    let mut non_transactional = message("shop.events", r#"{"type":"OrderRefunded","order_id":7}"#, 0x4000, &tx);
    non_transactional.transactional = false;
    for msg in [
        non_transactional,
        message("shop.events", "{not json", 0x4000, &tx),
        message("shop.events", r#"{"type":"OrderShipped","order_id":7}"#, 0x4000, &tx),
        message("RewardGranted", r#"[1, 2]"#, 0x4000, &tx),
    ] {
        let err = compiled
            .apply_message(&msg, &ctx, &mut Transaction::default())
            .unwrap_err();
        out.push(format!("{err}\nhint: {}", err.hint()));
    }
    insta::assert_snapshot!(out.join("\n\n"));
    // Passed over when the mapping says so.
    let skipping = compile_files(
        &[(
            "mappings/messages.toml",
            "[[message]]\nprefix = \"RewardGranted\"\nkey = \"payload.customer\"\nnon_transactional = \"skip\"\n",
        )],
        None,
    )
    .unwrap();
    let mut msg = message("RewardGranted", r#"{"customer":1}"#, 0x4000, &tx);
    msg.transactional = false;
    assert!(
        skipping
            .apply_message(&msg, &ctx, &mut Transaction::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_message_mappings_are_errors_with_file_line_and_hint() {
    let text = r#"
[[message]]
prefix = "ficus.heartbeat"
key    = "new.id"

[[message]]
prefix = "shop events"
key    = "payload.id"
data   = "new"
non_transactional = "ignore"

[[message]]
prefix = "ok"
key    = "payload.id"
colour = "green"
"#;
    let errors = compile_files(&[("mappings/messages.toml", text)], None)
        .err()
        .expect("bad messages do not compile");
    insta::assert_snapshot!(errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n"));
}

fn outbox_relation() -> Arc<Relation> {
    shop_schema()[&TableRef::parse("public.outbox")].relation.clone().into()
}

fn outbox_row(xid: u32, lsn: u64, op: Op, id: &str, ty: Option<&str>, payload: &str) -> RowChange {
    outbox_row_with(
        xid,
        lsn,
        op,
        id,
        ty,
        payload,
        [Some("42"), Some("hello"), Some("\\x00ff")],
    )
}

/// An outbox row with its tenant_id, note (text) and blob (bytea).
fn outbox_row_with(
    xid: u32,
    lsn: u64,
    op: Op,
    id: &str,
    ty: Option<&str>,
    payload: &str,
    [tenant, note, blob]: [Option<&str>; 3],
) -> RowChange {
    let row: [Option<&str>; 8] = [
        Some(id),
        Some("Customer"),
        Some("1"),
        ty,
        Some(payload),
        tenant,
        note,
        blob,
    ];
    match op {
        Op::Delete => change(op, &outbox_relation(), xid, lsn, None, Some(&row)),
        _ => change(op, &outbox_relation(), xid, lsn, Some(&row), None),
    }
}

#[test]
fn an_outbox_row_inserted_and_deleted_in_one_transaction_is_one_event_with_the_rows_id() {
    let compiled = compile_files(
        &[("mappings/outbox.toml", "[[outbox]]\ntable = \"public.outbox\"\n")],
        Some(&shop_schema()),
    )
    .unwrap();
    let id = "0b7e4a52-6f0e-4c1b-9d8e-2f64a7c1e001";
    let events = apply(
        &compiled,
        &[
            outbox_row(
                3,
                0x3000,
                Op::Insert,
                id,
                Some("LoyaltyPointsGranted"),
                r#"{"customer_id": 1, "points": 120}"#,
            ),
            outbox_row(3, 0x3010, Op::Delete, id, Some("LoyaltyPointsGranted"), "{}"),
        ],
    );
    insta::assert_snapshot!(json(&events));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id);
    assert_eq!(&*events[0].aggregate, "Customer");
    // Without an id column, the id derives from the row change: the same commit, the same id.
    let no_id = compile_files(
        &[(
            "mappings/outbox.toml",
            "[[outbox]]\ntable = \"public.outbox\"\nid = \"\"\n",
        )],
        Some(&shop_schema()),
    )
    .unwrap();
    let row = outbox_row(3, 0x3000, Op::Insert, id, Some("LoyaltyPointsGranted"), "{}");
    let (a, b) = (apply(&no_id, std::slice::from_ref(&row)), apply(&no_id, &[row]));
    assert_eq!(a[0].id, b[0].id);
    assert_ne!(a[0].id, id);
    // A row the outbox cannot make an event of stops ficus: no type, a payload that is no object.
    let ctx = ctx();
    for bad in [
        outbox_row(4, 0x4000, Op::Insert, id, None, "{}"),
        outbox_row(4, 0x4000, Op::Insert, id, Some("T"), "[1]"),
    ] {
        let bound = compiled.bind(bad.relation.clone(), &ctx).unwrap().unwrap();
        let err = bound.apply(&bad, &ctx).unwrap_err();
        assert!(matches!(err, MapError::Eval(_)), "{err}");
    }
    // With its types listed, a row of another type stops ficus.
    let typed = compile_files(
        &[(
            "mappings/outbox.toml",
            "[[outbox]]\ntable = \"public.outbox\"\ntypes = [\"LoyaltyPointsGranted\"]\n",
        )],
        Some(&shop_schema()),
    )
    .unwrap();
    let row = outbox_row(5, 0x5000, Op::Insert, id, Some("LoyaltyPointsGrantd"), "{}");
    let bound = typed.bind(row.relation.clone(), &ctx).unwrap().unwrap();
    let err = bound.apply(&row, &ctx).unwrap_err().to_string();
    assert!(
        err.contains("\"LoyaltyPointsGrantd\", which is not among the outbox's types"),
        "{err}"
    );
    // Checked against the schema: columns that are not there, a payload that is not JSON.
    let errors = compile_files(
        &[(
            "mappings/outbox.toml",
            r#"[[outbox]]
table = "public.outbox"
aggregate_id = "aggregate_id"
payload = "tenant_id"
extensions = { Tenant = "tenant_id", traceparent = "trace", lsn = "note" }

[[outbox]]
table = "public.outbox"
content_type = "text/plain"

[[outbox]]
table = "public.outbox"
payload = "note"
content_type = "text plain"
"#,
        )],
        Some(&shop_schema()),
    )
    .err()
    .expect("a bad outbox does not compile");
    insta::assert_snapshot!(
        "bad_outbox",
        errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n\n")
    );
}

#[test]
fn an_outbox_payload_of_text_or_bytes_keeps_its_content_type_and_columns_become_extensions() {
    let outbox = |payload: &str, content_type: &str| {
        compile_files(
            &[(
                "mappings/outbox.toml",
                &format!(
                    "[[outbox]]\ntable = \"public.outbox\"\npayload = \"{payload}\"\n{content_type}extensions = {{ tenantid = \"tenant_id\", note = \"note\" }}\n"
                ),
            )],
            Some(&shop_schema()),
        )
        .unwrap()
    };
    let id = "0b7e4a52-6f0e-4c1b-9d8e-2f64a7c1e001";
    let row = |note: &str, blob: &str, tenant: Option<&str>| {
        outbox_row_with(
            3,
            0x3000,
            Op::Insert,
            id,
            Some("InvoiceIssued"),
            "{}",
            [tenant, Some(note), Some(blob)],
        )
    };
    let events: Vec<Event> = [
        // Text: `data` is a JSON string, of the content type given.
        apply(
            &outbox("note", "content_type = \"text/csv; charset=utf-8\"\n"),
            &[row("a,b\n1,2", "\\x00", Some("42"))],
        ),
        // Bytes: `data_base64`, application/octet-stream by default; a null extension is left out.
        apply(&outbox("blob", ""), &[row("x", "\\x00ff10", None)]),
        // Text of a JSON content type is the event's data, a JSON object.
        apply(
            &outbox("note", "content_type = \"application/vnd.shop+json\"\n"),
            &[row(r#"{"total": 12.50}"#, "\\x00", Some("7"))],
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let mut line = Vec::new();
            e.write_json(&mut line);
            String::from_utf8(line).unwrap()
        })
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
    for (e, line) in events.iter().zip(&lines) {
        // The binary mode's body is the text or the bytes themselves, read from the line as from
        // the event.
        let mut data = Vec::new();
        e.write_data(&mut data);
        assert_eq!(
            ficus_model::event::data_of_line(line.as_bytes(), &e.datacontenttype),
            Some(data)
        );
        // The store's line reads back into the same event, extensions and all.
        let back = Event::from_stored(line, &e.aggregate, e.time.micros(), e.lsn).unwrap();
        assert_eq!(&back, e);
        let attributes = Event::attributes_from_stored(line, e.aggregate.clone(), e.time.clone(), e.lsn).unwrap();
        assert_eq!(attributes.attributes(), e.attributes());
    }
    let mut data = Vec::new();
    events[1].write_data(&mut data);
    assert_eq!(data, [0x00, 0xff, 0x10]);
    assert_eq!(events[0].attributes().last().unwrap(), &("tenantid", "42".into()));
    // A jsonb payload is JSON: a content type that is not stops `ficus check`.
    let errors = compile_files(
        &[(
            "mappings/outbox.toml",
            "[[outbox]]\ntable = \"public.outbox\"\ncontent_type = \"text/plain\"\n",
        )],
        Some(&shop_schema()),
    )
    .err()
    .expect("a jsonb payload of text/plain does not compile");
    assert!(
        errors[0].to_string().contains("a json or jsonb payload is JSON"),
        "{}",
        errors[0]
    );
}
