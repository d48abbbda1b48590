//! `ficus verify`: no difference over a concurrent workload with a crash in the middle; and it
//! finds a change deleted from the archive, and one made behind ficus's back.

use std::time::Duration;

use serde_json::Value;

use crate::backfill::{accounts, writer};
use crate::support::Scanned;
use crate::support::{KillOnDrop, Project, signal, stderr, wait_exit};

/// `ficus verify --json`: its exit code and report.
fn verify(p: &Project) -> (Option<i32>, Value) {
    let out = p.ficus(&["verify", "--json", "--chunk-size", "400"]).out();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out)));
    (out.status.code(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_proves_the_archive_and_finds_what_went_missing() {
    let p = accounts(3_000).await;
    p.config("\n[[sink]]\ntype = \"store\"\narchive = true\n");
    // The first start backfills the rows from before: the archive has every row.
    p.catch_up();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let writes = writer(p.db.url(), stop, 3_000);
    let mut run = p.spawn_run();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&run, libc::SIGKILL);
    wait_exit(&mut run, Duration::from_secs(10)).await;
    let _run = KillOnDrop(p.spawn_run());
    // While the monolith writes and ficus streams: no difference.
    let (code, report) = verify(&p);
    assert_eq!(code, Some(0), "{report:#}");
    let table = &report["tables"][0];
    assert_eq!(table["table"], "public.accounts");
    assert_eq!(table["verified"], true);
    assert!(table["compared"].as_u64().unwrap() >= 1_000, "{report:#}");
    assert_eq!(
        (&table["missing"], &table["extra"], &table["different"]),
        (&Value::from(0), &Value::from(0), &Value::from(0))
    );
    stop_tx.send(true).unwrap();
    let n = writes.await.unwrap();
    assert!(n > 200, "only {n} concurrent writes");
    drop(_run);
    p.catch_up();
    let (code, report) = verify(&p);
    assert_eq!(code, Some(0), "after the writer, with ficus stopped: {report:#}");
    eprintln!(
        "verified {} rows with {n} concurrent writes and a kill -9",
        report["tables"][0]["compared"]
    );

    // The writer may have deleted accounts 1 and 2: they are there for what follows.
    p.db.exec("insert into accounts values (1, 0, 'n1'), (2, 0, 'n2') on conflict (id) do nothing")
        .await;
    // A change lost from the archive: the last one of account 1.
    p.db.exec("update accounts set note = 'lost' where id = 1").await;
    p.catch_up();
    let store = sqlx::SqlitePool::connect(&format!("sqlite:{}", p.path("ficus.db").display()))
        .await
        .unwrap();
    let deleted = sqlx::query(
        "delete from changes where position = (select max(position) from changes where change like '%\"lost\"%')",
    )
    .execute(&store)
    .await
    .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    store.close().await;
    let (code, report) = verify(&p);
    assert_eq!(code, Some(3), "{report:#}");
    let table = &report["tables"][0];
    assert_eq!(table["different"], 1, "{report:#}");
    let difference = &table["differences"][0];
    assert_eq!(difference["kind"], "different");
    assert_eq!(difference["key"], serde_json::json!(["1"]));
    assert_eq!(difference["column"], "note");
    assert_eq!(difference["source"], "lost");

    // A row changed behind ficus's back: while ficus is stopped, the publication stops sending
    // updates for a moment. ficus cannot see it (the publication is right again); verify does.
    p.db.exec(
        "alter publication ficus set (publish = 'insert');
         update accounts set balance = -1 where id = 2;
         alter publication ficus set (publish = 'insert, update, delete, truncate');",
    )
    .await;
    let (code, report) = verify(&p);
    assert_eq!(code, Some(3), "{report:#}");
    let keys: Vec<&Value> = report["tables"][0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["key"])
        .collect();
    assert!(keys.contains(&&serde_json::json!(["2"])), "{report:#}");
    // The human report says it too.
    let out = p.ficus(&["verify"]).out();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("public.accounts: ") && text.contains("2 different"),
        "{text}"
    );
    assert!(text.contains("different (2): balance is -1 in the source"), "{text}");
}

#[tokio::test]
async fn verify_says_what_it_cannot_verify() {
    let p = accounts(100).await;
    let out = p.ficus(&["verify"]).out();
    assert_eq!(out.status.code(), Some(2), "nothing verified is not a pass");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("public.accounts: not verified: the config's store does not archive row changes"),
        "{text}"
    );
}

#[tokio::test]
async fn the_shop_example_verifies_and_an_injected_difference_is_found() {
    let p = crate::pipeline::shop().await;
    p.config("\n[[sink]]\ntype = \"store\"\narchive = true\n");
    p.catch_up();
    p.db.exec(&std::fs::read_to_string(format!("{}/workload.sql", crate::pipeline::SHOP)).unwrap())
        .await;
    p.catch_up();
    let out = p.ficus(&["verify"]).out();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains("public.customers: 3 rows compared, 0 missing, 0 extra, 0 different"),
        "{text}"
    );
    assert!(
        text.contains("public.orders: 2 rows compared, 0 missing, 0 extra, 0 different"),
        "{text}"
    );
    // A changed value in the archive: Ada's new email never captured.
    let store = sqlx::SqlitePool::connect(&format!("sqlite:{}", p.path("ficus.db").display()))
        .await
        .unwrap();
    sqlx::query("update changes set change = replace(change, 'ada@lovelace.example', 'ada@example.com')")
        .execute(&store)
        .await
        .unwrap();
    store.close().await;
    let out = p.ficus(&["verify"]).out();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("different (1): email is ada@lovelace.example in the source, ada@example.com in the archive"),
        "{text}"
    );
}
