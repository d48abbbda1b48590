use super::*;

fn column(name: &str, type_name: &str) -> Column {
    Column {
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        states: None,
        ty: PgType::from_name(type_name),
        base_type: None,
        not_null: false,
    }
}

fn not_null(mut c: Column) -> Column {
    c.not_null = true;
    c
}

/// A column of a domain over `base`.
fn domain(name: &str, type_name: &str, base: &str) -> Column {
    let mut c = column(name, type_name);
    c.ty = PgType::from_name(base);
    c.base_type = Some(base.to_owned());
    c
}

fn states(mut c: Column, values: &[&str]) -> Column {
    c.states = Some(values.iter().map(|v| v.to_string()).collect());
    c
}

/// The shop example's tables (examples/shop/schema.sql).
fn shop() -> Vec<Table> {
    vec![
        Table {
            schema: "public".into(),
            name: "customers".into(),
            columns: vec![
                not_null(column("id", "bigint")),
                not_null(column("email", "text")),
                column("name", "text"),
                column("password_hash", "text"),
                column("created_at", "timestamp with time zone"),
            ],
            primary_key: vec!["id".into()],
            replica_identity_full: true,
        },
        Table {
            schema: "public".into(),
            name: "orders".into(),
            columns: vec![
                column("id", "bigint"),
                column("customer_id", "bigint"),
                states(
                    column("status", "order_status"),
                    &["placed", "paid", "shipped", "cancelled"],
                ),
                not_null(domain("total", "money_amount", "numeric(12,2)")),
                column("tags", "text[]"),
                column("placed_at", "timestamp with time zone"),
                column("paid_at", "timestamp with time zone"),
            ],
            primary_key: vec!["id".into()],
            replica_identity_full: true,
        },
    ]
}

/// A table without a primary key, with odd names, a composite-keyed join table, secrets.
fn awkward() -> Vec<Table> {
    vec![
        Table {
            schema: "legacy".into(),
            name: "audit_entries".into(),
            columns: vec![
                column("happened_at", "timestamp without time zone"),
                column("Actor Name", "text"),
                states(column("review_state", "text"), &["open", "in_review", "done"]),
            ],
            primary_key: vec![],
            replica_identity_full: false,
        },
        Table {
            schema: "public".into(),
            name: "group_memberships".into(),
            columns: vec![
                column("group_id", "integer"),
                column("user_id", "uuid"),
                column("api_token", "text"),
                column("role", "text"),
            ],
            primary_key: vec!["group_id".into(), "user_id".into()],
            replica_identity_full: false,
        },
    ]
}

#[test]
fn entity_names_are_singular_and_pascal_case() {
    let cases = [
        ("orders", "Order"),
        ("order_items", "OrderItem"),
        ("categories", "Category"),
        ("addresses", "Address"),
        ("boxes", "Box"),
        ("batches", "Batch"),
        ("status", "Status"),
        ("people", "Person"),
        ("news", "News"),
        ("user_settings", "UserSetting"),
        ("analysis", "Analysis"),
        ("customer", "Customer"),
        ("Order Lines", "OrderLine"),
    ];
    for (table, entity) in cases {
        assert_eq!(entity_name(table), entity, "{table}");
    }
}

#[test]
fn secret_looking_columns() {
    for secret in [
        "password",
        "password_hash",
        "api_token",
        "reset_token",
        "client_secret",
        "api_key",
        "salt",
    ] {
        assert!(looks_secret(secret), "{secret}");
    }
    for plain in ["email", "tokens_count", "name", "status", "key_id"] {
        assert!(!looks_secret(plain), "{plain}");
    }
}

#[test]
fn the_shop_scaffold() {
    let tables = shop();
    for t in &tables {
        let s = mapping(t);
        insta::assert_snapshot!(
            s.file_name.clone(),
            format!("{}\n--- warnings:\n{}", s.text, s.warnings.join("\n"))
        );
    }
    insta::assert_snapshot!(config(
        "postgres://ficus@db.internal/shop",
        &tables.iter().collect::<Vec<_>>()
    ));
}

