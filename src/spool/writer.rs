//! Writing one message into the spool: a group-committed directory fsync, and `MessageWriter`
//! (the log for a message that fits in memory, files through `tmp/` for a larger one).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Envelope, Finished, Spool, blocking, write_synced};

/// Group commit of a directory's fsync. Each caller has already renamed or removed its entries;
/// it returns once an fsync of the directory that *started after* its call has succeeded. While
/// one fsync runs, later callers queue up and the next single fsync covers all of them, so N
/// concurrent sessions cost about one directory fsync per round instead of N.
pub(super) struct GroupSync {
    dir: PathBuf,
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
}

struct SyncState {
    /// Tickets handed out so far (ticket n = the n-th caller, counted from 0).
    next: u64,
    /// Every ticket below this is durable.
    durable: u64,
    running: bool,
    /// Ticket ranges a failed fsync covered. Their renames may be lost even if a later fsync
    /// succeeds (Linux reports a writeback error once), so those callers get the error.
    failed: Vec<std::ops::Range<u64>>,
}

impl SyncState {
    /// The outcome for `ticket`, once a round has covered it.
    fn settled(&self, ticket: u64) -> Option<io::Result<()>> {
        if self.failed.iter().any(|r| r.contains(&ticket)) {
            Some(Err(io::Error::other("spool directory fsync failed")))
        } else if self.durable > ticket {
            Some(Ok(()))
        } else {
            None
        }
    }
}

impl GroupSync {
    pub(super) fn new(dir: PathBuf) -> GroupSync {
        GroupSync {
            dir,
            state: std::sync::Mutex::new(SyncState {
                next: 0,
                durable: 0,
                running: false,
                failed: Vec::new(),
            }),
            done: std::sync::Condvar::new(),
        }
    }

