//! black-box tests live in tests/
