//! Suppression: an address that hard-bounced as a bad recipient is not tried again for
//! `reputation.suppress_for`; later mail to it fails at once with a DSN saying why (so a stale
//! list does not keep hurting the pool's reputation). A recipient who complained (a feedback
//! report, `reputation::complaints`) is suppressed the same way for `[feedback] suppress_for`,
//! for the sender domain complained about or for every sender (`[feedback] suppress`). Listed and removable through the admin API (`GET
//! /api/suppressions`, `POST /api/suppressions/remove {"address": …, "sender_domain": …}`) and
//! `poolrelay suppression list|remove`; a removal without a sender domain lifts every scope.
//!
//! One entry per address and scope: the key is the address, or `address|sender-domain` for a
//! suppression of one sender domain's mail.
//!
//! Kept in `data_dir/suppressions.json` (written to a temp file, fsynced, renamed). With
//! `[cluster]`, additions and removals go to the farm too (`cluster::sync`), and the farm's are
//! applied here by the merge rule of `util::merge` (the later change wins).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::pool::warmup::Clock;
use crate::spool::now_unix;
use crate::util::merge::{Newer, newer};

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// It hard-bounced as an unknown recipient.
    #[default]
    BadRecipient,
    /// Its owner reported our mail as spam.
    Complained,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The reply that caused it, or the complaint's summary.
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    pub until: u64,
    #[serde(default)]
    pub why: Why,
    /// Only mail from this sender domain is refused; `None`: all mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_domain: Option<String>,
}

/// The map key of `address` suppressed for `sender_domain` (module doc).
fn key(address: &str, sender_domain: Option<&str>) -> String {
    let address = address.to_ascii_lowercase();
    match sender_domain {
        Some(d) => format!("{address}|{}", d.to_ascii_lowercase()),
        None => address,
    }
}

/// The address of a map key.
fn address_of<'a>(key: &'a str, e: &Entry) -> &'a str {
    match &e.sender_domain {
        Some(d) => key
            .strip_suffix(d.as_str())
            .and_then(|k| k.strip_suffix('|')),
        None => None,
    }
    .unwrap_or(key)
}

pub struct Suppressions {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Entry>>,
    /// One writer at a time (they share the temp file); each writes the latest list.
    save_lock: Mutex<()>,
    /// Additions are written by a background flusher once a second (a burst of bounces from a
    /// stale list must not rewrite the file per bounce on the delivery path).
    batched: AtomicBool,
    dirty: AtomicBool,
    /// When each address's suppression last changed (unix millis), removals included; locked
    /// after `map`.
    stamps: Mutex<HashMap<String, u64>>,
    /// Where changes go to the farm (`[cluster]`; `None` = this relay alone).
    outbox: Option<Arc<dyn SuppressionSink>>,
}

/// Where suppressions added or removed here go to the farm (`[cluster]`, implemented by
/// `cluster`): the entry as it is now (`None`: removed), stamped (unix millis).
pub trait SuppressionSink: Send + Sync {
    fn send_suppression(&self, address: String, entry: Option<Entry>, at_ms: u64);
}

impl Suppressions {
    pub fn open(data_dir: &Path) -> Suppressions {
        let path = data_dir.join("suppressions.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Suppressions {
            path,
            map: Mutex::new(map),
            save_lock: Mutex::new(()),
            batched: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            stamps: Mutex::default(),
            outbox: None,
        }
    }

    /// Additions and removals made here go to `outbox` (the farm's, `[cluster]`), handed
    /// while built.
    pub fn sharing(mut self, outbox: Option<Arc<dyn SuppressionSink>>) -> Suppressions {
        self.outbox = outbox;
        self
    }

    /// Stamps a change made here and hands it to the farm (called under the `map` lock).
    fn changed(&self, address: &str, entry: Option<Entry>) {
        let mut stamps = self.stamps.lock().expect("lock");
        let now = Clock::now_ms();
        let stamp = stamps.get(address).map_or(now, |s| now.max(s + 1));
        stamps.insert(address.to_string(), stamp);
        if let Some(outbox) = &self.outbox {
            outbox.send_suppression(address.to_string(), entry, stamp);
        }
    }

