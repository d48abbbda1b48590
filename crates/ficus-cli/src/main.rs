//! `ficus`: tail a monolith's Postgres into domain events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ficus_runtime::backfill::BackfillState;
use ficus_runtime::replay::ReplayOptions;
use ficus_runtime::request::Outcome;
use ficus_runtime::{Config, RunError, RunOptions};
use tokio::sync::watch;

/// Tails a Postgres database's logical replication stream and turns row changes
/// into versioned domain events (CloudEvents), as declared by mapping files.
///
/// Start with `ficus check`, then `ficus run`. See the README and docs/ for the
/// config file, the mapping format and the delivery guarantees.
#[derive(Parser)]
#[command(name = "ficus", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written on stderr: `text` for people, `json` (one object per line,
    /// with its fields) for a log pipeline.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Stream row changes of the mapped tables as events into the configured sinks.
    ///
    /// Creates the publication and the slot on the first start (and backfills the mapped tables'
    /// rows from before), then streams from where it was. The slot moves only after the events
    /// of a commit are durable in every sink and the position is recorded. A gap — the slot
    /// dropped, invalidated or re-created, the publication dropped or narrowed, the source
    /// restored — stops it with the lost range: --resync repairs it. SIGINT or SIGTERM: finish
    /// what is in flight, acknowledge, exit 0.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Stop once everything committed before the start is delivered and acknowledged.
        #[arg(long)]
        until_caught_up: bool,
        /// Serve /metrics (Prometheus), /healthz and /readyz on this host:port; overrides
        /// [metrics] addr (docs/operations.md).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
        #[command(flatten)]
        recovery: Recovery,
    },
    /// Run as `ficus run` does, and write the row changes it maps, with the events it delivers
    /// of them, as fixture files for `ficus test`.
    ///
    /// The usual way to make fixtures: against a staging database while its application is
    /// used. It is a run: the sinks get the events and the slot moves as with `ficus run` (stop a
    /// `ficus run` of the same slot first, or give record a config with a slot of its own).
    /// Writes <table>.recorded.toml per table, with the columns' types, each change's
    /// transaction, and the events delivered as the expectation. Overwrites recorded files only
    /// with --force.
    Record {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Stop once everything committed before the start is delivered and acknowledged.
        #[arg(long)]
        until_caught_up: bool,
        /// Where to write the fixture files (default: mappings/tests next to the config).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Record at most this many changes per table (the others are counted in the file).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Write over recorded fixture files that are there.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        recovery: Recovery,
    },
    /// Write a starting ficus.toml and a mapping file per table, from the live schema.
    ///
    /// Per table: <Entity>Created (inserts and snapshot rows), <Entity>Updated and
    /// <Entity>Deleted, keyed by the primary key; for a state-like column (an enum, or a
    /// status/state column with few values) a transition event per value, as a commented
    /// suggestion. Columns that look secret are left out. Warns about tables without a primary
    /// key and old values that need REPLICA IDENTITY FULL. Overwrites nothing without --force.
    Init {
        /// The monolith's database (postgres://user@host/db).
        #[arg(long)]
        source_url: String,
        /// The tables, comma-separated (schema.table, or table of public); all by default.
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Where to write ficus.toml and mappings/.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Write over files that are there.
        #[arg(long)]
        force: bool,
    },
    /// Check the config and the mappings; against the live schema when the source is reachable;
    /// and every sink (reachable, credentials accepted, its target there).
    ///
    /// Reports every error at once, each with file, line, column and a hint.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Check the files only: connect neither to the source nor to the sinks.
        #[arg(long)]
        offline: bool,
    },
    /// Run the mapping fixtures (mappings/tests/*.toml) through the mappings, with no database.
    ///
    /// Each fixture file gives row changes and the events expected; a mismatch prints a diff
    /// and the command fails. A file that expects nothing yet prints the events made.
    /// --accept writes the events made as each file's expectation (review the diff first).
    Test {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// The fixture files, a glob relative to the config's directory.
        #[arg(long, default_value = ficus_project::fixtures::DEFAULT_FIXTURES)]
        fixtures: String,
        /// Write the events made as the expectation of every fixture file.
        #[arg(long)]
        accept: bool,
    },
    /// Write the event catalog: a JSON Schema (2020-12) per event version, of the whole
    /// CloudEvent with its data, typed from the mappings and the columns the fixtures declare;
    /// the AsyncAPI 3.0 document of the sinks' channels; and a static HTML site (index.html)
    /// with the flow from tables to sinks, a page per event, examples from the fixtures.
    ///
    /// Needs no database: the tables' columns come from the fixture files' [tables].
    Catalog {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Where to write it.
        #[arg(long, default_value = "catalog")]
        out: PathBuf,
        /// The fixture files whose [tables] give the columns' types.
        #[arg(long, default_value = ficus_project::fixtures::DEFAULT_FIXTURES)]
        fixtures: String,
        /// Also release the events' current shapes into mappings/ficus.lock (refused when a
        /// change breaks an event's consumers without a version bump).
        #[arg(long)]
        lock: bool,
    },
    /// Where ficus is: the slot (streaming? by which process? its WAL status), what it confirmed,
    /// the WAL it holds and how far behind the server it is, the position ficus recorded, and
    /// the backfills. Works while `ficus run` runs, and while it does not.
    Status {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// The status as JSON (its shape is documented in docs/operations.md).
        #[arg(long)]
        json: bool,
    },
    /// Write the JSON Schemas of ficus.toml and of mapping files, for editors.
    ///
    /// A TOML editor extension (Taplo / Even Better TOML) completes and checks keys as they are
    /// typed with them: see docs/config.md#editor-support.
    Schemas {
        /// Where to write ficus.toml.schema.json and mapping.schema.json.
        #[arg(long, default_value = ".ficus/schemas")]
        out: PathBuf,
    },
    /// Turn the rows that already exist into `snapshot` events, consistently with the stream.
    ///
    /// Reads the tables in chunks by their primary key, without locks, and emits each chunk
    /// at a watermark in the stream so that no row is missed and no stale row follows a newer
    /// change (docs/backfill.md). When a `ficus run` streams from the slot, it hands the
    /// backfill to it and waits; otherwise it streams like `ficus run --until-caught-up` itself.
    /// Returns once the backfill is complete and its events are delivered. Checkpoints every
    /// chunk (.ficus/backfills/ID.json): run it again after a crash and it goes on from the
    /// last chunk.
    Backfill {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Backfill only these tables (default: every table with a `snapshot` mapping).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Only rows meeting this SQL condition, e.g. "created_at > '2024-01-01'".
        #[arg(long = "where")]
        filter: Option<String>,
        /// Rows per chunk.
        #[arg(long, default_value_t = ficus_runtime::backfill::DEFAULT_CHUNK_SIZE)]
        chunk_size: usize,
        /// Pause between chunks, in milliseconds, to spare a busy source.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Read at most this many rows per second, on average, to spare a busy source.
        #[arg(long, value_name = "ROWS_PER_SEC")]
        max_rate: Option<u64>,
        /// Read tables without a primary key or unique NOT NULL index by physical position
        /// (pages, in one pass; docs/backfill.md says what that gives up).
        #[arg(long)]
        allow_full_scan: bool,
        /// Return at once: the running `ficus run` (or the next one) does the backfill.
        #[arg(long)]
        no_wait: bool,
        /// Show what the backfills did and what is left, and exit.
        #[arg(long)]
        status: bool,
        #[command(flatten)]
        recovery: Recovery,
    },
    /// Re-deliver stored events, in their original order and with their original ids, to a sink.
    ///
    /// Reads the config's store sink (docs/store.md) and writes each event, exactly as first
    /// delivered, to the sink named by --to-sink: how a new service builds its read model from
    /// history. Filters combine; bounds are inclusive.
    Replay {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// The sink to write to, by its name (a sink's `name`, else its type).
        #[arg(long, value_name = "NAME")]
        to_sink: String,
        #[command(flatten)]
        which: Which,
        /// After the last stored event, wait for new ones until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Run the archived row changes through the current mappings, into a sink.
    ///
    /// Needs a store sink with `archive = true` (docs/store.md). Each archived change is mapped
    /// as it was live — same relation, same source identity — so unchanged mappings give exactly
    /// the events the live run gave (same ids, same order); a new mapping, or a new version of
    /// an event, gives its events for the whole archive. Positions are the archive's.
    Remap {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// The sink to write to, by its name.
        #[arg(long, value_name = "NAME")]
        to_sink: String,
        /// Use the mapping files in this directory instead of the config's.
        #[arg(long, value_name = "DIR")]
        mappings: Option<PathBuf>,
        #[command(flatten)]
        which: Which,
    },
    /// Compare what ficus captured with the source: prove that no change went missing.
    ///
    /// Folds the archived row changes (a store sink with archive = true) by key into rows and
    /// compares them with the tables, read in chunks, while the monolith keeps writing: each chunk
    /// is compared as of its own snapshot on both sides, once the archive has caught up with it
    /// (beside a running `ficus run`, or after `ficus run --until-caught-up`). Exit status: 0 no
    /// difference, 3 differences found, 2 nothing could be verified, 1 an error.
    Verify {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
        /// Verify only these tables (default: every mapped table).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Rows per chunk.
        #[arg(long, default_value_t = ficus_runtime::verify::DEFAULT_CHUNK_SIZE)]
        chunk_size: usize,
        /// How long to wait, per chunk, for the archive to catch up with the source.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u64,
        /// Print the report as JSON (on stdout).
        #[arg(long)]
        json: bool,
    },
    /// Drop the slot and the publication.
    ///
    /// An abandoned slot makes the source keep all WAL from its position on, which
    /// fills the source's disk: tear down what you no longer stream from.
    Teardown {
        /// The config file.
        #[arg(short, long, default_value = "ficus.toml")]
        config: PathBuf,
    },
    /// Measure ficus against Postgres' own tools, in one run on a throwaway cluster.
    ///
    /// Starts a Postgres cluster from the local server binaries (PG_BIN, else the newest under
    /// /usr/lib/postgresql), writes a workload of inserts, updates and deletes, and prints a
    /// table of ratios: streaming into jsonl and the stores against pg_recvlogical draining a
    /// slot created at the same moment, the backfill against COPY, replay against a plain scan
    /// of the store; with each ficus run's peak RSS (docs/performance.md). Measure a release
    /// build: a debug build's ratios say little.
    Bench {
        /// Row changes to stream, and rows to backfill.
        #[arg(long, default_value_t = 300_000)]
        rows: u64,
        /// A short run (50,000 changes and rows), as CI does.
        #[arg(long, conflicts_with = "rows")]
        quick: bool,
        /// Also write the table to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Keep the work directory (configs, stores, logs: what to profile) and say where.
        #[arg(long)]
        keep: bool,
    },
}

