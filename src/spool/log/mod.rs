//! The message log: messages that fit in memory are appended to a segment file under
//! `spool/log/`, many per `fdatasync` (group commit), instead of being two files each.
//! Measured: creating, fsyncing and unlinking two inodes per message was over half the relay's
//! CPU (ext4 inode allocation, one device flush per file, blocking-pool wake-ups).
//!
//! A record is a 16-byte header (magic, kind, payload length, CRC-32 of kind and payload) and
//! its payload. A message record holds the queue id, the envelope as committed and the message
//! bytes; a done record names a message that was delivered or moved to its own files. One thread
//! appends; a batch is written with one `pwrite` and made durable with one `fdatasync` before
//! any of its senders hears Ok. After a failed write or sync the segment is cut back to its last
//! good length and abandoned, so a segment holds garbage only at its end (a crash mid-batch
//! leaves the same), and recovery reads each segment up to its first bad record.
//!
//! Segments are deleted oldest first, once every message in them is done: a done record lives
//! in the same or a later segment than its message, so deleting in order never brings a
//! finished message back. Messages that must wait (deferred, held) leave the log for their own
//! files, so an old segment is not kept alive by one slow message for days.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use super::Envelope;

mod format;
mod writer;

#[cfg(test)]
mod tests;

use format::{
    HEADER, KIND_DONE, Parsed, Scan, message_record, parse_at, record, scan, segment_name,
};
pub use format::{inspect, live_ids};
use writer::Writer;

/// A new segment is started past this size.
const SEGMENT_MAX: u64 = 32 << 20;
/// Bytes gathered into one write (and one fdatasync) at most.
const BATCH_MAX: usize = 8 << 20;
/// Done records written without a message batch are fdatasynced after this much quiet (a
/// message batch's fdatasync covers them before that).
const DONE_SYNC: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a message's bytes are: segment number, offset of the first byte, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: u64,
    pub offset: u64,
    pub len: u64,
    /// Where the whole record starts (header), for reading the envelope back.
    pub record: u64,
}

struct SegInfo {
    live: usize,
    reader: Arc<File>,
}

#[derive(Default)]
struct State {
    live: HashMap<String, Loc>,
    segs: BTreeMap<u64, SegInfo>,
    current: u64,
}

enum Op {
    Message {
        id: String,
        record: Vec<u8>,
        /// Offset of the message bytes within `record`.
        body_at: usize,
        reply: tokio::sync::oneshot::Sender<io::Result<Loc>>,
    },
    Done {
        record: Vec<u8>,
    },
}

impl Op {
    fn record(&self) -> &[u8] {
        match self {
            Op::Message { record, .. } | Op::Done { record } => record,
        }
    }
}

pub struct Log {
    dir: PathBuf,
    /// None once dropped (the writer thread drains what was sent, then ends).
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
    deleting: Arc<Mutex<()>>,
}

impl Drop for Log {
    fn drop(&mut self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A message found by `scan`.
pub struct Found {
    pub envelope: Envelope,
    pub loc: Loc,
}

impl Log {
    /// Opens the log, starts its writer thread on a new segment, and returns the messages a
    /// previous run left (not yet done), oldest first.
    pub fn open(dir: &Path) -> io::Result<(Log, Vec<Found>)> {
        Self::open_with(dir, SEGMENT_MAX)
    }

    pub(super) fn open_with(dir: &Path, segment_max: u64) -> io::Result<(Log, Vec<Found>)> {
        std::fs::create_dir_all(dir)?;
        let Scan {
            found,
            live: counts,
            damaged,
        } = scan(dir)?;
        for seq in damaged {
            // A hard link: the bytes stay for the operator when the segment itself goes.
            let keep = dir.join(format!("damaged-{}", segment_name(seq)));
            match std::fs::hard_link(dir.join(segment_name(seq)), &keep) {
                Ok(()) => {
                    tracing::error!(segment = seq, copy = %keep.display(), "spool log: kept a copy of a damaged segment")
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::error!(segment = seq, error = %e, "spool log: cannot keep a copy of a damaged segment")
                }
            }
        }
        let mut state = State::default();
        for (seq, live) in counts {
            let reader = Arc::new(File::open(dir.join(segment_name(seq)))?);
            state.segs.insert(seq, SegInfo { live, reader });
        }
        for f in &found {
            state.live.insert(f.envelope.id.clone(), f.loc);
        }
        let next = state.segs.keys().next_back().map_or(1, |s| s + 1);
        let state = Arc::new(Mutex::new(state));
        let mut writer = Writer::start(dir, next, &state)?;
        writer.segment_max = segment_max;
        let deleting = writer.deleting.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spool-log".into())
            .spawn(move || writer.run(rx))?;
        let log = Log {
            dir: dir.to_path_buf(),
            ops: Mutex::new(Some(tx)),
            state,
            thread: Some(thread),
            deleting,
        };
        log.delete_finished_segments();
        Ok((log, found))
    }

    fn send(&self, op: Op) -> io::Result<()> {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or_else(|| io::Error::other("spool log closed"))?
            .send(op)
            .map_err(|_| io::Error::other("spool log writer stopped"))
    }

    /// Appends a message; Ok once it is on disk (fdatasync done).
    pub async fn append(&self, envelope: &Envelope, body: &[u8]) -> io::Result<Loc> {
        let json = serde_json::to_vec(envelope)?;
        let (record, body_at) = message_record(&envelope.id, &json, body);
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Message {
            id: envelope.id.clone(),
            record,
            body_at,
            reply,
        })?;
        answer
            .await
            .map_err(|_| io::Error::other("spool log writer stopped"))?
    }

    pub fn contains(&self, id: &str) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .contains_key(id)
    }

