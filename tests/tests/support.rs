//! A ficus project in a temporary directory, against a database of the shared cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ficus_testkit::{Cluster, TestDb, wait_for, workspace_bin};
use serde_json::Value;

pub struct Project {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    /// Files the test wrote (the config may hold a store's URL): not ficus's output.
    written: std::cell::RefCell<Vec<PathBuf>>,
}

/// Every file the project's runs wrote (logs, events, state; not the files the test wrote) is read
/// for the source's password when the test ends.
impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let written = self.written.borrow();
        for entry in walk(self.dir.path()) {
            if written.contains(&entry) {
                continue;
            }
            if let Ok(bytes) = std::fs::read(&entry) {
                ficus_testkit::assert_no_password(&entry.display().to_string(), &bytes);
            }
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A command's output, which must not show the source's password: every ficus command of the
/// tests is run through it (or its log is a file of the project, read when the test ends).
pub trait Scanned {
    fn out(&mut self) -> Output;
}

impl Scanned for Command {
    fn out(&mut self) -> Output {
        let out = self.output().unwrap();
        ficus_testkit::assert_no_password("a command's stdout", &out.stdout);
        ficus_testkit::assert_no_password("a command's stderr", &out.stderr);
        out
    }
}

impl Project {
    /// A new database with `schema` applied, and a project directory whose
    /// ficus.toml streams into events.jsonl through a slot named after the database.
    pub async fn new(schema: &str) -> Project {
        Project::on(Cluster::shared(), schema).await
    }

    pub async fn on(cluster: &'static Cluster, schema: &str) -> Project {
        let db = cluster.database().await;
        if !schema.is_empty() {
            db.exec(schema).await;
        }
        let dir = tempfile::Builder::new().prefix("ficus-project-").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mappings")).unwrap();
        let p = Project {
            db,
            dir,
            written: Default::default(),
        };
        p.config("");
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes ficus.toml; `extra` is appended (more sinks, say).
    pub fn config(&self, extra: &str) {
        self.write(
            "ficus.toml",
            &format!(
                "[source]\nname = \"shop\"\nslot = \"{0}\"\npublication = \"ficus\"\n\n[[sink]]\ntype = \"jsonl\"\npath = \"events.jsonl\"\n{extra}",
                self.db.name
            ),
        );
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
        self.written.borrow_mut().push(self.path(name));
    }

    pub fn mapping(&self, name: &str, text: &str) {
        self.write(&format!("mappings/{name}"), text);
    }

    /// The ficus command, run in the project directory against the test database.
    pub fn ficus(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_bin("ficus"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("FICUS_SOURCE_URL", self.db.url())
            .env(
                "FICUS_LOG",
                std::env::var("FICUS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        cmd
    }

    /// `ficus ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.ficus(args).out();
        assert!(
            out.status.success(),
            "ficus {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `ficus run --until-caught-up`, which must succeed.
    pub fn catch_up(&self) -> Output {
        self.ok(&["run", "--until-caught-up"])
    }

    /// `ficus run` in the background; its stderr goes to run.log.
    pub fn spawn_run(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("run.log"))
            .unwrap();
        self.ficus(&["run"]).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    /// The events in events.jsonl (or another file).
    pub fn events(&self) -> Vec<Value> {
        self.events_in("events.jsonl")
    }

    pub fn events_in(&self, file: &str) -> Vec<Value> {
        read_events(&self.path(file))
    }

    /// Waits until events.jsonl holds `n` events with distinct ids.
    pub async fn wait_events(&self, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} distinct events"), Duration::from_secs(60), || async {
            let events = self.events();
            let ids: std::collections::HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
            (ids.len() >= n).then_some(events.clone())
        })
        .await
    }

    /// The slot's confirmed position, as text.
    pub async fn confirmed_flush(&self) -> Option<String> {
        let mut conn = self.db.connect().await;
        sqlx::query_scalar::<_, Option<String>>(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
        )
        .bind(&self.db.name)
        .fetch_optional(&mut conn)
        .await
        .unwrap()
        .flatten()
    }

    pub async fn scalar(&self, sql: &str) -> String {
        let mut conn = self.db.connect().await;
        sqlx::query_scalar::<_, String>(sql).fetch_one(&mut conn).await.unwrap()
    }
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ficus run --until-caught-up`, which must fail with exit 1: its stderr.
pub fn refused(p: &Project) -> String {
    let out = p.ficus(&["run", "--until-caught-up"]).out();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line cut off by kill -9 is not an event; everything before it is.
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Events with what differs between runs (ids, times, positions) replaced, as pretty JSON.
pub fn redacted(events: &[Value]) -> String {
    let mut events = events.to_vec();
    for e in &mut events {
        for (field, mark) in [("id", "[id]"), ("time", "[time]"), ("lsn", "[lsn]"), ("txid", "[txid]")] {
            assert!(e.get(field).is_some(), "event without {field}: {e}");
            e[field] = Value::String(mark.into());
        }
        if e.get("backfill").is_some() {
            e["backfill"] = Value::String("[backfill]".into());
        }
        if let Some(data) = e.get_mut("data").and_then(Value::as_object_mut) {
            for (k, v) in data.iter_mut() {
                if k.ends_with("_at") && v.is_string() {
                    *v = Value::String("[timestamp]".into());
                }
            }
        }
    }
    serde_json::to_string_pretty(&events).unwrap()
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Waits for a child with a timeout; returns its exit status.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    wait_for("ficus to exit", timeout, || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await
}

/// A child process killed when dropped: a failing test leaves no ficus behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Inserts `txs` transactions of `rows` rows into `ticks (id, n)` (ids from 1) while `ficus run`
/// is started and `kill -9`ed over and over, at least 3 times; returns how many times.
pub async fn insert_ticks_while_killing(p: &Project, txs: i64, rows: i64) -> u64 {
    let writer = {
        let url = p.db.url();
        tokio::spawn(async move {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            for t in 0..txs {
                let sql = format!(
                    "insert into ticks (id, n) select g, {t} from generate_series({}, {}) g",
                    t * rows + 1,
                    (t + 1) * rows
                );
                conn.execute(sql.as_str()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut kills = 0;
    while !writer.is_finished() || kills < 3 {
        let mut child = p.spawn_run();
        tokio::time::sleep(Duration::from_millis(400 + 150 * kills)).await;
        signal(&child, libc::SIGKILL);
        child.wait().unwrap();
        kills += 1;
    }
    writer.await.unwrap();
    kills
}
