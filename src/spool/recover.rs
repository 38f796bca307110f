//! Recovery at start: what a crash left behind is sorted into messages to queue and debris.
//! Rules: the log's messages first, then the files' oldest first; a message in both places is
//! taken from `queue/` (the files are newer); a `.msg` without `.env` is debris only when it is not
//! in the log and not started since the spool was opened (looked at twice); an unreadable envelope
//! is never deleted; an envelope's mtime in the future is a deferral recorded in place.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Envelope, RcptState, Spool, now_unix, pack_id, remove_if_there};

impl Spool {
    /// Removes what a crash left half-written in `tmp/`: before anything new is written there.
    pub fn clean_tmp(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            tracing::info!(file = %path.display(), "spool: removing unfinished message");
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// Every complete message, oldest first (`clean_tmp` first); removes what a crash left
    /// half-written.
    pub fn recover(&self) -> io::Result<Vec<Envelope>> {
        self.clean_tmp()?;
        let mut envelopes = Vec::new();
        self.recover_each(1024, |batch| envelopes.extend(batch))?;
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(envelopes)
    }

    /// Every complete message, in batches of `batch` to `each`: the log's first, then the
    /// files' oldest first. May run while the relay works: messages started since the spool
    /// was opened are skipped (they are queued already), and a file is removed as debris of a
    /// crash only after a second look. Returns the number of messages.
    pub fn recover_each(
        &self,
        batch: usize,
        mut each: impl FnMut(Vec<Envelope>),
    ) -> io::Result<usize> {
        let from_log = self.recover_log();
        let mut count = from_log.len();
        if !from_log.is_empty() {
            each(from_log);
        }
        let mut out = Vec::with_capacity(batch);
        let l = self.list_queue()?;
        let lone = difference(&l.odd_msgs, &l.odd_envs).into_iter().chain(
            difference(&l.msgs, &l.envs)
                .into_iter()
                .map(|q| format!("{q:018X}")),
        );
        for id in lone {
            // A move from the log writes the message file first: not debris while in the log.
            if !self.envelope_path(&id).exists() && !self.log.contains(&id) && !self.is_new(&id) {
                tracing::info!(queue_id = %id, "spool: removing message without envelope");
                remove_if_there(&self.message_path(&id))?;
            }
        }
        let packed = l.envs.into_iter().map(|q| format!("{q:018X}"));
        for id in l.odd_envs.into_iter().chain(packed) {
            let path = self.envelope_path(&id);
            let (text, modified) = match read_with_mtime(&path) {
                Ok(t) => t,
                // Finished meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<Envelope>(&text) {
                Ok(mut env) if self.message_path(&id).exists() => {
                    deferred_until(&mut env, modified);
                    out.push(env);
                    count += 1;
                    if out.len() >= batch {
                        each(std::mem::replace(&mut out, Vec::with_capacity(batch)));
                    }
                }
                Ok(_) => {
                    tracing::error!(queue_id = %id, "spool: envelope without message, removed");
                    remove_if_there(&path)?;
                }
                Err(e) => {
                    // Never delete what we cannot read: an operator must look at it.
                    tracing::error!(queue_id = %id, error = %e, "spool: unreadable envelope left in place");
                }
            }
        }
        if !out.is_empty() {
            each(out);
        }
        self.started_now
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(count)
    }

    /// The log's messages found at open, oldest first, without those a crash left in both places
    /// (the files are newer).
    fn recover_log(&self) -> Vec<Envelope> {
        let from_log =
            std::mem::take(&mut *self.from_log.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Vec::with_capacity(from_log.len());
        for env in from_log {
            if self.envelope_path(&env.id).exists() {
                // Moved to files just before a crash: the files are newer.
                self.log.done(&env.id);
                continue;
            }
            out.push(env);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn is_new(&self, id: &str) -> bool {
        self.started_now
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|ids| ids.contains(id))
    }

    /// Ids of the `.env` and `.msg` files in `queue/`, each sorted, without the messages
    /// started since the spool was opened. Canonical ids are kept packed (16 bytes): a listing
    /// of a million messages stays small.
    fn list_queue(&self) -> io::Result<Listing> {
        let mut l = Listing::default();
        for entry in std::fs::read_dir(&self.queue)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let (id, env) = match (name.strip_suffix(".env"), name.strip_suffix(".msg")) {
                (Some(id), _) => (id, true),
                (_, Some(id)) => (id, false),
                _ => continue,
            };
            if self.is_new(id) {
                continue;
            }
            match (pack_id(id), env) {
                (Some(q), true) => l.envs.push(q),
                (Some(q), false) => l.msgs.push(q),
                (None, true) => l.odd_envs.push(id.to_string()),
                (None, false) => l.odd_msgs.push(id.to_string()),
            }
        }
        l.envs.sort_unstable();
        l.msgs.sort_unstable();
        l.odd_envs.sort();
        l.odd_msgs.sort();
        Ok(l)
    }
}

/// A file's bytes and its mtime (one open: the mtime from the same file).
fn read_with_mtime(path: &Path) -> io::Result<(Vec<u8>, SystemTime)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let modified = file.metadata()?.modified()?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    Ok((text, modified))
}

/// An envelope file's mtime in the future is the next attempt of a deferral recorded in place
/// (`Spool::defer_in_place`): pending recipients wait until then. (The attempt counts of those
/// deferrals are not in the file: after a restart the retry schedule restarts from the count
/// last saved, so the next delays may be shorter; expiry goes by `received_at` and is exact.)
fn deferred_until(env: &mut Envelope, modified: SystemTime) {
    let Ok(at) = modified.duration_since(UNIX_EPOCH) else {
        return;
    };
    let at = at.as_secs();
    if at <= now_unix() {
        return;
    }
    for r in env.recipients.iter_mut() {
        if r.state == RcptState::Pending {
            r.next_attempt = r.next_attempt.max(at);
        }
    }
}

/// What `list_queue` found: canonical ids packed, any others as they are.
#[derive(Default)]
struct Listing {
    envs: Vec<u128>,
    msgs: Vec<u128>,
    odd_envs: Vec<String>,
    odd_msgs: Vec<String>,
}

/// Items of sorted `a` not in sorted `b`.
fn difference<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    let mut j = 0;
    for x in a {
        while j < b.len() && b[j] < *x {
            j += 1;
        }
        if b.get(j) != Some(x) {
            out.push(x.clone());
        }
    }
    out
}
