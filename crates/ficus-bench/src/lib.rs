//! `ficus bench`: how fast ficus does its jobs, each as a ratio to what Postgres' own tools do
//! with the same rows in the same run, on a throwaway cluster started from the local server
//! binaries (docs/performance.md).
//!
//! - **stream**: the same committed row changes (inserts, updates, deletes; transactions of 1 to
//!   10,000 rows) into jsonl, the SQLite store (with and without the archive) and the Postgres
//!   store, each from a slot of its own created at the same moment as the slots `pg_recvlogical`
//!   drains before and after them;
//! - **backfill**: a table's rows, against `COPY (SELECT …) TO STDOUT` before and after;
//! - **replay**: the SQLite store's events to stdout, against a plain scan of the same rows.
//!
//! Every ficus run is a process of its own (the binary given), so its peak RSS is its own. The
//! numbers are a report, never an assertion: the machine's noise is in them.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use sqlx::{ConnectOptions, Connection, PgConnection, SqliteConnection};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Row changes streamed, and rows backfilled.
    pub rows: u64,
    /// The ficus binary to measure.
    pub ficus: PathBuf,
    /// Keep the work directory (configs, stores, logs) instead of removing it.
    pub keep: bool,
    /// How long the steady writer of the latency measure writes.
    pub latency_for: Duration,
}

/// One measured path.
#[derive(Clone, Debug)]
pub struct Measure {
    /// What ficus did.
    pub path: String,
    /// Its rate, per second.
    pub rate: f64,
    /// What the rate counts ("changes", "rows", "events").
    pub unit: &'static str,
    /// The reference, measured in the same run.
    pub reference: &'static str,
    /// The reference's rate, per second (the mean of its runs before and after ficus's).
    pub reference_rate: f64,
    /// The ratio the issue asks for, when there is one.
    pub target: Option<f64>,
    /// ficus's peak resident memory, in bytes.
    pub peak_rss: u64,
}

impl Measure {
    /// ficus's rate over the reference's.
    pub fn ratio(&self) -> f64 {
        self.rate / self.reference_rate
    }

    /// Whether the ratio reaches the target (`None`: there is none).
    pub fn met(&self) -> Option<bool> {
        self.target.map(|t| self.ratio() >= t)
    }
}

/// What a bench measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub rows: u64,
    /// The changes the stream workload made (inserts, updates, deletes), and its transactions.
    pub changes: u64,
    pub transactions: u64,
    /// The machine: CPUs, memory, Postgres' version.
    pub machine: String,
    pub measures: Vec<Measure>,
    /// Commit → durable at a steady write rate, per sink.
    pub latencies: Vec<Latency>,
    /// Peak RSS: one transaction of `rows` inserts streamed, per sink; the workload streamed into
    /// a broker that is killed.
    pub memory: Vec<Memory>,
}

/// A run whose peak RSS is bounded: one large transaction into a sink, a broker that is down.
#[derive(Clone, Debug)]
pub struct Memory {
    pub path: String,
    pub rows: u64,
    pub seconds: f64,
    pub peak_rss: u64,
}

/// The memory target: peak RSS at most this many MiB.
const MEMORY_TARGET_MIB: u64 = 100;

/// Commit → durable at a steady write rate, into one sink.
#[derive(Clone, Debug)]
pub struct Latency {
    pub path: String,
    /// Commits written at the steady rate (and seen durable).
    pub commits: usize,
    /// Row changes a second the writer made.
    pub rate: f64,
    /// Milliseconds from each commit (its time in the commit record) to its events durable.
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub peak_rss: u64,
}

