//! `ficus.toml`: the source, the mappings, the sinks — read without connecting to anything.
//!
//! ```toml
//! [source]
//! url = "postgres://postgres@127.0.0.1:5432/shop"   # FICUS_SOURCE_URL overrides
//! slot = "ficus"
//! publication = "ficus"
//! mappings = ["mappings/*.toml"]
//!
//! [[sink]]
//! type = "jsonl"
//! path = "events.jsonl"
//! ```
//!
//! Relative paths are relative to the config file's directory. A sink's own settings stay a
//! TOML table here: each sink's config type (in `ficus-sinks`, next to the sink) reads them,
//! so a new sink touches only its own folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ProjectError;

/// Default slot name.
pub const DEFAULT_SLOT: &str = "ficus";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "ficus";
/// Default mapping files.
pub const DEFAULT_MAPPINGS: &str = "mappings/*.toml";
/// The environment variable that overrides `[source] url`.
pub const URL_ENV: &str = "FICUS_SOURCE_URL";
/// Events in flight per sink by default: written to it and not yet durable.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 40_000;
/// Events in flight for the store by default: half the other sinks', for its memory (SQLite's
/// page cache comes on top), at no measured cost to its speed (docs/performance.md).
pub const DEFAULT_STORE_MAX_IN_FLIGHT: usize = 20_000;

/// The whole config.
#[derive(Debug)]
pub struct Config {
    /// The source database.
    pub source: SourceConfig,
    /// Where events go; stdout when none is configured.
    pub sinks: Vec<SinkConfig>,
    /// The directory relative paths are resolved against.
    pub dir: PathBuf,
    /// The file it was read from.
    pub path: PathBuf,
    /// `[metrics]`: the metrics and health endpoint of `ficus run`.
    pub metrics: MetricsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    source: SourceConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default, rename = "sink")]
    sinks: Vec<toml::Spanned<SinkConfig>>,
}

/// `[source]`
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Postgres URL; `FICUS_SOURCE_URL` overrides it.
    #[serde(default)]
    pub url: Option<String>,
    /// The slot's name, default `ficus`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// The publication's name, default `ficus`.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Glob patterns of mapping files, default `mappings/*.toml`.
    #[serde(default = "default_mappings")]
    pub mappings: Vec<String>,
    /// The source's name in events' `source`, default the database name.
    #[serde(default)]
    pub name: Option<String>,
    /// Whether a mapped table that enters the publication (at the first start, or when a mapping
    /// of it is added) is backfilled, so that its existing rows become snapshot events. Default true.
    #[serde(default = "yes")]
    pub backfill_new_tables: bool,
    /// A file holding the password of the source url (its first line); `FICUS_SOURCE_PASSWORD`
    /// overrides it, a password in the url is used only when neither is set. Relative to the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Warn, count and turn `/readyz` false once the slot holds more WAL than this (`"4GB"`,
    /// `"512MiB"`; `"0"` turns the check off). Default 4GB.
    #[serde(default = "default_max_retained_wal", deserialize_with = "byte_size")]
    #[schemars(with = "String")]
    pub max_retained_wal: u64,
    /// The memory one transaction's collected rows may take (`[event.collect.*]`: the rows, as
    /// their events' JSON, and the events waiting for them), `"64MB"` by default: a transaction
    /// that needs more stops ficus before it is acknowledged, naming the mapping and the limit.
    #[serde(default = "default_collect_memory", deserialize_with = "byte_size")]
    #[schemars(with = "String")]
    pub collect_memory: u64,
    /// Write a heartbeat (a transactional logical decoding message, no table needed) this often,
    /// in seconds, so that the slot moves on a source where nothing ficus streams is written.
    /// Default 0: none.
    #[serde(default)]
    pub heartbeat_secs: u64,
    /// Drop and re-establish a replication connection on which the server said nothing for this
    /// many seconds. Default: twice the server's `wal_sender_timeout` (two minutes when that is off).
    #[serde(default)]
    pub replication_timeout_secs: Option<u64>,
}

/// The default `max_retained_wal`: 4GB.
pub const DEFAULT_MAX_RETAINED_WAL: u64 = 4_000_000_000;

/// The default `collect_memory`: 64MB.
pub const DEFAULT_COLLECT_MEMORY: u64 = 64_000_000;

