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

#[test]
fn an_outbox_of_bytes_or_text_is_described_in_its_content_type_with_its_extensions() {
    let (file, errors) = parse_file(
        "mappings/outbox.toml",
        r#"
[[outbox]]
table        = "public.invoice_outbox"
content_type = "application/pdf"
types        = ["InvoiceIssued"]
extensions   = { tenantid = "tenant_id" }

[[outbox]]
table        = "public.note_outbox"
content_type = "text/csv"
types        = ["InvoiceNoted"]
"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let fixture = r#"
[tables."public.invoice_outbox"]
key = ["id"]
columns = { id = "uuid not null", aggregatetype = "text not null", aggregateid = "text not null", type = "text not null", payload = "bytea not null", tenant_id = "integer" }

[tables."public.note_outbox"]
key = ["id"]
columns = { id = "uuid not null", aggregatetype = "text not null", aggregateid = "text not null", type = "text not null", payload = "text not null" }
"#;
    let schema = Fixture::parse("outbox.toml", fixture).unwrap().schema();
    let compiled = compile(&[file], Some(&schema)).unwrap();
    let all = events(&compiled, &schema);
    let issued = json_schema(all.iter().find(|e| e.name == "InvoiceIssued").unwrap());
    insta::assert_snapshot!("InvoiceIssued", pretty(&issued));
    let noted = json_schema(all.iter().find(|e| e.name == "InvoiceNoted").unwrap());
    assert_eq!(noted["properties"]["datacontenttype"], json!({ "const": "text/csv" }));
    assert_eq!(noted["properties"]["data"]["type"], "string");
    // A binary-mode sink's message is the bytes, of the outbox's content type, the extension a
    // header.
    let config = ficus_project::Config::parse(
        std::path::Path::new("ficus.toml"),
        "[source]\nname = \"shop\"\n\n[[sink]]\nname = \"bus\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"shop.{type}\"\n",
    )
    .unwrap();
    let sinks = crate::sinks::sinks_of(&config).unwrap();
    let doc = crate::asyncapi::document("shop", &all, &sinks);
    let message = &doc["channels"]["bus"]["messages"]["InvoiceIssued.v1"];
    assert_eq!(message["contentType"], "application/pdf", "{message}");
    assert_eq!(message["payload"], json!({ "type": "string", "format": "binary" }));
    assert!(message["headers"]["properties"]["ce-tenantid"].is_object(), "{message}");
}