/// The latency target: p99 at most this many milliseconds.
const LATENCY_TARGET_MS: f64 = 20.0;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ficus bench: {} row changes in {} transactions (1 to 10,000 rows each), {} rows backfilled; {}",
            self.changes, self.transactions, self.rows, self.machine
        )?;
        writeln!(f)?;
        writeln!(f, "| path | ficus | reference | ratio | target | peak RSS |")?;
        writeln!(f, "| --- | ---: | --- | ---: | ---: | ---: |")?;
        for m in &self.measures {
            let target = match (m.target, m.met()) {
                (Some(t), Some(true)) => format!("≥ {t:.1} ✓"),
                (Some(t), _) => format!("≥ {t:.1} ✗"),
                (None, _) => String::new(),
            };
            writeln!(
                f,
                "| {} | {} {}/s | {} {} {}/s | {:.2} | {} | {} MiB |",
                m.path,
                thousands(m.rate),
                m.unit,
                m.reference,
                thousands(m.reference_rate),
                m.unit,
                m.ratio(),
                target,
                m.peak_rss / (1024 * 1024)
            )?;
        }
        if !self.memory.is_empty() {
            writeln!(f)?;
            writeln!(f, "| memory | rows | time | peak RSS | target |")?;
            writeln!(f, "| --- | ---: | ---: | ---: | ---: |")?;
            for m in &self.memory {
                let mib = m.peak_rss / (1024 * 1024);
                let met = if mib <= MEMORY_TARGET_MIB { "✓" } else { "✗" };
                writeln!(
                    f,
                    "| {} | {} | {:.1} s | {mib} MiB | ≤ {MEMORY_TARGET_MIB} MiB {met} |",
                    m.path,
                    thousands(m.rows as f64),
                    m.seconds
                )?;
            }
        }
        if self.latencies.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(
            f,
            "| commit → durable | commits | changes/s | p50 | p99 | max | target | peak RSS |"
        )?;
        writeln!(f, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
        for l in &self.latencies {
            let met = if l.p99 <= LATENCY_TARGET_MS { "✓" } else { "✗" };
            writeln!(
                f,
                "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | p99 ≤ {LATENCY_TARGET_MS:.0} ms {met} | {} MiB |",
                l.path,
                l.commits,
                thousands(l.rate),
                l.p50,
                l.p99,
                l.max,
                l.peak_rss / (1024 * 1024)
            )?;
        }
        Ok(())
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The stream workload's table: the column types a monolith has.
const SCHEMA: &str = "
create table orders (
    id bigserial primary key,
    customer_id int not null,
    status text not null,
    total numeric(12,2) not null,
    placed_at timestamptz not null default now(),
    note text,
    attrs jsonb
);
alter table orders replica identity full;
create table backfilled (like orders including all);
create table bench_done (changes bigint not null, transactions bigint not null);
";

/// Mappings with plain references and CEL predicates, one for each kind of change.
const STREAM_MAPPINGS: &str = r#"
[[event]]
name = "OrderPlaced"
table = "orders"
on = ["insert"]
key = "new.id"
data = { order_id = "new.id", customer_id = "new.customer_id", total = "new.total", placed_at = "new.placed_at", attrs = "new.attrs" }

[[event]]
name = "BigOrderPlaced"
table = "orders"
on = ["insert"]
when = "new.total >= 900.0"
key = "new.id"
data = { order_id = "new.id", total = "new.total" }

[[event]]
name = "OrderPaid"
table = "orders"
on = ["update"]
when = "old.status != 'paid' && new.status == 'paid'"
key = "new.id"
data = { order_id = "new.id", total = "new.total" }

[[event]]
name = "OrderCancelled"
table = "orders"
on = ["delete"]
key = "old.id"
data = { order_id = "old.id", note = "old.note" }
"#;

/// The backfill's mapping: the whole row, as the backfill benchmark always had it.
const BACKFILL_MAPPINGS: &str = r#"
[[event]]
name = "OrderSeen"
table = "backfilled"
on = ["insert", "snapshot"]
key = "new.id"
data = "new"
"#;

/// Transaction sizes, in turn: 1 to 10,000 rows.
const SIZES: &str = "array[1, 10, 100, 1000, 10000, 1, 50, 500, 5000, 2]";

/// The stream workload: `n` row changes, about 60 % inserts, 30 % updates (placed → paid) and
/// 10 % deletes, in transactions of the sizes above; what it did is left in `bench_done`.
fn workload(n: u64) -> String {
    format!(
        "do $$
declare
    done bigint := 0; txns bigint := 0; i int := 0; size int; k int; c bigint;
    sizes int[] := {SIZES};
    paid bigint := 0; gone bigint := 0; top bigint := 0;
begin
    while done < {n} loop
        size := least(sizes[1 + i % array_length(sizes, 1)], {n} - done);
        i := i + 1;
        k := greatest(1, ceil(size * 0.6)::int);
        insert into orders (customer_id, status, total, note, attrs)
        select (random() * 10000)::int, 'placed', (random() * 1000)::numeric(12, 2), 'note ' || g,
               jsonb_build_object('channel', 'web', 'items', g % 7, 'gift', g % 5 = 0)
        from generate_series(1, k) g;
        top := top + k;
        done := done + k;
        k := least(floor(size * 0.3)::int, top - paid);
        if k > 0 then
            update orders set status = 'paid' where id > paid and id <= paid + k;
            get diagnostics c = row_count;
            paid := paid + k; done := done + c;
        end if;
        k := least(size - greatest(1, ceil(size * 0.6)::int) - floor(size * 0.3)::int, paid - gone);
        if k > 0 then
            delete from orders where id > gone and id <= gone + k;
            get diagnostics c = row_count;
            gone := gone + k; done := done + c;
        end if;
        txns := txns + 1;
        commit;
    end loop;
    insert into bench_done values (done, txns);
    commit;
end $$"
    )
}

/// One transaction of `rows` new orders into `table` (`orders`, or `backfilled`, its copy), their
/// notes `NOTE N`.
fn insert_orders(table: &str, note: &str, rows: u64) -> String {
    format!(
        "insert into {table} (customer_id, status, total, note, attrs)
         select (random() * 10000)::int, 'placed', (random() * 1000)::numeric(12, 2), '{note} ' || g,
                jsonb_build_object('channel', 'web', 'items', g % 7)
         from generate_series(1, {rows}) g"
    )
}

/// A ficus project's config: the source's `slot` and publication, `mappings`, the `sinks`.
fn config(url: &str, slot: &str, mappings: &str, sinks: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\nmappings = [\"{mappings}/*.toml\"]\n\n{sinks}"
    )
}

/// A process's run: how long, and its peak resident memory.
struct Ran {
    elapsed: Duration,
    peak_rss: u64,
}

/// Runs `cmd` (stdout to `out`, stderr to `log`) to its end, measuring it with `wait4`.
fn measured(cmd: &mut Command, out: &Path, log: &Path) -> anyhow::Result<Ran> {
    let running = Running::start(cmd, out, log)?;
    running.wait()
}

/// A process started, to be waited for with `wait4` (never with `Child::wait`).
struct Running {
    pid: libc::pid_t,
    began: Instant,
    what: String,
    log: PathBuf,
}

impl Running {
    /// Starts `cmd`, its stdout to `out`, its stderr to `log`.
    fn start(cmd: &mut Command, out: &Path, log: &Path) -> anyhow::Result<Running> {
        let stdout = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let began = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Running {
            pid: child.id() as libc::pid_t,
            began,
            what: format!("{cmd:?}"),
            log: log.to_owned(),
        })
    }

    /// Asks it to stop (SIGTERM), as an operator would.
    fn stop(&self) {
        // SAFETY: sending a signal to our own child, not waited for yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
    }

    /// Waits for its end: how long it ran and its peak RSS; an error unless it exited with 0.
    fn wait(self) -> anyhow::Result<Ran> {
        let (status, ran) = self.reap(0)?.expect("a blocking wait4 returns once it has ended");
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            let said = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} failed (wait status {status}):\n{said}", self.what);
        }
        Ok(ran)
    }

    /// Waits for its end, however it ends (killed if it has not ended within `limit`).
    fn wait_ending(self, limit: Duration) -> anyhow::Result<Ran> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((_, ran)) = self.reap(libc::WNOHANG)? {
                return Ok(ran);
            }
            if Instant::now() > deadline {
                // SAFETY: our child, not waited for yet.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let (_, ran) = self.reap(0)?.expect("a blocking wait4 returns once it has ended");
                return Ok(ran);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `wait4` with `options`: its wait status, how long it ran and its peak RSS; `None` while
    /// it runs (with `WNOHANG`).
    fn reap(&self, options: libc::c_int) -> anyhow::Result<Option<(libc::c_int, Ran)>> {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not waited for yet (its `Child` is never waited on).
        let waited = unsafe { libc::wait4(self.pid, &mut status, options, &mut usage) };
        if waited == 0 {
            return Ok(None);
        }
        if waited != self.pid {
            bail!("waiting for {}: {}", self.what, std::io::Error::last_os_error());
        }
        Ok(Some((
            status,
            Ran {
                elapsed: self.began.elapsed(),
                peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            },
        )))
    }
}

