//! The pool's history events: one per hold change (quarantined, extended, probation,
//! reinstated, drained, undrained) and one per warm-up ramp decision (event `warmup`). Each is
//! written to the state store when it happens, and with `[cluster]` to the farm's history too
//! (in the background; lost there, not here, if Redis is down). `reputation::history` reads and
//! shows them.

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Hold, HoldKind};
use crate::spool::now_unix;
use crate::state::State;

/// Where events go in the farm (`[cluster]`), implemented for `cluster::Cluster` in
/// `cluster::history`.
pub trait EventSink: Send + Sync + 'static {
    /// Appends events (`(ip, json)`) to the farm's event lists.
    fn push_events(&self, events: Vec<(IpAddr, String)>) -> BoxFuture<'_, bool>;
}

/// One change of a hold, or a warm-up ramp decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at: u64,
    /// quarantined, extended, probation, reinstated, drained, undrained; `warmup` for a ramp
    /// decision (cause: advanced, held, stepped-back, rewarmed).
    pub event: String,
    /// `all` or a provider.
    pub scope: String,
    pub cause: String,
    pub reason: String,
    pub evidence: String,
    /// A quarantine's end, if it ends by itself.
    pub until: Option<u64>,
}

/// What a hold change means, for the event log: `old` → `new` of one record. `None`: no event
/// (the same quarantine with more replies counted in its incident).
fn event_name(old: Option<&Hold>, new: Option<&Hold>, now: u64) -> Option<&'static str> {
    Some(match (old, new) {
        // More replies counted in the same quarantine's incident (in force or over).
        (Some(o), Some(n))
            if o.kind == HoldKind::Quarantined
                && o.replies != n.replies
                && (o.since, o.until, o.offence) == (n.since, n.until, n.offence) =>
        {
            return None;
        }
        (_, Some(h)) if h.kind == HoldKind::Drained => "drained",
        (_, Some(h)) if h.until.is_some_and(|u| u <= now) => "probation",
        // Another offence while quarantined: a longer cool-down.
        (Some(o), Some(n))
            if o.kind == HoldKind::Quarantined
                && o.in_force(now)
                && n.until.is_none_or(|u| o.until.is_some_and(|ou| u > ou)) =>
        {
            "extended"
        }
        (_, Some(_)) => "quarantined",
        (Some(h), None) if h.kind == HoldKind::Drained => "undrained",
        _ => "reinstated",
    })
}

/// Writes one event per hold change (called by the pool as it changes holds), to the farm's
/// history too with `[cluster]` (in the background; lost there, not here, if Redis is down).
pub fn hold_events(
    state: &State,
    sink: Option<Arc<dyn EventSink>>,
    changes: &[(IpAddr, Option<Hold>, Option<Hold>)],
) {
    let now = now_unix();
    let records: Vec<(String, String)> = changes
        .iter()
        .filter_map(|(ip, old, new)| {
            let h = new.as_ref().or(old.as_ref())?;
            let e = Event {
                at: now,
                event: event_name(old.as_ref(), new.as_ref(), now)?.to_string(),
                scope: h.scope.clone(),
                cause: h.cause.to_string(),
                reason: h.reason.clone(),
                evidence: h.evidence.clone(),
                until: new.as_ref().and_then(|n| n.until),
            };
            Some((ip.to_string(), serde_json::to_string(&e).ok()?))
        })
        .collect();
    store_events(state, sink, records);
}

/// One warm-up ramp decision of `ip` × `provider` (event `warmup`, cause: the decision's kind,
/// reason: its text, evidence: the day's counts), stored and shared like hold events.
pub fn warmup_event(
    state: &State,
    sink: Option<Arc<dyn EventSink>>,
    ip: IpAddr,
    provider: &str,
    kind: &str,
    text: &str,
    evidence: &str,
) {
    let e = Event {
        at: now_unix(),
        event: "warmup".into(),
        scope: provider.to_string(),
        cause: kind.to_string(),
        reason: text.to_string(),
        evidence: evidence.to_string(),
        until: None,
    };
    if let Ok(json) = serde_json::to_string(&e) {
        store_events(state, sink, vec![(ip.to_string(), json)]);
    }
}

/// Writes events (IP, JSON) here, and to the farm's history with `[cluster]` (in the
/// background; lost there, not here, if Redis is down).
pub fn store_events(
    state: &State,
    sink: Option<Arc<dyn EventSink>>,
    records: Vec<(String, String)>,
) {
    if let Err(e) = state.history_events(&records) {
        tracing::error!(error = %e, "cannot store pool history events");
    }
    if let (Some(c), Ok(rt)) = (sink, tokio::runtime::Handle::try_current()) {
        let events: Vec<(IpAddr, String)> = records
            .into_iter()
            .filter_map(|(ip, json)| Some((ip.parse().ok()?, json)))
            .collect();
        rt.spawn(async move { c.push_events(events).await });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pool::Cause;

    /// A hold for tests (reputation's history tests use it too).
    pub(crate) fn hold(kind: HoldKind, until: Option<u64>) -> Hold {
        Hold {
            kind,
            scope: "gmail".into(),
            cause: if kind == HoldKind::Drained {
                Cause::Operator
            } else {
                Cause::BlockReply
            },
            reason: "block reply".into(),
            evidence: "550 5.7.1 S3150".into(),
            since: 1,
            until,
            offence: 1,
            replies: 0,
        }
    }

    #[test]
    fn event_names() {
        let now = 100;
        let d = hold(HoldKind::Drained, None);
        let q = hold(HoldKind::Quarantined, Some(200));
        let ended = hold(HoldKind::Quarantined, Some(100));
        assert_eq!(event_name(None, Some(&d), now), Some("drained"));
        assert_eq!(event_name(Some(&d), None, now), Some("undrained"));
        assert_eq!(event_name(None, Some(&q), now), Some("quarantined"));
        assert_eq!(event_name(Some(&q), Some(&ended), now), Some("probation"));
        let longer = Hold {
            until: Some(400),
            offence: 2,
            ..q.clone()
        };
        assert_eq!(event_name(Some(&q), Some(&longer), now), Some("extended"));
        // More replies counted in the same incident: no event, least of all "extended".
        let counted = Hold {
            replies: 5,
            evidence: "…; 5 block replies in one incident".into(),
            ..q.clone()
        };
        assert_eq!(event_name(Some(&q), Some(&counted), now), None);
        // … also once it is over: not another "probation".
        let counted_after = Hold {
            replies: 6,
            ..ended.clone()
        };
        assert_eq!(event_name(Some(&ended), Some(&counted_after), now), None);
        assert_eq!(event_name(Some(&q), None, now), Some("reinstated"));
    }
}