/// What a streaming command does when the slot is lost or the source is away.
#[derive(clap::Args)]
struct Recovery {
    /// Repair a gap (the slot was dropped, invalidated or moved, the publication dropped, the source
    /// restored): a new slot, a backfill of every table with a snapshot mapping, and a `ficus.gap`
    /// event first. Without a gap, streams as usual.
    #[arg(long)]
    resync: bool,
    /// Give up, exiting 1, once the source has been unreachable this long (default: 60 with
    /// --until-caught-up and for `ficus backfill`, else retry for ever).
    #[arg(long, value_name = "SECONDS")]
    give_up_after: Option<u64>,
}

impl Recovery {
    /// The run's options; `until_caught_up` runs give up after a minute unless told otherwise.
    fn options(&self, until_caught_up: bool) -> RunOptions {
        let give_up_after = match self.give_up_after {
            Some(secs) => Some(std::time::Duration::from_secs(secs)),
            None if until_caught_up => Some(DEFAULT_GIVE_UP),
            None => None,
        };
        RunOptions {
            until_caught_up,
            resync: self.resync,
            give_up_after,
            recording: None,
            health: Default::default(),
        }
    }
}

/// How long runs that end by themselves wait for an unreachable source.
const DEFAULT_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// Which stored events (or archived changes) a command reads. Bounds are inclusive.
#[derive(clap::Args)]
struct Which {
    /// From this position (1 is the first).
    #[arg(long, value_name = "POSITION", conflicts_with_all = ["since", "from_lsn"])]
    from: Option<i64>,
    /// From this time on: 2026-11-01, "2026-11-01 12:00:00" (UTC) or RFC 3339.
    #[arg(long, value_name = "TIME", value_parser = ficus_runtime::replay::parse_time)]
    since: Option<i64>,
    /// Commits from this LSN on (X/Y).
    #[arg(long, value_name = "LSN")]
    from_lsn: Option<ficus_model::Lsn>,
    /// Up to this position.
    #[arg(long, value_name = "POSITION")]
    to: Option<i64>,
    /// Up to this time.
    #[arg(long, value_name = "TIME", value_parser = ficus_runtime::replay::parse_time)]
    until: Option<i64>,
    /// Commits up to this LSN.
    #[arg(long, value_name = "LSN")]
    to_lsn: Option<ficus_model::Lsn>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events with this subject (repeatable).
    #[arg(long = "subject", value_name = "SUBJECT")]
    subjects: Vec<String>,
}

