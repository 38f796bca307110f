//! The scheduler. Every queued message has a small entry in the `index` (no envelope, no
//! body); when it is due and its destination has a free slot (see `index` for the rules), a
//! task reads its envelope from the spool, runs the attempt and reports what is left.
//! Concurrency per connection (global and per destination) is limited in `Deliverer`.
//! At startup the spool is indexed in the background (`recovered`), while new mail flows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

mod control;
mod index;

pub use control::{Action, Control, Failure, QueueHandle, Request, Select, channel};
pub(crate) use index::due_of;

use super::{Attempted, Deliverer, Written};
use crate::spool::{Envelope, RcptState, now_unix};
use index::{After, Index, Qid};

/// Retry delay for a message whose recipients are all final but that could not be finished
/// (DSN or removal failed: disk trouble), or whose envelope could not be read.
const FINISH_RETRY: u64 = 30;

/// Envelopes of just-committed messages kept for their first attempt (no read back from the
/// spool); past this many they are read back like any other.
const FRESH_MAX: usize = 4096;

/// Recovered envelopes are handed over in batches of this many.
pub const RECOVERY_BATCH: usize = 512;

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub(crate) struct Queue {
    pub(crate) index: Index,
    /// Envelopes of new messages not yet attempted (bounded by FRESH_MAX).
    fresh: HashMap<Qid, Envelope>,
    /// The spool is still being indexed.
    pub(crate) indexing: bool,
}

/// What an attempt task reports.
enum Done {
    Gone(Qid),
    /// Recipients pending; retry at the given time instead of the envelope's (after a crash);
    /// how the attempt was recorded.
    Pending(Qid, Box<Envelope>, Option<u64>, Written),
    /// The envelope could not be read: again at this time.
    RetryAt(Qid, u64),
}

