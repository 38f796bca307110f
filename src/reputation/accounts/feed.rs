//! What feeds the accounts: each recipient's reply from delivery, and traced complaints.
//!
//! Rules:
//! - A reply counts for the message's login and its sender domain (`Outcome::of_reply`);
//!   deferrals wait for the final answer; poolrelay's own DSNs count for no one.
//! - A complaint counts against its login and its sender domain on the day it arrived. It is
//!   `Blamed` when either is (now) throttled or suspended for complaints, so the pool IP does
//!   not pay for one customer's list; `Counted` when it was counted but the account is still
//!   within its limits; `Passed` when it names neither.

use super::book::Accounts;
use super::counts::Outcome;
use super::key::{Standing, sender_domain};
use super::policy::Rate;
use crate::outcome::classify::Classification;
use crate::reputation::complaint::{Charge, Complaint, OnComplaint};
use crate::spool::Envelope;

impl Accounts {
    /// One remote reply to a recipient of `env` (`code` and `status` as the receiver sent
    /// them, before delivery rewrites a block into a deferral).
    pub fn observe(&self, env: &Envelope, code: u16, status: &str, c: &Classification) {
        if env.is_dsn {
            return;
        }
        let Some(o) = Outcome::of_reply(code, c.class, c.signal(code, status)) else {
            return;
        };
        let domain = sender_domain(env.from_domain.as_deref(), &env.sender);
        let keys = Accounts::keys(env.user.as_deref(), domain);
        if !keys.is_empty() {
            self.count(&keys, o, crate::spool::now_unix(), Some(&env.id));
        }
    }
}

impl OnComplaint for Accounts {
    fn complaint(&self, c: &Complaint, _blamed: bool) -> Charge {
        let keys = Accounts::keys(c.login.as_deref(), c.sender_domain.as_deref());
        if keys.is_empty() {
            return Charge::Passed;
        }
        let now = crate::spool::now_unix();
        let standings = self.count(&keys, Outcome::Complained, now, c.queue_id.as_deref());
        let blamed = standings.iter().any(|(_, standing, breach)| {
            *standing != Standing::Good && breach.is_some_and(|b| b.rate == Rate::Complaint)
        });
        let accounts: Vec<String> = standings
            .iter()
            .map(|(k, s, _)| format!("{k} ({})", s.as_str()))
            .collect();
        tracing::info!(queue_id = c.queue_id.as_deref().unwrap_or("-"), accounts = %accounts.join(", "), blamed, "complaint counted against the sender's accounts");
        if blamed {
            Charge::Blamed
        } else {
            Charge::Counted
        }
    }
}
