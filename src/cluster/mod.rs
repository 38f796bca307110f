//! Several relays, one farm (issue 19): what the relays share through Redis when `[cluster]`
//! is set. `settings` (the section), `conn` (connection, heartbeats, up/down), `counters`
//! (caps counted across nodes, the fallback shares while Redis is down).

mod conn;
pub mod counters;
pub mod settings;

pub use conn::{Cluster, NodeSeen, RunError};
pub use counters::{Limit, ProgressMove, Refused, Taken};
pub use settings::Settings;