#[test]
fn no_primary_key_odd_names_composite_keys_and_secrets() {
    for t in &awkward() {
        let s = mapping(t);
        insta::assert_snapshot!(
            s.file_name.clone(),
            format!("{}\n--- warnings:\n{}", s.text, s.warnings.join("\n"))
        );
    }
}

/// Every scaffold, its suggestions uncommented too, is a mapping file the engine takes.
#[test]
fn scaffolds_parse_and_compile_suggestions_included() {
    for t in shop().iter().chain(&awkward()) {
        let s = mapping(t);
        let uncommented: String = s
            .text
            .lines()
            .map(|l| {
                if l.starts_with("# [[event]]")
                    || l.starts_with("# name")
                    || l.starts_with("# table")
                    || l.starts_with("# on")
                    || l.starts_with("# when")
                    || l.starts_with("# key")
                    || l.starts_with("# data")
                {
                    &l[2..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for text in [&s.text, &uncommented] {
            let (file, errors) = ficus_mapping::parse_file(&s.file_name, text);
            assert!(errors.is_empty(), "{}: {errors:?}\n{text}", s.file_name);
            let compiled =
                ficus_mapping::compile(&[file], None).unwrap_or_else(|e| panic!("{}: {e:?}\n{text}", s.file_name));
            let names: Vec<&str> = compiled.mappings().iter().map(|m| &*m.name).collect();
            assert!(names.contains(&format!("{}Created", s.entity).as_str()), "{names:?}");
        }
        if t.columns.iter().any(|c| c.states.is_some()) {
            assert_ne!(s.text, uncommented, "{}: no suggestion", s.file_name);
        }
    }
}

#[test]
fn the_config_keeps_no_password() {
    let cases = [
        (
            "postgres://ficus:s3cr:et@db.internal:5432/shop?sslmode=require",
            "postgres://ficus@db.internal:5432/shop?sslmode=require",
        ),
        ("postgres://ficus@db/shop", "postgres://ficus@db/shop"),
        ("postgresql://db/shop?user=a@b", "postgresql://db/shop?user=a@b"),
        ("postgres://u:p@h", "postgres://u@h"),
    ];
    for (url, kept) in cases {
        assert_eq!(without_password(url), kept, "{url}");
    }
    assert!(!config("postgres://ficus:hunter2@db/shop", &[]).contains("hunter2"));
}

/// Every table's fixture skeleton: its columns with the types that convert as live (a domain by
/// its base type), a row inserted, updated and deleted; it parses, and the table's scaffolded
/// mappings make events of it.
#[test]
fn fixture_skeletons_run_through_the_scaffolded_mappings() {
    for t in shop().iter().chain(&awkward()) {
        let f = fixture(t);
        insta::assert_snapshot!(format!("fixture_{}.{}", t.schema, f.file_name), f.text);
        let parsed = crate::fixtures::Fixture::parse(&f.file_name, &f.text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", f.file_name, f.text));
        let (file, errors) = ficus_mapping::parse_file("m.toml", &mapping(t).text);
        assert!(errors.is_empty(), "{errors:?}");
        let compiled = ficus_mapping::compile(&[file], None).unwrap();
        let events = parsed.run(&compiled, "shop").unwrap();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        let entity = entity_name(&t.name);
        let expected: Vec<String> = if t.primary_key.is_empty() && !t.replica_identity_full {
            vec![format!("{entity}Created")]
        } else {
            ["Created", "Updated", "Deleted"]
                .iter()
                .map(|s| format!("{entity}{s}"))
                .collect()
        };
        assert_eq!(types, expected, "{}", f.text);
        // A secret is in the row, as the database sends it, and in no event.
        for e in &events {
            for secret in t.columns.iter().filter(|c| looks_secret(&c.name)) {
                assert!(e["data"].get(&secret.name).is_none(), "{e}");
            }
        }
    }
    let orders = fixture(&shop()[1]).text;
    assert!(orders.contains("total = \"numeric(12,2) not null\""), "{orders}");
    assert!(
        orders.contains("status = \"paid\""),
        "the update moves the state on: {orders}"
    );
}
