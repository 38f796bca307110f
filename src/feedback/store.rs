//! What complaints need kept in the state store (redb): the trace keys, one record per delivered
//! recipient, and the recent traced complaints.
//!
//! Rules:
//! - A delivery record `{queue id, recipient, source IP, provider, login, sender domain,
//!   Message-ID hash, time}` is written for every recipient a receiver took (250); records are
//!   buffered and written once a second (a crash loses at most that second), dropped after
//!   `keep_records` and, past `max_records`, oldest first.
//! - Lookups: by queue id, by Message-ID hash, by recipient (newest last).
//! - Complaints charged to a message: one per recipient among its delivery records, one
//!   naming no such recipient, never more than the recipients it was delivered to.

use std::net::IpAddr;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::state::{State, StateError};

/// `"trace"` → JSON list of base64 secrets, newest first.
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("feedback_keys");
/// `QUEUE_ID|RCPT` → JSON `Delivery`.
const DELIVERIES: TableDefinition<&str, &str> = TableDefinition::new("feedback_deliveries");
/// `AT(10 digits)|QUEUE_ID|RCPT` → "".
const BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("feedback_by_time");
/// `MESSAGE_ID_HASH|QUEUE_ID|RCPT` → "".
const BY_MESSAGE_ID: TableDefinition<&str, &str> = TableDefinition::new("feedback_by_message_id");
/// `RCPT|AT|QUEUE_ID` → "".
const BY_RCPT: TableDefinition<&str, &str> = TableDefinition::new("feedback_by_rcpt");
/// `QUEUE_ID|RCPT` (or `QUEUE_ID|#` for the one unnamed complaint) → unix seconds: complaints
/// charged to a message.
const CHARGED: TableDefinition<&str, u64> = TableDefinition::new("feedback_charged");
/// `AT(10 digits)|NANOS|SEQ` → JSON traced complaint.
const COMPLAINTS: TableDefinition<&str, &str> = TableDefinition::new("feedback_complaints");

/// One recipient a receiver accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub queue_id: String,
    pub recipient: String,
    pub source_ip: IpAddr,
    pub provider: String,
    #[serde(default)]
    pub login: Option<String>,
    #[serde(default)]
    pub sender_domain: Option<String>,
    /// `trace::message_id_hash` of the Message-ID.
    #[serde(default)]
    pub message_id: Option<String>,
    /// Unix seconds of the 250.
    pub at: u64,
}

impl Delivery {
    fn key(&self) -> String {
        format!("{}|{}", self.queue_id, self.recipient)
    }
}

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

/// Creates the tables (once, at start).
pub fn create(state: &State) -> Result<(), StateError> {
    let tx = state.database().begin_write().map_err(err)?;
    for t in [
        KEYS,
        DELIVERIES,
        BY_TIME,
        BY_MESSAGE_ID,
        BY_RCPT,
        COMPLAINTS,
    ] {
        tx.open_table(t).map_err(err)?;
    }
    tx.open_table(CHARGED).map_err(err)?;
    tx.commit().map_err(err)
}

pub fn load_keys(state: &State) -> Result<Vec<String>, StateError> {
    let tx = state.database().begin_read().map_err(err)?;
    let t = tx.open_table(KEYS).map_err(err)?;
    match t.get("trace").map_err(err)? {
        Some(v) => serde_json::from_str(v.value()).map_err(err),
        None => Ok(Vec::new()),
    }
}

