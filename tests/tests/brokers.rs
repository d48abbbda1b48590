//! What every broker sink's tests share: the tables and mappings, and the scenario of crashes and
//! an outage each broker must pass.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use ficus_testkit::{Server, wait_for};

use crate::support::Scanned;
use crate::support::{KillOnDrop, Project, insert_ticks_while_killing, signal, stderr, wait_exit};

pub(crate) const ACCOUNTS: &str =
    "create table accounts (id int primary key, owner text not null, balance numeric not null);
    alter table accounts replica identity full;";
pub(crate) const ACCOUNT_EVENTS: &str = r#"
[[event]]
name = "AccountOpened"
table = "accounts"
on = ["insert"]
key = "new.id"
data = { id = "new.id", owner = "new.owner", balance = "new.balance" }

[[event]]
name = "BalanceChanged"
table = "accounts"
on = ["update"]
when = "old.balance != new.balance"
key = "new.id"
data = { id = "new.id", balance = "new.balance" }

[[event]]
name = "AccountClosed"
table = "accounts"
on = ["delete"]
key = "old.id"
data = { id = "old.id" }
"#;
pub(crate) const TICKS: &str = "create table ticks (id bigint primary key, n int not null);";
pub(crate) const TICK: &str = "[[event]]\nname = \"Ticked\"\ntable = \"ticks\"\non = [\"insert\"]\nkey = \"new.id\"\ndata = { id = \"new.id\", n = \"new.n\" }\n";

/// The accounts' workload: three opened, two balances changed, one closed, one owner renamed
/// (no event).
pub(crate) const ACCOUNT_WORKLOAD: &str = "insert into accounts values (1, 'ada', 10.50), (2, 'bob', 0), (3, 'cy', 7);
    update accounts set balance = balance + 1 where id in (1, 2);
    delete from accounts where id = 3;
    update accounts set owner = 'ada l.' where id = 1;";

