//! The Postgres source: everything ficus asks of the monolith's database.
//!
//! ```text
//! connect ──▶ preflight (wal_level, privileges) ──▶ publication + slot ──▶ replication ──▶ SourceEvent
//!                                     catalog (types, columns) ◀──┘
//! ```
//!
//! `sqlx` runs the ordinary queries (catalog, slot and publication management);
//! `pgwire-replication` carries the replication protocol; [`decode`] reads pgoutput.

pub mod backfill;
pub mod catalog;
pub mod conninfo;
pub mod decode;
mod error;
pub mod lease;
pub mod publication;
pub mod replication;
pub mod slot;

pub use conninfo::SourceUrl;
pub use error::SourceError;
pub use replication::{ExportedSlot, ReplicationStream, SourceEvent, SystemInfo, identify};
