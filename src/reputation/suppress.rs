//! Suppression: an address that hard-bounced as a bad recipient is not tried again for
//! `reputation.suppress_for`; later mail to it fails at once with a DSN saying why (so a stale
//! list does not keep hurting the pool's reputation). Listed and removable through the admin API
//! (`GET /api/suppressions`, `POST /api/suppressions/remove {"address": …}`) and
//! `poolrelay suppression list|remove`.
//!
//! Kept in `data_dir/suppressions.json` (written to a temp file, fsynced, renamed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::spool::now_unix;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The reply that caused it.
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    pub until: u64,
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
        }
    }

    pub fn add(&self, address: &str, reason: &str, for_secs: u64) {
        let now = now_unix();
        let entry = Entry {
            reason: reason.to_string(),
            since: now,
            until: now + for_secs,
        };
        self.map
            .lock()
            .expect("lock")
            .insert(address.to_ascii_lowercase(), entry.clone());
        tracing::warn!(recipient = %address, reason, until = entry.until, "recipient suppressed");
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

    /// The suppression in force for `address`, if any.
    pub fn get(&self, address: &str) -> Option<Entry> {
        let map = self.map.lock().expect("lock");
        map.get(&address.to_ascii_lowercase())
            .filter(|e| e.until > now_unix())
            .cloned()
    }

    pub fn remove(&self, address: &str) -> bool {
        let removed = self
            .map
            .lock()
            .expect("lock")
            .remove(&address.to_ascii_lowercase())
            .is_some();
        if removed {
            tracing::info!(recipient = %address, "suppression removed");
            self.save();
        }
        removed
    }

    pub fn list(&self) -> Vec<(String, Entry)> {
        let now = now_unix();
        let map = self.map.lock().expect("lock");
        map.iter()
            .filter(|(_, e)| e.until > now)
            .map(|(a, e)| (a.clone(), e.clone()))
            .collect()
    }

    fn save(&self) {
        let _one = self.save_lock.lock().expect("lock");
        let map = {
            let mut map = self.map.lock().expect("lock");
            let now = now_unix();
            map.retain(|_, e| e.until > now);
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
