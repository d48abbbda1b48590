//! Errors of a run.

use ficus_mapping::{Diagnostic, MapError};
use ficus_postgres::SourceError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file is wrong.
    #[error("{0}")]
    Config(String),
    /// Mapping files are wrong; every error is listed.
    #[error("{} error(s) in the mappings", .0.len())]
    Mappings(Vec<Diagnostic>),
    /// The source said no.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A row change could not be mapped.
    #[error(transparent)]
    Map(Box<MapError>),
    /// A sink failed definitely (or transiently for longer than ficus was told to wait).
    #[error(transparent)]
    Sink(std::sync::Arc<ficus_sinks::SinkError>),
    /// ficus was stopped while it waited for a sink to take events: what it had not made durable
    /// is not acknowledged, and is delivered again at the next start.
    #[error("stopped while sink {sink} was not taking events")]
    Interrupted {
        /// The sink it waited for.
        sink: String,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] ficus_store::StoreError),
    /// Changes were lost: the slot or the publication is not what ficus streamed from.
    #[error(transparent)]
    Gap(Box<crate::position::Gap>),
    /// The source stayed unreachable too long (`--give-up-after`).
    #[error("{what} failed for {after:?}; giving up: {error}")]
    GaveUp {
        /// What was tried.
        what: String,
        /// For how long.
        after: std::time::Duration,
        /// The last error.
        error: SourceError,
    },
}

impl RunError {
    /// How to fix it, when known.
    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::Source(e) => e.hint().map(str::to_owned),
            RunError::Map(e) => Some(e.hint()),
            RunError::Sink(e) => e.hint().map(str::to_owned),
            RunError::Store(e) => Some(e.hint().to_owned()),
            RunError::Gap(gap) => Some(gap.repair()),
            RunError::GaveUp { error, .. } => Some(match error.hint() {
                Some(hint) => hint.to_owned(),
                None => "check that the source is up and reachable from here; `ficus run` without --until-caught-up retries until it is, and --give-up-after sets how long the others wait"
                    .to_owned(),
            }),
            _ => None,
        }
    }
}

impl From<ficus_sinks::SinkError> for RunError {
    fn from(e: ficus_sinks::SinkError) -> RunError {
        RunError::Sink(std::sync::Arc::new(e))
    }
}

impl From<MapError> for RunError {
    fn from(e: MapError) -> RunError {
        RunError::Map(Box::new(e))
    }
}

impl From<ficus_project::ProjectError> for RunError {
    fn from(e: ficus_project::ProjectError) -> RunError {
        match e {
            ficus_project::ProjectError::File { message, hint } => RunError::Config(format!("{message}\nhint: {hint}")),
            ficus_project::ProjectError::Mappings(errors) => RunError::Mappings(errors),
        }
    }
}
