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
    /// Something ficus itself got wrong — not the source, a sink or the files: what it did is
    /// stopped before anything after it is acknowledged, and the hint says to report it.
    #[error("internal error: {0}")]
    Bug(String),
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
            RunError::Bug(_) => Some(BUG_HINT.to_owned()),
            RunError::GaveUp { error, .. } => Some(match error.hint() {
                Some(hint) => hint.to_owned(),
                None => "check that the source is up and reachable from here; `ficus run` without --until-caught-up retries until it is, and --give-up-after sets how long the others wait"
                    .to_owned(),
            }),
            _ => None,
        }
    }
}

/// What to do about an internal error.
pub const BUG_HINT: &str = "this is a bug in ficus, not a problem of the source, the sinks or the files: nothing after the last acknowledged commit is acknowledged, so starting ficus again resumes from there; please report it with the log (FICUS_LOG=debug)";

impl RunError {
    /// An internal error: `what` ficus got wrong.
    pub fn bug(what: impl Into<String>) -> RunError {
        RunError::Bug(what.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_says_it_is_ficus_own_and_how_to_go_on() {
        let e = RunError::bug("the delivery task of sink kafka ended");
        assert_eq!(e.to_string(), "internal error: the delivery task of sink kafka ended");
        let hint = e.hint().unwrap();
        assert!(hint.starts_with("this is a bug in ficus"), "{hint}");
        assert!(hint.contains("resumes from there"), "{hint}");
        // Not a source error: nothing retries it as if the network had failed.
        assert!(!matches!(e, RunError::Source(_)));
    }
}
