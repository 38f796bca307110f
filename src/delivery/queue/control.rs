//! Queue control (`poolrelay queue …`, `/api/queue…`): the scheduler owns every waiting envelope,
//! so the operator's requests are commands into its loop, never edits of spool files behind its
//! back. A message being delivered right now is left alone (the request says so); an operator
//! hold is kept in the state store, so it survives a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Deliverer, Queue, due_of};
use crate::outcome::{self, DsnKind};
use crate::routing::domain_of;
use crate::spool::{Envelope, RcptState, RemoteReply, now_unix};
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

/// Envelopes a hold, release or failed delete hands back to the loop once its I/O is done.
pub(super) struct Back {
    envs: Vec<Envelope>,
    held: bool,
    /// Deleted.
    gone: Vec<String>,
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
                envs,
                held,
                gone,
                reply,
            }) => {
                for id in gone {
                    queue.busy.remove(&id);
                }
                for env in envs {
                    queue.busy.remove(&env.id);
                    if held {
                        queue.held.insert(env.id.clone(), env);
                    } else {
                        let due = due_of(&env).unwrap_or(0);
                        queue.push(env, due);
                    }
                }
                // Answered once the queue shows the change.
                if let Some((tx, answer)) = reply {
                    let _ = tx.send(Ok(answer));
                }
            }
            Event::Command(c) => {
                let Command { req, client, reply } = c;
                match self.command(queue, d, req, &client) {
                    Ok((answer, Some(io))) => self.finish(d, io, answer, reply),
                    Ok((answer, None)) => {
                        let _ = reply.send(Ok(answer));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// The answer, and the I/O still to do before it is given.
    fn command(
        &mut self,
        q: &mut Queue,
        d: &Arc<Deliverer>,
        req: Request,
        client: &str,
    ) -> Result<(Value, Option<Io>), Failure> {
        match req {
            Request::Summary => Ok((summary(q, d), None)),
            Request::Show(id) => show(q, &id).map(|v| (v, None)),
            Request::Change {
                action,
                select,
                dsn,
            } => {
                let ids = select_ids(q, &select)?;
                let mut done = Vec::new();
                let mut skipped = Vec::new();
                let mut taken = Vec::new();
                for id in ids {
                    let ok = match action {
                        Action::Retry => retry(q, &id),
                        Action::Hold => take(q, &id, false),
                        Action::Release => take(q, &id, true),
                        Action::Delete => take(q, &id, true).or_else(|| take(q, &id, false)),
                    };
                    match ok {
                        Some(env) => {
                            tracing::info!(queue_id = %id, client = %client, action = action.as_str(), dsn, "queue: operator action");
                            done.push(id);
                            if action != Action::Retry {
                                taken.push(env);
                            }
                        }
                        None => skipped.push(id),
                    }
                }
                if let (Select::Id(id), true) = (&select, done.is_empty()) {
                    let state = q.held.get(id).map_or("queued", |_| "on hold");
                    let why = format!("cannot {} message {id}: it is {state}", action.as_str());
                    return Err(Failure::Conflict(why));
                }
                for env in &taken {
                    q.busy.insert(env.id.clone(), env.clone());
                }
                let answer =
                    json!({ "ok": true, "action": action, "done": done, "skipped": skipped });
                let io = (!taken.is_empty()).then_some(Io {
                    action,
                    dsn,
                    envs: taken,
                });
                Ok((answer, io))
            }
        }
    }

    /// The I/O of a hold, release or delete, off the loop; the envelopes come back through
    /// `Back` (a delete that fails comes back to the queue). The answer goes once it is done.
    fn finish(&self, d: &Arc<Deliverer>, io: Io, answer: Value, reply: oneshot::Sender<Answer>) {
        let Io { action, dsn, envs } = io;
        let (back, state, d) = (self.back_tx.clone(), self.state.clone(), d.clone());
        tokio::spawn(async move {
            let ids: Vec<String> = envs.iter().map(|e| e.id.clone()).collect();
            let on_hold = action == Action::Hold;
            let state2 = state.clone();
            let stored = tokio::task::spawn_blocking(move || match state2 {
                Some(s) => s.queue_hold_set(&ids, on_hold).map_err(|e| e.to_string()),
                None => Ok(()),
            })
            .await;
            if let Ok(Err(e)) = stored {
                tracing::error!(error = %e, "queue hold not stored in the state store");
            }
            let mut b = Back {
                envs: Vec::new(),
                held: on_hold,
                gone: Vec::new(),
                reply: Some((reply, answer)),
            };
            let now = now_unix();
            for mut env in envs {
                match action {
                    Action::Delete => match delete(&d, env.clone(), dsn).await {
                        Ok(()) => b.gone.push(env.id),
                        Err(e) => {
                            tracing::error!(queue_id = %env.id, error = %e, "cannot delete");
                            b.envs.push(env);
                        }
                    },
                    Action::Release => {
                        due_now(&mut env, now);
                        b.envs.push(env);
                    }
                    _ => b.envs.push(env),
                }
            }
            let _ = back.send(b);
        });
    }
}

/// Hold, release or delete work for `finish`.
pub(super) struct Io {
    action: Action,
    dsn: bool,
    envs: Vec<Envelope>,
}

/// Removes a message from the spool, with a failure DSN for its pending recipients if asked.
async fn delete(d: &Deliverer, mut env: Envelope, dsn: bool) -> std::io::Result<()> {
    if dsn {
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
            &d.config,
            &d.spool,
            &d.signer.load_full(),
            &env,
            &pending,
            DsnKind::Failure,
        )
        .await?;
    }
    d.spool.remove(&env.id).await
}

fn due_now(env: &mut Envelope, now: u64) {
    for r in env.recipients.iter_mut() {
        if r.state == RcptState::Pending {
            r.next_attempt = r.next_attempt.min(now);
        }
    }
}

/// Ids matching `select` among waiting, held and busy messages.
fn select_ids(q: &Queue, select: &Select) -> Result<Vec<String>, Failure> {
    let all = q.waiting.values().map(|(_, e)| e).chain(q.held.values());
    let mut ids: Vec<String> = match select {
        Select::Id(id) => {
            if q.busy.contains_key(id) {
                return Err(Failure::Busy(id.clone()));
            }
            all.filter(|e| &e.id == id).map(|e| e.id.clone()).collect()
        }
        Select::All => all.map(|e| e.id.clone()).collect(),
        Select::Domain(dom) => {
            let dom = dom.trim().trim_end_matches('.').to_ascii_lowercase();
            all.filter(|e| {
                e.recipients
                    .iter()
                    .any(|r| r.state == RcptState::Pending && domain_of(&r.address) == dom)
            })
            .map(|e| e.id.clone())
            .collect()
        }
    };
    if let (Select::Id(id), true) = (select, ids.is_empty()) {
        return Err(Failure::NotFound(id.clone()));
    }
    ids.sort();
    Ok(ids)
}

/// Due now (a waiting message; held ones need a release first).
fn retry(q: &mut Queue, id: &str) -> Option<Envelope> {
    let (_, mut env) = q.waiting.remove(id)?;
    due_now(&mut env, now_unix());
    let due = due_of(&env).unwrap_or(0);
    q.push(env.clone(), due);
    Some(env)
}

/// Takes a message out of the held set (`from_held`) or out of the waiting ones.
fn take(q: &mut Queue, id: &str, from_held: bool) -> Option<Envelope> {
    if from_held {
        q.held.remove(id)
    } else {
        q.waiting.remove(id).map(|(_, e)| e)
    }
}

fn state_of(q: &Queue, env: &Envelope) -> &'static str {
    if q.busy.contains_key(&env.id) {
        "delivering"
    } else if q.held.contains_key(&env.id) {
        "on-hold"
    } else if env
        .recipients
        .iter()
        .any(|r| r.state == RcptState::Pending && r.held)
    {
        "pool-held"
    } else {
        "queued"
    }
}