    /// Blocking: call from the blocking pool.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        loop {
            if let Some(result) = st.settled(ticket) {
                return result;
            }
            if !st.running {
                // Our change happened before we took the ticket, and this fsync starts after
                // every ticket below `upto` was taken: it covers them all.
                st.running = true;
                let upto = st.next;
                drop(st);
                let result = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.running = false;
                match &result {
                    Ok(()) => st.durable = st.durable.max(upto),
                    // Only one round runs at a time, so `durable` is where this one started.
                    Err(_) => {
                        let from = st.durable;
                        st.failed.push(from..upto);
                    }
                }
                self.done.notify_all();
                return result;
            }
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A message being received. Dropped without `commit`, its file is removed.
/// Bytes a message keeps in memory before its file is written: a typical message is created,
/// written and fsynced in a single trip to the blocking pool, at `finish`.
const WRITE_BUFFER: usize = 64 * 1024;

pub struct MessageWriter {
    spool: Arc<Spool>,
    id: String,
    /// The file under `tmp/`, once the message outgrew `WRITE_BUFFER`.
    file: Option<std::fs::File>,
    created: bool,
    /// A write to the file failed: the message cannot be committed.
    failed: bool,
    buf: Vec<u8>,
    /// After `finish` or a failed write: no more writes.
    closed: bool,
    path: PathBuf,
    len: u64,
    synced: bool,
    done: bool,
}

impl MessageWriter {
    pub(super) fn new(spool: Arc<Spool>, id: &str) -> MessageWriter {
        let path = spool.tmp.join(format!("{id}.msg"));
        MessageWriter {
            spool,
            id: id.to_string(),
            file: None,
            created: false,
            failed: false,
            buf: Vec::with_capacity(8 * 1024),
            closed: false,
            path,
            len: 0,
            synced: false,
            done: false,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::other("writer finished"));
        }
        if self.buf.len() + buf.len() <= WRITE_BUFFER {
            self.buf.extend_from_slice(buf);
        } else {
            self.spill(buf, false).await?;
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Writes the buffer plus `extra` to the file (creating it), optionally fsyncing, in one
    /// blocking-pool trip. Any failure closes the writer for good.
    async fn spill(&mut self, extra: &[u8], sync: bool) -> io::Result<()> {
        use std::io::Write as _;
        let mut data = std::mem::take(&mut self.buf);
        data.extend_from_slice(extra);
        let file = self.file.take();
        let path = self.path.clone();
        self.created = true;
        let res = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, Vec<u8>)> {
            let mut f = match file {
                Some(f) => f,
                None => std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?,
            };
            f.write_all(&data)?;
            if sync {
                f.sync_all()?;
            }
            data.clear();
            Ok((f, data))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        match res {
            Ok((f, mut data)) => {
                self.file = Some(f);
                data.shrink_to(WRITE_BUFFER);
                self.buf = data;
                Ok(())
            }
            Err(e) => {
                self.closed = true;
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Ends the message: a small one stays in memory for the log; a file is written out and
    /// fsynced. Either can be read (DKIM signing) before `commit`.
    pub async fn finish(&mut self) -> io::Result<Finished<'_>> {
        if !self.closed {
            self.closed = true;
            if self.created {
                self.spill(&[], true).await?;
                self.synced = true;
                self.file = None;
                self.buf = Vec::new();
            }
        }
        if self.failed {
            // A failed flush or fsync is never retried into a success: the data may be gone.
            return Err(io::Error::other("message file was not synced"));
        }
        if !self.created {
            return Ok(Finished::Memory(&self.buf));
        }
        if !self.synced {
            return Err(io::Error::other("message file was not synced"));
        }
        Ok(Finished::File(&self.path))
    }

    /// Makes the message durable and hands it to delivery. Only after this returns Ok may the
    /// client be told 250.
    pub async fn commit(mut self, mut envelope: Envelope) -> io::Result<Envelope> {
        self.finish().await?;
        envelope.id = self.id.clone();
        envelope.size = self.len;
        if !self.created {
            let body = std::mem::take(&mut self.buf);
            self.spool.log.append(&envelope, &body).await?;
            self.done = true;
            self.spool.cache_body(&envelope.id, body);
            let _ = self.spool.committed.send(envelope.clone());
            return Ok(envelope);
        }
        let env_tmp = self.spool.tmp.join(format!("{}.env", self.id));
        let result = match serde_json::to_vec(&envelope) {
            Ok(bytes) => {
                let (msg_tmp, env_tmp) = (self.path.clone(), env_tmp.clone());
                let msg = self.spool.message_path(&self.id);
                let env = self.spool.envelope_path(&self.id);
                let sync = self.spool.queue_sync.clone();
                // One trip to the blocking pool; the directory fsync is shared with the
                // commits of other sessions running at the same time.
                blocking(move || {
                    write_synced(&env_tmp, &bytes)?;
                    std::fs::rename(&msg_tmp, &msg)?;
                    std::fs::rename(&env_tmp, &env)?;
                    sync.sync()
                })
                .await
            }
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&env_tmp).await;
            let _ = tokio::fs::remove_file(self.spool.envelope_path(&self.id)).await;
            let _ = tokio::fs::remove_file(self.spool.message_path(&self.id)).await;
            return Err(e);
        }
        self.done = true;
        let _ = self.spool.committed.send(envelope.clone());
        Ok(envelope)
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if !self.done && self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::tempdir;

    #[test]
    fn group_sync_serves_concurrent_callers_with_fewer_fsyncs() {
        let dir = tempdir();
        let gs = Arc::new(GroupSync::new(dir.clone()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let gs = gs.clone();
                std::thread::spawn(move || (0..20).for_each(|_| gs.sync().unwrap()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = gs.state.lock().unwrap();
        assert_eq!(st.next, 320);
        assert_eq!(st.durable, 320, "every ticket is covered by a later fsync");
        assert!(!st.running);
        drop(st);
        // A directory that cannot be opened reports the error to the caller.
        let gone = Arc::new(GroupSync::new(dir.join("missing")));
        assert!(gone.sync().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_round_fails_every_ticket_it_covered_even_after_a_later_success() {
        let dir = tempdir();
        let gs = GroupSync::new(dir.join("late"));
        // Tickets 0 and 1 are waiters whose renames the failing round covers.
        gs.state.lock().unwrap().next = 2;
        assert!(gs.sync().is_err());
        std::fs::create_dir(dir.join("late")).unwrap();
        gs.sync().unwrap();
        let st = gs.state.lock().unwrap();
        assert!(
            st.settled(1).unwrap().is_err(),
            "a later fsync must not vouch for it"
        );
        assert!(st.settled(3).unwrap().is_ok());
        drop(st);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
