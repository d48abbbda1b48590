//! Authoring with no database: `ficus test` on the shop's fixtures (passing, then failing with a
//! readable diff after a mapping changed, then --accept), run as a user runs it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use ficus_testkit::workspace_bin;

use crate::support::Scanned;

/// The shop example (config, mappings, fixtures) copied into a temporary directory.
fn shop() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("ficus-authoring-").tempdir().unwrap();
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    for sub in ["mappings", "mappings/tests"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(shop.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::copy(shop.join("ficus.toml"), dir.path().join("ficus.toml")).unwrap();
    dir
}

fn ficus(dir: &Path, args: &[&str]) -> (bool, String) {
    let out: Output = Command::new(workspace_bin("ficus"))
        .args(args)
        .current_dir(dir)
        // No database is reachable: nothing here may try one.
        .env("FICUS_SOURCE_URL", "postgres://nobody@127.0.0.1:1/none")
        .stdin(Stdio::null())
        .out();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn ficus_test_passes_on_the_shop_then_shows_what_a_mapping_change_broke_and_accepts_it() {
    let dir = shop();
    let (ok, said) = ficus(dir.path(), &["test"]);
    assert!(ok, "{said}");
    assert!(said.contains("ok      mappings/tests/orders.toml (6 events)"), "{said}");
    assert!(
        said.contains("ok      mappings/tests/outbox.toml (3 events)"),
        "the outbox's rows and the messages: {said}"
    );
    assert!(said.contains("3 passed, 0 failed"), "{said}");

    // "Big" orders start at 1000 now: the paid order of 120.50 is not big any more.
    let orders = dir.path().join("mappings/orders.toml");
    let text = std::fs::read_to_string(&orders).unwrap();
    std::fs::write(&orders, text.replace("new.total >= 100.0", "new.total >= 1000.0")).unwrap();
    let (ok, said) = ficus(dir.path(), &["test"]);
    assert!(!ok, "{said}");
    let diff: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with(['-', '+']) || l.starts_with("    data"))
        .collect();
    assert_eq!(
        diff,
        [
            r#"- {"type":"OrderPaid","subject":"1","eventversion":2,"data":{"order_id":1,"total":120.50,"paid_at":"2026-11-22T10:00:00Z","big":true}}"#,
            r#"+ {"type":"OrderPaid","subject":"1","eventversion":2,"data":{"order_id":1,"total":120.50,"paid_at":"2026-11-22T10:00:00Z","big":false}}"#,
            "    data.big: expected true, got false",
        ],
        "{said}"
    );
    assert!(said.contains("FAILED  mappings/tests/orders.toml"), "{said}");
    assert!(said.contains("2 passed, 1 failed"), "{said}");

    // Accepted: the file keeps its comments and changes, and expects the new events.
    let fixture = dir.path().join("mappings/tests/orders.toml");
    let before = std::fs::read_to_string(&fixture).unwrap();
    let (ok, said) = ficus(dir.path(), &["test", "--accept"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("written mappings/tests/orders.toml (6 events accepted)"),
        "{said}"
    );
    let after = std::fs::read_to_string(&fixture).unwrap();
    let kept = |s: &str| s[..s.find("[expect]").unwrap()].to_owned();
    assert_eq!(kept(&before), kept(&after));
    assert!(after.contains(r#""big":false"#), "{after}");
    let (ok, said) = ficus(dir.path(), &["test"]);
    assert!(ok, "{said}");
}

#[test]
fn a_fixture_that_names_a_missing_column_fails_with_its_line() {
    let dir = shop();
    let fixture = dir.path().join("mappings/tests/orders.toml");
    let text = std::fs::read_to_string(&fixture).unwrap();
    std::fs::write(
        &fixture,
        text.replacen("customer_id = 2, status", "customer = 2, status", 1),
    )
    .unwrap();
    let (ok, said) = ficus(dir.path(), &["test"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("mappings/tests/orders.toml:22:1: change 2: public.orders has no column \"customer\""),
        "{said}"
    );
    assert!(said.contains("2 passed, 1 failed"), "{said}");
}

/// The shop's project against a database, with its fixtures (mappings/tests/).
async fn shop_with_fixtures() -> crate::support::Project {
    let p = crate::pipeline::shop().await;
    std::fs::create_dir_all(p.path("mappings/tests")).unwrap();
    for file in ["customers.toml", "orders.toml"] {
        std::fs::copy(
            format!("{}/mappings/tests/{file}", crate::pipeline::SHOP),
            p.path(&format!("mappings/tests/{file}")),
        )
        .unwrap();
    }
    p
}

/// Every event `ficus run` makes of the shop's workload validates against the JSON Schema
/// `ficus catalog` wrote for its type and version (typed from the shop's fixtures); an event
/// with a field of the wrong type does not.
#[tokio::test]
async fn every_shop_event_validates_against_its_catalog_schema() {
    let p = shop_with_fixtures().await;
    p.ok(&["backfill"]);
    p.db.exec(&std::fs::read_to_string(format!("{}/workload.sql", crate::pipeline::SHOP)).unwrap())
        .await;
    p.catch_up();
    let out = p.ok(&["catalog", "--out", "catalog"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote 9 event schema(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let events = p.events();
    assert_eq!(events.len(), 12, "the snapshot customer and the workload's 11");
    for event in &events {
        let file = p.path(&format!(
            "catalog/schemas/{}.v{}.schema.json",
            event["type"].as_str().unwrap(),
            event["eventversion"]
        ));
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{event}\n{errors:?}");
    }
    // The schemas are not vacuous: a total that is not a number, a missing field, fail.
    let paid = events.iter().find(|e| e["type"] == "OrderPaid").unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path("catalog/schemas/OrderPaid.v2.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut wrong = paid.clone();
    wrong["data"]["total"] = serde_json::json!("a lot");
    assert!(!validator.is_valid(&wrong));
    let mut missing = paid.clone();
    missing["data"].as_object_mut().unwrap().remove("order_id");
    assert!(!validator.is_valid(&missing));
    let mut null_total = paid.clone();
    null_total["data"]["total"] = serde_json::Value::Null;
    assert!(!validator.is_valid(&null_total), "total is NOT NULL");
}

/// The evolution guard end to end: the shop's events locked, a breaking mapping change refused
/// offline (and released with a version bump), and a column retyped in the monolith refused by
/// `ficus check` against the database.
#[tokio::test]
async fn the_lock_refuses_breaking_changes_of_mappings_and_of_the_database() {
    let p = shop_with_fixtures().await;
    let out = p.ok(&["catalog", "--lock"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("locked 8 event(s) in mappings/ficus.lock"));
    let out = p.ok(&["check"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("the events keep their locked contracts against the live columns"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A mapping change that breaks consumers: refused by check and by --lock, named.
    let orders = std::fs::read_to_string(p.path("mappings/orders.toml")).unwrap();
    p.write(
        "mappings/orders.toml",
        &orders.replace(
            "order_id = \"new.id\", total = \"new.total\", paid_at",
            "order_id = \"new.id\", paid_at",
        ),
    );
    let expected = "error: OrderPaid v2: data.total: a required field was removed (breaks its consumers under backward compatibility)";
    let out = p.ficus(&["check", "--offline"]).out();
    assert!(!out.status.success());
    assert!(
        crate::support::stderr(&out).contains(expected),
        "{}",
        crate::support::stderr(&out)
    );
    let out = p.ficus(&["catalog", "--lock"]).out();
    assert!(!out.status.success(), "a breaking change is not locked");
    // With a version bump it is a new contract: it checks, and locking retires v2.
    p.write(
        "mappings/orders.toml",
        &orders
            .replace(
                "order_id = \"new.id\", total = \"new.total\", paid_at",
                "order_id = \"new.id\", paid_at",
            )
            .replace("version = 2", "version = 3"),
    );
    let out = p.ok(&["check", "--offline"]);
    assert!(crate::support::stderr(&out).contains("warning: OrderPaid v2 is locked and no mapping makes it any more"));
    p.ok(&["catalog", "--lock"]);
    let out = p.ok(&["check", "--offline"]);
    assert!(
        !crate::support::stderr(&out).contains("warning"),
        "{}",
        crate::support::stderr(&out)
    );

    // The monolith retypes a column: the same mappings now make strings where consumers expect
    // integers, under the same version.
    p.db.exec("alter table orders drop constraint orders_customer_id_fkey; alter table orders alter column customer_id type text").await;
    let out = p.ficus(&["check"]).out();
    assert!(!out.status.success());
    let said = crate::support::stderr(&out);
    assert!(
        said.contains("error: OrderPlaced v1: data.customer_id: its type changed from integer to string"),
        "{said}"
    );
}

/// The `[expect] events` of a fixture file, one JSON object a line.
fn expected_events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc["expect"]["events"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What a fixture compares of an event.
fn compared(event: &serde_json::Value) -> String {
    let mut o = serde_json::Map::new();
    for k in ["type", "subject", "eventversion", "ficusunavailable", "data"] {
        if let Some(v) = event.get(k) {
            o.insert(k.into(), v.clone());
        }
    }
    serde_json::Value::Object(o).to_string()
}

/// `ficus record` runs as `ficus run` does and writes what it mapped as fixtures: the first
/// start's backfill (a snapshot row) and then the shop's workload. The recorded expectations are
/// exactly the events delivered, and `ficus test` reproduces them with no database — values,
/// types (the domain's numeric, the enum, the array) and transactions as the stream had them.
#[tokio::test]
async fn record_then_test_round_trips() {
    let p = crate::pipeline::shop().await;
    let out = p.ok(&["record", "--until-caught-up", "--out", "mappings/tests/first"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("wrote mappings/tests/first/customers.recorded.toml (1 changes)"),
        "{said}"
    );
    assert!(
        said.contains("ficus test --fixtures 'mappings/tests/first/*.toml'"),
        "{said}"
    );
    p.db.exec(&std::fs::read_to_string(format!("{}/workload.sql", crate::pipeline::SHOP)).unwrap())
        .await;
    let out = p.ok(&["record", "--until-caught-up", "--limit", "4"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("wrote mappings/tests/customers.recorded.toml (3 changes)"),
        "{said}"
    );
    assert!(
        said.contains("wrote mappings/tests/orders.recorded.toml (4 changes, 2 more left out (--limit 4))"),
        "{said}"
    );
    assert!(
        said.contains("wrote mappings/tests/pg_logical_emit_message.recorded.toml (1 changes)"),
        "the message, in a file of its own: {said}"
    );
    assert!(said.contains("next: `ficus test` runs them"), "{said}");

    // The sinks got the events, as from `ficus run`; the fixtures expect the same ones — but for
    // the events that collect rows of another table: a fixture holds one table's changes
    // (docs/mappings.md, "Collected rows"), so its OrderPlaced has no lines, and the lines
    // recorded are lines without their order, per order and transaction.
    let all_delivered = p.events();
    assert_eq!(all_delivered.len(), 12, "{all_delivered:#?}");
    let collecting = |e: &serde_json::Value| e["type"] == "OrderPlaced" || e["type"] == "OrderLinesAdded";
    let delivered: Vec<String> = all_delivered.iter().filter(|e| !collecting(e)).map(compared).collect();
    let orders = p.path("mappings/tests/orders.recorded.toml");
    let lines = p.path("mappings/tests/order_lines.recorded.toml");
    let placed: Vec<serde_json::Value> = expected_events(&orders)
        .into_iter()
        .filter(|e| e["type"] == "OrderPlaced")
        .collect();
    assert_eq!(placed.len(), 2);
    assert!(
        placed.iter().all(|e| e["data"]["lines"] == serde_json::json!([])),
        "{placed:?}"
    );
    let added: Vec<String> = expected_events(&lines)
        .iter()
        .map(|e| format!("{} {}", e["subject"], e["data"]["lines"].as_array().unwrap().len()))
        .collect();
    assert_eq!(added, ["\"1\" 2", "\"2\" 1", "\"2\" 1"], "per order and transaction");
    let mut recorded: Vec<String> = [
        p.path("mappings/tests/first/customers.recorded.toml"),
        p.path("mappings/tests/customers.recorded.toml"),
        p.path("mappings/tests/outbox.recorded.toml"),
        p.path("mappings/tests/pg_logical_emit_message.recorded.toml"),
        orders.clone(),
    ]
    .iter()
    .flat_map(|f| expected_events(f))
    .filter(|e| !collecting(e))
    .map(|e| compared(&e))
    .collect();
    // The limit left the last two order updates out, and their events.
    let left_out: Vec<String> = delivered
        .iter()
        .filter(|e| e.contains("OrderShipped") || e.contains("OrderCancelled"))
        .cloned()
        .collect();
    assert_eq!(left_out.len(), 2);
    recorded.extend(left_out);
    let (mut a, mut b) = (delivered.clone(), recorded);
    a.sort();
    b.sort();
    assert_eq!(a, b, "the recorded expectations are the events delivered");

    let text = std::fs::read_to_string(&orders).unwrap();
    assert!(text.contains("total = \"numeric(12,2) not null\""), "{text}");
    assert!(text.contains("status = \"order_status not null\""), "{text}");
    assert!(
        text.contains("# 2 more changes of public.orders were seen and left out"),
        "{text}"
    );
    let tx1: Vec<&str> = text.lines().filter(|l| *l == "tx = 1").collect();
    assert_eq!(tx1.len(), 2, "the two orders inserted in one transaction: {text}");

    // With no database, the mappings make the same events of the recorded changes.
    let (passed, out) = ficus(p.dir.path(), &["test"]);
    assert!(passed, "{out}");
    assert!(
        out.contains("ok      mappings/tests/orders.recorded.toml (3 events)"),
        "{out}"
    );
    assert!(
        out.contains("ok      mappings/tests/customers.recorded.toml (3 events)"),
        "{out}"
    );
    assert!(
        out.contains("ok      mappings/tests/pg_logical_emit_message.recorded.toml (1 events)"),
        "{out}"
    );
    let (passed, out) = ficus(p.dir.path(), &["test", "--fixtures", "mappings/tests/first/*.toml"]);
    assert!(passed, "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");

    // A mapping changed since the recording: the recorded fixtures catch it.
    let mapping = p.path("mappings/orders.toml");
    let m = std::fs::read_to_string(&mapping).unwrap();
    std::fs::write(&mapping, m.replacen("order_id", "id_of_order", 1)).unwrap();
    let (passed, out) = ficus(p.dir.path(), &["test"]);
    assert!(!passed, "{out}");
    assert!(out.contains("FAILED  mappings/tests/orders.recorded.toml"), "{out}");
    std::fs::write(&mapping, m).unwrap();

    // Recorded fixtures are not written over without --force, and nothing is streamed then.
    let slot = p.confirmed_flush().await;
    p.db.exec("update customers set name = 'Ada King' where id = 1").await;
    let again = p.ficus(&["record", "--until-caught-up"]).out();
    assert_eq!(again.status.code(), Some(1), "{}", crate::support::stderr(&again));
    let err = crate::support::stderr(&again);
    assert!(
        err.contains("not recording: recorded fixtures are there already"),
        "{err}"
    );
    assert!(err.contains("hint: --force"), "{err}");
    assert_eq!(p.confirmed_flush().await, slot);
}

/// The page at `path` as headless Chromium (Debian's `chromium`) loads it from the file system:
/// its DOM after parsing, the files the browser read for it, and what it logged to the console.
fn in_chromium(path: &Path) -> (String, Vec<String>, Vec<String>) {
    let bin = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=1",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", path.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}\nhint: apt-get install chromium (.ci/run does)"));
    assert!(out.status.success(), "{bin} failed on {}", path.display());
    let log = String::from_utf8_lossy(&out.stderr);
    let read: Vec<String> = log
        .lines()
        .filter_map(|l| l.split("FileURLLoader::Start: ").nth(1))
        .map(str::to_owned)
        .collect();
    let console: Vec<String> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), read, console)
}

/// The values of an attribute in a DOM, in order.
fn attributes<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    dom.split(&format!(" {name}=\""))
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

/// The shop's catalog site opens in a real browser from the file system: every page loads with
/// nothing missing and nothing on the console, the flow picture has a node per table, mapping
/// file, event and sink, and every link resolves to a file (and an anchor to an id in it).
#[test]
fn the_catalog_site_opens_in_chromium_with_the_flow_and_every_link_resolving() {
    let dir = shop();
    let (ok, said) = ficus(dir.path(), &["catalog", "--out", "catalog"]);
    assert!(ok, "{said}");
    assert!(said.contains("open catalog/index.html"), "{said}");
    let root = dir.path().join("catalog");
    let mut pages = vec![root.join("index.html")];
    for entry in std::fs::read_dir(root.join("events")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    pages.sort();
    assert_eq!(pages.len(), 10, "the index and a page per event");
    let mut doms = std::collections::BTreeMap::new();
    for page in &pages {
        let (dom, read, console) = in_chromium(page);
        assert!(
            dom.contains("</html>") && dom.contains("<h1>"),
            "{}: {dom}",
            page.display()
        );
        assert!(console.is_empty(), "{}: {console:#?}", page.display());
        // What the browser read: the page and its stylesheet, each there.
        assert!(
            read.iter().any(|u| u.ends_with("style.css")),
            "{}: {read:?}",
            page.display()
        );
        for url in &read {
            let file = url.strip_prefix("file://").unwrap();
            assert!(
                Path::new(file).is_file(),
                "{}: read {url}, which is not there",
                page.display()
            );
        }
        doms.insert(page.clone(), dom);
    }
    let index = &doms[&root.join("index.html")];
    let nodes = |kind: &str| attributes(index, "data-kind").iter().filter(|k| **k == kind).count();
    assert_eq!(
        (nodes("table"), nodes("mapping"), nodes("event"), nodes("sink")),
        (5, 3, 9, 2),
        "public.orders, public.order_lines, public.customers, public.outbox and the messages of prefix shop.events; their three mapping files; nine events; the store and stdout"
    );
    let names = attributes(index, "data-name");
    for name in [
        "public.orders",
        "mappings/customers.toml",
        "OrderPaid",
        "store",
        "stdout",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let mut links = 0;
    for (page, dom) in &doms {
        for href in attributes(dom, "href") {
            let (target, anchor) = href.split_once('#').unwrap_or((href, ""));
            let file = if target.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(target)
            };
            assert!(file.exists(), "{}: {href} does not resolve", page.display());
            if !anchor.is_empty() {
                let there = doms.get(&file.canonicalize().unwrap()).or_else(|| doms.get(&file));
                let text = there
                    .cloned()
                    .unwrap_or_else(|| std::fs::read_to_string(&file).unwrap());
                assert!(text.contains(&format!("id=\"{anchor}\"")), "{}: {href}", page.display());
            }
            links += 1;
        }
    }
    assert!(links > 30, "{links} links checked");
    // The AsyncAPI document is beside the site.
    let asyncapi: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("asyncapi.json")).unwrap()).unwrap();
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert_eq!(asyncapi["channels"]["store"]["messages"].as_object().unwrap().len(), 9);
}

/// The cookbook at the repository's root (`ficus.toml`, `mappings/`): every pattern's fixtures
/// pass with no database, and every event they expect has the data its catalog schema describes.
#[test]
fn the_cookbook_passes_and_its_events_fit_their_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (ok, said) = ficus(&root, &["test"]);
    assert!(ok, "{said}");
    let files = said
        .lines()
        .filter(|l| l.starts_with("ok      mappings/tests/"))
        .count();
    assert!(files >= 8, "{said}");
    let out = tempfile::tempdir().unwrap();
    let (ok, said) = ficus(&root, &["catalog", "--out", out.path().to_str().unwrap()]);
    assert!(ok, "{said}");
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("mappings/tests")).unwrap() {
        let path = entry.unwrap().path();
        for event in expected_events(&path) {
            let file = out.path().join(format!(
                "schemas/{}.v{}.schema.json",
                event["type"].as_str().unwrap(),
                event["eventversion"]
            ));
            let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let validator = jsonschema::validator_for(&schema["properties"]["data"]).unwrap();
            let errors: Vec<String> = validator.iter_errors(&event["data"]).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {event}\n{errors:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked}");
}
