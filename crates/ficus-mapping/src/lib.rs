//! The mapping engine: which row changes are which domain events.
//!
//! ```text
//! mappings/*.toml ──parse──▶ MappingFile ──compile──▶ Compiled ──bind(Relation)──▶ Bound
//!                                                                                   │
//!                                                    RowChange ──Bound::apply──▶ Vec<Event>
//! ```
//!
//! Pure and synchronous: no IO, no async. Compiling collects every error of every
//! file before failing, each pointing at its file, line and column with a hint.
//! Binding resolves column names to positions once per relation, so applying a
//! mapping to a row change reads plain columns (`new.id`) directly, builds the
//! CEL context at most once per row change, and converts only the columns
//! that some expression reads.
#![deny(missing_docs)]

mod apply;
mod cel_value;
mod compile;
mod diagnostic;
mod expr;
mod file;
mod message;
mod shape;
mod tx;

pub use apply::{Bound, CollectLimit, EvalError, EventContext, MapError, MessageError, UnsentValue};
pub use compile::{
    Collect, ColumnsRead, Compiled, DEFAULT_VERSION, Mapping, MessageMapping, OutboxMapping, PayloadKind, Per, Schema,
    Sources, UnchangedToast, WithoutParent, compile,
};
pub use diagnostic::Diagnostic;
pub use file::{MappingFile, mapping_file_schema, parse_file};
pub use message::Message;
pub use shape::{DataShape, FieldShape, FieldSource, JsonType};
pub use tx::Transaction;
