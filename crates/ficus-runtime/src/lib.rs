//! The runtime: wires the source, the mappings and the sinks.
//!
//! ```text
//! ReplicationStream ──SourceEvent──▶ Bound::apply ──Event──▶ sinks.write
//!        ▲                                                      │
//!        └──────── acknowledge(commit end) ◀── sinks.flush ◀────┘
//! ```
//!
//! The slot's confirmed position moves only after every event up to that
//! commit is durable in every sink.

mod archive;
pub mod backfill;
mod backoff;
pub mod check;
pub mod config;
mod error;
pub mod gap;
pub mod health;
pub mod init;
pub mod position;
mod progress;
pub mod record;
pub mod remap;
pub mod replay;
pub mod request;
mod run;
pub mod serve;
mod state;
pub mod status;
mod target;
pub mod telemetry;
pub mod verify;
pub mod watermark;

pub use config::{Config, Loaded, load_mappings};
pub use error::RunError;
pub use run::{RunOptions, RunReport, check_live, run, teardown};