struct Bench {
    ficus: PathBuf,
    pg_bin: PathBuf,
    cluster: ficus_testkit::Cluster,
    dir: tempfile::TempDir,
}

impl Bench {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    async fn sql(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        let mut conn = pg(&self.cluster.url(database)).await?;
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("running {sql}"))?;
        conn.close().await?;
        Ok(())
    }

    /// `ficus ARGS` in the bench's directory, its stdout to `out` (a file name there, or
    /// /dev/null).
    fn ficus(&self, args: &[&str], out: &str) -> anyhow::Result<Ran> {
        self.start_ficus(args, out)?.wait()
    }

    /// `ficus ARGS` started, as [`Bench::ficus`] runs it.
    fn start_ficus(&self, args: &[&str], out: &str) -> anyhow::Result<Running> {
        let out = if out == "/dev/null" {
            PathBuf::from(out)
        } else {
            self.path(out)
        };
        let log = self.path(&format!("{}.log", args.join("_").replace(['/', '.'], "_")));
        Running::start(
            Command::new(&self.ficus)
                .args(args)
                .current_dir(self.dir.path())
                .env("FICUS_LOG", "warn"),
            &out,
            &log,
        )
    }

    /// Writes the config `bench_NAME.toml` (slot and publication `bench_NAME`, the stream
    /// mappings, `sinks`) and runs it once until caught up: its slot exists from now on.
    fn prepare(&self, name: &str, url: &str, sinks: &str) -> anyhow::Result<()> {
        self.write(
            &format!("bench_{name}.toml"),
            &config(url, &format!("bench_{name}"), "stream", sinks),
        )?;
        self.caught_up(name)?;
        Ok(())
    }

    /// `ficus run --until-caught-up` of the config [`Bench::prepare`] wrote.
    fn caught_up(&self, name: &str) -> anyhow::Result<Ran> {
        self.ficus(
            &["run", "-c", &format!("bench_{name}.toml"), "--until-caught-up"],
            "/dev/null",
        )
    }

    /// Commit → durable into one sink: ficus streams (config `name`) while a second connection
    /// commits [`ROWS_PER_COMMIT`] inserts every [`COMMIT_EVERY`] for `duration`; every
    /// millisecond the bench looks at what the sink holds, and each commit's latency is from its
    /// time in the commit record (the events' `time`) to when the last of its events was seen.
    async fn latency(&self, name: &str, path: &str, sink: &str, duration: Duration) -> anyhow::Result<Latency> {
        let (sinks, store) = match sink {
            "jsonl" => (format!("[[sink]]\ntype = \"jsonl\"\npath = \"{name}.jsonl\"\n"), false),
            _ => (format!("[[sink]]\ntype = \"store\"\npath = \"{name}.db\"\n"), true),
        };
        // The slot and the publication (and the store), made before ficus streams.
        self.prepare(name, &self.cluster.url("bench"), &sinks)?;
        let watched = if store {
            Watched::store(&self.path(&format!("{name}.db"))).await?
        } else {
            Watched::jsonl(self.path(&format!("{name}.jsonl")))
        };
        let ficus = self.start_ficus(&["run", "-c", &format!("bench_{name}.toml")], "/dev/null")?;
        let measured = self.steady(watched, duration).await;
        ficus.stop();
        let ran = ficus.wait()?;
        let (commits, rate, mut latencies) = measured?;
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Ok(Latency {
            path: path.to_owned(),
            commits,
            rate,
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            peak_rss: ran.peak_rss,
        })
    }

    /// Writes at a steady rate while ficus streams, and watches the sink: the commits, the rate
    /// written (changes/s), each commit's latency (ms).
    async fn steady(&self, mut watched: Watched, duration: Duration) -> anyhow::Result<(usize, f64, Vec<f64>)> {
        let insert = insert_orders("orders", "steady", u64::from(ROWS_PER_COMMIT));
        let mut conn = pg(&self.cluster.url("bench")).await?;
        // Warm-up: one commit seen in the sink says ficus streams.
        sqlx::query(&insert).execute(&mut conn).await?;
        let deadline = Instant::now() + WAIT_FOR_SINK;
        while watched.seen().await?.is_empty() {
            if Instant::now() > deadline {
                bail!("ficus did not deliver a commit within {WAIT_FOR_SINK:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let from = micros_now();
        let mut writer = tokio::spawn(async move {
            let began = Instant::now();
            let mut tick = tokio::time::interval(COMMIT_EVERY);
            let mut commits = 0;
            while began.elapsed() < duration {
                tick.tick().await;
                sqlx::query(&insert).execute(&mut conn).await?;
                commits += 1;
            }
            let rate = (commits * ROWS_PER_COMMIT as usize) as f64 / began.elapsed().as_secs_f64();
            conn.close().await?;
            anyhow::Ok((commits, rate))
        });
        let mut latency = std::collections::HashMap::new();
        let mut written = None;
        let mut deadline = None;
        loop {
            let now = micros_now();
            for (lsn, time) in watched.seen().await? {
                if time >= from {
                    let ms = (now - time) as f64 / 1000.0;
                    let slowest = latency.entry(lsn).or_insert(ms);
                    *slowest = ms.max(*slowest);
                }
            }
            if written.is_none() && writer.is_finished() {
                written = Some((&mut writer).await.context("the steady writer")??);
                deadline = Some(Instant::now() + WAIT_FOR_SINK);
            }
            if let Some((commits, _)) = written {
                if latency.len() >= commits {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    bail!(
                        "ficus delivered {} of {commits} commits within {WAIT_FOR_SINK:?} of the last",
                        latency.len()
                    );
                }
            }
            tokio::time::sleep(POLL).await;
        }
        let (commits, rate) = written.expect("the loop ends once written");
        Ok((commits, rate, latency.into_values().collect()))
    }

    /// A Postgres client program, pointed at the cluster as `postgres`.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.pg_bin.join(program));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.cluster.port.to_string(),
            "-U",
            "postgres",
        ]);
        cmd
    }

    /// `pg_recvlogical` draining `slot` up to `end`.
    fn recvlogical(&self, slot: &str, publication: &str, end: &str) -> anyhow::Result<Ran> {
        measured(
            self.client("pg_recvlogical")
                .args(["-d", "bench", "--slot", slot, "--start", "--no-loop", "-f", "-"])
                .args(["-o", "proto_version=1", "-o"])
                .arg(format!("publication_names={publication}"))
                .args(["--endpos", end]),
            Path::new("/dev/null"),
            &self.path(&format!("{slot}.log")),
        )
    }

    /// `COPY (SELECT * FROM backfilled ORDER BY id) TO STDOUT`, through psql.
    fn copy(&self) -> anyhow::Result<Ran> {
        measured(
            self.client("psql").args([
                "-d",
                "bench",
                "-c",
                "\\copy (select * from backfilled order by id) to stdout",
            ]),
            Path::new("/dev/null"),
            &self.path("copy.log"),
        )
    }
}

