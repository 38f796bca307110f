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

mod log;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds.
    pub received_at: u64,
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Client IP address, or "local" for messages poolrelay made itself (DSNs).
    pub client: String,
    #[serde(default)]
    pub helo: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Bytes in the `.msg` file.
    pub size: u64,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub body_8bit: bool,
    /// CRLF-terminated header lines sent before the `.msg` bytes (DKIM-Signature).
    #[serde(default)]
    pub prepend: String,
    /// DSN `RET=` and `ENVID=` from MAIL FROM.
    #[serde(default)]
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
    /// A DSN poolrelay generated: never bounced itself.
    #[serde(default)]
    pub is_dsn: bool,
    /// Pool chosen for this message, if any rule picked one.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub delay_warned: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    #[default]
    Pending,
    Sent,
    Bounced,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub orcpt: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
    #[serde(default)]
    pub state: RcptState,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds; 0 = as soon as possible.
    #[serde(default)]
    pub next_attempt: u64,
    #[serde(default)]
    pub last_reply: Option<RemoteReply>,
    /// Waiting for pool capacity (not an attempt): retried early when an IP comes back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Recipient {
    pub fn new(address: String) -> Recipient {
        Recipient {
            address,
            orcpt: None,
            notify: None,
            state: RcptState::Pending,
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
            held: false,
        }
    }
}

/// What the remote side (or poolrelay, for local failures) said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReply {
    pub code: u16,
    pub status: String,
    pub text: String,
    /// MX host name (or route host); empty when no host was reached.
    #[serde(default)]
    pub host: String,
    /// Remote address, when connected.
    #[serde(default)]
    pub addr: String,
    /// Source IP used.
    #[serde(default)]
    pub source_ip: String,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
        Ok(MessageWriter {
            spool: self.clone(),
            id: id.to_string(),
            file: None,
            created: false,
            failed: false,
            buf: Vec::with_capacity(8 * 1024),
            closed: false,
            path: self.tmp.join(format!("{id}.msg")),
            len: 0,
            synced: false,
            done: false,
        })
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
        let mut out = Vec::with_capacity(batch);
        let mut count = 0;
        let from_log =
            std::mem::take(&mut *self.from_log.lock().unwrap_or_else(|e| e.into_inner()));
        for env in from_log {
            if self.envelope_path(&env.id).exists() {
                // Moved to files just before a crash: the files are newer.
                self.log.done(&env.id);
                continue;
            }
            out.push(env);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        count += out.len();
        if !out.is_empty() {
            each(std::mem::replace(&mut out, Vec::with_capacity(batch)));
        }
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

/// Every queued message under `data_dir` (envelope and bytes), read without changing anything:
/// for tests and for inspecting a stopped or running relay's queue.
pub fn inspect(data_dir: &Path) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    inspect_queue(data_dir, true)
}

/// `inspect` without the message bytes (memory stays small for a large queue).
pub fn inspect_envelopes(data_dir: &Path) -> io::Result<Vec<Envelope>> {
    Ok(inspect_queue(data_dir, false)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

fn inspect_queue(data_dir: &Path, bodies: bool) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    let spool = data_dir.join("spool");
    // The log first: a message moving to files is marked done in the log only after its
    // files exist, so reading in this order never misses it.
    let mut found: HashMap<String, (Envelope, Vec<u8>)> = log::inspect(&spool.join("log"), bodies)?
        .into_iter()
        .map(|(env, msg)| (env.id.clone(), (env, msg)))
        .collect();
    let entries = match std::fs::read_dir(spool.join("queue")) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(sorted(found)),
        Err(e) => return Err(e),
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "env") {
            let msg = if bodies {
                std::fs::read(path.with_extension("msg"))
            } else {
                std::fs::metadata(path.with_extension("msg")).map(|_| Vec::new())
            };
            // Either gone meanwhile (finished) or not complete yet.
            let (Ok(text), Ok(msg)) = (std::fs::read(&path), msg) else {
                continue;
            };
            if let Ok(env) = serde_json::from_slice::<Envelope>(&text) {
                found.insert(env.id.clone(), (env, msg));
            }
        }
    }
    Ok(sorted(found))
}

