//! accept integration tests.

mod common;
