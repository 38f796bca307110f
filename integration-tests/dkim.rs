//! dkim integration tests.

mod common;
