//! The mapping files a config names: found by its globs, read and parsed, compiled.

use std::path::{Path, PathBuf};

use ficus_mapping::{Compiled, Diagnostic, MappingFile, Schema, parse_file};

use crate::ProjectError;
use crate::config::Config;

/// Mapping files as read, with the errors of reading them.
pub struct Loaded {
    /// The files (with the events that parsed).
    pub files: Vec<MappingFile>,
    /// What did not parse.
    pub errors: Vec<Diagnostic>,
}

impl Loaded {
    /// Compiles the files (against a schema when given); fails with every error of reading and
    /// of compiling at once, in file order.
    pub fn compile(&self, schema: Option<&Schema>) -> Result<Compiled, ProjectError> {
        let mut errors = self.errors.clone();
        match ficus_mapping::compile(&self.files, schema) {
            Ok(c) if errors.is_empty() => return Ok(c),
            Ok(_) => {}
            Err(e) => errors.extend(e),
        }
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        Err(ProjectError::Mappings(errors))
    }
}

/// The mapping files matched by `patterns` (relative to `dir`), sorted per pattern; a pattern
/// that matches nothing is an error.
pub fn mapping_paths(dir: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, ProjectError> {
    let mut paths = Vec::new();
    for pattern in patterns {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            dir.join(pattern)
        };
        let matches = glob::glob(&full.to_string_lossy())
            .map_err(|e| ProjectError::new(format!("mapping pattern {pattern:?}: {e}"), "see docs/config.md"))?;
        let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|p| p.is_file()).collect();
        found.sort();
        if found.is_empty() {
            return Err(ProjectError::new(
                format!("no mapping file matches {pattern:?} (in {})", dir.display()),
                "write one (see docs/mappings.md, or `ficus init`)",
            ));
        }
        paths.extend(found);
    }
    Ok(paths)
}

/// Reads and parses the mapping files in `patterns` (relative to `dir`); files are named
/// relative to `dir` in messages.
pub fn load(dir: &Path, patterns: &[String]) -> Result<Loaded, ProjectError> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in mapping_paths(dir, patterns)? {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ProjectError::new(format!("{}: {e}", path.display()), "check the file's permissions"))?;
        let shown = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
        let (file, errs) = parse_file(&shown, &text);
        files.push(file);
        errors.extend(errs);
    }
    Ok(Loaded { files, errors })
}

/// Reads and parses every mapping file the config names.
pub fn load_mappings(config: &Config) -> Result<Loaded, ProjectError> {
    load(&config.dir, &config.source.mappings)
}
