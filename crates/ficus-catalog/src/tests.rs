//! The shop's event catalog: every event version, and its JSON Schema from the mappings and the
//! columns the shop's fixtures declare.

use ficus_mapping::{Compiled, Schema, compile, parse_file};
use ficus_project::fixtures::Fixture;

use super::*;

pub(crate) fn shop() -> (Compiled, Schema) {
    let mut files = Vec::new();
    for (name, text) in [
        (
            "mappings/customers.toml",
            include_str!("../../../examples/shop/mappings/customers.toml"),
        ),
        (
            "mappings/orders.toml",
            include_str!("../../../examples/shop/mappings/orders.toml"),
        ),
    ] {
        let (file, errors) = parse_file(name, text);
        assert!(errors.is_empty(), "{errors:?}");
        files.push(file);
    }
    let mut schema = Schema::new();
    for (name, text) in [
        (
            "orders.toml",
            include_str!("../../../examples/shop/mappings/tests/orders.toml"),
        ),
        (
            "customers.toml",
            include_str!("../../../examples/shop/mappings/tests/customers.toml"),
        ),
    ] {
        schema.extend(Fixture::parse(name, text).unwrap().schema());
    }
    (compile(&files, None).unwrap(), schema)
}

#[test]
fn every_event_version_of_the_shop_with_where_it_comes_from() {
    let (compiled, schema) = shop();
    let listed: Vec<String> = events(&compiled, &schema)
        .iter()
        .map(|e| {
            format!(
                "{} v{}: {}",
                e.name,
                e.version,
                e.sources.iter().map(describe).collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    insta::assert_snapshot!(listed.join("\n"));
}

#[test]
fn json_schemas_type_fields_from_columns_and_expressions() {
    let (compiled, schema) = shop();
    let all = events(&compiled, &schema);
    let get = |name: &str| all.iter().find(|e| e.name == name).unwrap();
    // Columns (a nullable timestamp, exact numerics, a text array), a CEL comparison, a
    // conditional between a column and a literal.
    insta::assert_snapshot!("OrderPaid", pretty(&json_schema(get("OrderPaid"))));
    insta::assert_snapshot!(
        "OrderCancelled",
        pretty(&json_schema(get("OrderCancelled"))["properties"]["data"])
    );
    // A whole row but the excluded column.
    insta::assert_snapshot!(
        "CustomerRegistered",
        pretty(&json_schema(get("CustomerRegistered"))["properties"]["data"])
    );
}

#[test]
fn without_the_tables_columns_are_of_any_type_and_a_whole_row_is_open() {
    let (compiled, _) = shop();
    let all = events(&compiled, &Schema::new());
    let registered = all.iter().find(|e| e.name == "CustomerRegistered").unwrap();
    assert!(registered.sources[0].shape.open);
    let paid = json_schema(all.iter().find(|e| e.name == "OrderPaid").unwrap());
    assert_eq!(
        paid["properties"]["data"]["properties"]["order_id"],
        json!({ "description": "new.id" })
    );
    // `big` is a comparison whatever the columns: a boolean.
    assert_eq!(
        paid["properties"]["data"]["properties"]["big"]["type"],
        json!("boolean")
    );
}

fn pretty(v: &Json) -> String {
    serde_json::to_string_pretty(v).unwrap()
}