impl Which {
    fn filter(self) -> ficus_store::Filter {
        ficus_store::Filter {
            from: self.from,
            to: self.to,
            since_micros: self.since,
            until_micros: self.until,
            from_lsn: self.from_lsn.map(|l| l.0),
            to_lsn: self.to_lsn.map(|l| l.0),
            types: self.types,
            subjects: self.subjects,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FICUS_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false);
    let json = cli.log_format == LogFormat::Json;
    JSON_LOGS.store(json, std::sync::atomic::Ordering::Relaxed);
    if json {
        logs.json().flatten_event(true).with_current_span(false).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                // One object like every other line, for the pipeline that reads them.
                let hint = e.downcast_ref::<RunError>().and_then(RunError::hint);
                tracing::error!(hint, "{e:#}");
            } else {
                report(&e);
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether log lines are JSON (`--log-format json`): set once, at the start.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A run's summary: a line for people, or a log record like every other line in JSON mode.
fn delivered(report: &ficus_runtime::RunReport) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            events = report.events,
            transactions = report.transactions,
            acknowledged = %report.acknowledged,
            "delivered"
        );
    } else {
        eprintln!(
            "delivered {} events from {} transactions; acknowledged {}",
            report.events, report.transactions, report.acknowledged
        );
    }
}

