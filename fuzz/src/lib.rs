//! The parsers under test, compiled straight from the project's own source files: the inbound
//! ones depend on nothing but std, the admin guard (and its `Host` rule) on `http` and `subtle`, the bounce parser on
//! mail-parser, regex, serde and toml; the fuzz build does not drag in TLS, DKIM and tokio.

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
/// The guard's `Host` rule (`super::host` from `guard.rs`, as in poolrelay's `admin`).
#[path = "../../src/admin/host.rs"]
#[doc(hidden)]
pub mod host;

/// The admin API's request guard (`poolrelay::admin::guard`, `poolrelay::admin::host`).
pub mod admin {
    pub use super::guard;
    pub use super::host;
}

#[path = "../../src/reputation/bounce.rs"]
#[doc(hidden)]
pub mod bounce;
/// The bounce parser and the reply classifier it uses (mail-parser, regex, serde, toml).
#[path = "../../src/outcome/classify/mod.rs"]
#[doc(hidden)]
pub mod classify;

/// The same paths as in poolrelay (`poolrelay::outcome::classify`, `poolrelay::reputation::…`).
pub mod outcome {
    pub use super::classify;
}

pub mod reputation {
    pub use super::bounce;
}
