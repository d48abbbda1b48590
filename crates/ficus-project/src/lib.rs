//! The project's files — `ficus.toml`, `mappings/*.toml` — as ficus writes them, with no IO:
//! callers read the database and write the files. For now the scaffold of `ficus init`; the
//! loading of the config and the mappings moves here next (see issue 11).
#![deny(missing_docs)]

pub mod scaffold;
