//! Queue control (`poolrelay queue …`, `/api/queue…`): the scheduler owns every waiting envelope,
//! so the operator's requests are commands into its loop, never edits of spool files behind its
//! back. A message being delivered right now is left alone (the request says so); an operator
//! hold is kept in the state store, so it survives a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::index::{Entry, Index, Place, Qid};
use super::{Deliverer, Queue};
use crate::outcome::{self, DsnKind};
use crate::spool::{RcptState, RemoteReply, now_unix};
use crate::state::State;

/// Which messages a request is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    Id(String),
    All,
    /// Messages with a pending recipient at this domain.
    Domain(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Retry,
    Hold,
    Release,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Delete => "delete",
        }
    }
}

#[derive(Debug)]
pub enum Request {
    /// Counts by destination domain, provider and state, and the levels for `/metrics`.
    Summary,
    Show(String),
    Change {
        action: Action,
        select: Select,
        /// Delete only: send the sender a failure DSN.
        dsn: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    NotFound(String),
    /// Being delivered right now.
    Busy(String),
    /// Not possible in the message's state (e.g. retry while on hold).
    Conflict(String),
    Stopped,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound(id) => write!(f, "no queued message {id}"),
            Failure::Busy(id) => write!(f, "message {id} is being delivered now; try again"),
            Failure::Conflict(why) => f.write_str(why),
            Failure::Stopped => f.write_str("the queue is not running"),
        }
    }
}

type Answer = Result<Value, Failure>;

pub(super) struct Command {
    req: Request,
    /// Who asked (the API client's address), for the log.
    client: String,
    reply: oneshot::Sender<Answer>,
}

/// The API's end.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl QueueHandle {
    pub async fn ask(&self, req: Request, client: &str) -> Answer {
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            req,
            client: client.to_string(),
            reply,
        };
        self.tx.send(cmd).map_err(|_| Failure::Stopped)?;
        rx.await.map_err(|_| Failure::Stopped)?
    }
}

/// What a hold, release or delete hands back to the loop once its I/O is done.
pub(super) struct Back {
    /// Held (hold), or waiting again and due now (release), or back where it was (a delete
    /// that failed).
    ids: Vec<Qid>,
    to: Place,
    /// Deleted.
    gone: Vec<Qid>,
    reply: Option<(oneshot::Sender<Answer>, Value)>,
}

/// The scheduler's end.
pub struct Control {
    rx: mpsc::UnboundedReceiver<Command>,
    back_tx: mpsc::UnboundedSender<Back>,
    back_rx: mpsc::UnboundedReceiver<Back>,
    state: Option<Arc<State>>,
}

pub(super) enum Event {
    Command(Command),
    Back(Back),
}

pub fn channel(state: Option<Arc<State>>) -> (QueueHandle, Control) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (back_tx, back_rx) = mpsc::unbounded_channel();
    let control = Control {
        rx,
        back_tx,
        back_rx,
        state,
    };
    (QueueHandle { tx }, control)
}

