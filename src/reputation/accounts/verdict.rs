//! What the accounts do with a provider feed's verdict on a sender domain (Google Postmaster
//! Tools' spam rate, `feeds::verdict`).
//!
//! Rules:
//! - `Over` (Google's 0.3 % action line) throttles that sender-domain account, like its own
//!   complaint rate over the warning level: `throttle_per_hour` messages an hour, then
//!   `450 4.7.1` at MAIL FROM (and at the end of DATA for a `From:` of that domain) with the
//!   feed's evidence as the reason. Not a suspension: the rate is a day late and counts all of
//!   the domain's mail to Gmail, not only this relay's, so it slows the domain down without
//!   bouncing it, and lifts by itself like a throttle.
//! - Through the domain, per login: a login sending for the held domain hears the domain's
//!   reason; its mail for its other domains still goes (its own account is not held).
//! - `Warning` (0.1 %) is logged and shown in the account (`postmaster` in
//!   `GET /api/sender-domains`); no hold, and a hold in force stays until `Ok`.
//! - `Ok` lifts the hold a verdict set; a throttle or suspension of the account's own rates
//!   stays, and so does a suspension's operator-only release.
//! - One verdict (domain, day, level) acts once: the feed re-tells the latest verdicts every
//!   poll and to a listener subscribing after a restart, and the hold is in the account's
//!   record in the state store. An operator's release also ends a verdict hold; the next
//!   day's `Over` holds again.
//! - Without `[accounts]` the verdict is recorded and shown, never held (like the rates).

use super::book::{
    Account, Accounts, Event, feed_why, make_room, not_tracked, push_event, rejudge, store_key,
};
use super::{Key, Settings};
use crate::reputation::feeds::{DomainVerdict, Level, OnDomainVerdict};

impl OnDomainVerdict for Accounts {
    fn on_domain_verdict(&self, v: &DomainVerdict) {
        self.domain_verdict(v, crate::spool::now_unix());
    }
}

/// Whether `a` already acted on `v` (the same day's verdict, told again).
fn heard(a: &Account, v: &DomainVerdict) -> bool {
    a.rec
        .postmaster
        .as_ref()
        .is_some_and(|p| p.date == v.date && p.level == v.level)
}

impl Accounts {
    /// `v` for its sender domain at `now` (the rules above).
    pub fn domain_verdict(&self, v: &DomainVerdict, now: u64) {
        let key = Key::domain(&v.domain);
        let settings = self.settings.load_full();
        let mut records = Vec::new();
        {
            let mut book = self.book.lock().expect("accounts lock");
            if !book.contains_key(&key) {
                if v.level == Level::Ok {
                    return;
                }
                let max = settings.as_ref().map_or_else(
                    || Settings::default().max_sender_domains,
                    |s| s.max_sender_domains,
                );
                let Some(gone) = make_room(&mut book, max) else {
                    not_tracked(&key, now);
                    return;
                };
                records.extend(gone.iter().map(|g| (store_key(g), None)));
            }
            let a = book.entry(key.clone()).or_default();
            if heard(a, v) {
                return;
            }
            a.rec.postmaster = Some(v.clone());
            let held = a.rec.feed_hold.is_some();
            let why = match v.level {
                Level::Over => {
                    a.rec.feed_hold = Some(v.evidence.clone());
                    Some(feed_why(&v.evidence))
                }
                Level::Ok if held => {
                    a.rec.feed_hold = None;
                    Some(format!("{}: back under the warning line", v.evidence))
                }
                Level::Ok => None,
                Level::Warning => {
                    tracing::warn!(account = %key, evidence = %v.evidence, "sender domain at Google's spam-rate warning line (no hold)");
                    None
                }
            };
            let changed = settings
                .as_ref()
                .is_some_and(|s| rejudge(&key, a, s, now, None));
            // The standing did not move (held by its own rates, or no `[accounts]`): the
            // verdict still goes into the history.
            if let Some(why) = why.filter(|_| !changed) {
                tracing::warn!(account = %key, standing = a.rec.standing.as_str(), why = %why, "sender domain: Postmaster verdict recorded");
                let standing = a.rec.standing;
                push_event(
                    &mut a.rec,
                    Event {
                        at: now,
                        standing,
                        why,
                        by: None,
                        peer: None,
                    },
                );
            }
            a.dirty = false;
            records.push((store_key(&key), serde_json::to_string(&a.rec).ok()));
        }
        self.write(&records);
    }
}
