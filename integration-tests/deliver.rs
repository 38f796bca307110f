//! deliver integration tests.

mod common;
