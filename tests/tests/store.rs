//! The event store, both backends: exactly-once across kill -9, replay byte for byte, filters,
//! following, and the errors of a bad store.

use std::collections::HashSet;
use std::time::Duration;

use ficus_testkit::{Cluster, TestDb, wait_for};
use serde_json::Value;

use crate::support::Scanned;
use crate::support::{KillOnDrop, Project, insert_ticks_while_killing, signal, stderr, wait_exit};

const TICKS: &str = "create table ticks (id bigint primary key, n int not null, kind text not null default 'a');";
const TICK: &str = r#"
[[event]]
name = "Ticked"
table = "ticks"
on = ["insert", "snapshot"]
key = "new.id"
data = { id = "new.id", n = "new.n" }

[[event]]
name = "TickChanged"
table = "ticks"
aggregate = "Tick"
on = ["update"]
key = "new.id"
data = { id = "new.id", kind = "new.kind" }
"#;

/// Where a test keeps its store.
enum Backend {
    Sqlite,
    /// Another database of the cluster: the store need not be the source's.
    Postgres(TestDb),
}

impl Backend {
    async fn all() -> Vec<Backend> {
        vec![Backend::Sqlite, Backend::Postgres(Cluster::shared().database().await)]
    }

    /// The store sink's config, named "history", plus a jsonl sink "replayed" for replays only.
    fn sinks(&self) -> String {
        let at = match self {
            Backend::Sqlite => "path = \"history/ficus.db\"".to_owned(),
            Backend::Postgres(db) => format!("url = \"{}\"", db.url()),
        };
        format!(
            "\n[[sink]]\ntype = \"store\"\nname = \"history\"\narchive = true\n{at}\n\n[[sink]]\ntype = \"jsonl\"\nname = \"replayed\"\nlive = false\npath = \"replayed.jsonl\"\n"
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// A project streaming ticks into events.jsonl and the backend's store.
async fn project(backend: &Backend) -> Project {
    let p = Project::new(TICKS).await;
    p.mapping("ticks.toml", TICK);
    p.write(
        "ficus.toml",
        &format!(
            "[source]\nname = \"shop\"\nslot = \"{0}\"\npublication = \"ficus\"\n\n[[sink]]\ntype = \"jsonl\"\nname = \"live\"\npath = \"events.jsonl\"\n{1}",
            p.db.name,
            backend.sinks()
        ),
    );
    p
}

/// `ficus replay ARGS --to-sink replayed` from a fresh file; the file's text.
fn replay(p: &Project, args: &[&str]) -> String {
    into_replayed(p, "replay", args)
}

/// `ficus COMMAND ARGS --to-sink replayed` from a fresh file; the file's text.
fn into_replayed(p: &Project, command: &str, args: &[&str]) -> String {
    let _ = std::fs::remove_file(p.path("replayed.jsonl"));
    let mut all = vec![command, "--to-sink", "replayed"];
    all.extend_from_slice(args);
    p.ok(&all);
    std::fs::read_to_string(p.path("replayed.jsonl")).unwrap_or_default()
}

/// `ficus ARGS` with a terminal for its output (`script`): what it showed there.
fn on_a_terminal(p: &Project, args: &str) -> String {
    let ficus = ficus_testkit::workspace_bin("ficus");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("{} {args}", ficus.display()), "/dev/null"])
        .current_dir(p.dir.path())
        .env("FICUS_SOURCE_URL", p.db.url())
        .env("COLUMNS", "120")
        .stdin(std::process::Stdio::null())
        .out();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines_of(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_delivers_into_the_store_exactly_once() {
    for backend in Backend::all().await {
        let p = project(&backend).await;
        p.catch_up();
        const TXS: i64 = 200;
        const ROWS: i64 = 10;
        let kills = insert_ticks_while_killing(&p, TXS, ROWS).await;
        p.catch_up();
        let live = p.events();
        let mut seen = HashSet::new();
        let first_deliveries: Vec<String> = ids(&live).into_iter().filter(|id| seen.insert(id.clone())).collect();
        assert_eq!(first_deliveries.len() as i64, TXS * ROWS, "{}", backend.name());
        let stored = lines_of(&replay(&p, &[]));
        assert_eq!(
            ids(&stored),
            first_deliveries,
            "{}: the store holds each event once, in the order first delivered ({kills} kills, {} lines in the jsonl sink)",
            backend.name(),
            live.len()
        );
        let remapped = lines_of(&remap(&p, &[]));
        assert_eq!(
            ids(&remapped),
            first_deliveries,
            "{}: the archive holds each change once, in order",
            backend.name()
        );
    }
}

fn subjects_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect()
}

/// `ficus remap ARGS --to-sink replayed` from a fresh file; the file's text.
fn remap(p: &Project, args: &[&str]) -> String {
    into_replayed(p, "remap", args)
}

/// The ticks' mappings with one more: a new event, for the whole archive.
const TICK_COUNTED: &str = r#"
[[event]]
name = "TickCounted"
version = 2
table = "ticks"
on = ["insert", "snapshot", "update", "delete"]
key = "(op == 'delete' ? string(old.id) : string(new.id)) + '/' + op"
data = { n = "new.n", op = "op", was = "old.kind" }
"#;

#[tokio::test]
async fn remap_with_unchanged_mappings_is_the_live_run_and_a_new_mapping_covers_the_archive() {
    for backend in Backend::all().await {
        let p = project(&backend).await;
        p.db.exec("alter table ticks replica identity full; insert into ticks (id, n) select g, 0 from generate_series(1, 20) g")
            .await;
        p.ok(&["backfill", "--chunk-size", "6"]);
        p.db.exec("insert into ticks (id, n) select g, 1 from generate_series(21, 40) g")
            .await;
        p.db.exec("update ticks set kind = 'b' where id % 10 = 0; delete from ticks where id = 3")
            .await;
        p.catch_up();
        // A transaction no mapping makes an event of, alone in a run: archived all the same.
        p.db.exec("delete from ticks where id = 5").await;
        p.catch_up();
        let live = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
        assert_eq!(lines_of(&live).len(), 20 + 20 + 4, "{}", backend.name());
        assert_eq!(
            remap(&p, &[]),
            live,
            "{}: same events, ids, order, bytes",
            backend.name()
        );

        std::fs::create_dir_all(p.path("mappings-next")).unwrap();
        std::fs::copy(p.path("mappings/ticks.toml"), p.path("mappings-next/ticks.toml")).unwrap();
        std::fs::write(p.path("mappings-next/counted.toml"), TICK_COUNTED).unwrap();
        let next = lines_of(&remap(&p, &["--mappings", "mappings-next"]));
        let (counted, old): (Vec<Value>, Vec<Value>) = next.into_iter().partition(|e| e["type"] == "TickCounted");
        assert_eq!(
            ids(&old),
            ids(&lines_of(&live)),
            "{}: the old events unchanged",
            backend.name()
        );
        assert_eq!(
            counted.len(),
            20 + 20 + 4 + 2,
            "{}: one per archived change",
            backend.name()
        );
        assert_eq!(
            subjects_of(&counted).last().map(String::as_str),
            Some("5/delete"),
            "{}: a change that gave no event live is archived too",
            backend.name()
        );
        let subjects: Vec<&str> = counted.iter().map(|e| e["subject"].as_str().unwrap()).collect();
        assert_eq!(&subjects[..2], ["1/snapshot", "2/snapshot"], "{}", backend.name());
        assert!(subjects.contains(&"30/update") && subjects.contains(&"40/update"));
        let deleted = counted.iter().find(|e| e["subject"] == "3/delete").unwrap();
        assert_eq!(
            deleted["data"]["was"],
            "a",
            "{}: old values are archived",
            backend.name()
        );
        assert!(counted.iter().all(|e| e["eventversion"] == 2));
        // Filters: the new event only, and part of the archive.
        let only = lines_of(&remap(
            &p,
            &["--mappings", "mappings-next", "--type", "TickCounted", "--from", "41"],
        ));
        assert_eq!(ids(&only), ids(&counted[40..]), "{}", backend.name());
    }
}

#[tokio::test]
async fn replay_is_the_original_delivery_byte_for_byte_and_filters_it() {
    for backend in Backend::all().await {
        let p = project(&backend).await;
        // Rows from before ficus (snapshot events), then live inserts and updates.
        p.db.exec("insert into ticks (id, n) select g, 0 from generate_series(1, 30) g")
            .await;
        p.ok(&["backfill", "--chunk-size", "7"]);
        let mid_lsn = p.scalar("select pg_current_wal_lsn()::text").await;
        p.db.exec("insert into ticks (id, n) select g, 1 from generate_series(31, 60) g")
            .await;
        p.db.exec("update ticks set kind = 'b' where id % 10 = 0").await;
        p.catch_up();
        let live_text = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
        let live = lines_of(&live_text);
        assert_eq!(live.len(), 30 + 30 + 6, "{}", backend.name());
        assert_eq!(replay(&p, &[]), live_text, "{}: byte for byte", backend.name());
        // On a terminal, a bar through the 66 positions; off one (above), none.
        let on_a_terminal = on_a_terminal(&p, "replay --to-sink replayed");
        assert!(
            on_a_terminal.contains("replay [") && on_a_terminal.contains("66/66"),
            "{on_a_terminal}"
        );
        assert!(!stderr(&p.ok(&["replay", "--to-sink", "replayed"])).contains("66/66"));

        let pick = |f: &dyn Fn(usize, &Value) -> bool| -> Vec<String> {
            ids(&live
                .iter()
                .enumerate()
                .filter(|(i, e)| f(*i, e))
                .map(|(_, e)| e.clone())
                .collect::<Vec<_>>())
        };
        let replayed = |args: &[&str]| ids(&lines_of(&replay(&p, args)));
        assert_eq!(
            replayed(&["--from", "5", "--to", "9"]),
            pick(&|i, _| (4..9).contains(&i)),
            "{}: positions from 1",
            backend.name()
        );
        assert_eq!(
            replayed(&["--type", "TickChanged"]),
            pick(&|_, e| e["type"] == "TickChanged"),
            "{}",
            backend.name()
        );
        assert_eq!(
            replayed(&["--subject", "10", "--subject", "31"]),
            pick(&|_, e| e["subject"] == "10" || e["subject"] == "31"),
            "{}",
            backend.name()
        );
        let after_backfill = replayed(&["--from-lsn", &mid_lsn]);
        assert_eq!(after_backfill, pick(&|i, _| i >= 30), "{}", backend.name());
        let since = live[40]["time"].as_str().unwrap().to_owned();
        assert_eq!(
            replayed(&["--since", &since, "--type", "Ticked"]),
            pick(&|_, e| e["type"] == "Ticked" && e["time"].as_str().unwrap() >= since.as_str()),
            "{}",
            backend.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follows_the_store_while_ficus_writes() {
    for backend in Backend::all().await {
        let p = project(&backend).await;
        p.catch_up(); // creates the slot
        p.db.exec("insert into ticks (id, n) select g, 0 from generate_series(1, 10) g")
            .await;
        p.catch_up();
        let _ = std::fs::remove_file(p.path("replayed.jsonl"));
        let mut follower = KillOnDrop(
            p.ficus(&["replay", "--to-sink", "replayed", "--follow"])
                .stderr(std::fs::File::create(p.path("replay.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut run = KillOnDrop(p.spawn_run());
        for batch in 1..=5 {
            p.db.exec(&format!(
                "insert into ticks (id, n) select g, {batch} from generate_series({}, {}) g",
                batch * 100,
                batch * 100 + 49
            ))
            .await;
        }
        let want = 10 + 5 * 50;
        let followed = wait_for("the follower to have every event", Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(p.path("replayed.jsonl")).unwrap_or_default();
            (text.lines().count() >= want).then_some(text)
        })
        .await;
        signal(&run.0, libc::SIGTERM);
        assert!(wait_exit(&mut run.0, Duration::from_secs(20)).await.success());
        signal(&follower.0, libc::SIGINT);
        assert!(
            wait_exit(&mut follower.0, Duration::from_secs(20)).await.success(),
            "{}",
            std::fs::read_to_string(p.path("replay.log")).unwrap()
        );
        let live = std::fs::read_to_string(p.path("events.jsonl")).unwrap();
        assert_eq!(
            followed,
            live,
            "{}: the follower saw what ficus delivered",
            backend.name()
        );
    }
}

#[tokio::test]
async fn replay_refuses_what_it_cannot_do() {
    let backend = Backend::Sqlite;
    let p = project(&backend).await;
    p.catch_up(); // creates the slot
    p.db.exec("insert into ticks (id, n) values (1, 1), (2, 2)").await;
    p.catch_up();
    let fail = |args: &[&str]| {
        let out = p.ficus(args).out();
        assert!(!out.status.success(), "ficus {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = fail(&["replay", "--to-sink", "replayed", "--from", "4"]);
    assert!(e.contains("position 4 is beyond the end of sqlite"), "{e}");
    assert!(e.contains("its last position is 2"), "{e}");
    // The next position is not beyond the end: nothing to replay yet.
    let out = p.ok(&["replay", "--to-sink", "replayed", "--from", "3"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("replayed no events"));
    let e = fail(&["replay", "--to-sink", "kafka"]);
    assert!(
        e.contains("no sink named \"kafka\"") && e.contains("live, history, replayed"),
        "{e}"
    );
    let e = fail(&["replay", "--to-sink", "history"]);
    assert!(e.contains("is the store the events are read from"), "{e}");
    let e = fail(&["replay", "--to-sink", "replayed", "--since", "yesterday"]);
    assert!(e.contains("invalid time"), "{e}");
    let e = fail(&["remap", "--to-sink", "replayed", "--mappings", "nowhere"]);
    assert!(e.contains("no mapping file matches"), "{e}");
    let without_archive = std::fs::read_to_string(p.path("ficus.toml"))
        .unwrap()
        .replace("archive = true\n", "");
    p.write("ficus.toml", &without_archive);
    for file in ["ficus.db", "ficus.db-wal", "ficus.db-shm"] {
        let _ = std::fs::remove_file(p.path(&format!("history/{file}")));
    }
    p.db.exec("insert into ticks (id, n) values (3, 3)").await;
    p.ok(&["run", "--until-caught-up"]);
    assert_eq!(replay(&p, &[]).lines().count(), 1, "a new store, of events only");
    let e = fail(&["remap", "--to-sink", "replayed"]);
    assert!(
        e.contains("holds no archived row changes") && e.contains("hint: set archive = true"),
        "{e}"
    );
    p.config("");
    let e = fail(&["replay", "--to-sink", "jsonl"]);
    assert!(e.contains("the config has no store sink"), "{e}");
    let e = fail(&["remap", "--to-sink", "jsonl"]);
    assert!(e.contains("no archive to remap"), "{e}");
}

#[tokio::test]
async fn a_bad_store_stops_ficus_before_it_takes_anything() {
    // A file that is not a SQLite database, and a Postgres store whose events table was dropped.
    let foreign = Backend::Sqlite;
    let p = project(&foreign).await;
    p.catch_up(); // creates the slot
    for file in ["ficus.db", "ficus.db-wal", "ficus.db-shm"] {
        let _ = std::fs::remove_file(p.path(&format!("history/{file}")));
    }
    std::fs::write(p.path("history/ficus.db"), "id,total\n1,9.99\n").unwrap();
    p.db.exec("insert into ticks (id, n) values (1, 1)").await;
    let before = p.confirmed_flush().await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("history/ficus.db is not a ficus store"), "{e}");
    assert!(e.contains("hint: point the store sink's path"), "{e}");
    assert_eq!(
        std::fs::read_to_string(p.path("history/ficus.db")).unwrap(),
        "id,total\n1,9.99\n",
        "the file is left alone"
    );
    assert_eq!(p.confirmed_flush().await, before, "the slot did not move");
    // The row change waits in the slot: with a good store, it is delivered.
    std::fs::remove_file(p.path("history/ficus.db")).unwrap();
    p.catch_up();
    assert_eq!(p.events().len(), 1);

    let store_db = Cluster::shared().database().await;
    let backend = Backend::Postgres(store_db);
    let p = project(&backend).await;
    p.catch_up();
    let Backend::Postgres(store_db) = &backend else {
        unreachable!()
    };
    store_db.exec("drop table ficus.events").await;
    p.db.exec("insert into ticks (id, n) values (1, 1)").await;
    let before = p.confirmed_flush().await;
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("its table ficus.events is missing"), "{e}");
    assert!(e.contains("hint: restore the store from a backup"), "{e}");
    assert_eq!(p.confirmed_flush().await, before, "the slot did not move");
    assert!(p.events().is_empty());
}

/// CQRS on top of ficus: the example read model, fed only with replayed events, agrees with the
/// source; fed the same events again, it does not change.
#[tokio::test]
async fn a_read_model_built_from_replayed_events_agrees_with_the_source() {
    let p = crate::pipeline::shop().await;
    p.config("\n[[sink]]\ntype = \"store\"\n");
    p.ok(&["backfill"]); // the customer from before ficus
    p.db.exec(&std::fs::read_to_string(format!("{}/workload.sql", crate::pipeline::SHOP)).unwrap())
        .await;
    p.db.exec(
        "insert into orders (customer_id, total) values (100, 30.25), (100, 0.75);
         update orders set status = 'paid' where customer_id = 100;
         update orders set status = 'cancelled' where id = 4;",
    )
    .await;
    p.catch_up();
    let model = p.path("read-model.db");
    let feed = |args: &[&str]| {
        let mut all = vec!["replay", "--to-sink", "jsonl"];
        all.extend_from_slice(args);
        let events = p.ok(&all).stdout;
        assert!(events.is_empty(), "replay writes to the named sink only");
        let out = std::process::Command::new(ficus_testkit::workspace_bin("shop-read-model"))
            .arg(&model)
            .stdin(std::fs::File::open(p.path("events.jsonl")).unwrap())
            .out();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // The live sink's file is the replay target here: start it over with history only.
    std::fs::remove_file(p.path("events.jsonl")).unwrap();
    let (model_text, log) = feed(&[]);
    let source = p
        .scalar(
            "select string_agg(format('customer %s %s: %s order(s), paid %s', c.id, c.email, count_orders, paid), E'\n' order by c.id) || E'\n'
             from customers c, lateral (
               select count(o.id) as count_orders,
                      to_char(coalesce(sum(o.total) filter (where o.status in ('paid', 'shipped')), 0), 'FM999990.00') as paid
               from orders o where o.customer_id = c.id) t",
        )
        .await;
    assert_eq!(model_text, source);
    assert!(
        model_text.contains("customer 100 margaret@example.com: 2 order(s), paid 30.25"),
        "{model_text}"
    );
    assert!(log.contains("(0 seen before)"), "{log}");
    // The same history again (a replay started over): nothing changes.
    std::fs::remove_file(p.path("events.jsonl")).unwrap();
    let (again, log) = feed(&[]);
    assert_eq!(again, model_text);
    assert!(log.contains("applied 0 events"), "{log}");
}
