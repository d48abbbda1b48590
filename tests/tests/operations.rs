//! Running ficus in production, from the outside: the Prometheus scrape (parsed as Prometheus
//! parses it) against what was delivered, `/healthz` and `/readyz` as a sink goes down and comes
//! back, the warning past `max_retained_wal`.

use std::process::Stdio;
use std::time::Duration;

use ficus_testkit::{Server, free_port, wait_for};

use crate::brokers::{ACCOUNT_EVENTS, ACCOUNTS};
use crate::support::{KillOnDrop, Project, Scanned, signal, wait_exit};

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

/// A project over the accounts table, with `setting` (a line) added to `[source]`.
async fn accounts(setting: &str) -> Project {
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    let config = std::fs::read_to_string(p.path("ficus.toml"))
        .unwrap()
        .replace("[source]\n", &format!("[source]\n{setting}\n"));
    p.write("ficus.toml", &config);
    p
}

/// Stops a run with SIGTERM: it exits 0.
async fn stop(mut run: KillOnDrop) {
    signal(&run.0, libc::SIGTERM);
    assert!(wait_exit(&mut run.0, Duration::from_secs(30)).await.success());
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

/// Waits until the run in the background (logging to run.log) streams.
async fn wait_streaming(p: &Project) {
    wait_for("the run to stream", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(p.path("run.log")).unwrap_or_default();
        log.contains("INFO streaming").then_some(())
    })
    .await;
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

    stop(run).await;
}

#[tokio::test]
async fn retained_wal_over_the_threshold_warns_counts_and_turns_readyz() {
    // A threshold any slot passes as soon as anything is written.
    let p = accounts("max_retained_wal = \"1kB\"").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let run = spawn_with_metrics(&p, &addr);
    wait_streaming(&p).await;
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
    stop(run).await;
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("the slot holds more WAL than max_retained_wal"), "{log}");
}