fn sorted(found: HashMap<String, (Envelope, Vec<u8>)>) -> Vec<(Envelope, Vec<u8>)> {
    let mut out: Vec<_> = found.into_values().collect();
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out
}

/// Queued messages under `data_dir`, counted from file names and the log's record headers
/// (no envelope is parsed): cheap at a million.
pub fn count_queued(data_dir: &Path) -> io::Result<usize> {
    let spool = data_dir.join("spool");
    let queue = spool.join("queue");
    let mut count = match std::fs::read_dir(&queue) {
        Ok(rd) => {
            let mut n = 0;
            for e in rd {
                if e?.file_name().as_encoded_bytes().ends_with(b".env") {
                    n += 1;
                }
            }
            n
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    // A message in both places (a crash during its move) counts once: the files win.
    for id in log::live_ids(&spool.join("log"))? {
        if !queue.join(format!("{id}.env")).exists() {
            count += 1;
        }
    }
    Ok(count)
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

/// A canonical queue id (18 upper-case hex digits, `Spool::new_id`) packed into 16 bytes;
/// its `{:018X}` formatting gives the id back.
pub fn pack_id(id: &str) -> Option<u128> {
    (id.len() == 18 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
        .then(|| u128::from_str_radix(id, 16).ok())
        .flatten()
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

/// Group commit of a directory's fsync. Each caller has already renamed or removed its entries;
/// it returns once an fsync of the directory that *started after* its call has succeeded. While
/// one fsync runs, later callers queue up and the next single fsync covers all of them, so N
/// concurrent sessions cost about one directory fsync per round instead of N.
struct GroupSync {
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
    fn new(dir: PathBuf) -> GroupSync {
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
    fn sync(&self) -> io::Result<()> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        test_envelope("")
    }

    #[tokio::test]
    async fn commit_then_recover_and_debris_is_removed() {
        let dir = tempdir();
        let (spool, mut rx) = Spool::open(&dir).unwrap();
        let id = Spool::new_id();
        let mut w = spool.writer(&id).await.unwrap();
        w.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        let env = w.commit(envelope()).await.unwrap();
        assert_eq!(env.size, 20);
        assert_eq!(rx.recv().await.unwrap().id, id);

        // An aborted writer leaves nothing; debris in tmp and a lone .msg are cleaned up.
        let w2 = spool.writer(&Spool::new_id()).await.unwrap();
        drop(w2);
        std::fs::write(dir.join("spool/tmp/X.msg"), b"half").unwrap();
        std::fs::write(dir.join("spool/queue/Y.msg"), b"half").unwrap();
        let (spool2, _rx) = Spool::open(&dir).unwrap();
        let rec = spool2.recover().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].id, id);
        assert!(!dir.join("spool/queue/Y.msg").exists());
        assert_eq!(std::fs::read_dir(dir.join("spool/tmp")).unwrap().count(), 0);

        spool2.remove(&id).await.unwrap();
        assert_eq!(spool2.queued_count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn large_messages_stream_to_disk_and_small_ones_wait_for_finish() {
        let dir = tempdir();
        let (spool, _rx) = Spool::open(&dir).unwrap();
        let small_id = Spool::new_id();
        let mut small = spool.writer(&small_id).await.unwrap();
        small.write(b"Subject: s\r\n\r\nhi\r\n").await.unwrap();
        let tmp = dir.join("spool/tmp");
        let on_disk = |id: &str| {
            std::fs::metadata(tmp.join(format!("{id}.msg")))
                .unwrap()
                .len()
        };
        assert!(
            !tmp.join(format!("{small_id}.msg")).exists(),
            "a small message stays in memory (then goes to the log)"
        );
        let big_id = Spool::new_id();
        let mut big = spool.writer(&big_id).await.unwrap();
        let chunk = vec![b'x'; 40_000];
        for _ in 0..5 {
            big.write(&chunk).await.unwrap();
        }
        assert!(on_disk(&big_id) >= 120_000, "streamed before finish");
        let env = big.commit(envelope()).await.unwrap();
        assert_eq!(env.size, 200_000);
        assert_eq!(
            std::fs::read(spool.message_path(&big_id)).unwrap().len(),
            200_000
        );
        let env = small.commit(envelope()).await.unwrap();
        assert!(
            !spool.message_path(&small_id).exists(),
            "in the log, not a file"
        );
        assert_eq!(env.size, 18);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        let queued = inspect(&dir).unwrap();
        assert_eq!(queued.len(), 2);
        let small_q = queued.iter().find(|(e, _)| e.id == small_id).unwrap();
        assert_eq!(small_q.1, b"Subject: s\r\n\r\nhi\r\n");
        assert!(matches!(spool.body(&small_id).await.unwrap(), Body::Memory(b) if b.len() == 18));
        assert!(matches!(spool.body(&big_id).await.unwrap(), Body::File(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A log message whose envelope changes moves to files; the log copy is done. After a
    /// crash in the middle of the move (both copies), recovery takes the files.
    #[tokio::test]
    async fn a_log_message_moves_to_files_when_its_envelope_changes() {
        let dir = tempdir();
        let (spool, _rx) = Spool::open(&dir).unwrap();
        let a = spool
            .store(
                Envelope {
                    id: Spool::new_id(),
                    ..envelope()
                },
                b"Subject: a\r\n\r\na\r\n",
            )
            .await
            .unwrap();
        let b = spool
            .store(
                Envelope {
                    id: Spool::new_id(),
                    ..envelope()
                },
                b"Subject: b\r\n\r\nb\r\n",
            )
            .await
            .unwrap();
        let mut a2 = a.clone();
        a2.recipients[0].attempts = 1;
        spool.save_envelope(&a2).await.unwrap();
        assert!(spool.message_path(&a.id).exists());
        assert!(!spool.log.contains(&a.id));
        assert!(spool.log.contains(&b.id));
        assert_eq!(spool.queued_count(), 2);
        // The move's files again, as if the crash came before the done record was written.
        let env_file = spool.envelope_path(&b.id);
        let mut b2 = b.clone();
        b2.recipients[0].attempts = 7;
        std::fs::write(spool.message_path(&b.id), b"Subject: b\r\n\r\nb\r\n").unwrap();
        std::fs::write(&env_file, serde_json::to_vec(&b2).unwrap()).unwrap();
        drop(spool);

        let (spool, _rx) = Spool::open(&dir).unwrap();
        let rec = spool.recover().unwrap();
        assert_eq!(rec.len(), 2, "{rec:?}");
        assert_eq!(rec[0].id, a.id);
        assert_eq!(rec[0].recipients[0].attempts, 1);
        assert_eq!(rec[1].id, b.id);
        assert_eq!(rec[1].recipients[0].attempts, 7, "the files win");
        assert!(!spool.log.contains(&b.id));
        for id in [&a.id, &b.id] {
            spool.remove(id).await.unwrap();
        }
        assert_eq!(spool.queued_count(), 0);
        assert!(inspect(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

    /// One message stuck in its first attempt must not keep every later log segment: past
    /// MAX_PINNED_SEGMENTS finished ones behind it, it moves to files and they are deleted.
    #[tokio::test]
    async fn a_message_pinning_old_segments_moves_to_files() {
        let dir = tempdir();
        // Every batch fills a segment: one message per segment.
        let (spool, _rx) = Spool::open_with(&dir, Some(1)).unwrap();
        let store = |body: &'static [u8]| {
            let spool = spool.clone();
            async move {
                spool
                    .store(
                        Envelope {
                            id: Spool::new_id(),
                            ..envelope()
                        },
                        body,
                    )
                    .await
                    .unwrap()
            }
        };
        let stuck = store(b"Subject: stuck\r\n\r\nx\r\n").await;
        spool.compact().await;
        assert!(!spool.message_path(&stuck.id).exists(), "nothing to do yet");
        for _ in 0..(MAX_PINNED_SEGMENTS + 2) {
            let e = store(b"Subject: quick\r\n\r\ny\r\n").await;
            spool.remove(&e.id).await.unwrap();
        }
        let log_dir = dir.join("spool/log");
        let segments = || std::fs::read_dir(&log_dir).unwrap().count();
        assert!(
            segments() > MAX_PINNED_SEGMENTS,
            "kept alive by the stuck one"
        );
        spool.compact().await;
        assert!(spool.message_path(&stuck.id).exists());
        assert!(!spool.log.contains(&stuck.id));
        assert!(segments() <= 2, "{} segments left", segments());
        // Its delivery goes on as before: the files hold it; removal removes them.
        assert!(matches!(
            spool.body(&stuck.id).await.unwrap(),
            Body::File(_)
        ));
        let q = inspect(&dir).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1, b"Subject: stuck\r\n\r\nx\r\n");
        spool.remove(&stuck.id).await.unwrap();
        assert!(inspect(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Recovery runs while the relay works: what was started since the spool was opened is
    /// queued already and skipped; envelopes are read back from the log or the files.
    #[tokio::test]
    async fn recovery_skips_new_messages_and_envelopes_are_read_back() {
        let dir = tempdir();
        let (spool, _rx) = Spool::open(&dir).unwrap();
        let mut env = envelope();
        env.id = Spool::new_id();
        let old = spool
            .store(env.clone(), b"Subject: old\r\n\r\n")
            .await
            .unwrap();
        let mut moved = old.clone();
        moved.recipients[0].attempts = 3;
        spool.save_envelope(&moved).await.unwrap();
        drop(spool);
        let (spool, _rx) = Spool::open(&dir).unwrap();
        env.id = Spool::new_id();
        let new = spool.store(env, b"Subject: new\r\n\r\n").await.unwrap();
        let mut batches = Vec::new();
        let n = spool.recover_each(1, |b| batches.push(b)).unwrap();
        assert_eq!(n, 1);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0][0].id, old.id);
        assert_eq!(
            spool.envelope(&old.id).await.unwrap().recipients[0].attempts,
            3
        );
        assert_eq!(
            spool.envelope(&new.id).await.unwrap().id,
            new.id,
            "from the log"
        );
        assert!(spool.message_path(&old.id).exists());
        let gone = spool.envelope("000000000000000000").await.unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A deferral recorded in place leaves the envelope's bytes alone; its next attempt (the
    /// file's mtime) survives a restart. The offline count reads no envelope.
    #[tokio::test]
    async fn a_deferral_in_place_writes_no_envelope_and_survives_a_restart() {
        let dir = tempdir();
        let (spool, _rx) = Spool::open(&dir).unwrap();
        let mut env = test_envelope(&Spool::new_id());
        let logged = test_envelope(&Spool::new_id());
        env = spool.store(env, b"Subject: a\r\n\r\na\r\n").await.unwrap();
        let logged = spool
            .store(logged, b"Subject: b\r\n\r\nb\r\n")
            .await
            .unwrap();
        assert!(
            !spool
                .defer_in_place(&env.id, now_unix() + 60)
                .await
                .unwrap(),
            "in the log: the first deferral must save"
        );
        env.recipients[0].attempts = 1;
        env.recipients[0].next_attempt = now_unix() + 60;
        spool.save_envelope(&env).await.unwrap();
        let path = spool.envelope_path(&env.id);
        let bytes = std::fs::read(&path).unwrap();
        let later = now_unix() + 3600;
        assert!(spool.defer_in_place(&env.id, later).await.unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "not rewritten");
        assert_eq!(count_queued(&dir).unwrap(), 2);
        drop(spool);

        let (spool, _rx) = Spool::open(&dir).unwrap();
        let rec = spool.recover().unwrap();
        let got = rec.iter().find(|e| e.id == env.id).unwrap();
        assert_eq!(got.recipients[0].next_attempt, later);
        assert_eq!(got.recipients[0].attempts, 1, "the count last saved");
        let other = rec.iter().find(|e| e.id == logged.id).unwrap();
        assert_eq!(other.recipients[0].next_attempt, 0, "untouched");
        spool.remove(&logged.id).await.unwrap();
        assert_eq!(count_queued(&dir).unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = Spool::new_id();
        let b = Spool::new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("poolrelay-spool-{}", Spool::new_id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