fn report(e: &anyhow::Error) {
    match e.downcast_ref::<RunError>() {
        Some(RunError::Mappings(diags)) => {
            for d in diags {
                eprintln!("error: {d}\n");
            }
            eprintln!("{} error(s) in the mappings", diags.len());
        }
        Some(run) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = run.hint() {
                eprintln!("hint: {hint}");
            }
        }
        None => eprintln!("error: {e:#}"),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            until_caught_up,
            metrics_addr,
            recovery,
        } => {
            let config = Config::load(&config)?;
            let options = recovery.options(until_caught_up);
            if let Some(addr) = metrics_addr.or_else(|| config.metrics.addr.clone()) {
                let handle = ficus_runtime::telemetry::install()?;
                ficus_runtime::serve::serve(&addr, options.health.clone(), handle).await?;
            }
            let rx = stop_on_signal(Some("stopping: finishing what is in flight"));
            let report = ficus_runtime::run(&config, options, rx).await?;
            delivered(&report);
            warn_all(&report.warnings);
            Ok(ExitCode::SUCCESS)
        }
        Command::Record {
            config,
            until_caught_up,
            out,
            limit,
            force,
            recovery,
        } => {
            let config = Config::load(&config)?;
            let out = out.unwrap_or_else(|| config.dir.join("mappings").join("tests"));
            let there = ficus_runtime::record::recorded_files_in(&out);
            if !there.is_empty() && !force {
                let shown: Vec<String> = there.iter().map(|p| p.display().to_string()).collect();
                return Err(RunError::Config(format!(
                    "not recording: recorded fixtures are there already ({})\nhint: --force writes over them, or --out DIR writes elsewhere",
                    shown.join(", ")
                ))
                .into());
            }
            let rx = stop_on_signal(Some("stopping: finishing what is in flight, then writing the fixtures"));
            let report =
                ficus_runtime::record::record(&config, recovery.options(until_caught_up), rx, &out, limit).await?;
            warn_all(&report.warnings);
            for (path, file) in &report.written {
                let left_out = match file.left_out {
                    0 => String::new(),
                    n => format!(", {n} more left out (--limit {limit})"),
                };
                println!("wrote {} ({} changes{left_out})", path.display(), file.changes);
            }
            if report.written.is_empty() {
                println!("recorded nothing: no change of a mapped table was streamed");
            }
            let run = report.run?;
            delivered(&run);
            warn_all(&run.warnings);
            if !report.written.is_empty() {
                println!("next: `{}` runs them with no database", test_command(&config, &out));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, offline } => check(&config, offline).await,
        Command::Status { config, json } => {
            let config = Config::load(&config)?;
            let status = ficus_runtime::status::status(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", ficus_runtime::status::describe(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { out } => {
            std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            for (name, schema) in [
                (CONFIG_SCHEMA, ficus_runtime::config::config_schema()),
                (MAPPING_SCHEMA, ficus_mapping::mapping_file_schema()),
            ] {
                let file = out.join(name);
                std::fs::write(&file, serde_json::to_string_pretty(&schema)? + "\n")
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                println!("wrote {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            config,
            fixtures,
            accept,
        } => test(&config, &fixtures, accept),
        Command::Catalog {
            config,
            out,
            fixtures,
            lock,
        } => catalog(&config, &out, &fixtures, lock),
        Command::Init {
            source_url,
            tables,
            out,
            force,
        } => {
            let report = ficus_runtime::init::init(&source_url, &tables, &out, force).await?;
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for p in &report.written {
                println!("wrote {}", p.display());
            }
            println!(
                "next: name the events after what the business says happened, then `ficus check -c {}`",
                out.join("ficus.toml").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            config,
            tables,
            filter,
            chunk_size,
            pause_ms,
            max_rate,
            allow_full_scan,
            no_wait,
            status,
            recovery,
        } => {
            let config = Config::load(&config)?;
            if status {
                return backfill_status(&config);
            }
            let rx = stop_on_signal(Some("stopping: the backfill goes on from its last chunk next time"));
            if recovery.resync {
                // The resync's backfill is of every table with a snapshot mapping.
                let report = ficus_runtime::run(&config, recovery.options(true), rx).await?;
                delivered(&report);
                return Ok(ExitCode::SUCCESS);
            }
            let options = ficus_runtime::backfill::BackfillOptions {
                tables,
                filter,
                chunk_size,
                pause: std::time::Duration::from_millis(pause_ms),
                allow_full_scan,
                max_rate,
            };
            match ficus_runtime::request::backfill(&config, &options, no_wait, &recovery.options(true), rx).await? {
                Outcome::Done(state) => {
                    eprintln!("backfill {} is complete and its events are delivered", state.id);
                    eprint!("{}", describe_backfill(&state));
                }
                Outcome::Handed { state, pid } => {
                    eprintln!(
                        "backfill {} handed to the ficus run of process {pid}; follow it with `ficus backfill --status`",
                        state.id
                    );
                    println!("{}", state.id);
                }
                Outcome::Saved(state) => {
                    eprintln!(
                        "backfill {} recorded; no ficus run streams from slot {}: the next `ficus run` does it",
                        state.id, config.source.slot
                    );
                    println!("{}", state.id);
                }
                Outcome::Stopped(state) => {
                    eprintln!("backfill {} stopped; it goes on from its last chunk", state.id);
                    eprint!("{}", describe_backfill(&state));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            config,
            to_sink,
            which,
            follow,
        } => {
            let config = Config::load(&config)?;
            let rx = stop_on_signal(None);
            let options = ReplayOptions {
                filter: which.filter(),
                to_sink,
                follow,
            };
            let report = ficus_runtime::replay::replay(&config, &options, rx).await?;
            match report.positions {
                Some((first, last)) => eprintln!(
                    "replayed {} events (positions {first} to {last}) into sink {}",
                    report.events, options.to_sink
                ),
                None => eprintln!("replayed no events: none is stored that passes the filters"),
            }
            warn_all(&report.warnings);
            Ok(ExitCode::SUCCESS)
        }
        Command::Remap {
            config,
            to_sink,
            mappings,
            which,
        } => {
            let config = Config::load(&config)?;
            let rx = stop_on_signal(None);
            let options = ficus_runtime::remap::RemapOptions {
                filter: which.filter(),
                mappings,
                to_sink,
            };
            let report = ficus_runtime::remap::remap(&config, &options, rx).await?;
            eprintln!(
                "remapped {} archived changes into {} events in sink {}",
                report.changes, report.events, options.to_sink
            );
            warn_all(&report.warnings);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            tables,
            chunk_size,
            wait,
            json,
        } => {
            let config = Config::load(&config)?;
            let rx = stop_on_signal(None);
            let options = ficus_runtime::verify::VerifyOptions {
                tables,
                chunk_size: chunk_size.max(1),
                wait: std::time::Duration::from_secs(wait),
            };
            let report = ficus_runtime::verify::verify(&config, &options, rx).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", describe_verify(&report));
            }
            Ok(if report.differences() > 0 {
                ExitCode::from(3)
            } else if !report.verified_any() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bench { rows, quick, out, keep } => {
            let options = ficus_bench::Options {
                rows: if quick { 50_000 } else { rows },
                ficus: std::env::current_exe().context("finding the ficus binary")?,
                keep,
                latency_for: std::time::Duration::from_secs(if quick { 3 } else { 10 }),
            };
            let report = ficus_bench::run(&options, &|what| eprintln!("bench: {what}")).await?;
            print!("{report}");
            if let Some(out) = out {
                std::fs::write(&out, report.to_string()).with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Teardown { config } => {
            let config = Config::load(&config)?;
            for line in ficus_runtime::teardown(&config).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A verify report for people: a line per table, then its first differences.
fn describe_verify(report: &ficus_runtime::verify::Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for t in &report.tables {
        if let Some(why) = &t.not_verified {
            let _ = writeln!(out, "{}: not verified: {why}", t.table);
            continue;
        }
        let _ = writeln!(
            out,
            "{}: {} rows compared, {} missing, {} extra, {} different",
            t.table, t.compared, t.missing, t.extra, t.different
        );
        for d in &t.differences {
            let key = d.key.join(", ");
            let _ = match (&d.column, &d.source, &d.archive) {
                (Some(column), Some(source), Some(archive)) => writeln!(
                    out,
                    "  {} ({key}): {column} is {} in the source, {} in the archive",
                    d.kind,
                    source.as_deref().unwrap_or("NULL"),
                    archive.as_deref().unwrap_or("NULL")
                ),
                _ => writeln!(out, "  {} ({key})", d.kind),
            };
        }
        if t.missing > 0 {
            let _ = writeln!(
                out,
                "  (a missing row is one whose insert or last change is not archived: a change lost, or a row from before the archive began that no backfill read — `ficus backfill --table {}` archives those)",
                t.table
            );
        }
    }
    let _ = writeln!(out, "{} difference(s)", report.differences());
    out
}

/// How many finished backfills `--status` lists (every one in progress is listed).
const STATUS_FINISHED: usize = 5;

fn backfill_status(config: &Config) -> anyhow::Result<ExitCode> {
    let all = BackfillState::all(&config.dir)?;
    if all.is_empty() {
        println!("no backfill yet");
        return Ok(ExitCode::SUCCESS);
    }
    let finished = all.iter().filter(|s| !s.in_progress()).count();
    let mut skipped = 0;
    for (i, state) in all.iter().enumerate() {
        let later_finished = all[i + 1..].iter().filter(|s| !s.in_progress()).count();
        if !state.in_progress() && later_finished >= STATUS_FINISHED {
            skipped += 1;
            continue;
        }
        print!("{}", describe_backfill(state));
    }
    if skipped > 0 {
        println!("({skipped} older of {finished} finished backfills not shown; see .ficus/backfills/)");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a backfill did and what is left, a line per table.
fn describe_backfill(state: &BackfillState) -> String {
    use std::fmt::Write;
    let what = match (&state.error, state.finished()) {
        (Some(_), _) => "failed",
        (None, true) => "complete",
        (None, false) => "in progress",
    };
    let mut out = format!(
        "backfill {}: {what} ({} rows per chunk{}{})\n",
        state.id,
        state.chunk_size,
        state
            .filter
            .as_ref()
            .map(|f| format!(", where {f}"))
            .unwrap_or_default(),
        match (state.allow_full_scan, state.max_rate) {
            (true, Some(rate)) => format!(", full scans allowed, at most {rate} rows/s"),
            (true, None) => ", full scans allowed".to_owned(),
            (false, Some(rate)) => format!(", at most {rate} rows/s"),
            (false, None) => String::new(),
        }
    );
    for t in &state.tables {
        let progress = if t.done {
            "done".to_owned()
        } else {
            format!("next after {:?}", t.last_key)
        };
        let of = t.rows_estimated.map(|n| format!(" of ~{n}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}: {} rows read{of}, {} emitted, {} chunks, {progress}",
            t.table, t.rows_read, t.rows_emitted, t.chunks
        );
    }
    for line in state.error.iter().flat_map(|e| e.lines()) {
        let _ = writeln!(out, "  error: {line}");
    }
    out
}

/// `ficus catalog`: needs only the project's files and the engine.
fn catalog(path: &std::path::Path, out: &std::path::Path, fixtures: &str, lock: bool) -> anyhow::Result<ExitCode> {
    let config = ficus_project::Config::load(path).map_err(RunError::from)?;
    let compiled = ficus_project::load_mappings(&config)
        .and_then(|loaded| loaded.compile(None))
        .map_err(RunError::from)?;
    // The sinks first: a sink the catalog cannot describe stops it before it writes anything.
    let sinks = ficus_catalog::sinks::sinks_of(&config).map_err(RunError::from)?;
    let read = ficus_project::fixtures::read(&config, fixtures).map_err(RunError::from)?;
    let tables = ficus_project::fixtures::tables_of(&read).map_err(RunError::from)?;
    let events = ficus_catalog::events(&compiled, &tables);
    let dir = out.join("schemas");
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    for event in &events {
        let file = dir.join(ficus_catalog::schema_file(&event.name, event.version));
        let text = serde_json::to_string_pretty(&ficus_catalog::json_schema(event))? + "\n";
        std::fs::write(&file, text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for source in event.sources.iter().filter(|s| !s.typed) {
            eprintln!(
                "warning: {} v{}: table {} is declared in no fixture: its column fields are of any type\nhint: declare it in a fixture's [tables] (see docs/mappings.md#testing-mappings-ficus-test)",
                event.name, event.version, source.table
            );
        }
    }
    println!("wrote {} event schema(s) to {}", events.len(), dir.display());
    let lock_file = lock_path(&config.dir);
    let mut current = read_lock(&lock_file)?;
    if lock {
        if !guard(&current, &events) {
            eprintln!(
                "not locked: bump the version of each event above (a new version is a new contract), or set its compatibility in {}",
                lock_file.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        current = current.release(&events);
        std::fs::write(&lock_file, current.to_text()).map_err(|e| anyhow::anyhow!("{}: {e}", lock_file.display()))?;
        println!("locked {} event(s) in {}", current.events.len(), lock_file.display());
    }

    // The AsyncAPI document and the HTML site.
    let title = catalog_title(&config);
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let file = out.join(name);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&file, text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    };
    let asyncapi = ficus_catalog::asyncapi::document(&title, &events, &sinks);
    write("asyncapi.json", &(serde_json::to_string_pretty(&asyncapi)? + "\n"))?;
    let examples = ficus_project::fixtures::examples(&read);
    let files = ficus_catalog::site::site(&ficus_catalog::site::Site {
        title: &title,
        events: &events,
        sinks: &sinks,
        examples: &examples,
        lock: (!current.events.is_empty()).then_some(&current),
    });
    for (name, text) in &files {
        write(name, text)?;
    }
    println!(
        "wrote {} and the site: open {}",
        out.join("asyncapi.json").display(),
        out.join("index.html").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What the catalog is of: the source's name, else its database's.
fn catalog_title(config: &ficus_project::Config) -> String {
    if let Some(name) = &config.source.name {
        return name.clone();
    }
    config
        .url()
        .ok()
        .and_then(|u| {
            let path = u.split_once("://")?.1.split(['?', '#']).next()?.to_owned();
            let db = path.split_once('/')?.1.to_owned();
            (!db.is_empty()).then_some(db)
        })
        .unwrap_or_else(|| "ficus".to_owned())
}

/// `mappings/ficus.lock`, next to the mapping files.
fn lock_path(dir: &std::path::Path) -> PathBuf {
    dir.join("mappings").join(ficus_catalog::lock::LOCK_FILE)
}

/// The lock file, or an empty lock when there is none.
fn read_lock(file: &std::path::Path) -> anyhow::Result<ficus_catalog::lock::Lock> {
    match std::fs::read_to_string(file) {
        Ok(text) => ficus_catalog::lock::Lock::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}\nhint: it is written by `ficus catalog --lock`; restore it from version control",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ficus_catalog::lock::Lock::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", file.display())),
    }
}

/// The evolution guard: prints what the mappings do to the lock's events; false when a change
/// breaks consumers.
fn guard(lock: &ficus_catalog::lock::Lock, events: &[ficus_catalog::EventVersion]) -> bool {
    let verdict = lock.check(events);
    for b in &verdict.breaking {
        eprintln!(
            "error: {b}\nhint: bump the mapping's version (version = {}) to release it as a new contract; keep the old version's mapping while consumers move\n",
            b.version + 1
        );
    }
    for (name, version) in &verdict.retired {
        eprintln!(
            "warning: {name} v{version} is locked and no mapping makes it any more: its consumers stop getting events\n"
        );
    }
    for (name, version) in &verdict.unknown {
        eprintln!(
            "warning: {name} v{version}: its data's fields are not known (a whole row of a table no fixture declares): not checked\n"
        );
    }
    if !verdict.unlocked.is_empty() && !lock.events.is_empty() {
        let list: Vec<String> = verdict.unlocked.iter().map(|(n, v)| format!("{n} v{v}")).collect();
        eprintln!(
            "note: not locked yet: {} (`ficus catalog --lock` releases them)",
            list.join(", ")
        );
    }
    verdict.breaking.is_empty()
}

/// `ficus test`: needs only the project's files and the engine.
fn test(path: &std::path::Path, pattern: &str, accept: bool) -> anyhow::Result<ExitCode> {
    use ficus_project::fixtures::Verdict;
    let config = ficus_project::Config::load(path).map_err(RunError::from)?;
    let compiled = ficus_project::load_mappings(&config)
        .and_then(|loaded| loaded.compile(None))
        .map_err(RunError::from)?;
    let outcomes = ficus_project::fixtures::test(&config, &compiled, pattern, accept).map_err(RunError::from)?;
    let (mut passed, mut failed, mut pending) = (0, 0, 0);
    for outcome in &outcomes {
        match &outcome.verdict {
            Verdict::Passed(n) => {
                passed += 1;
                println!("ok      {} ({n} events)", outcome.file);
            }
            Verdict::Accepted(n) => {
                passed += 1;
                println!("written {} ({n} events accepted)", outcome.file);
            }
            Verdict::Unreviewed(events) => {
                pending += 1;
                println!("new     {}: expects nothing yet; the mappings make:", outcome.file);
                print!("{}", ficus_project::fixtures::expect_text(events));
            }
            Verdict::Failed(diff) => {
                failed += 1;
                println!("FAILED  {}: - expected, + made by the mappings", outcome.file);
                print!("{diff}");
            }
            Verdict::Error(e) => {
                failed += 1;
                println!("FAILED  {}", outcome.file);
                report(&anyhow::Error::from(RunError::from(e.clone())));
            }
        }
    }
    println!(
        "{passed} passed, {failed} failed, {pending} without expectations ({} fixture files)",
        outcomes.len()
    );
    if failed > 0 || pending > 0 {
        if pending > 0 || !accept {
            println!("hint: review the events, then `ficus test --accept` writes them as the expectation");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(path: &std::path::Path, offline: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let files = ficus_runtime::load_mappings(&config)?;
    let lock_file = lock_path(&config.dir);
    let lock = read_lock(&lock_file)?;
    if offline {
        let compiled = files.compile(None)?;
        println!("{} mapping(s) check out offline", compiled.mappings().len());
        if !lock.events.is_empty() {
            let project = ficus_project::Config::load(path).map_err(RunError::from)?;
            let tables = ficus_project::fixtures::tables(&project, ficus_project::fixtures::DEFAULT_FIXTURES)
                .map_err(RunError::from)?;
            if !guard(&lock, &ficus_catalog::events(&compiled, &tables)) {
                return Ok(ExitCode::FAILURE);
            }
            println!("the events keep their locked contracts ({})", lock_file.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The sinks, whatever the source says: each problem with the sink's name.
    let sink_problems = ficus_runtime::check::sinks(&config).await;
    for finding in &sink_problems {
        eprintln!("error: {}\nhint: {}\n", finding.message, finding.hint);
    }
    let sinks_ok = || {
        if sink_problems.is_empty() {
            println!("{} sink(s) can take events", config.sinks.len().max(1));
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "{} problem(s) of the sinks: ficus run would stop on them",
                sink_problems.len()
            );
            ExitCode::FAILURE
        }
    };
    let Ok(_) = config.url() else {
        let compiled = files.compile(None)?;
        println!("{} mapping(s) check out offline", compiled.mappings().len());
        eprintln!("note: no source url; tables and columns were not checked");
        return Ok(sinks_ok());
    };
    let url = config.source_url()?;
    let pool = match ficus_postgres::catalog::connect(&url).await {
        Ok(pool) => pool,
        Err(e) => {
            // The files still get checked, but a source that cannot be reached is not a pass.
            let compiled = files.compile(None)?;
            eprintln!("{} mapping(s) check out offline", compiled.mappings().len());
            report(&RunError::from(e).into());
            return Ok(ExitCode::FAILURE);
        }
    };
    let compiled = ficus_runtime::check_live(&files, &pool, &config.source.publication).await?;
    for warning in compiled.warnings() {
        eprintln!("warning: {warning}\n");
    }
    // The lock against the live columns: a column retyped in the monolith changes the events.
    let mut guarded = true;
    if !lock.events.is_empty() {
        let tables = ficus_postgres::catalog::tables(&pool).await.map_err(RunError::from)?;
        guarded = guard(&lock, &ficus_catalog::events(&compiled, &tables));
        if guarded {
            println!(
                "the events keep their locked contracts against the live columns ({})",
                lock_file.display()
            );
        }
    }
    let findings = ficus_runtime::check::source(&config, &pool, &compiled).await?;
    for finding in &findings {
        eprintln!("error: {}\nhint: {}\n", finding.message, finding.hint);
    }
    if !findings.is_empty() {
        eprintln!(
            "{} problem(s) of the source: ficus run and ficus backfill would stop on them",
            findings.len()
        );
        sinks_ok();
        return Ok(ExitCode::FAILURE);
    }
    if !guarded {
        sinks_ok();
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{} mapping(s) of {} table(s) check out against {}",
        compiled.mappings().len(),
        compiled.tables().len(),
        url.redacted()
    );
    Ok(sinks_ok())
}

/// What sinks had to say at the end (dead letters), after the summary line.
/// The JSON Schema of ficus.toml, as `ficus schemas` names it.
const CONFIG_SCHEMA: &str = "ficus.toml.schema.json";
/// The JSON Schema of mapping files, as `ficus schemas` names it.
const MAPPING_SCHEMA: &str = "mapping.schema.json";

/// The `ficus test` that runs the fixtures of `dir`.
fn test_command(config: &Config, dir: &std::path::Path) -> String {
    let shown = dir.strip_prefix(&config.dir).unwrap_or(dir).display().to_string();
    let pattern = format!("{shown}/*.toml");
    if pattern == ficus_project::fixtures::DEFAULT_FIXTURES {
        "ficus test".to_owned()
    } else {
        format!("ficus test --fixtures '{pattern}'")
    }
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// A receiver that turns true at SIGINT or SIGTERM (after logging `message`).
fn stop_on_signal(message: Option<&'static str>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        if let Some(message) = message {
            tracing::info!("{message}");
        }
        let _ = tx.send(true);
    });
    rx
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