    pub fn live_count(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .len()
    }

    /// Marks a message done: at once in memory; its done record goes out with the next batch
    /// (a crash before that delivers it again, never loses it). False if it was not in the log.
    pub fn done(&self, id: &str) -> bool {
        let emptied = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some(loc) = st.live.remove(id) else {
                return false;
            };
            let current = st.current;
            st.segs.get_mut(&loc.seg).is_some_and(|s| {
                s.live = s.live.saturating_sub(1);
                s.live == 0 && loc.seg != current
            })
        };
        if let Err(e) = self.send(Op::Done {
            record: record(KIND_DONE, &[id.as_bytes()]),
        }) {
            tracing::error!(queue_id = id, error = %e, "spool log: done record not written");
        }
        if emptied {
            self.delete_finished_segments();
        }
        true
    }

    /// Messages that keep finished segments from being deleted: when more than `max_old`
    /// segments wait behind the oldest one still holding a message, that segment's messages
    /// (a slow first attempt, a message stuck behind a busy destination) are returned so they
    /// can move to files and the segments can go.
    pub fn pinning(&self, max_old: usize) -> Vec<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let old = st.segs.keys().filter(|&&s| s != st.current).count();
        let Some((&oldest, _)) = st.segs.first_key_value() else {
            return Vec::new();
        };
        if old <= max_old || oldest == st.current {
            return Vec::new();
        }
        st.live
            .iter()
            .filter(|(_, loc)| loc.seg == oldest)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The envelope as committed and the message bytes (blocking read).
    pub fn read_message(&self, id: &str) -> io::Result<(Envelope, Vec<u8>)> {
        let (loc, file) = self.locate(id)?;
        let len = HEADER as u64 + (loc.offset - loc.record - HEADER as u64) + loc.len;
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, loc.record)?;
        match parse_at(&buf, 0) {
            Some((Parsed::Message { envelope, .. }, _)) => {
                let env = serde_json::from_slice(envelope).map_err(io::Error::other)?;
                let body = buf[loc.offset as usize - loc.record as usize..].to_vec();
                Ok((env, body))
            }
            _ => Err(io::Error::other("spool log: record unreadable")),
        }
    }

    fn locate(&self, id: &str) -> io::Result<(Loc, Arc<File>)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let loc = *st
            .live
            .get(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the log"))?;
        let file = st
            .segs
            .get(&loc.seg)
            .map(|s| s.reader.clone())
            .ok_or_else(|| io::Error::other("segment missing"))?;
        Ok((loc, file))
    }

    /// The message bytes (blocking read from the page cache or disk).
    pub fn read(&self, id: &str) -> io::Result<Vec<u8>> {
        let (loc, file) = self.locate(id)?;
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// Deletes segments from the oldest while every message in them is done.
    fn delete_finished_segments(&self) {
        delete_finished(&self.dir, &self.state, &self.deleting);
    }
}

fn delete_finished(dir: &Path, state: &Mutex<State>, deleting: &Mutex<()>) {
    // Two deleters must not unlink out of order (a crash between could keep an old segment
    // whose done records were in a newer one already gone).
    let _one_at_a_time = deleting.lock().unwrap_or_else(|e| e.into_inner());
    let doomed: Vec<u64> = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let current = st.current;
        let mut doomed = Vec::new();
        while let Some((&seq, info)) = st.segs.first_key_value() {
            if seq == current || info.live > 0 {
                break;
            }
            st.segs.pop_first();
            doomed.push(seq);
        }
        doomed
    };
    if doomed.is_empty() {
        return;
    }
    for seq in &doomed {
        if let Err(e) = std::fs::remove_file(dir.join(segment_name(*seq))) {
            tracing::error!(segment = seq, error = %e, "spool log: cannot delete segment");
        }
    }
    // Best effort: a deletion lost in a crash only delivers those messages again.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    tracing::debug!(segments = ?doomed, "spool log: finished segments deleted");
}
