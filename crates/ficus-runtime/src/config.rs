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
#[derive(Debug, Deserialize)]
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

/// `[[sink]]`
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Events on standard output, one per line.
    Stdout,
    /// Events appended to a file, one per line; fsynced before acknowledging.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
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
        Ok(config)
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