/// A TCP proxy that can go silent as a dead route does: the connections open when it freezes stop
/// passing bytes either way and nothing is closed; connections made afterwards pass.
struct Proxy {
    port: u16,
    frozen_before: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// One connection (by the order it was made in, from 1) frozen alone.
    frozen_one: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// `ficus run` of `p`, its source reached through this proxy (the server is on `upstream`);
    /// its log in `run.log`.
    fn run(&self, p: &Project, upstream: u16) -> KillOnDrop {
        let through_proxy =
            p.db.url()
                .replace(&format!(":{upstream}/"), &format!(":{}/", self.port));
        let log = std::fs::File::create(p.path("run.log")).unwrap();
        KillOnDrop(
            p.ficus(&["run"])
                .env("FICUS_SOURCE_URL", &through_proxy)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    async fn to(upstream: u16) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_before = Arc::new(AtomicU64::new(0));
        let frozen_one = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let (frozen, one, ids) = (frozen_before.clone(), frozen_one.clone(), next.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let (frozen, one) = (frozen.clone(), one.clone());
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if id < frozen.load(Ordering::SeqCst) || id == one.load(Ordering::SeqCst) {
                                // Silent: keep the sockets, pass nothing, ever.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            frozen_before,
            frozen_one,
            next,
            task,
        }
    }

    /// The `n`th connection made through the proxy goes silent, alone.
    fn freeze_one(&self, n: u64) {
        self.frozen_one.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every connection open now goes silent.
    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_before
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_made_again_and_nothing_written_meanwhile_is_lost() {
    // A server that ends a silent walsender after 2 s: ficus's limit is twice that.
    let cluster: &'static ficus_testkit::Cluster = Box::leak(Box::new(ficus_testkit::Cluster::start(&[
        "-c",
        "wal_level=logical",
        "-c",
        "wal_sender_timeout=2s",
    ])));
    let p = Project::on(cluster, ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    let proxy = Proxy::to(cluster.port).await;
    let run = proxy.run(&p, cluster.port);
    wait_streaming(&p).await;
    p.db.exec("insert into accounts select g, 'before', 1 from generate_series(1, 20) g")
        .await;
    p.wait_events(20).await;

    proxy.freeze();
    p.db.exec("insert into accounts select g, 'meanwhile', 1 from generate_series(21, 50) g")
        .await;
    let events = p.wait_events(50).await;
    let opened: std::collections::HashSet<String> = events
        .iter()
        .filter(|e| e["type"] == "AccountOpened")
        .map(|e| e["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(opened.len(), 50);
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(
        log.contains("the source went silent: dropping its connections and making new ones"),
        "{log}"
    );
    assert!(
        log.contains("the server said nothing on the replication connection for 4s"),
        "{log}"
    );
    stop(run).await;
}

#[tokio::test]
async fn an_idle_source_is_not_taken_for_a_silent_one() {
    // The server asks for a reply only after 30 s of quiet (wal_sender_timeout = 60 s): within
    // ficus's 3 s limit, only its probes make an idle server speak.
    let p = accounts("replication_timeout_secs = 3").await;
    let run = KillOnDrop(p.spawn_run());
    wait_streaming(&p).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    p.db.exec("insert into accounts values (1, 'after a quiet spell', 1)")
        .await;
    p.wait_events(1).await;
    stop(run).await;
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(!log.contains("went silent"), "{log}");
}

#[tokio::test]
async fn slot_creation_behind_an_open_transaction_names_it_and_sigint_stops_the_wait() {
    use sqlx::Connection;
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    // A session of the monolith, left idle in a transaction that wrote.
    let mut monolith = p.db.connect().await;
    let blocker: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut monolith)
        .await
        .unwrap();
    let mut tx = monolith.begin().await.unwrap();
    sqlx::query("insert into accounts values (1, 'forgotten', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();

    let mut run = KillOnDrop(p.spawn_run());
    let said = wait_for("the run to name what it waits for", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(p.path("run.log")).unwrap_or_default();
        log.contains("creating the slot waits for 1 transaction(s)")
            .then_some(log)
    })
    .await;
    assert!(
        said.contains(&format!("pid {blocker} (idle in transaction for ")),
        "{said}"
    );
    assert!(
        said.contains("insert into accounts values (1, 'forgotten', 1)"),
        "{said}"
    );
    signal(&run.0, libc::SIGINT);
    assert!(wait_exit(&mut run.0, Duration::from_secs(30)).await.success());
    let log = std::fs::read_to_string(p.path("run.log")).unwrap();
    assert!(log.contains("its creation was cancelled"), "{log}");
    // Nothing is left on the server once the transaction ends.
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.scalar(&format!(
            "select count(*)::text from pg_replication_slots where slot_name = '{}'",
            p.db.name
        ))
        .await,
        "0"
    );
}

#[tokio::test]
async fn of_two_runs_one_streams_the_other_stands_by_and_takes_over_after_kill_9_with_no_loss() {
    let p = Project::new(ACCOUNTS).await;
    p.mapping("accounts.toml", ACCOUNT_EVENTS);
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut first = spawn_with_metrics(&p, &a);
    wait_ready(&a, true, r#""role":"streaming""#).await;
    let second = spawn_with_metrics(&p, &b);
    wait_ready(
        &b,
        false,
        "standby: the lease is held by the ficus whose lease connection is pid",
    )
    .await;
    let walsenders = || async {
        p.scalar(&format!(
            "select count(*)::text from pg_stat_activity where backend_type = 'walsender' and datname = '{}'",
            p.db.name
        ))
        .await
    };
    // The standby opened no replication connection: one walsender, the first's.
    assert_eq!(walsenders().await, "1");
    let status: serde_json::Value = serde_json::from_slice(&p.ok(&["status", "--json"]).stdout).unwrap();
    assert!(status["lease"]["holder"]["pid"].is_i64(), "{status:#}");
    assert_eq!(status["lease"]["standbys"].as_array().unwrap().len(), 1, "{status:#}");
    assert_eq!(status["slot"]["active"], true, "{status:#}");

    p.db.exec("insert into accounts select g, 'first', 1 from generate_series(1, 100) g")
        .await;
    p.wait_events(100).await;
    signal(&first.0, libc::SIGKILL);
    wait_exit(&mut first.0, Duration::from_secs(10)).await;
    let killed = std::time::Instant::now();
    p.db.exec("insert into accounts select g, 'meanwhile', 1 from generate_series(101, 200) g")
        .await;
    wait_ready(&b, true, r#""role":"streaming""#).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "the standby took over after {took:?}");
    let events = p.wait_events(200).await;
    // No loss; a repeat has the id (and the content) of what it repeats.
    let mut by_id: std::collections::HashMap<&str, &serde_json::Value> = std::collections::HashMap::new();
    for e in &events {
        if let Some(seen) = by_id.insert(e["id"].as_str().unwrap(), e) {
            assert_eq!(seen["data"], e["data"], "a repeat differs from what it repeats");
        }
    }
    let opened: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "AccountOpened")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(opened.len(), 200);
    assert_eq!(walsenders().await, "1");
    stop(second).await;
}

#[tokio::test]
async fn heartbeats_are_written_as_often_as_asked() {
    let p = accounts("heartbeat_secs = 1").await;
    // A slot of the test's own sees every logical decoding message written from now on.
    p.db.exec(&format!(
        "select pg_create_logical_replication_slot('{}_peek', 'test_decoding')",
        p.db.name
    ))
    .await;
    let run = KillOnDrop(p.spawn_run());
    wait_streaming(&p).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop(run).await;
    let heartbeats: i64 = p
        .scalar(&format!(
            "select count(*)::text from pg_logical_slot_get_changes('{}_peek', null, null)
             where data like 'message: transactional: 1 prefix: ficus.heartbeat%'",
            p.db.name
        ))
        .await
        .parse()
        .unwrap();
    assert!((2..=6).contains(&heartbeats), "{heartbeats} heartbeats in about 3.5 s");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_their_fields() {
    let p = accounts("").await;
    let out = p.ficus(&["run", "--until-caught-up", "--log-format", "json"]).out();
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect();
    let streaming = lines
        .iter()
        .find(|l| l["message"] == "streaming")
        .expect("the streaming line");
    assert_eq!(streaming["level"], "INFO");
    assert_eq!(streaming["slot"], p.db.name.as_str());
    assert!(streaming["timestamp"].is_string());
    let summary = lines.last().unwrap();
    assert_eq!(summary["message"], "delivered", "{summary}");
    assert_eq!(summary["events"], 0, "{summary}");
    // A failure is a record too.
    let out = p
        .ficus(&["run", "--until-caught-up", "--log-format", "json", "-c", "missing.toml"])
        .out();
    assert_eq!(out.status.code(), Some(1));
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stderr).lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(last["message"].as_str().unwrap().contains("missing.toml"), "{last}");
}

#[tokio::test]
async fn a_holder_whose_lease_connection_goes_silent_stops_then_takes_the_lease_again() {
    let p = accounts("").await;
    let port = ficus_testkit::Cluster::shared().port;
    let proxy = Proxy::to(port).await;
    let run = proxy.run(&p, port);
    wait_streaming(&p).await;
    p.db.exec("insert into accounts select g, 'before', 1 from generate_series(1, 10) g")
        .await;
    p.wait_events(10).await;
    // The lease connection is the first ficus makes: it alone goes silent (a hung proxy).
    proxy.freeze_one(1);
    p.db.exec("insert into accounts select g, 'meanwhile', 1 from generate_series(11, 20) g")
        .await;
    let log = wait_for("the lease taken again", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(p.path("run.log")).unwrap_or_default();
        log.contains("took the lease: this ficus streams now").then_some(log)
    })
    .await;
    assert!(log.contains("lost the lease: stopping"), "{log}");
    assert!(log.contains("the lease connection did not answer within 5s"), "{log}");
    let events = p.wait_events(20).await;
    let opened: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "AccountOpened")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(opened.len(), 20);
    stop(run).await;
}
