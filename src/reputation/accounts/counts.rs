//! What each account's messages came to, per UTC day: the numbers behind its rates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::outcome::classify::{Class, Signal};

/// One recipient's final word (or a block reply, or a complaint) as an account counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Refused for the message or the sender (content, policy): the customer's fault.
    Bounced,
    /// Unknown recipient: the customer's list, so its fault too (unlike an IP's).
    BadRecipient,
    /// Full mailbox, domain gone: the recipient's side, counted in the volume only.
    RecipientSide,
    /// A block reply (the classifier's `Signal::Block`); the message goes again elsewhere.
    Blocked,
    Complained,
}

impl Outcome {
    /// What a remote reply with this code and classification is for the account; `None` for
    /// a deferral (it ends later in one of these).
    pub fn of_reply(code: u16, class: Class, signal: Signal) -> Option<Outcome> {
        Some(match (signal, code, class) {
            (Signal::Block, _, _) => Outcome::Blocked,
            (_, 200..=399, _) => Outcome::Delivered,
            (_, 500..=599, Class::BadRecipient) => Outcome::BadRecipient,
            (_, 500..=599, Class::MailboxFull | Class::Dns) => Outcome::RecipientSide,
            (_, 500..=599, _) => Outcome::Bounced,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub delivered: u64,
    pub bounced: u64,
    pub bad_recipients: u64,
    pub recipient_side: u64,
    pub blocked: u64,
    pub complained: u64,
}

impl Counts {
    pub fn add(&mut self, o: Outcome) {
        let n = match o {
            Outcome::Delivered => &mut self.delivered,
            Outcome::Bounced => &mut self.bounced,
            Outcome::BadRecipient => &mut self.bad_recipients,
            Outcome::RecipientSide => &mut self.recipient_side,
            Outcome::Blocked => &mut self.blocked,
            Outcome::Complained => &mut self.complained,
        };
        *n = n.saturating_add(1);
    }

    fn merge(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.bad_recipients += o.bad_recipients;
        self.recipient_side += o.recipient_side;
        self.blocked += o.blocked;
        self.complained += o.complained;
    }

    /// Messages that reached a final answer.
    pub fn volume(&self) -> u64 {
        self.delivered + self.bounced + self.bad_recipients + self.recipient_side
    }

    /// Hard bounces the customer answers for.
    pub fn hard_bounces(&self) -> u64 {
        self.bounced + self.bad_recipients
    }

    /// Delivery attempts that got an answer: the volume and the block replies.
    pub fn attempts(&self) -> u64 {
        self.volume() + self.blocked
    }
}

/// Counts per UTC day (unix seconds / 86 400).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Days(pub BTreeMap<u64, Counts>);

impl Days {
    pub fn add(&mut self, day: u64, o: Outcome) {
        self.0.entry(day).or_default().add(o);
    }

    /// The sum of the `days` days up to and including `today`; older days are dropped.
    pub fn window(&mut self, today: u64, days: u64) -> Counts {
        let first = today.saturating_sub(days.saturating_sub(1));
        self.0.retain(|d, _| *d >= first);
        let mut total = Counts::default();
        for c in self.0.values() {
            total.merge(c);
        }
        total
    }
}
