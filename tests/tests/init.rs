//! `ficus init` against the shop's schema: the files it writes check out against the live
//! database and stream; it overwrites nothing without --force.

use crate::support::{Project, stderr};

const SHOP: &str = include_str!("../../examples/shop/schema.sql");

#[tokio::test]
async fn init_scaffolds_the_shop_into_mappings_that_check_and_stream() {
    let p = Project::new(SHOP).await;
    let url = p.db.url();
    let out = p.ok(&["init", "--source-url", &url, "--out", "app"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for file in [
        "app/ficus.toml",
        "app/mappings/customers.toml",
        "app/mappings/orders.toml",
        "app/mappings/page_views.toml",
    ] {
        assert!(said.contains(&format!("wrote {file}")), "{said}");
    }
    let warned = stderr(&out);
    assert!(warned.contains("public.customers: left out password_hash"), "{warned}");
    let customers = std::fs::read_to_string(p.path("app/mappings/customers.toml")).unwrap();
    assert!(!customers.contains("new.password_hash"), "{customers}");
    // The enum's labels, read from the database, as transition suggestions.
    let orders = std::fs::read_to_string(p.path("app/mappings/orders.toml")).unwrap();
    for event in ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"] {
        assert!(orders.contains(&format!("# name = \"{event}\"")), "{orders}");
    }

    // A slot of the test's own (the cluster is shared), then: it checks and it streams.
    let config = std::fs::read_to_string(p.path("app/ficus.toml")).unwrap();
    p.write(
        "app/ficus.toml",
        &config.replace("slot = \"ficus\"", &format!("slot = \"{}\"", p.db.name)),
    );
    p.ok(&["check", "-c", "app/ficus.toml"]);
    p.ok(&["run", "--until-caught-up", "-c", "app/ficus.toml"]);
    p.db.exec(
        "insert into orders (customer_id, total) values (100, 12.50);
         update orders set status = 'paid' where customer_id = 100;",
    )
    .await;
    p.ok(&["run", "--until-caught-up", "-c", "app/ficus.toml"]);
    let types: Vec<String> = p
        .events_in("app/events.jsonl")
        .iter()
        .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["subject"]))
        .collect();
    assert_eq!(
        types,
        ["CustomerCreated \"100\"", "OrderCreated \"1\"", "OrderUpdated \"1\""],
        "the existing customer as a snapshot event, then the order's insert and update"
    );

    // Nothing is overwritten without --force.
    p.write("app/mappings/orders.toml", "# mine\n");
    let again = p
        .ficus(&["init", "--source-url", &url, "--out", "app"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("not overwriting"), "{}", stderr(&again));
    assert!(stderr(&again).contains("hint: --force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read_to_string(p.path("app/mappings/orders.toml")).unwrap(),
        "# mine\n"
    );
    p.ok(&[
        "init",
        "--source-url",
        &url,
        "--out",
        "app",
        "--force",
        "--tables",
        "orders",
    ]);
    assert!(
        std::fs::read_to_string(p.path("app/mappings/orders.toml"))
            .unwrap()
            .contains("OrderCreated")
    );
}
