//! Which source IP sends a message. Pools of IPs chosen per message by `[[pool_rule]]`; per
//! IP × provider warm-up caps, throttles and back-off; operator drains and reputation
//! quarantines (one record per cause); smooth weighted round-robin among the IPs that can take
//! the message now, picked per message before a connection is chosen. Nothing eligible →
//! delivery holds the message (never a bounce) until capacity returns.
//!
//! - `pools`: the configured pools, live state behind one lock, caps and checks;
//! - `select`: the per-message pick and its lease;
//! - `farm`: what the pools ask of the farm (`[cluster]`), implemented by `cluster`;
//! - `shared`: the pick's farm counters with `[cluster]`, `farm_max_per_hour`;
//! - `farm_ramp`: the ramp's state and day decisions shared by the farm (`[cluster]`);
//! - `ramp`: the warm-up ramp's rules (a pure decision per sending day), `decisions` its record;
//! - `events`: the history events of hold changes and ramp decisions;
//! - `holds`: the hold records (drains, quarantines, probation), `hold_changes` placing and
//!   lifting them, `incidents` the replies a quarantine counts;
//! - `settings`: its config sections (`[[pool]]`, `[[provider]]`, `[warmup]`, `[throttle]`);
//! - `store`: persistence in the redb store;
//! - `view`: the operator's view (`GET /api/pool`).

mod decisions;
pub mod events;
mod farm;
mod farm_ramp;
mod hold_changes;
pub mod holds;
pub mod incidents;
mod pools;
pub mod provider;
pub mod ramp;
pub mod rules;
mod select;
pub mod settings;
mod shared;
mod store;
pub mod throttle;
mod view;
pub mod warmup;

pub use events::EventSink;
pub use farm::{Counters, Farm, HoldSink, Limit, ProgressMove, Refused, RunError, Taken};
pub use farm_ramp::{FarmRamp, FarmState, Rolled, tally_ttl};
pub use holds::{Cause, Hold, HoldError, HoldKey, HoldKind, HoldWrite, Scope};
pub use incidents::Incident;
pub use pools::{Pools, Source};
pub use ramp::{Decision, RampOutcome};
pub use select::{Held, Lease, Pick, Selection};
pub use settings::Settings;
pub use store::StoreError;
pub use view::CountsFrom;
pub use view::{FarmView, IpState, IpView, NodeView, PoolView, PoolsView, ProviderView};

#[cfg(test)]
mod tests;
