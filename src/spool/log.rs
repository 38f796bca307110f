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

const MAGIC: u32 = 0x3147_4C50; // "PLG1"
const HEADER: usize = 16;
const KIND_MESSAGE: u8 = 1;
const KIND_DONE: u8 = 2;
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

fn segment_name(seq: u64) -> String {
    format!("{seq:016}.log")
}

fn record(kind: u8, payload_parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER + len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in payload_parts {
        crc.update(p);
    }
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in payload_parts {
        out.extend_from_slice(p);
    }
    out
}

/// Message payload: id length (u16), id, envelope length (u32), envelope JSON, message bytes.
fn message_record(id: &str, envelope: &[u8], body: &[u8]) -> (Vec<u8>, usize) {
    let idlen = (id.len() as u16).to_le_bytes();
    let envlen = (envelope.len() as u32).to_le_bytes();
    let rec = record(
        KIND_MESSAGE,
        &[&idlen, id.as_bytes(), &envlen, envelope, body],
    );
    let body_at = HEADER + 2 + id.len() + 4 + envelope.len();
    (rec, body_at)
}

enum Parsed<'a> {
    Message {
        id: &'a str,
        envelope: &'a [u8],
        body_at: usize,
        body_len: usize,
    },
    Done {
        id: &'a str,
    },
}

/// The record at `pos`, and its total length; None at the end or at the first bad record.
fn parse_at(data: &[u8], pos: usize) -> Option<(Parsed<'_>, usize)> {
    let h = data.get(pos..pos + HEADER)?;
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return None;
    }
    let kind = h[4];
    let len = word(8) as usize;
    let payload = data.get(pos + HEADER..(pos + HEADER).checked_add(len)?)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    if crc.finalize() != word(12) {
        return None;
    }
    let parsed = match kind {
        KIND_MESSAGE => {
            let idlen = u16::from_le_bytes(payload.get(0..2)?.try_into().ok()?) as usize;
            let id = std::str::from_utf8(payload.get(2..2 + idlen)?).ok()?;
            let e = 2 + idlen;
            let envlen = u32::from_le_bytes(payload.get(e..e + 4)?.try_into().ok()?) as usize;
            let envelope = payload.get(e + 4..e + 4 + envlen)?;
            let start = e + 4 + envlen;
            Parsed::Message {
                id,
                envelope,
                body_at: pos + HEADER + start,
                body_len: len - start,
            }
        }
        KIND_DONE => Parsed::Done {
            id: std::str::from_utf8(payload).ok()?,
        },
        _ => return None,
    };
    Some((parsed, HEADER + len))
}

/// Reads every segment in order: the messages not yet done, and per segment its live count.
/// Read-only (also used to inspect a running relay's queue).
/// What `scan` found.
struct Scan {
    found: Vec<Found>,
    /// Live messages per segment.
    live: BTreeMap<u64, usize>,
    /// Segments with something unreadable besides a torn tail.
    damaged: Vec<u64>,
}