pub async fn run(
    d: Arc<Deliverer>,
    mut committed: mpsc::UnboundedReceiver<Envelope>,
    mut recovered: mpsc::Receiver<Vec<Envelope>>,
    mut control: control::Control,
) {
    let limits = &d.settings.delivery;
    let mut queue = Queue {
        index: Index::new(limits.active_limit, 2 * limits.concurrency_per_destination),
        fresh: HashMap::new(),
        indexing: true,
    };
    let on_hold: HashSet<String> = control.held_ids().into_iter().collect();
    let mut holds_seen: HashSet<String> = HashSet::new();
    let provider_of = {
        let d = d.clone();
        move |host: &str| d.pools.provider_of(host).to_string()
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    loop {
        let now = now_unix();
        queue.index.promote(now);
        while let Some(q) = queue.index.next_active() {
            let env = queue.fresh.remove(&q);
            let (due, unsaved) = queue
                .index
                .entries
                .get(&q)
                .map_or((now, 0), |e| (e.due.into(), e.unsaved));
            let id = queue.index.ids.name(q);
            let plan = Plan { due, unsaved };
            tokio::spawn(attempt(d.clone(), q, id, env, plan, done_tx.clone()));
        }
        let sleep = match queue.index.next_due() {
            Some(due) => {
                let ms = (due as u128 * 1000).saturating_sub(now_millis());
                Duration::from_millis(ms.min(3_600_000) as u64)
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            env = committed.recv() => match env {
                Some(env) => {
                    tracing::debug!(queue_id = %env.id, "queued for delivery");
                    if queue.index.insert(&env, false, &provider_of) && queue.fresh.len() < FRESH_MAX {
                        let q = queue.index.ids.pack(&env.id);
                        queue.fresh.insert(q, env);
                    }
                }
                None => {
                    // Spool gone: the process is stopping.
                    std::future::pending::<()>().await;
                }
            },
            batch = recovered.recv(), if queue.indexing => match batch {
                Some(envs) => {
                    for env in envs {
                        let held = on_hold.contains(&env.id);
                        if held {
                            holds_seen.insert(env.id.clone());
                        }
                        if env.recipients.iter().any(|r| r.state == RcptState::Pending && r.held) {
                            d.mark_held(&env.id);
                        }
                        queue.index.insert(&env, held, &provider_of);
                    }
                }
                None => {
                    queue.indexing = false;
                    let stale: Vec<String> = on_hold.difference(&holds_seen).cloned().collect();
                    control.forget(&stale);
                    tracing::info!(messages = queue.index.len(), "queue indexed");
                }
            },
            Some(done) = done_rx.recv() => {
                let (q, after) = match &done {
                    Done::Gone(q) => (*q, After::Gone),
                    Done::Pending(q, env, due, w) => (*q, After::Pending(env, *due, *w)),
                    Done::RetryAt(q, due) => (*q, After::RetryAt(*due)),
                };
                queue.index.finished(q, after, &provider_of);
            }
            _ = d.pools.wake.notified() => {
                // An IP came back (undrain, reinstate): held mail goes now.
                let now = now_unix();
                for id in d.take_held() {
                    if let Some(q) = queue.index.ids.find(&id) {
                        queue.index.hurry(q, now);
                    }
                }
            }
            event = control.next() => control.handle(&mut queue, &d, event),
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// What the index knows of an attempt's message beyond its envelope file.
struct Plan {
    due: u64,
    /// Deferrals recorded in place since the file was written (`Written::InPlace`).
    unsaved: u8,
}

/// One attempt: the envelope (kept from the commit, or read from the spool), then delivery.
async fn attempt(
    d: Arc<Deliverer>,
    q: Qid,
    id: String,
    env: Option<Envelope>,
    plan: Plan,
    tx: mpsc::UnboundedSender<Done>,
) {
    let env = match env {
        Some(env) => env,
        None => match d.spool.envelope(&id).await {
            Ok(env) => with_unsaved(env, plan.unsaved),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(queue_id = %id, "queued message is gone from the spool");
                let _ = tx.send(Done::Gone(q));
                return;
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read the queued envelope, will retry");
                let _ = tx.send(Done::RetryAt(q, now_unix() + FINISH_RETRY));
                return;
            }
        },
    };
    let env = due_by(env, plan.due);
    let backup = env.clone();
    // A panic in the attempt is caught here (not by a second task around it) and the message
    // is retried later.
    let done = match CatchUnwind(Box::pin(d.deliver_message(env))).await {
        Ok(Attempted::Pending(env, written)) => Done::Pending(q, env, None, written),
        Ok(Attempted::Finished) => Done::Gone(q),
        Err(()) => {
            tracing::error!(queue_id = %id, "delivery attempt crashed");
            let retry = Some(now_unix() + FINISH_RETRY);
            Done::Pending(q, Box::new(backup), retry, Written::Unchanged)
        }
    };
    let _ = tx.send(done);
}

/// The envelope file is `unsaved` deferrals behind (each deferred every pending recipient):
/// their attempts count, so the retry schedule and the logs go on from the true count.
pub(crate) fn with_unsaved(mut env: Envelope, unsaved: u8) -> Envelope {
    for r in env.recipients.iter_mut() {
        if r.state == RcptState::Pending {
            r.attempts += u32::from(unsaved);
        }
    }
    env
}

/// The scheduler made the message due before its envelope says (retry, release, an IP came
/// back): its pending recipients go now.
fn due_by(mut env: Envelope, due: u64) -> Envelope {
    if due_of(&env).is_some_and(|d| d > due) {
        for r in env.recipients.iter_mut() {
            if r.state == RcptState::Pending {
                r.next_attempt = r.next_attempt.min(due);
            }
        }
    }
    env
}

/// A future that turns a panic while polling the inner one into `Err(())`.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_attempt_is_caught() {
        let ok = CatchUnwind(Box::pin(async { 7 })).await;
        assert_eq!(ok, Ok(7));
        let crashed = CatchUnwind(Box::pin(async {
            if now_unix() > 0 {
                panic!("attempt crashed");
            }
            7
        }))
        .await;
        assert_eq!(crashed, Err(()));
    }

    #[test]
    fn an_earlier_due_time_brings_pending_recipients_forward() {
        let mut e = crate::spool::test_envelope("x");
        e.recipients[0].next_attempt = 500;
        assert_eq!(due_by(e.clone(), 600).recipients[0].next_attempt, 500);
        assert_eq!(due_by(e, 100).recipients[0].next_attempt, 100);
    }
}
