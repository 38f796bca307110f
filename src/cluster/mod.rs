//! Several relays, one farm (issue 19): what the relays share through Redis when `[cluster]`
//! is set. `settings` (the section), `conn` (connection, heartbeats, up/down), `counters`
//! (caps counted across nodes, the fallback shares while Redis is down), `events` and `sync`
//! (holds, suppressions and suspensions shared by the merge rule of `util::merge`), `history`
//! (the farm's history), `farm` (the operator's view of the nodes, the pools' calls),
//! `policies` (MTA-STS policies), `trace_keys` (feedback's trace keys), `ramp` (the adaptive ramp's state and tallies, decided once).
//!
//! The stages own what they share and the traits they call (`pool::Farm`, `pool::HoldSink`,
//! `reputation::history::Farm`, `reputation::suppress::SuppressionSink`,
//! `reputation::accounts::DecisionSink`, `delivery::policy::mta_sts::PolicyFarm`, `feedback::farm::KeyFarm`); this module
//! implements them and is handed to the stages when they are built.

mod conn;
pub mod counters;
pub mod events;
pub mod farm;
pub mod history;
mod policies;
pub mod ramp;
pub mod settings;
pub mod sync;
mod trace_keys;

pub use conn::{Cluster, NodeSeen, RunError};
pub use counters::{Limit, ProgressMove, Refused, Taken};
pub use settings::Settings;
