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

/// The store's file when a store sink names neither `path` nor `url`.
pub const DEFAULT_STORE_PATH: &str = "ficus.db";

/// `[[sink]]`
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Events on standard output, one per line.
    Stdout {
        /// The sink's name for commands (`ficus replay --to-sink`); default its type.
        #[serde(default)]
        name: Option<String>,
        /// Whether `ficus run` delivers to it; `false` keeps it for replay and remap.
        #[serde(default = "yes")]
        live: bool,
    },
    /// Events appended to a file, one per line; fsynced before acknowledging.
    Jsonl {
        /// The sink's name; default its type.
        #[serde(default)]
        name: Option<String>,
        /// Whether `ficus run` delivers to it; `false` keeps it for replay and remap.
        #[serde(default = "yes")]
        live: bool,
        /// The file.
        path: PathBuf,
    },
    /// The event store (docs/store.md): a SQLite file (`path`, default `ficus.db`) or a
    /// Postgres database (`url`, the store is its schema `ficus`).
    Store {
        /// The sink's name; default its type.
        #[serde(default)]
        name: Option<String>,
        /// The SQLite file.
        #[serde(default)]
        path: Option<PathBuf>,
        /// The Postgres database.
        #[serde(default)]
        url: Option<String>,
        /// Keep the row changes too, for `ficus remap`.
        #[serde(default)]
        archive: bool,
    },
}

fn yes() -> bool {
    true
}

impl SinkConfig {
    /// Whether `ficus run` delivers to the sink (the store always).
    pub fn live(&self) -> bool {
        match self {
            SinkConfig::Stdout { live, .. } | SinkConfig::Jsonl { live, .. } => *live,
            SinkConfig::Store { .. } => true,
        }
    }

    /// Opens a stdout or jsonl sink (`None` for the store, which is not a line sink).
    pub fn open_lines(&self, config: &Config) -> Option<Result<ficus_sinks::Sink, RunError>> {
        match self {
            SinkConfig::Stdout { .. } => Some(Ok(ficus_sinks::Sink::stdout())),
            SinkConfig::Jsonl { path, .. } => Some(ficus_sinks::Sink::jsonl(&config.resolve(path)).map_err(Into::into)),
            SinkConfig::Store { .. } => None,
        }
    }

    /// The sink's name: its `name`, else its type.
    pub fn name(&self) -> &str {
        let (name, ty) = match self {
            SinkConfig::Stdout { name, .. } => (name, "stdout"),
            SinkConfig::Jsonl { name, .. } => (name, "jsonl"),
            SinkConfig::Store { name, .. } => (name, "store"),
        };
        name.as_deref().unwrap_or(ty)
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
        let stores: Vec<&SinkConfig> = self
            .sinks
            .iter()
            .filter(|s| matches!(s, SinkConfig::Store { .. }))
            .collect();
        if stores.len() > 1 {
            return Err(err(
                "more than one store sink".into(),
                "ficus keeps one event store per config (replay and remap read it); keep one [[sink]] of type \"store\"",
            ));
        }
        if let Some(SinkConfig::Store {
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

    /// Whether the config's store archives row changes.
    pub fn archives(&self) -> bool {
        self.sinks
            .iter()
            .any(|s| matches!(s, SinkConfig::Store { archive: true, .. }))
    }

    /// Where the config's store is, if it has a store sink.
    pub fn store_location(&self) -> Option<ficus_store::Location> {
        self.sinks.iter().find_map(|s| match s {
            SinkConfig::Store { url: Some(url), .. } => Some(ficus_store::Location::Postgres(url.clone())),
            SinkConfig::Store { path, .. } => Some(ficus_store::Location::Sqlite(
                self.resolve(path.as_deref().unwrap_or(Path::new(DEFAULT_STORE_PATH))),
            )),
            _ => None,
        })
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
