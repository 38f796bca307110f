//! The durable queue, in two forms:
//! - the log (`spool/log/`, see `log.rs`): a message that fits in memory (64 KiB) is appended
//!   with its envelope to a segment file, many messages per fdatasync, before the client hears
//!   250. Most messages are delivered at the first attempt and never leave it.
//! - files (`spool/queue/`): `ID.msg` (the bytes as received, our Received header first) and
//!   `ID.env` (the envelope as JSON, rewritten atomically as delivery progresses). Larger
//!   messages are written this way from the start (streamed through `spool/tmp/`), and a log
//!   message moves here the first time its envelope must change (deferred, held). Both files are
//!   fsynced, renamed into `queue/` (message first, envelope last) and the directory is fsynced
//!   before anyone relies on them. An `.env` in `queue/` marks a complete message; anything else
//!   is debris of a crash and removed. A message in both places (a crash during the move) is
//!   taken from `queue/`.

mod envelope;
mod inspect;
mod log;
mod recover;
mod writer;

pub use envelope::{Envelope, RcptState, Recipient, RemoteReply, TlsRequest, now_unix};
pub use inspect::{count_queued, inspect, inspect_envelopes};
use writer::GroupSync;
pub use writer::MessageWriter;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

pub struct Spool {
    tmp: PathBuf,
    queue: PathBuf,
    committed: mpsc::UnboundedSender<Envelope>,
    /// fsync of `queue/`, shared by the renames of concurrent sessions (group commit).
    queue_sync: Arc<GroupSync>,
    log: Arc<log::Log>,
    /// Log messages found at open, handed out by `recover`.
    from_log: Mutex<Vec<Envelope>>,
    /// Ids of messages started while the queue is being recovered (None after): recovery
    /// skips them, they are queued already.
    started_now: Mutex<Option<HashSet<String>>>,
    /// Bytes of recently committed log messages, so the first delivery attempt reads no disk.
    bodies: Mutex<Bodies>,
    /// One move from the log to files at a time per message (compaction, a deferral, a
    /// removal). Striped by id: different messages move at the same time (each move waits for
    /// fsyncs; one at a time made deferrals the bottleneck of a filling queue).
    moves: Vec<tokio::sync::Mutex<()>>,
    /// `free_space` cache: bytes, and when (ms since `opened`, 0 = never).
    free_bytes: std::sync::atomic::AtomicU64,
    free_checked_at: std::sync::atomic::AtomicU64,
    opened: std::time::Instant,
}

/// The bytes of a queued message, for delivery and DSNs.
pub enum Body {
    Memory(Arc<Vec<u8>>),
    File(PathBuf),
}

#[derive(Default)]
struct Bodies {
    map: HashMap<String, Arc<Vec<u8>>>,
    bytes: usize,
}

/// Finished log segments allowed to wait behind the oldest live one before its messages move.
const MAX_PINNED_SEGMENTS: usize = 4;

/// Moves from the log to files that may run at once (of different messages).
const MOVE_STRIPES: usize = 32;

/// Memory for `Bodies` at most; past it, delivery reads the log (page cache, usually).
const BODY_CACHE_MAX: usize = 64 << 20;

/// What `MessageWriter::finish` leaves: the bytes in memory (log-bound) or a synced file.
pub enum Finished<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

