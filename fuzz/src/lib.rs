//! The parsers under test, compiled straight from the project's own source files (they depend on
//! nothing but std, or `http` and `subtle` for the admin guard), so the fuzz build does not drag
//! in TLS, DKIM and tokio.

#[path = "../../src/reply.rs"]
pub mod reply;

#[path = "../../src/inbound/address.rs"]
#[doc(hidden)]
pub mod address;
#[path = "../../src/inbound/data.rs"]
#[doc(hidden)]
pub mod data;

/// The same paths as in poolrelay (`poolrelay::inbound::…`).
pub mod inbound {
    pub use super::address;
    pub use super::data;
}

#[path = "../../src/admin/guard.rs"]
#[doc(hidden)]
pub mod guard;

/// The admin API's request guard (`poolrelay::admin::guard`).
pub mod admin {
    pub use super::guard;
}