pub fn save_keys(state: &State, keys: &[String]) -> Result<(), StateError> {
    let json = serde_json::to_string(keys).map_err(err)?;
    let tx = state.database().begin_write().map_err(err)?;
    tx.open_table(KEYS)
        .map_err(err)?
        .insert("trace", json.as_str())
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// Writes records in one transaction.
pub fn write_deliveries(state: &State, records: &[Delivery]) -> Result<(), StateError> {
    if records.is_empty() {
        return Ok(());
    }
    let tx = state.database().begin_write().map_err(err)?;
    {
        let mut main = tx.open_table(DELIVERIES).map_err(err)?;
        let mut by_time = tx.open_table(BY_TIME).map_err(err)?;
        let mut by_mid = tx.open_table(BY_MESSAGE_ID).map_err(err)?;
        let mut by_rcpt = tx.open_table(BY_RCPT).map_err(err)?;
        for d in records {
            let key = d.key();
            let json = serde_json::to_string(d).map_err(err)?;
            main.insert(key.as_str(), json.as_str()).map_err(err)?;
            let k = format!("{:010}|{key}", d.at);
            by_time.insert(k.as_str(), "").map_err(err)?;
            if let Some(m) = &d.message_id {
                let k = format!("{m}|{key}");
                by_mid.insert(k.as_str(), "").map_err(err)?;
            }
            let k = format!("{}|{:010}|{}", d.recipient, d.at, d.queue_id);
            by_rcpt.insert(k.as_str(), "").map_err(err)?;
        }
    }
    tx.commit().map_err(err)
}

/// Keys from `prefix` (which ends in `|`) to its end.
fn range_keys<T: ReadableTable<&'static str, &'static str>>(
    table: &T,
    prefix: &str,
) -> Result<Vec<String>, StateError> {
    let end = format!("{}}}", prefix.trim_end_matches('|'));
    let mut out = Vec::new();
    for r in table.range(prefix..end.as_str()).map_err(err)? {
        out.push(r.map_err(err)?.0.value().to_string());
    }
    Ok(out)
}

fn get_all(state: &State, keys: &[String]) -> Result<Vec<Delivery>, StateError> {
    let tx = state.database().begin_read().map_err(err)?;
    let main = tx.open_table(DELIVERIES).map_err(err)?;
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = main.get(k.as_str()).map_err(err)?
            && let Ok(d) = serde_json::from_str(v.value())
        {
            out.push(d);
        }
    }
    Ok(out)
}

/// Records of one message.
pub fn by_queue(state: &State, queue_id: &str) -> Result<Vec<Delivery>, StateError> {
    let keys = {
        let tx = state.database().begin_read().map_err(err)?;
        range_keys(
            &tx.open_table(DELIVERIES).map_err(err)?,
            &format!("{queue_id}|"),
        )?
    };
    get_all(state, &keys)
}

/// Records of the message with this Message-ID hash.
pub fn by_message_id(state: &State, hash: &str) -> Result<Vec<Delivery>, StateError> {
    let keys = {
        let tx = state.database().begin_read().map_err(err)?;
        range_keys(
            &tx.open_table(BY_MESSAGE_ID).map_err(err)?,
            &format!("{hash}|"),
        )?
    };
    let main: Vec<String> = keys
        .iter()
        .filter_map(|k| k.split_once('|').map(|(_, rest)| rest.to_string()))
        .collect();
    get_all(state, &main)
}

/// Records of one recipient, oldest first.
pub fn by_recipient(state: &State, rcpt: &str) -> Result<Vec<Delivery>, StateError> {
    let prefix = format!("{rcpt}|");
    let keys = {
        let tx = state.database().begin_read().map_err(err)?;
        range_keys(&tx.open_table(BY_RCPT).map_err(err)?, &prefix)?
    };
    let main: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(&prefix)?;
            let (_, qid) = rest.split_once('|')?;
            Some(format!("{qid}|{rcpt}"))
        })
        .collect();
    get_all(state, &main)
}