fn show(q: &Queue, id: &str) -> Answer {
    let env = q
        .waiting
        .get(id)
        .map(|(_, e)| e)
        .or_else(|| q.held.get(id))
        .or_else(|| q.busy.get(id))
        .ok_or_else(|| Failure::NotFound(id.to_string()))?;
    Ok(json!({ "state": state_of(q, env), "due": due_of(env), "envelope": env }))
}

fn summary(q: &Queue, d: &Deliverer) -> Value {
    let mut by_domain: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_provider: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut messages, mut recipients, mut bytes) = (0u64, 0u64, 0u64);
    let mut oldest: Option<u64> = None;
    let envs = q
        .waiting
        .values()
        .map(|(_, e)| e)
        .chain(q.held.values())
        .chain(q.busy.values());
    for env in envs {
        messages += 1;
        bytes += env.size;
        oldest = Some(oldest.map_or(env.received_at, |o| o.min(env.received_at)));
        *by_state.entry(state_of(q, env)).or_default() += 1;
        for r in env
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
        {
            recipients += 1;
            *by_domain.entry(domain_of(&r.address)).or_default() += 1;
            let provider = match r.last_reply.as_ref().filter(|r| !r.host.is_empty()) {
                Some(reply) => d.pools.provider_of(&reply.host),
                None => "unknown".to_string(),
            };
            *by_provider.entry(provider).or_default() += 1;
        }
    }
    json!({
        "messages": messages,
        "recipients": recipients,
        "bytes": bytes,
        "oldest": oldest,
        "by_state": by_state,
        "by_domain": by_domain,
        "by_provider": by_provider,
    })
}