/// The log's segment numbers, oldest first (none when the directory does not exist).
fn segment_seqs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let name = e?.file_name();
                if let Some(seq) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse().ok())
                {
                    seqs.push(seq);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn scan(dir: &Path) -> io::Result<Scan> {
    let seqs = segment_seqs(dir)?;
    let mut live: HashMap<String, Found> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut segs = BTreeMap::new();
    // Segments with something unreadable besides a torn tail: kept for the operator.
    let mut damaged = Vec::new();
    for seq in seqs {
        let data = match std::fs::read(dir.join(segment_name(seq))) {
            Ok(d) => d,
            // Deleted since the listing (inspecting a running relay): all of it was done.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        segs.insert(seq, 0);
        let mut pos = 0;
        while let Some((rec, n)) = parse_at(&data, pos) {
            match rec {
                Parsed::Message {
                    id,
                    envelope,
                    body_at,
                    body_len,
                } => match serde_json::from_slice::<Envelope>(envelope) {
                    Ok(envelope) => {
                        let loc = Loc {
                            seg: seq,
                            offset: body_at as u64,
                            len: body_len as u64,
                            record: pos as u64,
                        };
                        order.push(id.to_string());
                        live.insert(id.to_string(), Found { envelope, loc });
                    }
                    Err(e) => {
                        tracing::error!(queue_id = id, error = %e, segment = seq, "spool log: unreadable envelope, skipped");
                        damaged.push(seq);
                    }
                },
                Parsed::Done { id } => {
                    live.remove(id);
                }
            }
            pos += n;
        }
        // A valid record after the bad spot means damage, not a torn tail.
        if pos < data.len() && (pos + 1..data.len()).any(|p| parse_at(&data, p).is_some()) {
            tracing::error!(
                segment = seq,
                offset = pos,
                "spool log: damaged record in the middle of a segment; records after it are skipped"
            );
            damaged.push(seq);
        } else if pos < data.len() {
            // Normal after a crash mid-batch (never acknowledged) or a failed write.
            tracing::info!(
                segment = seq,
                offset = pos,
                bytes = data.len() - pos,
                "spool log: segment ends in an incomplete record, ignored"
            );
        }
    }
    let mut found = Vec::with_capacity(live.len());
    for id in order {
        if let Some(f) = live.remove(&id) {
            *segs.get_mut(&f.loc.seg).expect("segment listed") += 1;
            found.push(f);
        }
    }
    damaged.dedup();
    Ok(Scan {
        found,
        live: segs,
        damaged,
    })
}

/// Ids of the messages in the log that are not done, from the record headers only (no envelope
/// is parsed), without changing anything.
pub fn live_ids(log_dir: &Path) -> io::Result<Vec<String>> {
    let seqs = segment_seqs(log_dir)?;
    let mut live = std::collections::HashSet::new();
    for seq in seqs {
        let data = match std::fs::read(log_dir.join(segment_name(seq))) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut pos = 0;
        while let Some((rec, n)) = parse_at(&data, pos) {
            match rec {
                Parsed::Message { id, .. } => {
                    live.insert(id.to_string());
                }
                Parsed::Done { id } => {
                    live.remove(id);
                }
            }
            pos += n;
        }
    }
    Ok(live.into_iter().collect())
}

/// Messages in the log of `data_dir/spool/log` that are not done, without changing anything.
pub fn inspect(log_dir: &Path, bodies: bool) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    let found = scan(log_dir)?.found;
    let mut out = Vec::with_capacity(found.len());
    if !bodies {
        return Ok(found
            .into_iter()
            .map(|f| (f.envelope, Vec::new()))
            .collect());
    }
    for f in found {
        let file = match File::open(log_dir.join(segment_name(f.loc.seg))) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0; f.loc.len as usize];
        file.read_exact_at(&mut buf, f.loc.offset)?;
        out.push((f.envelope, buf));
    }
    Ok(out)
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

struct Writer {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    file: File,
    seq: u64,
    len: u64,
    /// A write or sync failed, or the segment is full: start a new one before the next batch.
    broken: bool,
    /// Number of the next segment to create.
    next_seq: u64,
    /// Serialises segment deletion with `Log::done`'s.
    deleting: Arc<Mutex<()>>,
    segment_max: u64,
    /// Done records gathered for the next write.
    pending_done: Vec<u8>,
    /// Since when written done records wait for an fdatasync.
    unsynced_since: Option<std::time::Instant>,
}

impl Writer {
    fn start(dir: &Path, seq: u64, state: &Arc<Mutex<State>>) -> io::Result<Writer> {
        let file = new_segment(dir, seq, state)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            state: state.clone(),
            file,
            seq,
            len: 0,
            broken: false,
            next_seq: seq + 1,
            deleting: Arc::default(),
            segment_max: SEGMENT_MAX,
            pending_done: Vec::new(),
            unsynced_since: None,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut buf = Vec::new();
        loop {
            let first = match self.unsynced_since {
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Some(since) => match rx.recv_timeout(DONE_SYNC.saturating_sub(since.elapsed())) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.sync_done();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut ops = vec![first];
            let mut bytes = ops[0].record().len();
            while bytes < BATCH_MAX {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += op.record().len();
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            // Done records are written at once (a killed process keeps them: they are in the
            // page cache) but need no fdatasync of their own: lost in a power cut they only
            // mean a second delivery. The next message batch's fdatasync covers them, or one
            // after DONE_SYNC of quiet.
            let mut messages = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Done { record } => self.pending_done.extend_from_slice(&record),
                    m => messages.push(m),
                }
            }
            if messages.is_empty() {
                if let Err(e) = self.try_write(&[], &mut buf, false) {
                    tracing::error!(segment = self.seq, error = %e, "spool log: done records not written");
                }
                continue;
            }
            let ops = messages;
            let result = self.try_write(&ops, &mut buf, true);
            let mut replies = Vec::new();
            match &result {
                Ok(locs) => {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    for (op, loc) in ops.into_iter().zip(locs.iter().copied()) {
                        if let Op::Message { id, reply, .. } = op {
                            // Known before the sender hears Ok, so its `done` always finds it.
                            state.live.insert(id, loc);
                            if let Some(s) = state.segs.get_mut(&loc.seg) {
                                s.live += 1;
                            }
                            replies.push((reply, Ok(loc)));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(segment = self.seq, error = %e, "spool log: write failed");
                    for op in ops {
                        if let Op::Message { reply, .. } = op {
                            replies.push((reply, Err(io::Error::new(e.kind(), e.to_string()))));
                        }
                    }
                }
            }
            for (reply, r) in replies {
                let _ = reply.send(r);
            }
            if self.len >= self.segment_max {
                self.broken = true;
            }
        }
        if !self.pending_done.is_empty() {
            let _ = self.try_write(&[], &mut buf, false);
        }
        self.sync_done();
    }

    fn sync_done(&mut self) {
        if self.unsynced_since.take().is_some()
            && let Err(e) = self.file.sync_data()
        {
            // What the failed sync covered is uncertain: nothing more goes after it.
            tracing::error!(segment = self.seq, error = %e, "spool log: fdatasync failed");
            self.broken = true;
        }
    }

    /// Writes the pending done records and `ops` in one pwrite, then (with `sync`) one
    /// fdatasync; the message locations of `ops`.
    fn try_write(&mut self, ops: &[Op], buf: &mut Vec<u8>, sync: bool) -> io::Result<Vec<Loc>> {
        if self.broken {
            // Done records written without a sync are synced before the segment is left.
            if self.unsynced_since.take().is_some() {
                let _ = self.file.sync_data();
            }
            // A number is never tried twice (a failed creation may leave the name taken).
            let seq = self.next_seq;
            self.next_seq += 1;
            self.file = new_segment(&self.dir, seq, &self.state)?;
            self.seq = seq;
            self.len = 0;
            self.broken = false;
            // The old segment may be finished already: nobody else would look at it now.
            delete_finished(&self.dir, &self.state, &self.deleting);
        }
        buf.clear();
        buf.extend_from_slice(&self.pending_done);
        let mut locs = Vec::with_capacity(ops.len());
        for op in ops {
            let at = self.len + buf.len() as u64;
            locs.push(match op {
                Op::Message {
                    record, body_at, ..
                } => Loc {
                    seg: self.seq,
                    offset: at + *body_at as u64,
                    len: (record.len() - body_at) as u64,
                    record: at,
                },
                Op::Done { .. } => Loc {
                    seg: self.seq,
                    offset: at,
                    len: 0,
                    record: at,
                },
            });
            buf.extend_from_slice(op.record());
        }
        if let Err(e) = self.file.write_all_at(buf, self.len) {
            // Cut the partial batch off so nothing follows garbage. A segment cut back cleanly
            // goes on being used: a full disk must not make a new segment per failed write.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if cut.is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        if sync && let Err(e) = self.file.sync_data() {
            // What the failed sync covered is uncertain: this batch is cut off and the
            // segment left for a new one.
            let _ = self.file.set_len(self.len);
            self.broken = true;
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.pending_done.clear();
        if sync {
            self.unsynced_since = None;
        } else {
            self.unsynced_since
                .get_or_insert_with(std::time::Instant::now);
        }
        if buf.capacity() > 2 * BATCH_MAX {
            *buf = Vec::new();
        }
        Ok(locs)
    }
}

/// Creates segment `seq`, durable (file and directory entry) before anything is written to it.
fn new_segment(dir: &Path, seq: u64, state: &Mutex<State>) -> io::Result<File> {
    let path = dir.join(segment_name(seq));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    if let Err(e) = file.sync_all().and_then(|()| File::open(dir)?.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    let reader = match file.try_clone() {
        Ok(r) => Arc::new(r),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.segs.insert(seq, SegInfo { live: 0, reader });
    st.current = seq;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: &str) -> Envelope {
        crate::spool::test_envelope(id)
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "poolrelay-log-{name}-{}",
            crate::spool::Spool::new_id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ids(found: &[Found]) -> Vec<&str> {
        found.iter().map(|f| f.envelope.id.as_str()).collect()
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn appended_messages_come_back_unless_done() {
        let dir = tempdir("recover");
        let (log, found) = Log::open(&dir).unwrap();
        assert!(found.is_empty());
        for id in ["A", "B", "C"] {
            let loc = log
                .append(&env(id), id.repeat(100).as_bytes())
                .await
                .unwrap();
            assert_eq!(loc.len, 100);
        }
        assert!(log.done("B"));
        assert!(!log.done("B"), "done once");
        assert_eq!(log.read("C").unwrap(), b"C".repeat(100));
        drop(log);
        let (log, found) = Log::open(&dir).unwrap();
        assert_eq!(ids(&found), ["A", "C"]);
        assert_eq!(log.read("A").unwrap(), b"A".repeat(100));
        assert_eq!(log.live_count(), 2);
        assert_eq!(inspect(&dir, true).unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A crash mid-batch leaves a torn record at the end of a segment: everything before it
    /// comes back, and the next run writes a new segment.
    #[tokio::test]
    async fn a_torn_tail_is_ignored() {
        let dir = tempdir("torn");
        let (log, _) = Log::open(&dir).unwrap();
        log.append(&env("A"), b"aaaa").await.unwrap();
        log.append(&env("B"), b"bbbb").await.unwrap();
        drop(log);
        let seg = dir.join(segment_name(1));
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (log, found) = Log::open(&dir).unwrap();
        assert_eq!(ids(&found), ["A"]);
        assert!(
            segments(&dir).iter().all(|n| !n.starts_with("damaged-")),
            "a torn tail is not damage"
        );
        log.append(&env("C"), b"cccc").await.unwrap();
        drop(log);
        let (_log, found) = Log::open(&dir).unwrap();
        assert_eq!(ids(&found), ["A", "C"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A bad record with good ones after it is damage, not a torn tail: recovery keeps what it
    /// can read and a hard-linked copy of the segment for the operator, as it does for a
    /// record whose envelope it cannot read.
    #[tokio::test]
    async fn damaged_segments_are_kept_for_the_operator() {
        let dir = tempdir("damaged");
        let (log, _) = Log::open(&dir).unwrap();
        let a = log.append(&env("A"), b"aaaa").await.unwrap();
        log.append(&env("B"), b"bbbb").await.unwrap();
        drop(log);
        let seg = dir.join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        data[a.offset as usize] ^= 0xff; // A's body: its CRC no longer matches
        std::fs::write(&seg, &data).unwrap();
        let (log, found) = Log::open(&dir).unwrap();
        assert!(
            ids(&found).is_empty(),
            "nothing after the damage is trusted"
        );
        assert!(dir.join(format!("damaged-{}", segment_name(1))).exists());
        drop(log);

        let dir2 = tempdir("badenv");
        let (log, _) = Log::open(&dir2).unwrap();
        log.append(&env("A"), b"aaaa").await.unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir2.join(segment_name(1)))
            .unwrap();
        let (rec, _) = message_record("X", b"{not an envelope", b"x");
        std::io::Write::write_all(&mut f, &rec).unwrap();
        drop(f);
        let (_log, found) = Log::open(&dir2).unwrap();
        assert_eq!(ids(&found), ["A"]);
        assert!(dir2.join(format!("damaged-{}", segment_name(1))).exists());
        for d in [dir, dir2] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    /// A full disk (here /dev/full as the segment): the batch fails, nothing is recorded, and
    /// the next batch goes to a new segment.
    #[test]
    fn a_failed_write_fails_the_batch_and_the_next_one_starts_a_new_segment() {
        let dir = tempdir("full");
        let state = Arc::new(Mutex::new(State::default()));
        let mut w = Writer::start(&dir, 1, &state).unwrap();
        w.file = File::options().write(true).open("/dev/full").unwrap();
        let mut buf = Vec::new();
        let op = |id: &str| Op::Done {
            record: record(KIND_DONE, &[id.as_bytes()]),
        };
        let (rec, body_at) = message_record("A", &serde_json::to_vec(&env("A")).unwrap(), b"x");
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let msg = Op::Message {
            id: "A".into(),
            record: rec,
            body_at,
            reply,
        };
        let err = w.try_write(&[msg, op("Z")], &mut buf, true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
        assert!(w.broken);
        assert_eq!(w.len, 0);
        let (rec, body_at) = message_record("B", &serde_json::to_vec(&env("B")).unwrap(), b"y");
        let (reply, _answer) = tokio::sync::oneshot::channel();
        let locs = w
            .try_write(
                &[Op::Message {
                    id: "B".into(),
                    record: rec,
                    body_at,
                    reply,
                }],
                &mut buf,
                true,
            )
            .unwrap();
        assert_eq!(locs[0].seg, 2);
        assert_eq!(state.lock().unwrap().current, 2);
        let found = scan(&dir).unwrap().found;
        assert_eq!(ids(&found), ["B"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Segments go oldest first: a finished segment waits while an older one still holds a
    /// message (its done records would otherwise vanish before that message's).
    #[tokio::test]
    async fn finished_segments_are_deleted_oldest_first() {
        let dir = tempdir("order");
        let (log, _) = Log::open_with(&dir, 1).unwrap();
        let a = log.append(&env("A"), b"a").await.unwrap();
        let b = log.append(&env("B"), b"b").await.unwrap();
        assert_eq!((a.seg, b.seg), (1, 2), "one segment per batch here");
        log.done("B");
        let wait = |want: Vec<String>| {
            for _ in 0..500 {
                if segments(&dir) == want {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("segments {:?}, want {want:?}", segments(&dir));
        };
        // The done record went to segment 3; segment 2 is finished but 1 is not.
        wait(vec![segment_name(1), segment_name(2), segment_name(3)]);
        log.done("A");
        wait(vec![segment_name(3)]);
        drop(log);
        let (_log, found) = Log::open(&dir).unwrap();
        assert!(found.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