/// Drops records older than `cutoff` (unix seconds), then the oldest past `max`.
pub fn prune(state: &State, cutoff: u64, max: usize) -> Result<usize, StateError> {
    let tx = state.database().begin_write().map_err(err)?;
    let dropped;
    {
        let mut charged = tx.open_table(CHARGED).map_err(err)?;
        charged.retain(|_, at| at >= cutoff).map_err(err)?;
        let mut main = tx.open_table(DELIVERIES).map_err(err)?;
        let mut by_time = tx.open_table(BY_TIME).map_err(err)?;
        let mut by_mid = tx.open_table(BY_MESSAGE_ID).map_err(err)?;
        let mut by_rcpt = tx.open_table(BY_RCPT).map_err(err)?;
        let total = by_time.len().map_err(err)? as usize;
        let excess = total.saturating_sub(max);
        let mut stale = Vec::new();
        for (i, r) in by_time.iter().map_err(err)?.enumerate() {
            let k = r.map_err(err)?.0.value().to_string();
            let at: u64 = k.get(..10).and_then(|a| a.parse().ok()).unwrap_or(0);
            if i >= excess && at >= cutoff {
                break;
            }
            stale.push(k);
        }
        dropped = stale.len();
        for k in stale {
            by_time.remove(k.as_str()).map_err(err)?;
            let main_key = k.get(11..).unwrap_or_default();
            let Some(v) = main.remove(main_key).map_err(err)? else {
                continue;
            };
            let Ok(d) = serde_json::from_str::<Delivery>(v.value()) else {
                continue;
            };
            drop(v);
            if let Some(m) = &d.message_id {
                by_mid
                    .remove(format!("{m}|{main_key}").as_str())
                    .map_err(err)?;
            }
            by_rcpt
                .remove(format!("{}|{:010}|{}", d.recipient, d.at, d.queue_id).as_str())
                .map_err(err)?;
        }
    }
    tx.commit().map_err(err)?;
    Ok(dropped)
}

/// Charges one complaint to message `queue_id`: false when that recipient's complaint was
/// charged already, or the message has drawn `limit` complaints (the recipients it was
/// delivered to), so a report sent again, or replayed by someone who got the message, counts
/// once. `rcpt` is one of the message's delivery records (the caller checks); `None` (no name,
/// or a name it was not delivered to) is charged once per message, so made-up names cannot
/// draw a complaint per delivered recipient.
pub fn charge(
    state: &State,
    queue_id: &str,
    rcpt: Option<&str>,
    limit: usize,
    at: u64,
) -> Result<bool, StateError> {
    let tx = state.database().begin_write().map_err(err)?;
    let charged = {
        let mut t = tx.open_table(CHARGED).map_err(err)?;
        let prefix = format!("{queue_id}|");
        let end = format!("{queue_id}}}");
        let mut keys = Vec::new();
        for r in t.range(prefix.as_str()..end.as_str()).map_err(err)? {
            keys.push(r.map_err(err)?.0.value().to_string());
        }
        let key = match rcpt {
            Some(r) => format!("{prefix}{r}"),
            None => format!("{prefix}#"),
        };
        if keys.contains(&key) || keys.len() >= limit.max(1) {
            false
        } else {
            t.insert(key.as_str(), at).map_err(err)?;
            true
        }
    };
    tx.commit().map_err(err)?;
    Ok(charged)
}

/// Appends a traced complaint (JSON) and keeps the newest `keep`.
pub fn push_complaint(state: &State, at: u64, json: &str, keep: usize) -> Result<(), StateError> {
    let tx = state.database().begin_write().map_err(err)?;
    {
        let mut t = tx.open_table(COMPLAINTS).map_err(err)?;
        // Nanoseconds and a process-wide sequence: unique, in arrival order.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let key = format!("{at:010}|{nanos:09}|{seq:012}");
        t.insert(key.as_str(), json).map_err(err)?;
        let excess = (t.len().map_err(err)? as usize).saturating_sub(keep);
        if excess > 0 {
            let old: Vec<String> = t
                .iter()
                .map_err(err)?
                .take(excess)
                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            for k in old {
                t.remove(k.as_str()).map_err(err)?;
            }
        }
    }
    tx.commit().map_err(err)
}