/// The steady writer of the latency measure commits this many inserts...
const ROWS_PER_COMMIT: u32 = 50;
/// ... this often: 5,000 changes a second.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How often the sink is looked at.
const POLL: Duration = Duration::from_millis(1);
/// The broker sinks measured when their server's binary is installed: name, path, binary.
const BROKERS: [(&str, &str, &str); 3] = [
    ("nats", "stream → NATS JetStream", "nats-server"),
    ("redis", "stream → Redis stream (appendfsync always)", "redis-server"),
    ("kafka", "stream → Kafka (tansu)", "tansu"),
];

/// The sink settings of broker `name` on `port`.
fn broker_sink(name: &str, port: u16) -> String {
    let settings = match name {
        "nats" => format!(
            "type = \"nats\"\nurl = \"nats://127.0.0.1:{port}\"\nsubject = \"orders.{{type}}\"\n[sink.stream]\nname = \"ORDERS\"\ncreate = true"
        ),
        "redis" => format!("type = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nkey = \"orders\""),
        _ => format!("type = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"orders\"\ncreate_topics = true"),
    };
    format!("[[sink]]\n{settings}\n")
}

/// How long ficus streams into a NATS sink whose server was killed, before it is stopped.
const BROKER_DOWN_FOR: Duration = Duration::from_secs(5);
/// How long ficus may take to deliver what was written, before the bench gives up.
const WAIT_FOR_SINK: Duration = Duration::from_secs(60);