static ID_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Spool {
    /// Opens (creating) `data_dir/spool`. Every committed envelope is also sent on the returned
    /// channel, which the delivery scheduler reads.
    pub fn open(data_dir: &Path) -> io::Result<(Arc<Spool>, mpsc::UnboundedReceiver<Envelope>)> {
        Self::open_with(data_dir, None)
    }

    fn open_with(
        data_dir: &Path,
        segment_max: Option<u64>,
    ) -> io::Result<(Arc<Spool>, mpsc::UnboundedReceiver<Envelope>)> {
        let root = data_dir.join("spool");
        let tmp = root.join("tmp");
        let queue = root.join("queue");
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(&queue)?;
        // Made here, before `root` is fsynced: its entry must be durable with the others.
        std::fs::create_dir_all(root.join("log"))?;
        // Directories made just now must be durable too, or the first messages' 250 is a lie.
        for dir in [&root, data_dir] {
            std::fs::File::open(dir)?.sync_all()?;
        }
        // data_dir's own entry: best effort, the parent may not be ours to read.
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        let (log, found) = match segment_max {
            Some(max) => log::Log::open_with(&root.join("log"), max)?,
            None => log::Log::open(&root.join("log"))?,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((
            Arc::new(Spool {
                queue_sync: Arc::new(GroupSync::new(queue.clone())),
                tmp,
                queue,
                committed: tx,
                log: Arc::new(log),
                from_log: Mutex::new(found.into_iter().map(|f| f.envelope).collect()),
                started_now: Mutex::new(Some(HashSet::new())),
                bodies: Mutex::new(Bodies::default()),
                moves: (0..MOVE_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                free_bytes: std::sync::atomic::AtomicU64::new(0),
                free_checked_at: std::sync::atomic::AtomicU64::new(0),
                opened: std::time::Instant::now(),
            }),
            rx,
        ))
    }

    /// The lock for moves of message `id`.
    fn move_lock(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let h = id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.moves[h % MOVE_STRIPES]
    }

    fn cache_body(&self, id: &str, body: Vec<u8>) {
        let mut b = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if b.bytes + body.len() <= BODY_CACHE_MAX {
            b.bytes += body.len();
            b.map.insert(id.to_string(), Arc::new(body));
        }
    }

    fn uncache_body(&self, id: &str) {
        let mut b = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(body) = b.map.remove(id) {
            b.bytes -= body.len();
        }
    }

    /// Bytes free for unprivileged use on the spool's filesystem. While plenty is free (64 MiB
    /// or more) a reading is reused for 100 ms (a syscall per message otherwise); near full,
    /// every call reads it again. A write that still finds the disk full fails with 452.
    pub fn free_space(&self) -> io::Result<u64> {
        let now = self.opened.elapsed().as_millis() as u64;
        let checked = self.free_checked_at.load(Ordering::Relaxed);
        let cached = self.free_bytes.load(Ordering::Relaxed);
        if checked != 0 && now.saturating_sub(checked) < 100 && cached >= 64 << 20 {
            return Ok(cached);
        }
        let free = statvfs_free(&self.queue)?;
        self.free_bytes.store(free, Ordering::Relaxed);
        self.free_checked_at.store(now.max(1), Ordering::Relaxed);
        Ok(free)
    }

    /// The message bytes of a queued message.
    pub async fn body(&self, id: &str) -> io::Result<Body> {
        if let Some(b) = self
            .bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .get(id)
        {
            return Ok(Body::Memory(b.clone()));
        }
        if self.log.contains(id) {
            let (log, key) = (self.log.clone(), id.to_string());
            match tokio::task::spawn_blocking(move || log.read(&key))
                .await
                .map_err(io::Error::other)?
            {
                Ok(bytes) => return Ok(Body::Memory(Arc::new(bytes))),
                // Moved to files meanwhile (another destination's task saved it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Body::File(self.message_path(id)))
    }

    /// A queue id: microseconds since the epoch plus a process-wide counter, in upper-case hex,
    /// so ids sort by arrival and never repeat within a process.
    pub fn new_id() -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfffff;
        format!("{micros:013X}{n:05X}")
    }

    pub fn message_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    fn envelope_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.env"))
    }

    /// Starts a new message. Its bytes stay in memory up to `WRITE_BUFFER` (then the log takes
    /// it at `commit`); a larger message streams to a file under `tmp/` from there on.
    pub async fn writer(self: &Arc<Self>, id: &str) -> io::Result<MessageWriter> {
        if let Some(ids) = self
            .started_now
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            ids.insert(id.to_string());
        }
        Ok(MessageWriter::new(self.clone(), id))
    }

    /// Writes a whole message (for DSNs poolrelay makes itself) and commits it.
    pub async fn store(
        self: &Arc<Self>,
        envelope: Envelope,
        message: &[u8],
    ) -> io::Result<Envelope> {
        let mut w = self.writer(&envelope.id).await?;
        w.write(message).await?;
        w.commit(envelope).await
    }

    /// The envelope of a queued message as last saved (its log record or `.env` file).
    pub async fn envelope(&self, id: &str) -> io::Result<Envelope> {
        let (log, key, path) = (self.log.clone(), id.to_string(), self.envelope_path(id));
        tokio::task::spawn_blocking(move || {
            if log.contains(&key) {
                match log.read_message(&key) {
                    Ok((env, _)) => return Ok(env),
                    // Moved to files meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let text = std::fs::read(&path)?;
            serde_json::from_slice(&text).map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Replaces the envelope atomically (tmp, fsync, rename, fsync dir). A message still in
    /// the log moves to its own files first.
    pub async fn save_envelope(&self, env: &Envelope) -> io::Result<()> {
        if self.log.contains(&env.id) {
            return self.move_from_log(env).await;
        }
        let tmp = self.tmp.join(format!("{}.env", env.id));
        let bytes = serde_json::to_vec(env)?;
        let dest = self.envelope_path(&env.id);
        let sync = self.queue_sync.clone();
        // One trip to the blocking pool for the whole sequence, not one per file operation.
        blocking(move || {
            // On a full disk the old envelope stays in force; leave no partial copy behind.
            if let Err(e) = write_synced(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &dest)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            sync.sync()
        })
        .await
    }

    /// Records a deferral that changed nothing but attempt counts and times, without rewriting
    /// the envelope: the `.env` file's mtime is set to the next attempt (metadata only, no
    /// fsync; Postfix does the same with its queue files), and recovery takes it from there
    /// (`deferred_until`). Lost in a crash, the message is only tried earlier. False when the
    /// message is still in the log: its first deferral moves it to files (`save_envelope`).
    pub async fn defer_in_place(&self, id: &str, next_attempt: u64) -> io::Result<bool> {
        if self.log.contains(id) {
            return Ok(false);
        }
        let path = self.envelope_path(id);
        let when = UNIX_EPOCH + std::time::Duration::from_secs(next_attempt);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            file.set_modified(when)?;
            Ok(true)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Writes a log message and its new envelope as files in `queue/`, then marks it done in
    /// the log. A crash in between leaves it in both; recovery takes the files.
    async fn move_from_log(&self, env: &Envelope) -> io::Result<()> {
        let _one_move = self.move_lock(&env.id).lock().await;
        if !self.log.contains(&env.id) {
            // Moved meanwhile (compaction): the files take the new envelope.
            drop(_one_move);
            return Box::pin(self.save_envelope(env)).await;
        }
        let body = match self.body(&env.id).await? {
            Body::Memory(b) => b,
            Body::File(_) => return Err(io::Error::other("message not in the log")),
        };
        self.write_files(env, body).await?;
        self.log.done(&env.id);
        self.uncache_body(&env.id);
        Ok(())
    }

    /// `ID.msg` and `ID.env` into `queue/` (tmp, fsync, rename, directory fsync), for a message
    /// leaving the log. On any failure nothing of it is left in `queue/`.
    async fn write_files(&self, env: &Envelope, body: Arc<Vec<u8>>) -> io::Result<()> {
        let bytes = serde_json::to_vec(env)?;
        let (tmp_msg, tmp_env) = (
            self.tmp.join(format!("{}.msg", env.id)),
            self.tmp.join(format!("{}.env", env.id)),
        );
        let (msg, dest) = (self.message_path(&env.id), self.envelope_path(&env.id));
        let sync = self.queue_sync.clone();
        blocking(move || {
            let moved = write_synced(&tmp_msg, &body)
                .and_then(|()| write_synced(&tmp_env, &bytes))
                .and_then(|()| std::fs::rename(&tmp_msg, &msg))
                .and_then(|()| std::fs::rename(&tmp_env, &dest));
            if let Err(e) = moved.and_then(|()| sync.sync()) {
                // The log copy stays in force; leave nothing half-moved behind (files left
                // after a failed directory fsync would later come back as a second copy).
                for p in [&tmp_msg, &tmp_env, &dest, &msg] {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
            Ok(())
        })
        .await
    }

    /// Moves the messages that keep old finished log segments alive to files, so those
    /// segments can be deleted (one slow first attempt must not pin the disk behind it).
    pub async fn compact(&self) {
        for id in self.log.pinning(MAX_PINNED_SEGMENTS) {
            let _one_move = self.move_lock(&id).lock().await;
            if !self.log.contains(&id) {
                continue;
            }
            let (log, key) = (self.log.clone(), id.clone());
            let read = tokio::task::spawn_blocking(move || log.read_message(&key))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
            let moved = match read {
                Ok((env, body)) => self.write_files(&env, Arc::new(body)).await,
                Err(e) => Err(e),
            };
            match moved {
                Ok(()) => {
                    self.log.done(&id);
                    self.uncache_body(&id);
                    tracing::info!(queue_id = %id, "spool: moved from the log to files (it kept old log segments alive)");
                }
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "spool: cannot move a message out of the log");
                    return;
                }
            }
        }
    }

    /// Runs `compact` every few seconds.
    pub fn start_compaction(self: &Arc<Self>) {
        let spool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                spool.compact().await;
            }
        });
    }

    /// Removes a finished message: envelope first, so a crash in between leaves only debris that
    /// recovery deletes, never a message delivered twice for lack of its envelope. A log
    /// message is marked done (no disk wait: a crash before the record is written only
    /// delivers it again).
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        self.uncache_body(id);
        {
            // Not while the message is being moved to files (it would leave them behind).
            let _no_move = self.move_lock(id).lock().await;
            if self.log.done(id) {
                return Ok(());
            }
        }
        let (env, msg) = (self.envelope_path(id), self.message_path(id));
        let sync = self.queue_sync.clone();
        blocking(move || {
            std::fs::remove_file(&env)?;
            let _ = std::fs::remove_file(&msg);
            sync.sync()
        })
        .await
    }

    /// Number of messages in the queue (for tests and status).
    pub fn queued_count(&self) -> usize {
        std::fs::read_dir(&self.queue)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "env"))
                    .count()
            })
            .unwrap_or(0)
            + self.log.live_count()
    }
}

/// A canonical queue id (18 upper-case hex digits, `Spool::new_id`) packed into 16 bytes;
/// its `{:018X}` formatting gives the id back.
pub fn pack_id(id: &str) -> Option<u128> {
    (id.len() == 18 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn statvfs_free(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct, as statvfs(3) wants.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

async fn blocking(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// An envelope for unit tests: one recipient, nothing else set.
#[cfg(test)]
pub(crate) fn test_envelope(id: &str) -> Envelope {
    Envelope {
        id: id.into(),
        received_at: now_unix(),
        sender: "a@b.test".into(),
        recipients: vec![Recipient::new("c@d.test".into())],
        client: "127.0.0.1".into(),
        helo: String::new(),
        user: None,
        size: 0,
        smtputf8: false,
        body_8bit: false,
        prepend: String::new(),
        ret: None,
        envid: None,
        is_dsn: false,
        pool: None,
        delay_warned: false,
        tls_request: Default::default(),
        from_domain: None,
    }
}

#[cfg(test)]
mod tests;
