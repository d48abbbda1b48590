//! The sink a command writes to (`ficus replay`, `ficus remap`): one sink, by name, never the
//! store it reads; pages of events written and flushed in turn, a transient failure retried.

use std::time::Instant;

use ficus_sinks::{Outgoing, Routes, Sink, SinkError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::RunError;
use crate::backoff::Backoff;
use crate::config::{Config, SinkConfig};

/// A sink opened for a command.
pub(crate) struct Target {
    name: String,
    routes: Routes,
    sink: Box<dyn Sink>,
}

impl Target {
    /// The sink the config names `name`, built and checked.
    pub async fn open(config: &Config, name: &str) -> Result<Target, RunError> {
        let names = || {
            let mut names: Vec<&str> = config.sinks.iter().map(SinkConfig::name).collect();
            if names.is_empty() {
                names.push("stdout");
            }
            names.join(", ")
        };
        let (routes, mut sink) = match config.sinks.iter().find(|s| s.name() == name) {
            Some(s) if s.is_store() => {
                return Err(RunError::Config(format!(
                    "sink {name:?} is the store the events are read from\nhint: name another sink (the config's sinks: {})",
                    names()
                )));
            }
            Some(s) => (s.routes()?, s.build(config)?),
            // With no sink configured, ficus run writes to stdout: that one is there too.
            None if name == "stdout" && config.sinks.is_empty() => (
                Routes::default(),
                Box::new(ficus_sinks::stdout::StdoutConfig::default().build()) as Box<dyn Sink>,
            ),
            None => {
                return Err(RunError::Config(format!(
                    "the config has no sink named {name:?}\nhint: the config's sinks: {}; a sink's name is its `name`, else its type",
                    names()
                )));
            }
        };
        sink.health().await.map_err(|e| e.named(name))?;
        Ok(Target {
            name: name.to_owned(),
            routes,
            sink,
        })
    }

    /// Whether the sink reads the events' attributes, or only writes their lines
    /// ([`Sink::reads_attributes`]).
    pub fn reads_attributes(&self) -> bool {
        self.sink.reads_attributes()
    }

    /// Whether the sink takes events of this type.
    pub fn accepts(&self, ty: &str) -> bool {
        self.routes.accepts(ty)
    }

    /// The sink's routes: which event types it takes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Writes a page of events (those the sink's routes take) and makes it durable; a transient
    /// failure writes the page again after a backoff, until shutdown.
    pub async fn deliver(&mut self, page: &[Outgoing], shutdown: &mut watch::Receiver<bool>) -> Result<(), RunError> {
        let routed: Vec<&Outgoing> = page.iter().filter(|o| self.accepts(&o.event.ty)).collect();
        let mut backoff = Backoff::new();
        let mut failing: Option<Instant> = None;
        loop {
            let result = match self.sink.write(&routed).await {
                Ok(()) => self.sink.flush().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if let Some(since) = failing {
                        info!(sink = %self.name, after = ?since.elapsed(), "the sink takes events again");
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    failing.get_or_insert_with(Instant::now);
                    let wait = backoff.next().max(e.retry_after().unwrap_or_default());
                    warn!(sink = %self.name, error = %e.message(), retry_in = ?wait, "sink failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return Err(RunError::Interrupted { sink: self.name.clone() }),
                    }
                }
                Err(e) => return Err(named(e, &self.name)),
            }
        }
    }

    /// Closes the sink; returns what it must say (dead letters).
    pub async fn close(mut self) -> Option<String> {
        self.sink.close().await;
        self.sink.summary().map(|s| format!("sink {}: {s}", self.name))
    }
}

fn named(e: SinkError, name: &str) -> RunError {
    e.named(name).into()
}
