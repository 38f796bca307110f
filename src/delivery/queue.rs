//! The scheduler: every queued message waits in a heap keyed by its earliest next attempt; when
//! it is due, one task runs the attempt and hands the envelope back (or reports it finished).
//! Concurrency is limited per connection (global and per destination) in `Deliverer`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::Deliverer;
use crate::spool::{Envelope, RcptState, now_unix};

/// Retry delay for a message whose recipients are all final but that could not be finished
/// (DSN or removal failed: disk trouble).
const FINISH_RETRY: u64 = 30;

fn due_of(env: &Envelope) -> Option<u64> {
    env.recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .map(|r| r.next_attempt)
        .min()
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, String)>>,
    /// Messages waiting, with the due time their heap entry was pushed with (stale entries are
    /// skipped on pop).
    waiting: HashMap<String, (u64, Envelope)>,
}

impl Queue {
    fn push(&mut self, env: Envelope, due: u64) {
        self.heap.push(Reverse((due, env.id.clone())));
        self.waiting.insert(env.id.clone(), (due, env));
    }

    fn pop_due(&mut self, now: u64) -> Option<Envelope> {
        while let Some(Reverse((due, _))) = self.heap.peek() {
            if *due > now {
                return None;
            }
            let Reverse((due, id)) = self.heap.pop().expect("peeked");
            match self.waiting.get(&id) {
                Some((d, _)) if *d == due => return self.waiting.remove(&id).map(|(_, e)| e),
                _ => continue,
            }
        }
        None
    }

    fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }
}

pub async fn run(
    d: Arc<Deliverer>,
    mut committed: mpsc::UnboundedReceiver<Envelope>,
    recovered: Vec<Envelope>,
) {
    let mut queue = Queue::default();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<Envelope>, bool)>();
    for env in recovered {
        if env
            .recipients
            .iter()
            .any(|r| r.state == RcptState::Pending && r.held)
        {
            d.mark_held(&env.id);
        }
        let due = due_of(&env).unwrap_or(0);
        queue.push(env, due);
    }
    loop {
        let now = now_unix();
        while let Some(env) = queue.pop_due(now) {
            let id = env.id.clone();
            let d = d.clone();
            let tx = done_tx.clone();
            let backup = env.clone();
            // One task per attempt; a panic in it is caught here (not by a second task around
            // it) and the message is retried later.
            tokio::spawn(async move {
                match CatchUnwind(Box::pin(d.deliver_message(env))).await {
                    Ok(next) => {
                        let _ = tx.send((id, next, false));
                    }
                    Err(()) => {
                        tracing::error!(queue_id = %id, "delivery attempt crashed");
                        let _ = tx.send((id, Some(backup), true));
                    }
                }
            });
        }
        let sleep = match queue.next_due() {
            Some(due) => {
                let ms = (due as u128 * 1000).saturating_sub(now_millis());
                Duration::from_millis(ms.min(3_600_000) as u64)
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            env = committed.recv() => match env {
                Some(env) => {
                    let due = due_of(&env).unwrap_or(0);
                    tracing::debug!(queue_id = %env.id, due, "queued for delivery");
                    queue.push(env, due);
                }
                None => {
                    // Spool gone: the process is stopping.
                    std::future::pending::<()>().await;
                }
            },
            Some((_id, next, crashed)) = done_rx.recv() => {
                if let Some(env) = next {
                    let due = match due_of(&env) {
                        Some(due) if !crashed => due,
                        _ => now_unix() + FINISH_RETRY,
                    };
                    queue.push(env, due);
                }
            }
            _ = d.pools.wake.notified() => {
                // An IP came back (undrain, reinstate): held mail goes now.
                let now = now_unix();
                for id in d.take_held() {
                    if let Some((_, mut env)) = queue.waiting.remove(&id) {
                        for r in env.recipients.iter_mut() {
                            if r.state == RcptState::Pending && r.held {
                                r.next_attempt = r.next_attempt.min(now);
                            }
                        }
                        let due = due_of(&env).unwrap_or(now);
                        queue.push(env, due);
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
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

    fn env(id: &str, next: u64) -> Envelope {
        let mut e = crate::spool::test_envelope(id);
        e.recipients[0].next_attempt = next;
        e
    }

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
    fn pops_in_due_order_and_skips_stale_entries() {
        let mut q = Queue::default();
        q.push(env("b", 20), 20);
        q.push(env("a", 10), 10);
        q.push(env("b", 5), 5); // rescheduled: the 20 entry is stale
        assert_eq!(q.next_due(), Some(5));
        assert_eq!(q.pop_due(9).unwrap().id, "b");
        assert!(q.pop_due(9).is_none());
        assert_eq!(q.pop_due(30).unwrap().id, "a");
        assert!(q.pop_due(30).is_none());
    }
}
