//! The AsyncAPI document of the shop's events through a sink of every kind: valid against the
//! AsyncAPI 3.0 schema, every reference in it resolves, and each sink's binding reads as it
//! sends.

use serde_json::Value as Json;

use super::*;
use crate::events;
use crate::sinks::Sink;

const CONFIG: &str = r#"
[source]
name = "shop"

[[sink]]
name = "orders"
type = "kafka"
brokers = "broker-1:9092,broker-2:9092"
topic = "shop.orders.{type}"
events = ["Order*"]

[[sink]]
name = "backbone"
type = "nats"
url = "nats://app:secret@nats.internal:4222"
subject = "shop.{aggregate}.{type}"
mode = "structured"

[[sink]]
type = "redis"
url = "redis://cache:6379/0"
events = ["Customer*"]

[[sink]]
name = "rabbit"
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
exchange = "shop"

[[sink]]
name = "billing hook"
type = "http"
url = "https://billing.example.com/hooks/ficus?token=t0ps3cret"
mode = "batch"
events = ["OrderPaid"]

[[sink]]
type = "jsonl"
path = "events.jsonl"
live = false

[[sink]]
type = "store"
"#;

fn sinks() -> Vec<Sink> {
    let config = ficus_project::Config::parse(std::path::Path::new("ficus.toml"), CONFIG).unwrap();
    crate::sinks::sinks_of(&config).unwrap()
}

fn shop_document() -> Json {
    let (compiled, schema) = crate::tests::shop();
    document("shop", &events(&compiled, &schema), &sinks())
}

/// Every `$ref` of the document, and whether it points at something.
fn refs(doc: &Json, v: &Json, out: &mut Vec<(String, bool)>) {
    match v {
        Json::Object(o) => {
            if let Some(Json::String(r)) = o.get("$ref") {
                let found = r.strip_prefix('#').is_some_and(|p| doc.pointer(p).is_some());
                out.push((r.clone(), found));
            }
            for x in o.values() {
                refs(doc, x, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| refs(doc, x, out)),
        _ => {}
    }
}

#[test]
fn the_document_is_valid_asyncapi_3() {
    let doc = shop_document();
    let spec: Json = serde_json::from_str(include_str!("asyncapi-3.0.0.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&spec).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // A document the schema refuses is refused: the validator is not vacuous.
    let mut wrong = doc.clone();
    wrong["operations"]["sendOrders"]["action"] = Json::String("publish".into());
    assert!(!validator.is_valid(&wrong));
    let mut wrong = doc.clone();
    wrong["channels"]["orders"]["adress"] = Json::String("typo".into());
    assert!(!validator.is_valid(&wrong));

    let mut found = Vec::new();
    refs(&doc, &doc, &mut found);
    assert!(found.len() > 40, "{}", found.len());
    let dangling: Vec<&String> = found.iter().filter(|(_, ok)| !ok).map(|(r, _)| r).collect();
    assert!(dangling.is_empty(), "{dangling:?}");
}

#[test]
fn channels_follow_the_sinks_and_messages_their_bindings() {
    let doc = shop_document();
    insta::assert_json_snapshot!("orders_channel", doc["channels"]["orders"]);
    insta::assert_json_snapshot!("servers", doc["servers"]);
    let channels = doc["channels"].as_object().unwrap();
    let names: Vec<&str> = channels.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "orders",
            "backbone",
            "redis",
            "rabbit",
            "billing_hook",
            "jsonl",
            "store"
        ]
    );
    let messages = |c: &str| -> Vec<String> { channels[c]["messages"].as_object().unwrap().keys().cloned().collect() };
    // Routing: the sinks' `events` decide which messages a channel has.
    assert!(messages("orders").iter().all(|m| m.starts_with("Order")));
    assert_eq!(messages("orders").len(), 5);
    assert!(messages("redis").iter().all(|m| m.starts_with("Customer")));
    assert_eq!(messages("billing_hook"), ["OrderPaid.v2"]);
    assert_eq!(messages("backbone").len(), 7);
    // The binary mode's headers per protocol; the structured and batch modes' whole events.
    let rabbit = &channels["rabbit"]["messages"]["OrderPaid.v2"];
    assert_eq!(
        rabbit["headers"]["properties"]["cloudEvents:type"]["const"],
        "OrderPaid"
    );
    assert_eq!(
        rabbit["headers"]["properties"]["cloudEvents:eventversion"]["const"],
        "2"
    );
    assert_eq!(channels["rabbit"]["bindings"]["amqp"]["exchange"]["name"], "shop");
    let redis = &channels["redis"]["messages"]["CustomerRegistered.v1"];
    assert!(redis["headers"]["properties"]["type"].is_object(), "{redis}");
    let nats = &channels["backbone"]["messages"]["OrderPlaced.v1"];
    assert_eq!(nats["contentType"], "application/cloudevents+json");
    assert!(nats.get("headers").is_none());
    assert_eq!(
        channels["backbone"]["parameters"]["aggregate"]["enum"],
        serde_json::json!(["public.customers", "public.orders"])
    );
    let hook = &channels["billing_hook"]["messages"]["OrderPaid.v2"];
    assert_eq!(hook["contentType"], "application/cloudevents-batch+json");
    assert_eq!(hook["payload"]["type"], "array");
    // No credentials anywhere.
    let text = doc.to_string();
    for secret in ["secret", "guest:guest", "t0ps3cret"] {
        assert!(!text.contains(secret), "{secret}");
    }
}
