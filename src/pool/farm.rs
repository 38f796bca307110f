//! What the pools ask of the farm (`[cluster]`), and the records those calls carry. The farm
//! (`cluster`) implements these traits and is handed to `Pools` when they are built; the pools
//! never name it.

use std::net::IpAddr;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::farm_ramp::{FarmState, Rolled};
use super::holds::{Hold, HoldKey};
use super::ramp::{DayTally, RampOutcome};
use super::view::FarmView;
use super::warmup::Progress;

/// Where hold changes made here go to the farm: each record as it is now (`None`: removed),
/// stamped with when it changed (unix millis, the merge rule's `util::merge`).
pub trait HoldSink: Send + Sync {
    fn send_hold(&self, key: &HoldKey, hold: Option<Hold>, at_ms: u64);
}

/// Counters the farm shares (`[cluster]`): the pools' caps, and the per-user daily cap
/// (`inbound`). A message takes one on every counter at once, or none.
pub trait Counters: Send + Sync + 'static {
    /// `<prefix>:<rest>`: a key of the farm's Redis.
    fn key(&self, rest: &str) -> String;
    /// Takes one message on every counter of `limits` (all or none), moving `progress`.
    fn take<'a>(
        &'a self,
        limits: &'a [Limit],
        progress: Option<&'a ProgressMove>,
    ) -> BoxFuture<'a, Result<Taken, Refused>>;
    /// Gives one message back on `keys` (Redis keys and their lifetimes).
    fn give_back<'a>(&'a self, keys: &'a [(String, u64)]) -> BoxFuture<'a, ()>;
    /// The farm count last read for `key` has reached `cap` (an early refusal without a round
    /// trip; the take decides).
    fn seen_at_cap(&self, key: &str, cap: u64) -> bool;
}

/// The farm's Redis as the pools use it: counters taken and given back, the ramp decided once,
/// the nodes and their IPs.
pub trait Farm: Counters {
    /// Changes of whether Redis answers (true on return).
    fn up_changes(&self) -> watch::Receiver<bool>;
    /// Which IPs this node sends from (on reload).
    fn set_ips(&self, ips: Vec<IpAddr>);
    /// Whether a node last seen sends from `ip`.
    fn sends_from(&self, ip: IpAddr) -> bool;
    /// The nodes as the operator sees them.
    fn view(&self) -> FarmView;
    /// The farm's counts of `keys`, and whether they were read now.
    fn counts<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, (Vec<Option<u64>>, bool)>;
    /// The counter of messages taken on `day` (a `Limit` without cap, `tally_ttl` long).
    fn ramp_taken_key(&self, ip: IpAddr, provider: &str, day: u64) -> String;
    /// Counts one reply into the farm's tally of `day`.
    fn ramp_count(&self, ip: IpAddr, provider: &str, day: u64, o: RampOutcome, ttl_ms: u64);
    /// Rolls the farm's ramp of `ip` × `provider` to `today`: `local` seeds it when the farm has
    /// none, `decide` makes a day's decision from the state and the farm's tally of its day.
    fn ramp_roll<'a>(
        &'a self,
        ip: IpAddr,
        provider: &'a str,
        today: u64,
        local: &'a FarmState,
        decide: &'a (dyn Fn(&FarmState, &DayTally) -> FarmState + Send + Sync),
    ) -> BoxFuture<'a, Result<Rolled<FarmState>, RunError>>;
}

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// Down already: nothing was sent.
    Down,
    /// Redis answered with an error, or the connection broke: not applied.
    Failed,
    /// No answer in time: Redis may still apply it once it answers again.
    TimedOut,
}

/// One counter a message takes.
#[derive(Debug, Clone)]
pub struct Limit {
    /// The Redis key, window included (`Farm::key`).
    pub key: String,
    pub cap: Option<u64>,
    /// How long the key lives (two windows).
    pub ttl_ms: u64,
    /// This node's own count in the window before this message (for its share while down).
    pub own: u64,
}

/// The warm-up progress a take moves: hash field and day.
#[derive(Debug, Clone)]
pub struct ProgressMove {
    pub field: String,
    pub today: u64,
    pub idle_days: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Counted in Redis; the farm's warm-up progress after it (when a move was asked).
    Shared(Option<Progress>),
    /// Redis down: within this node's share, counted locally until Redis returns.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `limits[index]` is at its cap in the farm; the farm's progress (unchanged).
    Farm {
        index: usize,
        progress: Option<Box<Progress>>,
    },
    /// Redis down and this node's share of `limits[index]` is used up.
    Share { index: usize },
}
