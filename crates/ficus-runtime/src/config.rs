//! `ficus.toml`: the source, the mappings, the sinks.
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
//! Relative paths are relative to the config file's directory.

use std::path::{Path, PathBuf};

use ficus_mapping::{Diagnostic, MappingFile, parse_file};
use serde::Deserialize;

use crate::RunError;

/// Default slot name.
pub const DEFAULT_SLOT: &str = "ficus";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "ficus";
/// Default mapping files.
pub const DEFAULT_MAPPINGS: &str = "mappings/*.toml";
/// The environment variable that overrides `[source] url`.
pub const URL_ENV: &str = "FICUS_SOURCE_URL";

/// The whole config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The source database.
    pub source: SourceConfig,
    /// Where events go; stdout when none is configured.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    /// The directory relative paths are resolved against.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `[source]`
#[derive(Clone, Debug, Deserialize)]
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

/// Events in flight per sink by default: written to it and not yet durable.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 40_000;

/// `[[sink]]`: what every sink has, and its type's own settings (each type's config type, next
/// to the sink, refuses keys it does not know).
#[derive(Debug, Deserialize)]
pub struct SinkConfig {
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
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The type and its settings.
    #[serde(flatten)]
    pub kind: SinkKind,
}

fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}

/// A sink's type, with its settings: one variant per sink module.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// Events on standard output, one per line.
    Stdout(ficus_sinks::stdout::StdoutConfig),
    /// Events appended to a file, one per line; fsynced before acknowledging.
    Jsonl(ficus_sinks::jsonl::JsonlConfig),
    /// The event store (docs/store.md).
    Store(ficus_store::StoreConfig),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(ficus_sinks::nats::NatsConfig),
    /// Redis Streams.
    #[cfg(feature = "redis")]
    Redis(ficus_sinks::redis::RedisConfig),
    /// RabbitMQ (AMQP 0-9-1).
    #[cfg(feature = "amqp")]
    Amqp(ficus_sinks::amqp::AmqpConfig),
    /// Webhooks.
    #[cfg(feature = "http")]
    Http(ficus_sinks::http::HttpConfig),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(ficus_sinks::kafka::KafkaConfig),
}

fn yes() -> bool {
    true
}

impl SinkConfig {
    /// Whether `ficus run` delivers to the sink (the store always).
    pub fn live(&self) -> bool {
        self.live || self.is_store()
    }

    /// Whether it is the store.
    pub fn is_store(&self) -> bool {
        matches!(self.kind, SinkKind::Store(_))
    }

    /// The sink's type, as written in the config.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Jsonl(_) => "jsonl",
            SinkKind::Store(_) => "store",
            #[cfg(feature = "nats")]
            SinkKind::Nats(_) => "nats",
            #[cfg(feature = "redis")]
            SinkKind::Redis(_) => "redis",
            #[cfg(feature = "amqp")]
            SinkKind::Amqp(_) => "amqp",
            #[cfg(feature = "http")]
            SinkKind::Http(_) => "http",
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(_) => "kafka",
        }
    }

    /// The sink's name: its `name`, else its type.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.type_name())
    }

    /// The sink's routes.
    pub fn routes(&self) -> Result<ficus_sinks::Routes, ficus_sinks::SinkError> {
        ficus_sinks::Routes::new(&self.events).map_err(|e| e.named(self.name()))
    }

    /// Builds the sink (not the store: [`Config::store_location`] opens that); connects to
    /// nothing yet (see [`ficus_sinks::Sink::health`]).
    pub fn build(&self, config: &Config) -> Result<Box<dyn ficus_sinks::Sink>, ficus_sinks::SinkError> {
        let sink: Box<dyn ficus_sinks::Sink> = match &self.kind {
            SinkKind::Stdout(c) => Box::new(c.build()),
            SinkKind::Jsonl(c) => Box::new(c.build(&config.dir)),
            #[cfg(feature = "nats")]
            SinkKind::Nats(c) => Box::new(c.build(&config.dir).map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "redis")]
            SinkKind::Redis(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "amqp")]
            SinkKind::Amqp(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "http")]
            SinkKind::Http(c) => Box::new(c.build(&config.dir).map_err(|e| e.named(self.name()))?),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(c) => Box::new(c.build().map_err(|e| e.named(self.name()))?),
            SinkKind::Store(_) => {
                return Err(ficus_sinks::SinkError::definite(
                    "the store is not built as a line sink",
                    "report this as a bug",
                )
                .named(self.name()));
            }
        };
        Ok(sink)
    }
}

