//! Several relays, one farm (issue 19): what the relays share through Redis when `[cluster]`
//! is set. `settings` (the section), `conn` (connection, heartbeats, up/down).

mod conn;
pub mod events;
pub mod farm;
pub mod history;
pub mod settings;
pub mod sync;

pub use conn::{Cluster, NodeSeen};
pub use settings::Settings;