/// A connection to the cluster, its statements not logged (the workload's are slow on purpose).
async fn pg(url: &str) -> anyhow::Result<PgConnection> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(options.disable_statement_logging().connect().await?)
}

fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Where the latency measure looks for what a sink holds.
enum Watched {
    /// A jsonl file: a line is there once written (the sink's flush writes the lines of its
    /// commits, then fsyncs).
    Jsonl { file: PathBuf, read: u64, partial: Vec<u8> },
    /// The SQLite store: an event is there once its append committed (WAL, `synchronous = FULL`).
    Store { conn: SqliteConnection, after: i64 },
}

impl Watched {
    fn jsonl(file: PathBuf) -> Watched {
        Watched::Jsonl {
            file,
            read: 0,
            partial: Vec::new(),
        }
    }

    async fn store(file: &Path) -> anyhow::Result<Watched> {
        let mut conn = SqliteConnection::connect(&format!("sqlite:{}?mode=ro", file.display())).await?;
        let after: i64 = sqlx::query_scalar("select coalesce(max(position), 0) from events")
            .fetch_one(&mut conn)
            .await?;
        Ok(Watched::Store { conn, after })
    }

    /// The events that appeared since the last look: their commit's LSN and time (µs).
    async fn seen(&mut self) -> anyhow::Result<Vec<(i64, i64)>> {
        match self {
            Watched::Jsonl { file, read, partial } => {
                use std::io::{Read, Seek, SeekFrom};
                let Ok(mut f) = File::open(&*file) else {
                    return Ok(Vec::new()); // not written yet
                };
                f.seek(SeekFrom::Start(*read))?;
                let n = f.read_to_end(partial)?;
                *read += n as u64;
                let complete = partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                let lines: Vec<u8> = partial.drain(..complete).collect();
                let mut seen = Vec::new();
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    #[derive(serde::Deserialize)]
                    struct Line<'a> {
                        time: &'a str,
                        lsn: &'a str,
                    }
                    let line: Line<'_> = serde_json::from_slice(line).context("an event line of the jsonl sink")?;
                    let time = chrono::DateTime::parse_from_rfc3339(line.time)
                        .with_context(|| format!("the time {:?}", line.time))?
                        .timestamp_micros();
                    let (hi, lo) = line.lsn.split_once('/').context("an LSN")?;
                    let lsn = (i64::from_str_radix(hi, 16)? << 32) | i64::from_str_radix(lo, 16)?;
                    seen.push((lsn, time));
                }
                Ok(seen)
            }
            Watched::Store { conn, after } => {
                let rows: Vec<(i64, i64, i64)> =
                    sqlx::query_as("select position, lsn, time_us from events where position > ? order by position")
                        .bind(*after)
                        .fetch_all(&mut *conn)
                        .await?;
                if let Some(last) = rows.last() {
                    *after = last.0;
                }
                Ok(rows.into_iter().map(|(_, lsn, time)| (lsn, time)).collect())
            }
        }
    }
}

