//! Running ficus in production, from the outside: the Prometheus scrape (parsed as Prometheus
//! parses it) against what was delivered, `/healthz` and `/readyz` as a sink goes down and comes
//! back, the warning past `max_retained_wal`.

use std::process::Stdio;
use std::time::Duration;

use ficus_testkit::{Server, free_port, wait_for};

use crate::brokers::{ACCOUNT_EVENTS, ACCOUNTS};
use crate::support::{KillOnDrop, Project, signal, wait_exit};

/// `GET http://addr/path`: status and body.
pub(crate) async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The scrape, parsed.
async fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics").await.expect("the metrics endpoint answers");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus text scrape")
}

/// The value of the sample `name` with `labels` (0 when there is none yet).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// `ficus run --metrics-addr` in the background, with its log in run.log.
fn spawn_with_metrics(p: &Project, addr: &str) -> KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.path("run.log"))
        .unwrap();
    KillOnDrop(
        p.ficus(&["run", "--metrics-addr", addr])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `/readyz` answers 200 (`ready`) or 503 with a body that says `why`.
async fn wait_ready(addr: &str, ready: bool, why: &str) -> String {
    let want = if ready { 200 } else { 503 };
    wait_for(
        &format!("/readyz to answer {want} {why}"),
        Duration::from_secs(60),
        || async {
            get(addr, "/readyz")
                .await
                .filter(|(s, body)| *s == want && body.contains(why))
                .map(|(_, body)| body)
        },
    )
    .await
}

#[tokio::test]
async fn metrics_count_what_was_delivered_and_readyz_turns_false_while_a_sink_is_down() {
    let mut nats = Server::nats();
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    p.config(&format!(
        "\n[[sink]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nsubject = \"ops.{{type}}\"\n[sink.stream]\nname = \"OPS\"\ncreate = true\nsubjects = [\"ops.>\"]\n",
        nats.port
    ));
    let addr = format!("127.0.0.1:{}", free_port());
    let run = spawn_with_metrics(&p, &addr);
    wait_ready(&addr, true, r#""role":"streaming""#).await;
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);

    p.db.exec("insert into accounts select g, 'owner ' || g, 100 from generate_series(1, 50) g")
        .await;
    p.db.exec("update accounts set balance = balance + 1 where id <= 10")
        .await;
    p.db.exec("update accounts set owner = 'same balance' where id = 11")
        .await;
    p.wait_events(60).await;
    // The counters move when the events are durable: equal to what the sinks hold.
    let delivered = |s: &prometheus_parse::Scrape, sink: &str| {
        (
            value(s, "ficus_events_total", &[("sink", sink), ("type", "AccountOpened")]),
            value(s, "ficus_events_total", &[("sink", sink), ("type", "BalanceChanged")]),
        )
    };
    let s = wait_for(
        "the counters to reach what was delivered",
        Duration::from_secs(30),
        || async {
            let s = scrape(&addr).await;
            (delivered(&s, "jsonl") == (50.0, 10.0) && delivered(&s, "nats") == (50.0, 10.0)).then_some(s)
        },
    )
    .await;
    let changes = |op| {
        value(
            &s,
            "ficus_source_changes_total",
            &[("table", "public.accounts"), ("op", op)],
        )
    };
    assert_eq!(
        (changes("insert"), changes("update"), changes("delete")),
        (50.0, 11.0, 0.0)
    );
    assert!(value(&s, "ficus_source_transactions_total", &[]) >= 3.0);
    let bytes: u64 = std::fs::metadata(p.path("events.jsonl")).unwrap().len();
    // The jsonl sink writes each line and its newline.
    assert_eq!(
        value(&s, "ficus_sink_bytes_total", &[("sink", "jsonl")]) as u64 + 60,
        bytes
    );
    assert!(value(&s, "ficus_commit_to_durable_seconds_count", &[]) >= 3.0);
    assert!(value(&s, "ficus_sink_flush_seconds_count", &[("sink", "nats")]) >= 1.0);
    assert_eq!(value(&s, "ficus_streaming", &[]), 1.0);
    assert_eq!(value(&s, "ficus_standby", &[]), 0.0);
    assert!(s.docs.contains_key("ficus_events_total"), "the metrics are described");

    // The broker goes down: the sink fails, /readyz says so; back up, ready again and nothing lost.
    nats.stop();
    p.db.exec("insert into accounts select g, 'late ' || g, 5 from generate_series(51, 60) g")
        .await;
    wait_ready(&addr, false, "sink nats failing").await;
    let down = scrape(&addr).await;
    assert!(value(&down, "ficus_errors_total", &[("kind", "sink")]) >= 1.0);
    nats.resume();
    wait_ready(&addr, true, "").await;
    wait_for("the nats counter to reach 60", Duration::from_secs(60), || async {
        let s = scrape(&addr).await;
        (delivered(&s, "nats") == (60.0, 10.0)).then_some(())
    })
    .await;

    let mut run = run;
    signal(&run.0, libc::SIGTERM);
    assert!(wait_exit(&mut run.0, Duration::from_secs(30)).await.success());
}

#[tokio::test]
async fn retained_wal_over_the_threshold_warns_counts_and_turns_readyz() {
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    // A threshold any slot passes as soon as anything is written.
    let config = std::fs::read_to_string(p.path("ficus.toml"))
        .unwrap()
        .replace("[source]\n", "[source]\nmax_retained_wal = \"1kB\"\n");
    p.write("ficus.toml", &config);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut run = spawn_with_metrics(&p, &addr);
    wait_for("the run to stream", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(p.path("run.log")).unwrap_or_default();
        log.contains("INFO streaming").then_some(())
    })
    .await;
    // Writes go on while it is checked (the slot's restart position moves now and then).
    let writing = {
        let url = p.db.url();
        tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for i in 0.. {
                sqlx::query("insert into accounts select g, repeat('x', 200), 1 from generate_series($1 * 100 + 1, $1 * 100 + 100) g")
                    .bind(i as i64)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_ready(&addr, false, "over max_retained_wal (1000 bytes)").await;
    writing.abort();
    let s = scrape(&addr).await;
    assert!(value(&s, "ficus_slot_retained_wal_bytes", &[]) > 1000.0);
    assert_eq!(value(&s, "ficus_slot_max_retained_wal_bytes", &[]), 1000.0);
    signal(&run.0, libc::SIGTERM);
    wait_exit(&mut run.0, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("the slot holds more WAL than max_retained_wal"), "{log}");
}
