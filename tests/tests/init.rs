//! `ficus init` against the shop's schema: the files it writes check out against the live
//! database and stream; it overwrites nothing without --force.

use crate::support::Scanned;
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
        "app/mappings/tests/customers.toml",
        "app/mappings/orders.toml",
        "app/mappings/tests/orders.toml",
        "app/mappings/page_views.toml",
        "app/mappings/tests/page_views.toml",
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

    // The fixtures declare the columns as the database has them (the domain by its base type),
    // expect nothing yet, and run through the mappings with no database once accepted.
    let fixture = std::fs::read_to_string(p.path("app/mappings/tests/orders.toml")).unwrap();
    assert!(fixture.contains("total = \"numeric(12,2) not null\""), "{fixture}");
    assert!(fixture.contains("status = \"order_status not null\""), "{fixture}");
    let first = p.ficus(&["test", "-c", "app/ficus.toml"]).out();
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first.status.code(), Some(1), "{said}");
    assert!(said.contains("0 passed, 0 failed, 5 without expectations"), "{said}");
    assert!(said.contains("{\"type\":\"OrderCreated\",\"subject\":\"1\""), "{said}");
    p.ok(&["test", "-c", "app/ficus.toml", "--accept"]);
    let out = p.ok(&["test", "-c", "app/ficus.toml"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("5 passed, 0 failed"), "{said}");
    // The catalog types the events from the fixtures' columns, and --lock releases them: from an
    // empty folder to tested, documented, locked mappings with init, test and catalog.
    p.ok(&["catalog", "-c", "app/ficus.toml", "--out", "app/catalog", "--lock"]);
    let schema = std::fs::read_to_string(p.path("app/catalog/schemas/OrderCreated.v1.schema.json")).unwrap();
    assert!(schema.contains("numeric(12,2)"), "{schema}");
    assert!(p.path("app/catalog/index.html").is_file());
    let lock = std::fs::read_to_string(p.path("app/mappings/ficus.lock")).unwrap();
    assert!(lock.contains("\"OrderCreated\""), "{lock}");
    p.ok(&["check", "--offline", "-c", "app/ficus.toml"]);

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
    let again = p.ficus(&["init", "--source-url", &url, "--out", "app"]).out();
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

/// A schema with what a legacy database has: an enum, a domain over a domain, a table without a
/// primary key, secrets, odd names, a composite key, another schema. What `init` writes of it is
/// snapshotted, and every mapping and fixture it wrote checks out and runs.
#[tokio::test]
async fn init_on_a_legacy_schema_writes_what_it_should() {
    let p = Project::new(
        r#"
        create type ticket_priority as enum ('low', 'normal', 'urgent');
        create domain cents as bigint check (value >= 0);
        create domain price as cents;
        create table support_tickets (
          id          serial primary key,
          priority    ticket_priority not null default 'normal',
          state       text not null default 'open',
          amount      price,
          api_token   text,
          "Subject Line" text,
          settings    jsonb not null default '{}'
        );
        insert into support_tickets (state) select s from unnest(array['open', 'waiting', 'closed']) s;
        create table audit_log (at timestamp not null, actor text, entry text);
        create schema billing;
        create table billing.invoice_lines (
          invoice_id bigint, line_no int, user_password text, qty numeric(10, 3) not null,
          primary key (invoice_id, line_no)
        );
        "#,
    )
    .await;
    let url = p.db.url();
    let out = p.ok(&["init", "--source-url", &url, "--out", "legacy"]);
    let mut written = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(file) = line.strip_prefix("wrote ") else {
            continue;
        };
        let text = std::fs::read_to_string(p.path(file)).unwrap();
        // The database's name and port differ from run to run.
        let text = text.replace(&url, "postgres://…").replace(&p.db.name, "<db>");
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("url = ") {
                    "url = \"postgres://…\""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        written.push_str(&format!("=== {file}\n{text}\n"));
    }
    written.push_str(&format!("=== warnings\n{}", stderr(&out)));
    insta::assert_snapshot!(written);

    p.ok(&["check", "--offline", "-c", "legacy/ficus.toml"]);
    p.ok(&["test", "-c", "legacy/ficus.toml", "--accept"]);
    let out = p.ok(&["test", "-c", "legacy/ficus.toml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 passed, 0 failed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