/// Runs the bench; `progress` hears what it is doing.
pub async fn run(options: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    progress("starting a throwaway Postgres cluster");
    // Commits flush the WAL and wake the WAL senders, as on a production server (the test
    // clusters commit asynchronously: the WAL writer would send a commit up to 200 ms later).
    // Without fsync still: the server's disk is not what is measured.
    let settings = ["-c", "wal_level=logical", "-c", "synchronous_commit=on"];
    let cluster = tokio::task::spawn_blocking(move || ficus_testkit::Cluster::start(&settings))
        .await
        .context("starting the throwaway cluster")?;
    let bench = Bench {
        ficus: options.ficus.clone(),
        pg_bin: ficus_testkit::pg_bin(),
        cluster,
        dir: tempfile::Builder::new().prefix("ficus-bench-").tempdir()?,
    };
    bench.sql("postgres", "create database bench").await?;
    bench.sql("postgres", "create database store").await?;
    bench.sql("bench", SCHEMA).await?;
    let url = bench.cluster.url("bench");
    let mut measures = Vec::new();

    // The backfill first, alone on the server.
    let rows = options.rows;
    progress(&format!("backfill: {rows} rows"));
    bench.write("backfill/orders.toml", BACKFILL_MAPPINGS)?;
    bench.write(
        "backfill.toml",
        &config(&url, "bench_backfill", "backfill", "[[sink]]\ntype = \"stdout\"\n"),
    )?;
    bench.sql("bench", &insert_orders("backfilled", "note", rows)).await?;
    bench.sql("bench", "vacuum analyze backfilled").await?;
    // The slot and the publication; its first start backfills once too (a warm-up).
    bench.ficus(&["run", "-c", "backfill.toml", "--until-caught-up"], "/dev/null")?;
    let before = bench.copy()?;
    let ficus = bench.ficus(&["backfill", "-c", "backfill.toml"], "/dev/null")?;
    let after = bench.copy()?;
    measures.push(measure(
        "backfill → stdout",
        "rows",
        rows,
        &ficus,
        "COPY … TO STDOUT",
        &before,
        &after,
        Some(0.5),
    ));
    bench.ficus(&["teardown", "-c", "backfill.toml"], "/dev/null")?;

    // The stream: every slot created before the first change.
    let stream_sinks: [(&str, &str, String, Option<f64>); 4] = [
        (
            "jsonl",
            "stream → jsonl (fsync)",
            "[[sink]]\ntype = \"jsonl\"\npath = \"events.jsonl\"\n".into(),
            Some(0.9),
        ),
        (
            "store",
            "stream → SQLite store",
            "[[sink]]\ntype = \"store\"\npath = \"store.db\"\n".into(),
            Some(0.6),
        ),
        (
            "archive",
            "stream → SQLite store + archive",
            "[[sink]]\ntype = \"store\"\npath = \"archive.db\"\narchive = true\n".into(),
            None,
        ),
        (
            "pgstore",
            "stream → Postgres store",
            format!("[[sink]]\ntype = \"store\"\nurl = \"{}\"\n", bench.cluster.url("store")),
            Some(0.5),
        ),
    ];
    // The broker sinks the bench can start a server of its own for, each measured against the
    // jsonl sink's rate in the same run; and one more NATS server, to be taken down under ficus.
    progress("stream: starting the brokers that are installed");
    let mut servers = Vec::new();
    let mut brokers: Vec<(&str, &str, String)> = Vec::new();
    for (name, path, binary) in BROKERS {
        if ficus_testkit::installed(binary).is_none() {
            continue;
        }
        let server = match name {
            "nats" => ficus_testkit::Server::nats(),
            "redis" => ficus_testkit::Server::redis(&[]),
            _ => ficus_testkit::Server::kafka(&[]),
        };
        brokers.push((name, path, broker_sink(name, server.port)));
        servers.push(server);
    }
    let mut down = ficus_testkit::installed("nats-server").map(|_| ficus_testkit::Server::nats());
    bench.write("stream/orders.toml", STREAM_MAPPINGS)?;
    for (name, _, sinks) in &brokers {
        bench.prepare(name, &url, sinks)?;
    }
    if let Some(server) = &down {
        bench.prepare("down", &url, &broker_sink("nats", server.port))?;
    }
    for (name, _, sinks, _) in &stream_sinks {
        bench.prepare(name, &url, sinks)?;
    }
    bench
        .sql(
            "bench",
            "select pg_create_logical_replication_slot('recv_before', 'pgoutput');
             select pg_create_logical_replication_slot('recv_after', 'pgoutput');",
        )
        .await?;
    progress(&format!("stream: writing {} row changes", options.rows));
    bench.sql("bench", &workload(options.rows)).await?;
    let mut conn = pg(&url).await?;
    let (changes, transactions): (i64, i64) = sqlx::query_as("select changes, transactions from bench_done")
        .fetch_one(&mut conn)
        .await?;
    let end: String = sqlx::query_scalar("select pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    let version: String = sqlx::query_scalar("show server_version").fetch_one(&mut conn).await?;
    conn.close().await?;
    let changes = changes as u64;

    progress("stream: pg_recvlogical, then ficus into each sink, then pg_recvlogical again");
    let before = bench.recvlogical("recv_before", "bench_jsonl", &end)?;
    let mut runs = Vec::new();
    for (name, path, _, target) in &stream_sinks {
        progress(&format!("stream: {path}"));
        let ran = bench.caught_up(name)?;
        runs.push((*path, ran, *target));
    }
    let after = bench.recvlogical("recv_after", "bench_jsonl", &end)?;
    for (path, ran, target) in &runs {
        measures.push(measure(
            path,
            "changes",
            changes,
            ran,
            "pg_recvlogical",
            &before,
            &after,
            *target,
        ));
    }
    let jsonl_rate = measures
        .iter()
        .find(|m| m.path.contains("jsonl"))
        .map(|m| m.rate)
        .context("the jsonl sink's rate, the brokers' reference")?;
    for (name, path, _) in &brokers {
        progress(&format!("stream: {path}"));
        let ran = bench.caught_up(name)?;
        let rate = changes as f64 / ran.elapsed.as_secs_f64();
        measures.push(Measure {
            path: path.to_string(),
            rate,
            unit: "changes",
            reference: "the jsonl sink",
            reference_rate: jsonl_rate,
            target: None,
            peak_rss: ran.peak_rss,
        });
    }
    drop(servers);

    // A broker that goes down under ficus: it reads on until its events in flight reach
    // `max_in_flight`, then waits (backpressure), holding no more.
    let mut memory = Vec::new();
    if let Some(server) = &mut down {
        progress("stream: a NATS sink whose server is killed while ficus streams into it");
        let ficus = bench.start_ficus(&["run", "-c", "bench_down.toml"], "/dev/null")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.stop();
        tokio::time::sleep(BROKER_DOWN_FOR).await;
        ficus.stop();
        let ran = ficus.wait_ending(Duration::from_secs(60))?;
        memory.push(Memory {
            path: "the workload → NATS, its server killed".into(),
            rows: changes,
            seconds: ran.elapsed.as_secs_f64(),
            peak_rss: ran.peak_rss,
        });
    }
    drop(down);

    // Replay the SQLite store's events, against a plain scan of its rows.
    progress("replay: the SQLite store to stdout");
    let mut replay = std::fs::read_to_string(bench.path("bench_store.toml"))?;
    replay.push_str("\n[[sink]]\nname = \"out\"\ntype = \"stdout\"\n");
    bench.write("replay.toml", &replay)?;
    let events = stored_events(&bench.path("store.db")).await?;
    let before = scan(&bench.path("store.db")).await?;
    let ficus = bench.ficus(&["replay", "-c", "replay.toml", "--to-sink", "out"], "/dev/null")?;
    let after = scan(&bench.path("store.db")).await?;
    measures.push(measure(
        "replay → stdout",
        "events",
        events,
        &ficus,
        "SQLite scan",
        &before,
        &after,
        Some(0.8),
    ));

    // One transaction of `rows` inserts: memory stays bounded (backpressure, not buffering).
    progress(&format!("stream: one transaction of {rows} rows"));
    let big = [
        (
            "big_jsonl",
            "one transaction → jsonl (fsync)",
            "[[sink]]\ntype = \"jsonl\"\npath = \"big.jsonl\"\n",
        ),
        (
            "big_store",
            "one transaction → SQLite store",
            "[[sink]]\ntype = \"store\"\npath = \"big.db\"\n",
        ),
    ];
    for (name, _, sinks) in &big {
        bench.prepare(name, &url, sinks)?;
    }
    bench.sql("bench", &insert_orders("orders", "big", rows)).await?;
    for (name, path, _) in &big {
        let ran = bench.caught_up(name)?;
        memory.push(Memory {
            path: path.to_string(),
            rows,
            seconds: ran.elapsed.as_secs_f64(),
            peak_rss: ran.peak_rss,
        });
    }

    // Commit → durable at a steady rate, one sink at a time.
    let mut latencies = Vec::new();
    for (name, path, sink) in [
        ("steady_jsonl", "stream → jsonl (fsync)", "jsonl"),
        ("steady_store", "stream → SQLite store", "store"),
    ] {
        progress(&format!(
            "commit → durable: {path}, {} changes/s for {:?}",
            ROWS_PER_COMMIT as u128 * 1000 / COMMIT_EVERY.as_millis(),
            options.latency_for
        ));
        // What the runs before wrote (hundreds of MB of stores and files) is written back by the
        // kernel some 30 s later, in the middle of this measure if nothing flushes it first:
        // every fsync then waits behind it. Each latency measure starts on a disk with nothing
        // dirty, as the other measures start on a server with nothing else to do.
        let synced = Command::new("sync").status().context("sync")?;
        anyhow::ensure!(synced.success(), "sync failed: {synced}");
        latencies.push(bench.latency(name, path, sink, options.latency_for).await?);
    }

    if options.keep {
        let kept = bench.dir.keep();
        progress(&format!("kept the work directory: {}", kept.display()));
    }
    Ok(Report {
        rows,
        changes,
        transactions: transactions as u64,
        machine: machine(&version),
        measures,
        latencies,
        memory,
    })
}

#[allow(clippy::too_many_arguments)]
fn measure(
    path: &str,
    unit: &'static str,
    count: u64,
    ficus: &Ran,
    reference: &'static str,
    before: &Ran,
    after: &Ran,
    target: Option<f64>,
) -> Measure {
    let rate = |r: &Ran| count as f64 / r.elapsed.as_secs_f64();
    Measure {
        path: path.to_owned(),
        rate: rate(ficus),
        unit,
        reference,
        reference_rate: (rate(before) + rate(after)) / 2.0,
        target,
        peak_rss: ficus.peak_rss,
    }
}

async fn stored_events(path: &Path) -> anyhow::Result<u64> {
    let mut conn = SqliteConnection::connect(&format!("sqlite:{}", path.display())).await?;
    let n: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(n as u64)
}

/// The reference for replay: every stored event read in position order and written out, one
/// line each, as plainly as it can be done.
async fn scan(path: &Path) -> anyhow::Result<Ran> {
    let began = Instant::now();
    let mut conn = SqliteConnection::connect(&format!("sqlite:{}?mode=ro", path.display())).await?;
    let mut out = BufWriter::new(File::create("/dev/null")?);
    {
        let mut rows = sqlx::query_scalar::<_, String>("select event from events order by position").fetch(&mut conn);
        while let Some(line) = rows.try_next().await? {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    conn.close().await?;
    Ok(Ran {
        elapsed: began.elapsed(),
        peak_rss: 0,
    })
}

fn machine(version: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or("? GiB".to_owned(), |kb| format!("{} GiB", kb / (1024 * 1024)));
    let build = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    format!("{build}, {cpus} CPUs, {memory}, Postgres {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_with_thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn a_ratio_under_its_target_is_marked() {
        let ran = |secs| Ran {
            elapsed: Duration::from_secs(secs),
            peak_rss: 50 * 1024 * 1024,
        };
        let m = measure(
            "stream → x",
            "changes",
            1000,
            &ran(4),
            "ref",
            &ran(1),
            &ran(1),
            Some(0.6),
        );
        assert_eq!(m.ratio(), 0.25);
        assert_eq!(m.met(), Some(false));
        let report = Report {
            rows: 1000,
            changes: 1000,
            transactions: 3,
            machine: "2 CPUs".into(),
            measures: vec![m],
            latencies: Vec::new(),
            memory: Vec::new(),
        };
        let text = report.to_string();
        assert!(
            text.contains("| stream → x | 250 changes/s | ref 1,000 changes/s | 0.25 | ≥ 0.6 ✗ | 50 MiB |"),
            "{text}"
        );
    }

    #[test]
    fn latency_and_memory_read_against_their_targets() {
        let report = Report {
            rows: 1000,
            changes: 1000,
            transactions: 3,
            machine: "2 CPUs".into(),
            measures: Vec::new(),
            latencies: vec![Latency {
                path: "stream → x".into(),
                commits: 300,
                rate: 5012.0,
                p50: 2.25,
                p99: 21.0,
                max: 40.0,
                peak_rss: 30 * 1024 * 1024,
            }],
            memory: vec![Memory {
                path: "one transaction → x".into(),
                rows: 1_000_000,
                seconds: 12.34,
                peak_rss: 99 * 1024 * 1024,
            }],
        };
        let text = report.to_string();
        assert!(
            text.contains("| stream → x | 300 | 5,012 | 2.2 ms | 21.0 ms | 40.0 ms | p99 ≤ 20 ms ✗ | 30 MiB |"),
            "{text}"
        );
        assert!(
            text.contains("| one transaction → x | 1,000,000 | 12.3 s | 99 MiB | ≤ 100 MiB ✓ |"),
            "{text}"
        );
    }
}
