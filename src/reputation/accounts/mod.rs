//! Accountability per login and per sender domain: who caused the bounces, blocks and
//! complaints, so one customer's list does not burn the pool's IPs for everyone. `counts` (daily
//! buckets), `policy` (the rules: throttle, suspend), `gate` (the MAIL FROM answer), `feed`
//! (delivery replies and complaints in), `book` (the accounts, kept in the state store),
//! `farm` (suspensions and releases shared through `[cluster]`), `verdict` (Postmaster's
//! spam-rate verdicts per sender domain), `settings` (`[accounts]`). `poolrelay login` and
//! `poolrelay sender-domain` are `cli::accounts`.

mod book;
mod counts;
mod farm;
mod feed;
mod gate;
mod key;
pub mod metrics;
mod policy;
mod settings;
#[cfg(test)]
mod tests;
mod verdict;

pub use book::{AccountView, Accounts, Event, Slot};
pub use counts::{Counts, Outcome};
pub use farm::{Decision, DecisionSink};
pub use gate::Gate;
pub use key::{Key, Kind, Standing, sender_domain};
pub use policy::{Breach, Rate, Verdict, judge, percent};
pub use settings::Settings;