    /// A change made on another node: applied when later than this node's (the merge rule).
    /// Returns whether it was.
    pub fn apply_remote(&self, address: &str, entry: Option<Entry>, at_ms: u64) -> bool {
        let address = address.to_ascii_lowercase();
        if entry.as_ref().is_some_and(|e| e.until <= now_unix()) {
            // Over already: nothing to apply.
            return false;
        }
        {
            let mut map = self.map.lock().expect("lock");
            let mut stamps = self.stamps.lock().expect("lock");
            let local = stamps
                .get(&address)
                .copied()
                .or_else(|| map.get(&address).map(|e| e.since * 1000));
            if newer(local, Some(at_ms)) != Newer::Remote {
                return false;
            }
            stamps.insert(address.clone(), at_ms);
            // Already the same here (after a restart local times are coarser): nothing to do.
            if map.get(&address) == entry.as_ref() {
                return false;
            }
            match &entry {
                Some(e) => {
                    tracing::info!(recipient = %address, reason = %e.reason, until = e.until, "recipient suppressed (from the farm)");
                    map.insert(address, e.clone());
                }
                None => {
                    tracing::info!(recipient = %address, "suppression removed (from the farm)");
                    map.remove(&address);
                }
            }
        }
        if self.batched.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        } else {
            self.save();
        }
        true
    }

    /// Every suppression this node knows, removals included, each with its stamp: what a
    /// resync compares with the farm's.
    pub fn changes(&self) -> Vec<(String, Option<Entry>, u64)> {
        let map = self.map.lock().expect("lock");
        let stamps = self.stamps.lock().expect("lock");
        let mut addresses: Vec<&String> = map.keys().chain(stamps.keys()).collect();
        addresses.sort();
        addresses.dedup();
        addresses
            .into_iter()
            .map(|a| {
                let entry = map.get(a).cloned();
                let stamp = stamps
                    .get(a)
                    .copied()
                    .or_else(|| entry.as_ref().map(|e| e.since * 1000))
                    .unwrap_or(0);
                (a.clone(), entry, stamp)
            })
            .collect()
    }

    /// A bad recipient: suppressed for every sender.
    pub fn add(&self, address: &str, reason: &str, for_secs: u64) {
        self.insert(address, Why::BadRecipient, None, reason, for_secs);
    }

    /// A complainer: suppressed for `sender_domain`, or every sender when `None`.
    pub fn add_complainer(
        &self,
        address: &str,
        sender_domain: Option<&str>,
        reason: &str,
        for_secs: u64,
    ) {
        self.insert(address, Why::Complained, sender_domain, reason, for_secs);
    }

    fn insert(
        &self,
        address: &str,
        why: Why,
        sender_domain: Option<&str>,
        reason: &str,
        for_secs: u64,
    ) {
        let now = now_unix();
        let entry = Entry {
            reason: reason.to_string(),
            since: now,
            until: now + for_secs,
            why,
            sender_domain: sender_domain.map(str::to_ascii_lowercase),
        };
        {
            let key = key(address, sender_domain);
            let mut map = self.map.lock().expect("lock");
            map.insert(key.clone(), entry.clone());
            self.changed(&key, Some(entry.clone()));
        }
        let scope = sender_domain.unwrap_or("all senders");
        tracing::warn!(recipient = %address, reason, scope, until = entry.until, "recipient suppressed");
        if self.batched.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        } else {
            self.save();
        }
    }

    /// Writes additions once a second from now on (needs a tokio runtime; without one every
    /// addition is written at once).
    pub fn start_flusher(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.batched.store(true, Ordering::Relaxed);
        let me = self.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if me.dirty.swap(false, Ordering::Relaxed) {
                    let m = me.clone();
                    let _ = tokio::task::spawn_blocking(move || m.save()).await;
                }
            }
        });
    }

    /// Writes pending additions now (graceful stop).
    pub fn flush(&self) {
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.save();
        }
    }

    /// The suppression in force for `address` and every sender, if any.
    pub fn get(&self, address: &str) -> Option<Entry> {
        self.get_for(address, &[])
    }

    /// The suppression in force for `address` from a sender of `sender_domains` (or for every
    /// sender), if any: the one for every sender first.
    pub fn get_for(&self, address: &str, sender_domains: &[&str]) -> Option<Entry> {
        let now = now_unix();
        let map = self.map.lock().expect("lock");
        std::iter::once(None)
            .chain(sender_domains.iter().map(|d| Some(*d)))
            .filter_map(|d| map.get(&key(address, d)))
            .find(|e| e.until > now)
            .cloned()
    }

    /// Lifts the suppression of `address` for `sender_domain`, or every one of `address` when
    /// `None`. Returns whether there was one.
    pub fn remove(&self, address: &str, sender_domain: Option<&str>) -> bool {
        let removed = {
            let mut map = self.map.lock().expect("lock");
            let keys: Vec<String> = match sender_domain {
                Some(d) => vec![key(address, Some(d))],
                None => {
                    let a = address.to_ascii_lowercase();
                    map.range(a.clone()..)
                        .map(|(k, _)| k)
                        .take_while(|k| k.starts_with(&a))
                        .filter(|k| k.len() == a.len() || k[a.len()..].starts_with('|'))
                        .cloned()
                        .collect()
                }
            };
            let mut removed = false;
            for k in keys {
                if map.remove(&k).is_some() {
                    self.changed(&k, None);
                    removed = true;
                }
            }
            removed
        };
        if removed {
            let scope = sender_domain.unwrap_or("every scope");
            tracing::info!(recipient = %address, scope, "suppression removed");
            self.save();
        }
        removed
    }

    /// Suppressions in force: address and entry (its scope in `sender_domain`).
    pub fn list(&self) -> Vec<(String, Entry)> {
        let now = now_unix();
        let map = self.map.lock().expect("lock");
        map.iter()
            .filter(|(_, e)| e.until > now)
            .map(|(k, e)| (address_of(k, e).to_string(), e.clone()))
            .collect()
    }

    fn save(&self) {
        let _one = self.save_lock.lock().expect("lock");
        let map = {
            let mut map = self.map.lock().expect("lock");
            let now = now_unix();
            map.retain(|_, e| e.until > now);
            // Stamps of what is gone are kept only as long as the farm keeps removals.
            let keep_ms = crate::util::merge::TOMBSTONE_KEEP_MS;
            let now_ms = Clock::now_ms();
            self.stamps
                .lock()
                .expect("lock")
                .retain(|a, at| map.contains_key(a) || *at + keep_ms > now_ms);
            map.clone()
        };
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&map).expect("serialises"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save suppressions");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::events::{Change, Outbox};

    #[test]
    fn farm_suppressions_apply_by_the_later_stamp() {
        let dir = crate::util::test_dir::tempdir("suppress").join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let (outbox, mut rx) = Outbox::new("here");
        let s = Suppressions::open(&dir).sharing(Some(Arc::new(outbox)));
        s.add("Bad@Example.com", "550 5.1.1 no such user", 3600);
        let added = rx.try_recv().unwrap();
        assert_eq!(added.change.field(), "bad@example.com");
        // Removed elsewhere before it was added here: stays.
        assert!(!s.apply_remote("bad@example.com", None, added.at_ms - 1));
        assert!(s.get("bad@example.com").is_some());
        // Removed elsewhere later: gone, and the file says so.
        assert!(s.apply_remote("BAD@example.com", None, added.at_ms + 1));
        assert!(s.get("bad@example.com").is_none());
        assert!(
            !std::fs::read_to_string(dir.join("suppressions.json"))
                .unwrap()
                .contains("bad@example.com")
        );
        // Added elsewhere: in force here, without going back out.
        let entry = Entry {
            reason: "550 5.1.1".into(),
            since: now_unix(),
            until: now_unix() + 60,
            why: Why::BadRecipient,
            sender_domain: None,
        };
        assert!(s.apply_remote("new@example.com", Some(entry), Clock::now_ms()));
        assert!(s.get("new@example.com").is_some());
        assert!(rx.try_recv().is_err());
        assert_eq!(s.changes().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_complainer_is_suppressed_for_its_sender_domain_only() {
        let dir = crate::util::test_dir::tempdir("suppress").join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let s = Suppressions::open(&dir);
        s.add_complainer("Eve@Example.net", Some("Shop.example"), "complained", 3600);
        s.add("eve@example.net", "550 5.1.1 no such user", 60);
        assert!(s.remove("eve@example.net", None));
        s.add_complainer("eve@example.net", Some("shop.example"), "complained", 3600);
        assert!(s.get("eve@example.net").is_none());
        assert!(s.get_for("eve@example.net", &["other.example"]).is_none());
        let e = s
            .get_for("EVE@example.net", &["other.example", "shop.example"])
            .unwrap();
        assert_eq!(
            (e.why, e.sender_domain.as_deref()),
            (Why::Complained, Some("shop.example"))
        );
        // Listed by address with its scope; kept across a restart.
        let listed = Suppressions::open(&dir).list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "eve@example.net");
        assert_eq!(listed[0].1.sender_domain.as_deref(), Some("shop.example"));
        // Another address with the same start is not lifted with it.
        s.add_complainer("eve@example.net.x", None, "complained", 3600);
        assert!(s.remove("eve@example.net", Some("shop.example")));
        assert!(!s.remove("eve@example.net", None));
        assert!(s.get("eve@example.net.x").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_complainer_suppressed_on_one_node_is_suppressed_on_the_others() {
        let dirs: Vec<PathBuf> = (0..2)
            .map(|_| {
                let d = crate::util::test_dir::tempdir("suppress").join("data");
                std::fs::create_dir_all(&d).unwrap();
                d
            })
            .collect();
        let (outbox, mut rx) = Outbox::new("here");
        let here = Suppressions::open(&dirs[0]).sharing(Some(Arc::new(outbox)));
        let there = Suppressions::open(&dirs[1]);
        here.add_complainer("eve@example.net", Some("shop.example"), "complained", 3600);
        let sent = rx.try_recv().unwrap();
        let Change::Suppression { address, entry } = sent.change else {
            panic!("not a suppression");
        };
        assert_eq!(address, "eve@example.net|shop.example");
        assert!(there.apply_remote(&address, entry, sent.at_ms));
        let e = there.get_for("eve@example.net", &["shop.example"]).unwrap();
        assert_eq!(e.why, Why::Complained);
        assert!(there.get("eve@example.net").is_none());
        assert_eq!(there.list()[0].0, "eve@example.net");
        for d in dirs {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