/// The newest `n` complaints (JSON), oldest first.
pub fn recent_complaints(state: &State, n: usize) -> Result<Vec<String>, StateError> {
    let tx = state.database().begin_read().map_err(err)?;
    let t = tx.open_table(COMPLAINTS).map_err(err)?;
    let mut out: Vec<String> = Vec::new();
    for r in t.iter().map_err(err)?.rev().take(n) {
        out.push(r.map_err(err)?.1.value().to_string());
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, std::path::PathBuf) {
        let dir = crate::util::test_dir::tempdir("fb").join("data");
        let s = State::open(&dir).unwrap();
        create(&s).unwrap();
        (s, dir)
    }

    fn rec(q: &str, rcpt: &str, at: u64) -> Delivery {
        Delivery {
            queue_id: q.into(),
            recipient: rcpt.into(),
            source_ip: "127.0.0.10".parse().unwrap(),
            provider: "other".into(),
            login: Some("alice".into()),
            sender_domain: Some("shop.test".into()),
            message_id: Some(format!("mid-{q}")),
            at,
        }
    }

    #[test]
    fn records_found_by_queue_message_id_and_recipient_then_expire() {
        let (s, dir) = state();
        write_deliveries(
            &s,
            &[rec("Q1", "a@x.test", 100), rec("Q1", "b@x.test", 100)],
        )
        .unwrap();
        write_deliveries(&s, &[rec("Q2", "a@x.test", 200)]).unwrap();
        assert_eq!(by_queue(&s, "Q1").unwrap().len(), 2);
        assert_eq!(
            by_message_id(&s, "mid-Q2").unwrap(),
            vec![rec("Q2", "a@x.test", 200)]
        );
        let mine = by_recipient(&s, "a@x.test").unwrap();
        assert_eq!(
            mine.iter().map(|d| d.queue_id.as_str()).collect::<Vec<_>>(),
            ["Q1", "Q2"]
        );
        // Expiry, then the bound.
        assert_eq!(prune(&s, 150, 100).unwrap(), 2);
        assert!(by_queue(&s, "Q1").unwrap().is_empty());
        assert!(by_message_id(&s, "mid-Q1").unwrap().is_empty());
        assert_eq!(by_recipient(&s, "a@x.test").unwrap().len(), 1);
        write_deliveries(&s, &[rec("Q3", "c@x.test", 300)]).unwrap();
        assert_eq!(prune(&s, 0, 1).unwrap(), 1);
        assert!(by_queue(&s, "Q2").unwrap().is_empty());
        assert_eq!(by_queue(&s, "Q3").unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_message_draws_at_most_one_complaint_per_recipient() {
        let (s, dir) = state();
        assert!(charge(&s, "Q1", Some("a@x.test"), 2, 100).unwrap());
        assert!(!charge(&s, "Q1", Some("a@x.test"), 2, 100).unwrap());
        assert!(charge(&s, "Q1", None, 2, 100).unwrap());
        assert!(!charge(&s, "Q1", Some("b@x.test"), 2, 100).unwrap());
        assert!(charge(&s, "Q10", None, 1, 100).unwrap());
        assert!(!charge(&s, "Q10", None, 1, 100).unwrap());
        // Unnamed: once per message, however many recipients it had.
        assert!(charge(&s, "Q20", None, 5, 100).unwrap());
        assert!(!charge(&s, "Q20", None, 5, 100).unwrap());
        assert!(charge(&s, "Q20", Some("a@x.test"), 5, 100).unwrap());
        prune(&s, 200, 10).unwrap();
        assert!(charge(&s, "Q1", Some("a@x.test"), 2, 300).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn complaints_keep_the_newest() {
        let (s, dir) = state();
        for i in 0..5 {
            push_complaint(&s, 1000 + i, &format!("{{\"n\":{i}}}"), 3).unwrap();
        }
        assert_eq!(
            recent_complaints(&s, 10).unwrap(),
            ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