impl Config {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Config, RunError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RunError::Config(format!(
                "{}: {e}\nhint: create it (see docs/config.md) or pass -c PATH",
                path.display()
            ))
        })?;
        Config::parse(path, &text)
    }

    /// Parses a config file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Config, RunError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let line = text[..offset.min(text.len())].matches('\n').count() + 1;
            let column = offset - text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1) + 1;
            RunError::Config(format!(
                "{}:{line}:{column}: {}\nhint: see docs/config.md",
                path.display(),
                e.message().trim()
            ))
        })?;
        config.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        config.check_sinks(path)?;
        Ok(config)
    }

    /// Sink names are unique; one store at most, with a path or a url.
    fn check_sinks(&self, path: &Path) -> Result<(), RunError> {
        let err =
            |message: String, hint: &str| RunError::Config(format!("{}: {message}\nhint: {hint}", path.display()));
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
            if sink.max_in_flight == 0 {
                return Err(err(
                    format!(
                        "sink {:?} has max_in_flight = 0: it could never take an event",
                        sink.name()
                    ),
                    "leave it out (default 40000), or give a positive number",
                ));
            }
            if let Err(e) = sink.routes() {
                return Err(err(e.to_string(), e.hint().unwrap_or_default()));
            }
            // Templates and the like are checked by building the sink (nothing connects yet).
            if !sink.is_store()
                && let Err(e) = sink.build(self)
            {
                return Err(err(e.to_string(), e.hint().unwrap_or_default()));
            }
        }
        let stores: Vec<&ficus_store::StoreConfig> = self
            .sinks
            .iter()
            .filter_map(|s| match &s.kind {
                SinkKind::Store(c) => Some(c),
                _ => None,
            })
            .collect();
        if stores.len() > 1 {
            return Err(err(
                "more than one store sink".into(),
                "ficus keeps one event store per config (replay and remap read it); keep one [[sink]] of type \"store\"",
            ));
        }
        if let Some(ficus_store::StoreConfig {
            path: Some(_),
            url: Some(_),
            ..
        }) = stores.first()
        {
            return Err(err(
                "the store sink has both a path and a url".into(),
                "path = \"ficus.db\" keeps the store in a SQLite file; url = \"postgres://...\" in a Postgres database: choose one",
            ));
        }
        Ok(())
    }

    /// The config's store sink, if it has one.
    pub fn store(&self) -> Option<(&SinkConfig, &ficus_store::StoreConfig)> {
        self.sinks.iter().find_map(|s| match &s.kind {
            SinkKind::Store(c) => Some((s, c)),
            _ => None,
        })
    }

    /// Whether the config's store archives row changes.
    pub fn archives(&self) -> bool {
        self.store().is_some_and(|(_, c)| c.archive)
    }

    /// Where the config's store is, if it has a store sink.
    pub fn store_location(&self) -> Option<ficus_store::Location> {
        self.store().map(|(_, c)| c.location(&self.dir))
    }

    /// The source url: `FICUS_SOURCE_URL`, else `[source] url`.
    pub fn url(&self) -> Result<String, RunError> {
        std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.source.url.clone())
            .ok_or_else(|| {
                RunError::Config(format!(
                    "no source url\nhint: set [source] url in the config, or {URL_ENV}"
                ))
            })
    }

    /// A path from the config, resolved against its directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

/// Mapping files as read, with the errors of reading them.
pub struct Loaded {
    /// The files (with the events that parsed).
    pub files: Vec<MappingFile>,
    /// What did not parse.
    pub errors: Vec<Diagnostic>,
}

impl Loaded {
    /// Compiles the files (against a schema when given); fails with every
    /// error of reading and of compiling at once.
    pub fn compile(&self, schema: Option<&ficus_mapping::Schema>) -> Result<ficus_mapping::Compiled, RunError> {
        let mut errors = self.errors.clone();
        match ficus_mapping::compile(&self.files, schema) {
            Ok(c) if errors.is_empty() => return Ok(c),
            Ok(_) => {}
            Err(e) => errors.extend(e),
        }
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(RunError::Mappings(errors))
    }
}

/// Reads and parses every mapping file the config names.
pub fn load_mappings(config: &Config) -> Result<Loaded, RunError> {
    let mut files = Vec::new();
    let mut errors: Vec<Diagnostic> = Vec::new();
    let mut paths = Vec::new();
    for pattern in &config.source.mappings {
        let full = config.resolve(Path::new(pattern));
        let matches = glob::glob(&full.to_string_lossy())
            .map_err(|e| RunError::Config(format!("mapping pattern {pattern:?}: {e}")))?;
        let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).collect();
        found.sort();
        if found.is_empty() {
            return Err(RunError::Config(format!(
                "no mapping file matches {pattern:?} (in {})\nhint: write one (see docs/mappings.md)",
                config.dir.display()
            )));
        }
        paths.extend(found);
    }
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
        let shown = path
            .strip_prefix(&config.dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let (file, errs) = parse_file(&shown, &text);
        files.push(file);
        errors.extend(errs);
    }
    Ok(Loaded { files, errors })
}
