//! Several relays, one farm (issue 19): what the relays share through Redis when `[cluster]`
//! is set. `settings` (the section), `conn` (connection, heartbeats, up/down), `counters`
//! (caps counted across nodes, the fallback shares while Redis is down), `events` and `sync`
//! (holds and suppressions shared, the merge rule), `history` (the farm's history), `farm` (the
//! operator's view of the nodes), `ramp` (the adaptive ramp's state and tallies, decided once).

mod conn;
pub mod counters;
pub mod events;
pub mod farm;
pub mod history;
pub mod ramp;
pub mod settings;
pub mod sync;

pub use conn::{Cluster, NodeSeen, RunError};
pub use counters::{Limit, ProgressMove, Refused, Taken};
pub use settings::Settings;
