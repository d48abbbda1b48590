//! The project's files — `ficus.toml`, `mappings/*.toml` — read, checked and written with no
//! tokio, sqlx or Postgres: `ficus check --offline`, `ficus test`, `ficus catalog` and the lock
//! need only this crate and the engine. Callers that talk to a database hand it what they read
//! (the scaffold of `ficus init` takes the tables `ficus-runtime` found).
#![deny(missing_docs)]

pub mod config;
pub mod fixtures;
pub mod mappings;
pub mod recording;
pub mod scaffold;

pub use config::{Config, SinkConfig, SourceConfig};
pub use mappings::{Loaded, load_mappings};

use ficus_mapping::Diagnostic;

/// What is wrong with the project's files.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProjectError {
    /// A file is missing or wrong: what, where, and how to fix it.
    #[error("{message}")]
    File {
        /// What is wrong, with the file (and line and column when known).
        message: String,
        /// How to fix it.
        hint: String,
    },
    /// Mapping files are wrong; every error is listed.
    #[error("{} error(s) in the mappings", .0.len())]
    Mappings(Vec<Diagnostic>),
}

impl ProjectError {
    /// A file's error.
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> ProjectError {
        ProjectError::File {
            message: message.into(),
            hint: hint.into(),
        }
    }
}