fn default_collect_memory() -> u64 {
    DEFAULT_COLLECT_MEMORY
}

fn default_max_retained_wal() -> u64 {
    DEFAULT_MAX_RETAINED_WAL
}

/// A size as people write it: `4GB`, `512MiB`, `1000000` (bytes).
fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bytes(u64),
        Text(String),
    }
    match Written::deserialize(d)? {
        Written::Bytes(n) => Ok(n),
        Written::Text(t) => t
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| D::Error::custom(format!("{t:?} is not a size ({e}): write it as \"4GB\" or \"512MiB\""))),
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `ficus run` serves `/metrics` (Prometheus), `/healthz` and `/readyz`, as
    /// `host:port`; `--metrics-addr` overrides it. Default: not served.
    #[serde(default)]
    pub addr: Option<String>,
    /// `/readyz` turns false when the slot's position has not moved for this many seconds while
    /// the server has WAL to send. Default 300.
    #[serde(default = "default_stall_after")]
    pub stall_after_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            addr: None,
            stall_after_secs: default_stall_after(),
        }
    }
}

fn default_stall_after() -> u64 {
    300
}

fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_mappings() -> Vec<String> {
    vec![DEFAULT_MAPPINGS.into()]
}
/// The schema of a setting whose default depends on the sink's type: no one default (the
/// description says them).
fn default_of_the_type(schema: &mut schemars::Schema) {
    schema.remove("default");
}

fn yes() -> bool {
    true
}

/// `[[sink]]`: what every sink has; its type's own settings are read by the sink's config type.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
pub struct SinkConfig {
    /// The sink's type: `stdout`, `jsonl`, `store`, `kafka`, `nats`, `amqp`, `redis`, `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The sink's name for commands (`ficus replay --to-sink`) and messages; default its type.
    #[serde(default)]
    pub name: Option<String>,
    /// Whether `ficus run` delivers to it; `false` keeps it for replay and remap (not the store).
    #[serde(default = "yes")]
    pub live: bool,
    /// The event types it gets (`["OrderPaid", "Customer*"]`); default all. ficus's own events
    /// (`ficus.gap`) go to every sink.
    #[serde(default)]
    pub events: Vec<String>,
    /// The most events written to it and not yet durable; past it, ficus waits (backpressure).
    /// Default 40,000; the store's 20,000.
    #[serde(default)]
    #[schemars(with = "usize", transform = default_of_the_type)]
    pub max_in_flight: Option<usize>,
    /// The type's own settings, as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub settings: toml::Table,
    /// Where the `[[sink]]` table starts in the file (line, column), for messages.
    #[serde(skip)]
    pub at: (usize, usize),
}

impl SinkConfig {
    /// Whether it is the store.
    pub fn is_store(&self) -> bool {
        self.kind == "store"
    }

    /// The most events in flight: as written, else the default of its type.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or(if self.is_store() {
            DEFAULT_STORE_MAX_IN_FLIGHT
        } else {
            DEFAULT_MAX_IN_FLIGHT
        })
    }

    /// Whether `ficus run` delivers to the sink (the store always).
    pub fn live(&self) -> bool {
        self.live || self.is_store()
    }

    /// The sink's name: its `name`, else its type.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.kind)
    }

    /// A setting that is a string (`topic`, `subject`, ...), when set.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).and_then(toml::Value::as_str)
    }
}

