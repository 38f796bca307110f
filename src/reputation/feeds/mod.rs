//! Provider feeds (issue 26): Microsoft SNDS and Google Postmaster Tools, polled daily, turned
//! into quarantines and probation per pool IP × provider and spam-rate verdicts per domain.
//!
//! - `settings`: `[feeds]`, `[feeds.snds]`, `[feeds.postmaster]`;
//! - `fetch`: HTTPS with verified certificates, time and size limits;
//! - `snds`, `postmaster`: each feed's format and rules;
//! - `verdict`: the typed verdicts, how the pool hears them, `OnDomainVerdict`;
//! - `poller`: the schedule, the status (`GET /api/feeds`), `POST /api/feeds/poll`.
//!
//! `poolrelay feeds status|poll` is `cli::feeds`; the feeds' section of `poolrelay doctor` is
//! `doctor::feeds`.

pub mod fetch;
pub mod poller;
pub mod postmaster;
pub mod settings;
pub mod snds;
pub mod verdict;

pub use poller::{Action, Done, FeedStatus, Feeds, FeedsView, PollResult};
pub use settings::Settings;
pub use verdict::{DomainVerdict, IpVerdict, Level, OnDomainVerdict, Verdict};

use std::sync::Arc;

/// Starts the feeds `settings` names (`None`: no `[feeds]` feed configured).
pub fn start(
    settings: Option<&Settings>,
    reputation: &crate::reputation::Settings,
    data_dir: &std::path::Path,
    pools: Arc<crate::pool::Pools>,
) -> Option<Arc<Feeds>> {
    let settings = settings.cloned()?;
    if settings.snds.is_none() && settings.postmaster.is_none() {
        return None;
    }
    let feeds = Arc::new(Feeds::new(settings, pools, reputation, data_dir));
    feeds.start();
    Some(feeds)
}