impl Control {
    /// Ids the operator holds (from the state store).
    pub(super) fn held_ids(&self) -> Vec<String> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        state.queue_holds().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read queue holds");
            Vec::new()
        })
    }

    /// Forgets holds of messages no longer queued.
    pub(super) fn forget(&self, ids: &[String]) {
        if let Some(state) = &self.state
            && let Err(e) = state.queue_hold_set(ids, false)
        {
            tracing::error!(error = %e, "cannot update queue holds");
        }
    }

    /// Next command or hand-back (pending forever once the API side is gone).
    pub(super) async fn next(&mut self) -> Event {
        tokio::select! {
            Some(c) = self.rx.recv() => Event::Command(c),
            Some(b) = self.back_rx.recv() => Event::Back(b),
            else => std::future::pending().await,
        }
    }

    pub(super) fn handle(&mut self, queue: &mut Queue, d: &Arc<Deliverer>, event: Event) {
        match event {
            Event::Back(Back {
                ids,
                to,
                gone,
                reply,
            }) => {
                for q in gone {
                    queue.index.remove(q);
                }
                let now = now_unix();
                for q in ids {
                    match to {
                        Place::Held => queue.index.put_back(q, true, None),
                        Place::Ready => queue.index.put_back(q, false, Some(now)),
                        _ => queue.index.put_back(q, false, None),
                    }
                }
                // Answered once the queue shows the change.
                if let Some((tx, answer)) = reply {
                    let _ = tx.send(Ok(answer));
                }
            }
            Event::Command(c) => {
                let Command { req, client, reply } = c;
                match self.command(queue, req, &client) {
                    Ok(Then::Answer(answer)) => {
                        let _ = reply.send(Ok(answer));
                    }
                    Ok(Then::Io(io, answer)) => self.finish(d, io, answer, reply),
                    Ok(Then::Show(show)) => {
                        let d = d.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(show.read(&d).await);
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// The answer, or what is still to do before it is given.
    fn command(&mut self, queue: &mut Queue, req: Request, client: &str) -> Result<Then, Failure> {
        let ix = &mut queue.index;
        match req {
            Request::Summary => Ok(Then::Answer(summary(queue))),
            Request::Show(id) => {
                let e = ix
                    .ids
                    .find(&id)
                    .and_then(|q| ix.entries.get(&q))
                    .ok_or_else(|| Failure::NotFound(id.clone()))?;
                Ok(Then::Show(Show {
                    id,
                    state: state_of(e),
                    due: e.due.into(),
                    unsaved: e.unsaved,
                }))
            }
            Request::Change {
                action,
                select,
                dsn,
            } => {
                let ids = select_ids(ix, &select)?;
                let mut done = Vec::new();
                let mut skipped = Vec::new();
                let mut taken = Vec::new();
                let now = now_unix();
                for q in ids {
                    let ok = match action {
                        Action::Retry => ix.hurry(q, now),
                        Action::Hold => ix.take_waiting(q),
                        Action::Release => ix.take_held(q),
                        Action::Delete => ix.take_held(q) || ix.take_waiting(q),
                    };
                    let id = ix.ids.name(q);
                    if ok {
                        tracing::info!(queue_id = %id, client = %client, action = action.as_str(), dsn, "queue: operator action");
                        done.push(id);
                        if action != Action::Retry {
                            taken.push(q);
                        }
                    } else {
                        skipped.push(id);
                    }
                }
                if let (Select::Id(id), true) = (&select, done.is_empty()) {
                    let held = ix
                        .ids
                        .find(id)
                        .and_then(|q| ix.entries.get(&q))
                        .is_some_and(|e| e.place == Place::Held);
                    let state = if held { "on-hold" } else { "queued" };
                    let why = format!("cannot {} message {id}: it is {state}", action.as_str());
                    return Err(Failure::Conflict(why));
                }
                for q in &taken {
                    queue.fresh.remove(q);
                }
                // A million ids would be an answer of tens of MB: many messages get counts.
                let answer = match select {
                    Select::Id(_) => {
                        json!({ "ok": true, "action": action, "done": done, "skipped": skipped })
                    }
                    Select::All | Select::Domain(_) => {
                        json!({ "ok": true, "action": action, "done": done.len(), "skipped": skipped.len() })
                    }
                };
                if taken.is_empty() {
                    return Ok(Then::Answer(answer));
                }
                let named = taken.iter().map(|&q| (q, ix.ids.name(q))).collect();
                Ok(Then::Io(
                    Io {
                        action,
                        dsn,
                        ids: named,
                    },
                    answer,
                ))
            }
        }
    }

    /// The I/O of a hold, release or delete, off the loop; the messages come back through
    /// `Back` (a delete that fails comes back to the queue). The answer goes once it is done.
    fn finish(&self, d: &Arc<Deliverer>, io: Io, answer: Value, reply: oneshot::Sender<Answer>) {
        let Io { action, dsn, ids } = io;
        let (back, state, d) = (self.back_tx.clone(), self.state.clone(), d.clone());
        tokio::spawn(async move {
            let names: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
            let on_hold = action == Action::Hold;
            let stored = tokio::task::spawn_blocking(move || match state {
                Some(s) => s.queue_hold_set(&names, on_hold).map_err(|e| e.to_string()),
                None => Ok(()),
            })
            .await;
            if let Ok(Err(e)) = stored {
                tracing::error!(error = %e, "queue hold not stored in the state store");
            }
            let to = match action {
                Action::Hold => Place::Held,
                Action::Release => Place::Ready,
                _ => Place::Waiting,
            };
            let mut b = Back {
                ids: Vec::new(),
                to,
                gone: Vec::new(),
                reply: Some((reply, answer)),
            };
            for (q, id) in ids {
                if action != Action::Delete {
                    b.ids.push(q);
                    continue;
                }
                match delete(&d, &id, dsn).await {
                    Ok(()) => b.gone.push(q),
                    Err(e) => {
                        tracing::error!(queue_id = %id, error = %e, "cannot delete");
                        b.ids.push(q);
                    }
                }
            }
            let _ = back.send(b);
        });
    }
}

/// What a command still needs after the loop has done its part.
enum Then {
    Answer(Value),
    Io(Io, Value),
    Show(Show),
}

/// Hold, release or delete work for `finish`.
pub(super) struct Io {
    action: Action,
    dsn: bool,
    ids: Vec<(Qid, String)>,
}

/// `queue show`: the envelope is read from the spool, off the loop.
struct Show {
    id: String,
    state: &'static str,
    due: u64,
    /// Deferrals not in the file yet: shown as the scheduler knows them.
    unsaved: u8,
}

impl Show {
    async fn read(self, d: &Deliverer) -> Answer {
        match d.spool.envelope(&self.id).await {
            Ok(env) => {
                let mut env = super::with_unsaved(env, self.unsaved);
                if self.unsaved > 0 {
                    for r in env.recipients.iter_mut() {
                        if r.state == RcptState::Pending {
                            r.next_attempt = self.due;
                        }
                    }
                }
                Ok(json!({ "state": self.state, "due": self.due, "envelope": env }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure::NotFound(self.id)),
            Err(e) => Err(Failure::Conflict(format!(
                "cannot read message {}: {e}",
                self.id
            ))),
        }
    }
}

/// Removes a message from the spool, with a failure DSN for its pending recipients if asked.
async fn delete(d: &Deliverer, id: &str, dsn: bool) -> std::io::Result<()> {
    if dsn {
        let mut env = d.spool.envelope(id).await?;
        let reply = RemoteReply {
            code: 550,
            status: "5.0.0".into(),
            text: "deleted from the queue by the operator".into(),
            host: String::new(),
            addr: String::new(),
            source_ip: String::new(),
        };
        for r in env.recipients.iter_mut() {
            if r.state == RcptState::Pending {
                r.state = RcptState::Bounced;
                r.last_reply = Some(reply.clone());
            }
        }
        let pending: Vec<_> = env
            .recipients
            .iter()
            .filter(|r| r.last_reply.as_ref() == Some(&reply))
            .collect();
        outcome::send_dsn(
            &d.settings.hostname,
            &d.spool,
            &d.signer.load_full(),
            &env,
            &pending,
            DsnKind::Failure,
        )
        .await?;
    }
    d.spool.remove(id).await
}

/// Messages matching `select` among waiting, held and busy ones.
fn select_ids(ix: &Index, select: &Select) -> Result<Vec<Qid>, Failure> {
    let mut ids: Vec<Qid> = match select {
        Select::Id(id) => {
            let e = ix
                .ids
                .find(id)
                .and_then(|q| ix.entries.get(&q).map(|e| (q, e)));
            match e {
                None => return Err(Failure::NotFound(id.clone())),
                Some((_, e)) if matches!(e.place, Place::Active | Place::Busy) => {
                    return Err(Failure::Busy(id.clone()));
                }
                Some((q, _)) => vec![q],
            }
        }
        Select::All => ix
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.place, Place::Active | Place::Busy))
            .map(|(q, _)| *q)
            .collect(),
        Select::Domain(dom) => {
            let dom = dom.trim().trim_end_matches('.').to_ascii_lowercase();
            let Some(n) = ix.names.find(&dom) else {
                return Ok(Vec::new());
            };
            ix.entries
                .iter()
                .filter(|(_, e)| !matches!(e.place, Place::Active | Place::Busy))
                .filter(|(_, e)| e.domains().any(|d| d == n))
                .map(|(q, _)| *q)
                .collect()
        }
    };
    // Canonical ids sort by value as by name (fixed-width hex); odd ones after them.
    ids.sort_unstable();
    Ok(ids)
}

fn state_of(e: &Entry) -> &'static str {
    match e.place {
        Place::Active | Place::Busy => "delivering",
        Place::Held => "on-hold",
        _ if e.pool_held => "pool-held",
        _ => "queued",
    }
}

/// Counts over the whole index (no envelope is read): fast at a million messages.
fn summary(queue: &Queue) -> Value {
    let ix = &queue.index;
    let names = &ix.names.list;
    let mut by_domain_n: Vec<u64> = vec![0; names.len()];
    let mut by_provider_n: Vec<u64> = vec![0; ix.providers.list.len()];
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut messages, mut recipients, mut bytes) = (0u64, 0u64, 0u64);
    let mut unknown = 0u64;
    let mut oldest: Option<u64> = None;
    for e in ix.entries.values() {
        messages += 1;
        bytes += u64::from(e.size);
        let received = u64::from(e.received_at);
        oldest = Some(oldest.map_or(received, |o| o.min(received)));
        *by_state.entry(state_of(e)).or_default() += 1;
        recipients += e.rcpts as u64;
        for dom in e.domains() {
            by_domain_n[dom as usize] += 1;
        }
        match by_provider_n.get_mut(e.provider as usize) {
            Some(p) => *p += e.rcpts as u64,
            None => unknown += e.rcpts as u64,
        }
    }
    let mut by_domain: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, &n) in names.iter().zip(&by_domain_n) {
        if n > 0 {
            by_domain.insert(name, n);
        }
    }
    let mut by_provider: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, &n) in ix.providers.list.iter().zip(&by_provider_n) {
        if n > 0 {
            *by_provider.entry(name).or_default() += n;
        }
    }
    if unknown > 0 {
        *by_provider.entry("unknown").or_default() += unknown;
    }
    json!({
        "messages": messages,
        "recipients": recipients,
        "bytes": bytes,
        "oldest": oldest,
        "by_state": by_state,
        "by_domain": by_domain,
        "by_provider": by_provider,
        "active": ix.active,
        "active_limit": ix.active_limit,
        "indexing": queue.indexing,
    })
}
