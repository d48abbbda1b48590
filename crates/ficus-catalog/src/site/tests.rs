//! The shop's catalog site: the flow picture has a node per table, mapping file, event and sink
//! and an edge where one feeds the next; an event page shows its versions, what changed between
//! them, its fields, sinks and an example; every link between the pages resolves.

use std::collections::BTreeMap;

use super::*;
use crate::events;
use crate::lock::LockedField;

const CONFIG: &str = r#"
[source]

[[sink]]
name = "orders"
type = "kafka"
brokers = "127.0.0.1:9092"
topic = "shop.{type}.v{eventversion}"
events = ["Order*"]

[[sink]]
type = "store"
"#;

struct Shop {
    events: Vec<EventVersion>,
    sinks: Vec<Sink>,
    lock: Lock,
    examples: BTreeMap<(String, u32), Example>,
}

fn shop() -> Shop {
    let (compiled, schema) = crate::tests::shop();
    let events = events(&compiled, &schema);
    let config = ficus_project::Config::parse(std::path::Path::new("ficus.toml"), CONFIG).unwrap();
    let sinks = crate::sinks::sinks_of(&config).unwrap();
    // OrderPaid v1 was released and is made no more: its total was a string, it had no `big`.
    let mut lock = Lock::default().release(&events);
    let mut v1 = released(events.iter().find(|e| e.name == "OrderPaid").unwrap()).unwrap();
    v1.remove("big");
    v1.insert(
        "total".into(),
        LockedField {
            ty: json!({ "type": "string" }),
            nullable: true,
            required: true,
        },
    );
    lock.events.get_mut("OrderPaid").unwrap().versions.insert(1, vec![v1]);
    let examples = BTreeMap::from([(
        ("OrderPaid".to_owned(), 2),
        (
            json!({"type": "OrderPaid", "subject": "7", "eventversion": 2, "data": {"order_id": 7, "total": 120.50, "paid_at": "2026-03-01T09:05:00Z", "big": true}}),
            "mappings/tests/orders.toml".to_owned(),
        ),
    )]);
    Shop {
        events,
        sinks,
        lock,
        examples,
    }
}

fn files(shop: &Shop) -> BTreeMap<String, String> {
    site(&Site {
        title: "shop",
        events: &shop.events,
        sinks: &shop.sinks,
        examples: &shop.examples,
        lock: Some(&shop.lock),
    })
    .into_iter()
    .collect()
}

#[test]
fn the_flow_has_a_node_per_table_mapping_event_and_sink() {
    let shop = shop();
    let svg = flow_svg(&shop.events, &shop.sinks);
    insta::assert_snapshot!(svg);
    let count = |kind: &str| svg.matches(&format!("data-kind=\"{kind}\"")).count();
    assert_eq!(
        (count("table"), count("mapping"), count("event"), count("sink")),
        (3, 2, 7, 2)
    );
    // 3 table→file (orders.toml reads two), 7 file→event, 5 order events → kafka, 7 events → store.
    assert_eq!(svg.matches("<path class=\"edge").count(), 3 + 7 + 5 + 7);
}

#[test]
fn an_event_page_shows_its_versions_and_what_changed() {
    let shop = shop();
    let files = files(&shop);
    let page = &files["events/OrderPaid.html"];
    insta::assert_snapshot!(page);
    let v2 = page.find("id=\"v2\"").unwrap();
    let v1 = page.find("id=\"v1\"").unwrap();
    assert!(v2 < v1, "the newest version first");
    assert!(
        page.contains("<li><code>total: type string → number</code></li>"),
        "{page}"
    );
    assert!(
        page.contains("<li><code>total: no longer nullable</code></li>"),
        "{page}"
    );
    assert!(page.contains("<li><code>big: added (boolean)</code></li>"), "{page}");
    assert!(page.contains("topic <code>shop.OrderPaid.v2</code>"), "{page}");
    assert!(page.contains("from the fixture mappings/tests/orders.toml"), "{page}");
    // No fixture makes OrderShipped: its example is made up from the types.
    assert!(files["events/OrderShipped.html"].contains("made up from the fields&#39; types"));
}

#[test]
fn every_link_of_the_site_resolves() {
    let shop = shop();
    let files = files(&shop);
    let mut checked = 0;
    for (path, text) in &files {
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
        for part in text.split("href=\"").skip(1) {
            let href = &part[..part.find('"').unwrap()];
            let target = href.split('#').next().unwrap();
            if target.is_empty() {
                continue;
            }
            let mut resolved: Vec<&str> = if dir.is_empty() {
                vec![]
            } else {
                dir.split('/').collect()
            };
            for seg in target.split('/') {
                match seg {
                    ".." => {
                        resolved.pop();
                    }
                    "" | "." => {}
                    s => resolved.push(s),
                }
            }
            let resolved = resolved.join("/");
            // The schemas and the AsyncAPI document are written next to the site by the command.
            let written_beside = resolved == "schemas"
                || resolved == "asyncapi.json"
                || resolved.starts_with("schemas/") && resolved.ends_with(".schema.json");
            assert!(
                files.contains_key(&resolved) || written_beside,
                "{path}: {href} → {resolved}"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
    assert!(files["index.html"].contains("<a href=\"events/OrderPaid.html\">OrderPaid</a>"));
}