/// The line and column (1-based) of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl Config {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Config, ProjectError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ProjectError::new(
                format!("{}: {e}", path.display()),
                "create it (see docs/config.md, or `ficus init`) or pass -c PATH",
            )
        })?;
        Config::parse(path, &text)
    }

    /// Parses a config file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ProjectError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            ProjectError::new(
                format!("{}:{line}:{column}: {}", path.display(), e.message().trim()),
                "see docs/config.md",
            )
        })?;
        let sinks = file
            .sinks
            .into_iter()
            .map(|s| {
                let at = line_column(text, s.span().start);
                let mut sink = s.into_inner();
                sink.at = at;
                sink
            })
            .collect();
        let config = Config {
            source: file.source,
            metrics: file.metrics,
            sinks,
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            path: path.to_owned(),
        };
        config.check_sinks()?;
        Ok(config)
    }

    /// An error about the sink `sink`, pointing at its `[[sink]]` table.
    pub fn sink_error(
        &self,
        sink: &SinkConfig,
        message: impl std::fmt::Display,
        hint: impl Into<String>,
    ) -> ProjectError {
        let (line, column) = sink.at;
        ProjectError::new(
            format!(
                "{}:{line}:{column}: sink {:?}: {message}",
                self.path.display(),
                sink.name()
            ),
            hint,
        )
    }

    /// Sink names are unique; some sink is live; one store at most, with a path or a url.
    fn check_sinks(&self) -> Result<(), ProjectError> {
        let err = |message: String, hint: &str| ProjectError::new(format!("{}: {message}", self.path.display()), hint);
        let mut names = std::collections::HashSet::new();
        for sink in &self.sinks {
            if !names.insert(sink.name()) {
                return Err(err(
                    format!("two sinks are named {:?}", sink.name()),
                    "give each sink of the same type its own name = \"...\"",
                ));
            }
        }
        if !self.sinks.is_empty() && !self.sinks.iter().any(SinkConfig::live) {
            return Err(err(
                "every sink has live = false: ficus run would deliver to none".into(),
                "leave live out (it is true by default) on the sinks ficus run should write to",
            ));
        }
        for sink in &self.sinks {
            if sink.is_store() && !sink.live {
                return Err(err(
                    "the store sink has live = false".into(),
                    "the store always takes the live events (its checkpoint is where ficus resumes); leave live out",
                ));
            }
            if sink.max_in_flight == Some(0) {
                return Err(err(
                    format!(
                        "sink {:?} has max_in_flight = 0: it could never take an event",
                        sink.name()
                    ),
                    "leave it out (default 40000; the store's 20000), or give a positive number",
                ));
            }
        }
        let stores: Vec<&SinkConfig> = self.sinks.iter().filter(|s| s.is_store()).collect();
        if stores.len() > 1 {
            return Err(err(
                "more than one store sink".into(),
                "ficus keeps one event store per config (replay and remap read it); keep one [[sink]] of type \"store\"",
            ));
        }
        if let Some(store) = stores.first()
            && store.settings.contains_key("path")
            && store.settings.contains_key("url")
        {
            return Err(err(
                "the store sink has both a path and a url".into(),
                "path = \"ficus.db\" keeps the store in a SQLite file; url = \"postgres://...\" in a Postgres database: choose one",
            ));
        }
        Ok(())
    }

    /// The source url: `FICUS_SOURCE_URL`, else `[source] url`.
    pub fn url(&self) -> Result<String, ProjectError> {
        std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.source.url.clone())
            .ok_or_else(|| ProjectError::new("no source url", format!("set [source] url in the config, or {URL_ENV}")))
    }

    /// A path from the config, resolved against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }

    /// A path as shown in messages: relative to the config's directory when inside it.
    pub fn shown(&self, p: &Path) -> String {
        p.strip_prefix(&self.dir).unwrap_or(p).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sinks_settings_stay_a_table_with_its_position() {
        let text = "[source]\nslot = \"s\"\n\n[[sink]]\ntype = \"kafka\"\nname = \"k\"\nbrokers = \"b:9092\"\ntopic = \"t.{type}\"\n";
        let config = Config::parse(Path::new("d/ficus.toml"), text).unwrap();
        let sink = &config.sinks[0];
        assert_eq!((sink.kind.as_str(), sink.name(), sink.at), ("kafka", "k", (4, 1)));
        assert_eq!(sink.setting("topic"), Some("t.{type}"));
        assert_eq!(sink.settings.len(), 2, "{:?}", sink.settings);
        assert_eq!(config.dir, Path::new("d"));
    }

    #[test]
    fn unknown_keys_point_at_their_line() {
        let err = Config::parse(Path::new("ficus.toml"), "[source]\nslot = \"s\"\nslott = 1\n").unwrap_err();
        assert!(
            err.to_string().starts_with("ficus.toml:3:1: unknown field `slott`"),
            "{err:?}"
        );
    }

    #[test]
    fn two_stores_are_refused() {
        let text = "[source]\n[[sink]]\ntype = \"store\"\n[[sink]]\ntype = \"store\"\nname = \"other\"\n";
        let err = Config::parse(Path::new("ficus.toml"), text).unwrap_err();
        assert!(err.to_string().contains("more than one store sink"), "{err:?}");
    }
}
