//! interop integration tests.

mod common;
