//! Pool state in the redb store: counters per IP × provider (`ipp|IP|PROVIDER`, written by
//! `flush` once a second) and hold records (`hold|IP|SCOPE|CAUSE`, written at once; incident
//! counts by `flush` too).
//! Records of the one-hold-per-scope layout (`hold|IP|SCOPE`) are read with a cause derived
//! from their kind and reason, and rewritten under the new key.

use std::net::IpAddr;

use super::holds::{Cause, Hold, HoldKey, HoldKind};
use super::pools::{Inner, Key, Pools};
use super::throttle::Counters;
use crate::state::{State, StateError};

/// The pool's records could not be read from or written to the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    State(#[from] StateError),
}

fn counter_key(ip: IpAddr, provider: &str) -> String {
    format!("ipp|{ip}|{provider}")
}

fn hold_key(k: &HoldKey) -> String {
    format!("hold|{}|{}|{}", k.0, k.1, k.2)
}

/// The cause of a hold stored before holds had one.
fn legacy_cause(v: &serde_json::Value) -> Option<Cause> {
    let kind: HoldKind = serde_json::from_value(v.get("kind")?.clone()).ok()?;
    let reason = v.get("reason").and_then(|r| r.as_str()).unwrap_or("");
    let evidence = v.get("evidence").and_then(|r| r.as_str()).unwrap_or("");
    Some(match (kind, reason) {
        (HoldKind::Drained, _) => Cause::Operator,
        (_, "dnsbl listing") => Cause::Dnsbl(evidence.split(' ').next()?.to_string()),
        (_, "hard-bounce rate") => Cause::BounceRate,
        (_, "deferral rate") => Cause::DeferralRate,
        _ => Cause::BlockReply,
    })
}

pub(super) fn load(st: &State) -> Result<Inner, StoreError> {
    let mut inner = Inner::default();
    let mut rewrite = Vec::new();
    for (k, v) in st.pool_load()? {
        let mut parts = k.splitn(3, '|');
        let (Some(kind), Some(ip), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(ip) = ip.parse::<IpAddr>() else {
            continue;
        };
        match kind {
            "ipp" => {
                if let Ok(c) = serde_json::from_str::<Counters>(&v) {
                    inner.counters.insert((ip, rest.to_string()), c);
                }
            }
            "hold" => {
                let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&v) else {
                    continue;
                };
                if json.get("cause").is_none() {
                    let Some(cause) = legacy_cause(&json) else {
                        continue;
                    };
                    json["cause"] = serde_json::Value::String(cause.to_string());
                    rewrite.push((k.clone(), None));
                }
                let Ok(h) = serde_json::from_value::<Hold>(json) else {
                    continue;
                };
                let key = (ip, h.scope.clone(), h.cause.clone());
                if !k.ends_with(&format!("|{}", h.cause)) {
                    rewrite.push((hold_key(&key), Some(hold_json(&h))));
                }
                inner.holds.insert(key, h);
            }
            _ => {}
        }
    }
    if !rewrite.is_empty() {
        st.pool_write(&rewrite)?;
    }
    for ((ip, scope, cause), h) in &inner.holds {
        tracing::info!(source_ip = %ip, scope = %scope, cause = %cause, kind = ?h.kind, reason = %h.reason, "pool IP held (from the state store)");
    }
    Ok(inner)
}

fn hold_json(h: &Hold) -> String {
    serde_json::to_string(h).expect("hold serialises")
}

impl Pools {
    pub(super) fn store_holds(
        &self,
        changes: &[(HoldKey, Option<Hold>)],
    ) -> Result<(), StoreError> {
        let Some(st) = &self.state else {
            return Ok(());
        };
        let records: Vec<(String, Option<String>)> = changes
            .iter()
            .map(|(k, h)| (hold_key(k), h.as_ref().map(hold_json)))
            .collect();
        Ok(st.pool_write(&records)?)
    }

    /// Writes changed counters and incident counts (`flush_counts`) to the store.
    pub fn flush(&self) {
        if let Err(e) = self.flush_counts() {
            tracing::error!(error = %e, "cannot save incident counts");
        }
        let Some(st) = &self.state else { return };
        let records: Vec<(String, Option<String>)> = {
            let mut inner = self.lock();
            let dirty: Vec<Key> = inner.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|k| {
                    let c = inner.counters.get(&k)?;
                    Some((
                        counter_key(k.0, &k.1),
                        Some(serde_json::to_string(c).expect("counters serialise")),
                    ))
                })
                .collect()
        };
        if records.is_empty() {
            return;
        }
        if let Err(e) = st.pool_write(&records) {
            tracing::error!(error = %e, "cannot save pool counters");
        }
    }
}
