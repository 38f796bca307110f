//! What the pools ask of the farm (`[cluster]`). The farm (`cluster`) implements these traits
//! and is handed to `Pools` when they are built; the pools never name it.

use super::holds::{Hold, HoldKey};

/// Where hold changes made here go to the farm: each record as it is now (`None`: removed),
/// stamped with when it changed (unix millis, the merge rule's `util::merge`).
pub trait HoldSink: Send + Sync {
    fn send_hold(&self, key: &HoldKey, hold: Option<Hold>, at_ms: u64);
}
