//! Plain data that flows through ficus, from the source to the sinks:
//!
//! ```text
//! Postgres ──pgoutput──▶ RowChange ──mapping──▶ Event ──▶ sinks
//! ```
//!
//! Nothing here does IO. Column values stay in Postgres' text form inside a
//! [`RowChange`] until a mapping reads them ([`value`] converts them), so a row
//! change costs only what its mapped columns cost.
#![deny(missing_docs)]

pub mod change;
pub mod event;
pub mod lsn;
pub mod relation;
pub mod value;

pub use change::{Cell, Op, Origin, Row, RowChange, TxMeta, text_of};
pub use event::{Body, Data, Event, Field, Time};
pub use lsn::Lsn;
pub use relation::{CatalogTable, Column, PgType, Relation, ReplicaIdentity, TableRef, Unseen, UnseenColumn};
