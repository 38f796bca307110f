//! The log's one writer thread: gathers messages and done records into batches, one `pwrite`
//! and one `fdatasync` each, and starts a new segment when one is full or broken.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use super::format::segment_name;
use super::{BATCH_MAX, DONE_SYNC, Loc, Op, SEGMENT_MAX, SegInfo, State, delete_finished};

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) state: Arc<Mutex<State>>,
    pub(super) file: File,
    pub(super) seq: u64,
    pub(super) len: u64,
    /// A write or sync failed, or the segment is full: start a new one before the next batch.
    pub(super) broken: bool,
    /// Number of the next segment to create.
    pub(super) next_seq: u64,
    /// Serialises segment deletion with `Log::done`'s.
    pub(super) deleting: Arc<Mutex<()>>,
    pub(super) segment_max: u64,
    /// Done records gathered for the next write.
    pub(super) pending_done: Vec<u8>,
    /// Since when written done records wait for an fdatasync.
    pub(super) unsynced_since: Option<std::time::Instant>,
}

impl Writer {
    pub(super) fn start(dir: &Path, seq: u64, state: &Arc<Mutex<State>>) -> io::Result<Writer> {
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

    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
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

    pub(super) fn sync_done(&mut self) {
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
    pub(super) fn try_write(
        &mut self,
        ops: &[Op],
        buf: &mut Vec<u8>,
        sync: bool,
    ) -> io::Result<Vec<Loc>> {
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
pub(super) fn new_segment(dir: &Path, seq: u64, state: &Mutex<State>) -> io::Result<File> {
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
