//! Authoring with no database: `ficus test` on the shop's fixtures (passing, then failing with a
//! readable diff after a mapping changed, then --accept), run as a user runs it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use ficus_testkit::workspace_bin;

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
        .output()
        .unwrap();
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
    assert!(said.contains("ok      mappings/tests/orders.toml (5 events)"), "{said}");
    assert!(said.contains("2 passed, 0 failed"), "{said}");

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
    assert!(said.contains("1 passed, 1 failed"), "{said}");

    // Accepted: the file keeps its comments and changes, and expects the new events.
    let fixture = dir.path().join("mappings/tests/orders.toml");
    let before = std::fs::read_to_string(&fixture).unwrap();
    let (ok, said) = ficus(dir.path(), &["test", "--accept"]);
    assert!(ok, "{said}");
    assert!(
        said.contains("written mappings/tests/orders.toml (5 events accepted)"),
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
        said.contains("mappings/tests/orders.toml:17:1: change 2: public.orders has no column \"customer\""),
        "{said}"
    );
    assert!(said.contains("1 passed, 1 failed"), "{said}");
}
