//! State changes the farm shares: a hold record (drain, quarantine, probation, release), a
//! suppression (added, removed) or an account's suspension or release, each stamped with when
//! it was made.
//!
//! Rules (the merge rule, `util::merge`, also for a node that changed things while Redis was down):
//! - Redis keeps one record per hold key (`IP|SCOPE|CAUSE`) or suppressed address, keyed by what
//!   it is about, never by node: the latest change, a removal included (a tombstone, pruned after
//!   `TOMBSTONE_KEEP_MS`).
//! - The later change wins (`at_ms`, wall clock); a tie keeps what is there. So a hold is kept
//!   if either side has it and it was not released later, and a release made later on either
//!   side ends it.
//! - Every change is published once written; a node skips its own events and applies the rest
//!   by the same rule, so an event and a resync that both carry it apply it once.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::pool::{Cause, Hold, HoldKey, HoldSink};
use crate::reputation::accounts::{Decision, DecisionSink, Standing};
use crate::reputation::suppress::{Entry, SuppressionSink};
pub use crate::util::merge::{Newer, TOMBSTONE_KEEP_MS, newer};

/// Which Redis hash a change lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Holds,
    Suppressions,
    Accounts,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Holds, Table::Suppressions, Table::Accounts];

    pub fn name(self) -> &'static str {
        match self {
            Table::Holds => "holds",
            Table::Suppressions => "suppressions",
            Table::Accounts => "accounts",
        }
    }
}

/// What changed: the record as it is now (`None`: removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    Hold {
        ip: IpAddr,
        scope: String,
        cause: Cause,
        hold: Option<Hold>,
    },
    Suppression {
        address: String,
        entry: Option<Entry>,
    },
    /// A login's or sender domain's suspension or release (`kind|name`, e.g. `login|alice`).
    Account { account: String, decision: Decision },
}

impl Change {
    /// A hold record's change (`None`: removed).
    pub fn hold(k: &HoldKey, hold: Option<Hold>) -> Change {
        Change::Hold {
            ip: k.0,
            scope: k.1.clone(),
            cause: k.2.clone(),
            hold,
        }
    }

    pub fn table(&self) -> Table {
        match self {
            Change::Hold { .. } => Table::Holds,
            Change::Suppression { .. } => Table::Suppressions,
            Change::Account { .. } => Table::Accounts,
        }
    }

    /// The record's field in its table: what the change is about.
    pub fn field(&self) -> String {
        match self {
            Change::Hold {
                ip, scope, cause, ..
            } => format!("{ip}|{scope}|{cause}"),
            Change::Suppression { address, .. } => address.clone(),
            Change::Account { account, .. } => account.clone(),
        }
    }

    /// Nothing left to share: a removal older than `TOMBSTONE_KEEP_MS`, or a suppression that
    /// has ended by itself. Resyncs drop these from Redis and do not push them.
    pub fn is_stale(&self, at_ms: u64, now_ms: u64) -> bool {
        match self {
            Change::Suppression { entry: Some(e), .. } => e.until * 1000 <= now_ms,
            _ => self.is_removal() && at_ms + TOMBSTONE_KEEP_MS < now_ms,
        }
    }

    pub fn is_removal(&self) -> bool {
        match self {
            Change::Hold { hold, .. } => hold.is_none(),
            Change::Suppression { entry, .. } => entry.is_none(),
            // A release ends a suspension: kept like a removal, then pruned.
            Change::Account { decision, .. } => decision.standing != Standing::Suspended,
        }
    }
}

/// One change, as stored in Redis and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The node that made it.
    pub node: String,
    /// When it was made (unix millis): the merge rule compares these.
    pub at_ms: u64,
    #[serde(flatten)]
    pub change: Change,
}

impl Event {
    /// The hash value: `AT_MS|JSON`, so the write script compares stamps without parsing JSON.
    pub fn record(&self) -> String {
        format!(
            "{}|{}",
            self.at_ms,
            serde_json::to_string(self).expect("events serialise")
        )
    }

    pub fn from_record(record: &str) -> Result<Event, BadEvent> {
        let (_, json) = record
            .split_once('|')
            .ok_or_else(|| BadEvent::NotARecord(record.to_string()))?;
        Event::from_json(json)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }

    pub fn from_json(json: &str) -> Result<Event, BadEvent> {
        serde_json::from_str(json).map_err(BadEvent::Json)
    }
}

