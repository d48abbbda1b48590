//! Black-box tests of the `ficus` binary: see `tests/main.rs`.