/// A project of `accounts` whose config appends `sinks` to its jsonl sink: checked (every sink
/// must pass), started, the workload, caught up. Returns it with the jsonl sink's 6 events;
/// `env` is set for the ficus commands (a webhook's secret).
pub(crate) async fn accounts_through(sinks: &str, env: &[(&str, &str)]) -> (Project, Vec<serde_json::Value>) {
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    p.config(sinks);
    let ok = |args: &[&str]| {
        let out = p.ficus(args).envs(env.iter().copied()).out();
        assert!(
            out.status.success(),
            "ficus {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let check = ok(&["check"]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("sink(s) can take events"));
    ok(&["run", "--until-caught-up"]);
    p.db.exec(ACCOUNT_WORKLOAD).await;
    ok(&["run", "--until-caught-up"]);
    let events = p.events();
    assert_eq!(events.len(), 6, "{events:?}");
    (p, events)
}

/// `ficus check` refuses the project's sink: exit 1, `expected` said with a hint, and never the
/// credential `wrong` the tests give. `case` names the case in a failure.
pub(crate) fn check_refuses(p: &Project, case: &str, expected: &str) {
    let out = p.ficus(&["check"]).out();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{case}: {err}");
    assert!(err.contains(expected), "{case}: {err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(!err.contains("wrong"), "a credential is shown: {err}");
}

/// `ficus check --offline` refuses the project's config (a bad template, a bad url) with
/// `expected`, before anything connects.
pub(crate) fn offline_check_refuses(p: &Project, expected: &str) {
    let out = p.ficus(&["check", "--offline"]).out();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
}

/// A broker a test can take down and bring back.
pub(crate) trait Outage {
    fn stop(&mut self);
    fn resume(&mut self);
}

impl Outage for Server {
    fn stop(&mut self) {
        Server::stop(self)
    }
    fn resume(&mut self) {
        Server::resume(self)
    }
}

/// Whether a broker keeps repeats (after a crash or a retried write).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeats {
    /// It drops them (NATS's duplicate window).
    None,
    /// It keeps them: repeats are allowed, with the same id.
    Allowed,
}

/// Rows of `ticks` while ficus is `kill -9`ed at least 3 times, then the broker taken down under a
/// running ficus that streams into it while a 30,000-row transaction commits, then brought back: the broker has
/// every event (`ids` reads the ids it holds, in order), repeats only as `repeats` allows; while
/// it was down the slot stayed before the commit, the jsonl sink went on past the broker's bound,
/// ficus stayed up with bounded memory, and it resumed by itself. The config's broker sink needs
/// `max_in_flight = 2000`.
pub(crate) async fn kill_9_and_an_outage<F, Fut>(p: &Project, broker: &mut impl Outage, ids: F, repeats: Repeats)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    p.catch_up();
    let kills = insert_ticks_while_killing(p, 60, 20).await;
    assert!(kills >= 3);
    p.catch_up();
    let check = |held: &[String], n: usize| {
        let distinct: HashSet<&String> = held.iter().collect();
        assert_eq!(distinct.len(), n, "distinct events in the broker");
        if repeats == Repeats::None {
            assert_eq!(held.len(), n, "the broker kept a repeat");
        }
        let delivered: HashSet<String> = p
            .events()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            distinct.iter().all(|id| delivered.contains(*id)),
            "an id the jsonl sink does not have"
        );
    };
    let before = ids().await;
    check(&before, 1200);

    // The broker goes down under a running ficus, mid-stream, for several seconds, while rows
    // keep coming.
    let mut run = KillOnDrop(p.spawn_run());
    p.db.exec("insert into ticks values (0, 0)").await;
    wait_for("ficus to stream into the broker", Duration::from_secs(60), || async {
        ids().await.len().checked_sub(before.len()).filter(|n| *n > 0)
    })
    .await;
    broker.stop();
    // Where the transaction's commit will be: the slot must not pass it.
    let before_commit = {
        use sqlx::Connection;
        let mut conn = p.db.connect().await;
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("insert into ticks select g, 0 from generate_series(1201, 31200) g")
            .execute(&mut *tx)
            .await
            .unwrap();
        let lsn: String = sqlx::query_scalar("select pg_current_wal_insert_lsn()::text")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        lsn
    };
    // Down for several seconds, and until the other sink went on past the broker's bound: it
    // is held back only by itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_for(
        "the jsonl sink to go past the broker's bound",
        Duration::from_secs(60),
        || async { (p.events().len() > 1200 + 2000).then_some(()) },
    )
    .await;
    let held = p
        .scalar(&format!(
            "select (pg_wal_lsn_diff('{before_commit}', confirmed_flush_lsn) >= 0)::text from pg_replication_slots where slot_name = '{}'",
            p.db.name
        ))
        .await;
    assert_eq!(
        held,
        "true",
        "the slot passed a commit the broker does not have ({before_commit} vs {:?}): {}",
        p.confirmed_flush().await,
        std::fs::read_to_string(p.path("run.log")).unwrap()
    );
    let rss = peak_rss_kib(run.0.id());
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "ficus exited while the broker was down"
    );
    broker.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let held = loop {
        let held = ids().await;
        let distinct = held.iter().collect::<HashSet<_>>().len();
        if distinct >= 31201 {
            break held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 120 s the broker has {distinct} of 31201 events: {}",
            std::fs::read_to_string(p.path("run.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Stopped before the comparison: the jsonl sink may still hold in its buffer an event the
    // broker has.
    signal(&run.0, libc::SIGTERM);
    assert!(wait_exit(&mut run.0, Duration::from_secs(20)).await.success());
    assert!(held.len() <= ids().await.len());
    check(&ids().await, 31201);
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("sink failed; retrying"), "{log}");
    assert!(log.contains("the sink takes events again"), "{log}");
    // 30,000 events waited while the broker was down; ficus held no more than its bound.
    assert!(rss < 80 * 1024, "peak RSS {rss} KiB while the broker was down");
}

/// A process's peak resident set, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