/// Why a record or message from Redis is not an event (logged, then skipped).
#[derive(Debug, thiserror::Error)]
pub enum BadEvent {
    #[error("not a cluster record: {0:?}")]
    NotARecord(String),
    #[error("bad cluster event: {0}")]
    Json(#[source] serde_json::Error),
}

/// Where a node's own changes go: the sync task writes them to Redis and publishes them.
/// Made before the stages (`server`), which take it as their sink; the receiver goes to
/// `sync::start`.
#[derive(Clone)]
pub struct Outbox {
    node: String,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl Outbox {
    pub fn new(node: &str) -> (Outbox, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let node = node.to_string();
        (Outbox { node, tx }, rx)
    }

    pub fn send(&self, change: Change, at_ms: u64) {
        // Closed only when the relay stops; the local store has the change either way.
        let _ = self.tx.send(Event {
            node: self.node.clone(),
            at_ms,
            change,
        });
    }
}

impl HoldSink for Outbox {
    fn send_hold(&self, key: &HoldKey, hold: Option<Hold>, at_ms: u64) {
        self.send(Change::hold(key, hold), at_ms);
    }
}

impl SuppressionSink for Outbox {
    fn send_suppression(&self, address: String, entry: Option<Entry>, at_ms: u64) {
        self.send(Change::Suppression { address, entry }, at_ms);
    }
}

impl DecisionSink for Outbox {
    fn send_decision(&self, account: String, decision: Decision, at_ms: u64) {
        self.send(Change::Account { account, decision }, at_ms);
    }
}

/// Lua: writes `ARGV[2]` (a record) into hash `KEYS[1]` at field `ARGV[1]` unless the record
/// there is later (its `AT_MS|` prefix), then publishes `ARGV[4]` on channel `ARGV[3]`.
/// Returns 1 when written, 0 when a later change was there.
pub const WRITE_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local at = tonumber(string.match(ARGV[2], '^(%d+)|'))
if cur then
  local cur_at = tonumber(string.match(cur, '^(%d+)|'))
  if cur_at and cur_at >= at then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::HoldKind;

    fn drain() -> Event {
        Event {
            node: "relay-1".into(),
            at_ms: 1_700_000_000_123,
            change: Change::Hold {
                ip: "192.0.2.7".parse().unwrap(),
                scope: "gmail".into(),
                cause: Cause::Dnsbl("zen.spamhaus.org".into()),
                hold: Some(Hold {
                    kind: HoldKind::Quarantined,
                    scope: "gmail".into(),
                    cause: Cause::Dnsbl("zen.spamhaus.org".into()),
                    reason: "dnsbl listing".into(),
                    evidence: "zen.spamhaus.org 127.0.0.2".into(),
                    since: 1_700_000_000,
                    until: Some(1_700_003_600),
                    offence: 0,
                    replies: 0,
                }),
            },
        }
    }

    #[test]
    fn events_round_trip_as_json_and_as_records() {
        let hold = drain();
        let json = hold.to_json();
        assert!(json.contains(r#""kind":"hold""#), "{json}");
        assert!(
            json.contains(r#""cause":"dnsbl:zen.spamhaus.org""#),
            "{json}"
        );
        assert_eq!(Event::from_json(&json).unwrap(), hold);
        let record = hold.record();
        assert!(record.starts_with("1700000000123|{"), "{record}");
        assert_eq!(Event::from_record(&record).unwrap(), hold);
        assert_eq!(
            hold.change.field(),
            "192.0.2.7|gmail|dnsbl:zen.spamhaus.org"
        );
        assert_eq!(hold.change.table(), Table::Holds);

        let removed = Event {
            node: "relay-2".into(),
            at_ms: 5,
            change: Change::Suppression {
                address: "bad@example.com".into(),
                entry: None,
            },
        };
        assert!(removed.change.is_removal());
        assert_eq!(Event::from_record(&removed.record()).unwrap(), removed);
        let added = Event {
            change: Change::Suppression {
                address: "bad@example.com".into(),
                entry: Some(Entry {
                    reason: "550 5.1.1 no such user".into(),
                    since: 1,
                    until: 2,
                    why: Default::default(),
                    sender_domain: Some("shop.example".into()),
                }),
            },
            ..removed.clone()
        };
        assert!(!added.change.is_removal());
        // An ended suppression and an old removal are not shared any more; a hold record
        // stays (a quarantine past its end is probation).
        assert!(added.change.is_stale(1, 2_000));
        assert!(!added.change.is_stale(1, 1_999));
        assert!(!removed.change.is_stale(5, 5 + TOMBSTONE_KEEP_MS));
        assert!(removed.change.is_stale(5, 6 + TOMBSTONE_KEEP_MS));
        assert!(!hold.change.is_stale(1, u64::MAX / 2));
        assert_eq!(Event::from_json(&added.to_json()).unwrap(), added);
        assert_eq!(added.change.table(), Table::Suppressions);
    }

    #[test]
    fn bad_events_are_errors_not_panics() {
        assert!(Event::from_json("{}").is_err());
        assert!(Event::from_record("no stamp").is_err());
        let unknown = r#"{"node":"n","at_ms":1,"kind":"hold","ip":"192.0.2.1","scope":"all","cause":"gremlins","hold":null}"#;
        assert!(Event::from_json(unknown).is_err());
    }
}
