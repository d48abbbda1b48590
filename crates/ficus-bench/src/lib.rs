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
use sqlx::{Connection, PgConnection, SqliteConnection};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Row changes streamed, and rows backfilled.
    pub rows: u64,
    /// The ficus binary to measure.
    pub ficus: PathBuf,
    /// Keep the work directory (configs, stores, logs) instead of removing it.
    pub keep: bool,
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
}

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
    let stdout = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let began = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not waited for yet (the `Child` is never waited on).
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = began.elapsed();
    if waited != pid {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let said = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{cmd:?} failed (wait status {status}):\n{said}");
    }
    Ok(Ran {
        elapsed,
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
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
        let mut conn = PgConnection::connect(&self.cluster.url(database)).await?;
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
        let out = if out == "/dev/null" {
            PathBuf::from(out)
        } else {
            self.path(out)
        };
        let log = self.path(&format!("{}.log", args.join("_").replace(['/', '.'], "_")));
        measured(
            Command::new(&self.ficus)
                .args(args)
                .current_dir(self.dir.path())
                .env("FICUS_LOG", "warn"),
            &out,
            &log,
        )
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

/// Runs the bench; `progress` hears what it is doing.
pub async fn run(options: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Report> {
    progress("starting a throwaway Postgres cluster");
    let cluster = tokio::task::spawn_blocking(|| ficus_testkit::Cluster::start(&["-c", "wal_level=logical"]))
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
    bench
        .sql(
            "bench",
            &format!(
                "insert into backfilled (customer_id, status, total, note, attrs)
                 select (random() * 10000)::int, 'placed', (random() * 1000)::numeric(12, 2), 'note ' || g,
                        jsonb_build_object('channel', 'web', 'items', g % 7)
                 from generate_series(1, {rows}) g"
            ),
        )
        .await?;
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
    bench.write("stream/orders.toml", STREAM_MAPPINGS)?;
    for (name, _, sinks, _) in &stream_sinks {
        bench.write(
            &format!("{name}.toml"),
            &config(&url, &format!("bench_{name}"), "stream", sinks),
        )?;
        bench.ficus(
            &["run", "-c", &format!("{name}.toml"), "--until-caught-up"],
            "/dev/null",
        )?;
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
    let mut conn = PgConnection::connect(&url).await?;
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
        let ran = bench.ficus(
            &["run", "-c", &format!("{name}.toml"), "--until-caught-up"],
            "/dev/null",
        )?;
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

    // Replay the SQLite store's events, against a plain scan of its rows.
    progress("replay: the SQLite store to stdout");
    let mut replay = std::fs::read_to_string(bench.path("store.toml"))?;
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
        };
        let text = report.to_string();
        assert!(
            text.contains("| stream → x | 250 changes/s | ref 1,000 changes/s | 0.25 | ≥ 0.6 ✗ | 50 MiB |"),
            "{text}"
        );
    }
}
