//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy fetched over HTTPS, its cache, and
//! which MX hosts it allows.
//!
//! Rules (§3, §5.1):
//! - A domain in Unicode (SMTPUTF8) is looked up, fetched, cached and reported under its
//!   A-labels (`xn--…`), as is every domain.
//! - `_mta-sts.DOMAIN` TXT: of the records starting `v=STSv1`, exactly one must parse (else as
//!   if there were none); its `id` names the policy version.
//! - A cached policy still within its `max_age` (capped at one year) and fetched under the same
//!   `id` is used as is; a new `id` (or none cached) fetches the policy.
//! - A failed fetch, no TXT record, or a DNS failure keep a cached unexpired policy; without
//!   one the domain has no policy (the fetch failure is reported, delivery goes on).
//! - One fetch per domain at a time (later lookups wait for it, bounded by `fetch_timeout`);
//!   domains never wait for each other. A failed fetch is not repeated within `RETRY_FAILED`
//!   for the same `id`.
//! - Policies persist in the state store, so a restart keeps them; with `[cluster]` they are
//!   shared through Redis too (`PREFIX:mta-sts:DOMAIN`, expiring with the policy): a relay
//!   whose cache lacks the TXT's `id` takes the farm's copy before fetching, and publishes
//!   what it fetches. Redis down: each relay fetches for itself.

mod fetch;
mod parse;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use mail_auth::common::parse::TxtRecordParser;
use serde::{Deserialize, Serialize};

pub use fetch::{FetchError, PolicyFetchError};
pub use parse::{MAX_AGE_LIMIT, Mode, Policy, PolicyError};

use super::{PolicyKind, ReportPolicy, TlsFailure};
use crate::delivery::settings::MtaSts as StsSettings;
use crate::spool::now_unix;
use crate::state::State;

/// How long a failed fetch (same `id`, nothing cached) is not tried again.
const RETRY_FAILED: Duration = Duration::from_secs(60);
/// Domains in the in-memory cache past which empty entries are dropped.
const PRUNE_AT: usize = 4096;

/// A domain's policy in force.
#[derive(Debug, Clone)]
pub struct Active {
    /// The TXT record's `id` the policy was fetched under.
    pub id: String,
    pub policy: Policy,
    pub report: Arc<ReportPolicy>,
}

impl Active {
    pub fn new(domain: &str, id: String, policy: Policy) -> Active {
        let report = Arc::new(ReportPolicy {
            domain: domain.to_string(),
            kind: PolicyKind::Sts,
            strings: policy.lines.clone(),
            mx_patterns: policy.mx.clone(),
        });
        Active { id, policy, report }
    }
}

/// What the MTA-STS lookup of one domain found.
#[derive(Debug, Clone)]
pub enum Found {
    /// No `_mta-sts` record and no cached policy.
    None,
    Policy(Arc<Active>),
    /// A TXT record but no usable policy, none cached: delivery goes on without one
    /// (RFC 8461 §5), the failure is reported.
    Failed(TlsFailure, String),
}

/// A cached policy as the state store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    policy: Policy,
    fetched_at: u64,
}

impl Stored {
    fn expires_at(&self) -> u64 {
        self.fetched_at + self.policy.max_age.min(MAX_AGE_LIMIT)
    }
}

/// One domain's cache slot; its lock is held across that domain's fetch only.
#[derive(Default)]
struct Slot {
    /// The state store was read for this domain.
    loaded: bool,
    cached: Option<(Stored, Arc<Active>)>,
    /// A fetch that failed: (id, not again before, why).
    failed: Option<(String, u64, TlsFailure, String)>,
}

/// The farm's shared copy of the policies (`[cluster]`, implemented by `cluster`): each
/// domain's stored policy as JSON, expiring with the policy.
pub trait PolicyFarm: Send + Sync {
    /// The farm's copy for `domain`; `None`: none, or Redis did not answer.
    fn get_policy<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Option<String>>;
    /// Publishes `json` for `domain`, kept `ttl` seconds.
    fn put_policy<'a>(&'a self, domain: &'a str, json: String, ttl: u64) -> BoxFuture<'a, ()>;
}

/// The MTA-STS lookups and their cache.
pub struct MtaSts {
    enabled: bool,
    fetcher: fetch::Fetcher,
    state: Option<Arc<State>>,
    /// The farm (`[cluster]`), handed while built; `None` = this relay alone.
    farm: Option<Arc<dyn PolicyFarm>>,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl MtaSts {
    pub fn new(
        s: &StsSettings,
        connector: Option<tokio_rustls::TlsConnector>,
        state: Option<Arc<State>>,
    ) -> MtaSts {
        MtaSts {
            enabled: s.enabled,
            fetcher: fetch::Fetcher {
                connector,
                port: s.https_port,
                timeout: s.fetch_timeout.0,
            },
            state,
            farm: None,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Shares policies with the other relays of `farm` (`[cluster]`).
    pub fn sharing(mut self, farm: Option<Arc<dyn PolicyFarm>>) -> MtaSts {
        self.farm = farm;
        self
    }

    /// The policy for `domain`; see the rules at the top of this file.
    pub async fn lookup(&self, domain: &str, resolver: &TokioResolver) -> Found {
        if !self.enabled {
            return Found::None;
        }
        let domain = a_label(domain);
        let record = txt_id(&domain, resolver).await;
        let slot = self.slot(&domain);
        let mut slot = slot.lock().await;
        let now = now_unix();
        if !slot.loaded {
            slot.cached = self.load(&domain);
            slot.loaded = true;
        }
        if slot
            .cached
            .as_ref()
            .is_some_and(|(s, _)| s.expires_at() <= now)
        {
            slot.cached = None;
        }
        let cached = slot.cached.as_ref().map(|(s, a)| (s.id.clone(), a.clone()));
        let Some(id) = record else {
            return cached.map_or(Found::None, |(_, a)| Found::Policy(a));
        };
        if let Some((cached_id, a)) = &cached
            && *cached_id == id
        {
            return Found::Policy(a.clone());
        }
        if let Some(stored) = self.farm_get(&domain).await
            && stored.id == id
            && stored.expires_at() > now
        {
            tracing::debug!(domain = %domain, id = %id, "MTA-STS policy taken from the farm");
            self.save(&domain, &stored);
            let active = Arc::new(Active::new(&domain, id, stored.policy.clone()));
            slot.cached = Some((stored, active.clone()));
            return Found::Policy(active);
        }
        if let Some((failed_id, until, f, why)) = &slot.failed
            && *failed_id == id
            && now < *until
        {
            return match cached {
                Some((_, a)) => Found::Policy(a),
                None => Found::Failed(*f, why.clone()),
            };
        }
        self.fetch_into(&mut slot, &domain, id, cached.map(|(_, a)| a), resolver)
            .await
    }

    /// Fetches the policy under TXT `id` into `slot`; on failure `cached` stays in force.
    async fn fetch_into(
        &self,
        slot: &mut Slot,
        domain: &str,
        id: String,
        cached: Option<Arc<Active>>,
        resolver: &TokioResolver,
    ) -> Found {
        let now = now_unix();
        match self.fetcher.fetch(domain, resolver).await {
            Ok(policy) => {
                tracing::info!(domain = %domain, id = %id, mode = policy.mode.as_str(), max_age = policy.max_age, "MTA-STS policy fetched");
                let stored = Stored {
                    id: id.clone(),
                    policy: policy.clone(),
                    fetched_at: now,
                };
                self.save(domain, &stored);
                self.farm_put(domain, &stored).await;
                let active = Arc::new(Active::new(domain, id, policy));
                slot.cached = Some((stored, active.clone()));
                slot.failed = None;
                Found::Policy(active)
            }
            Err(e) => {
                let (f, why) = (e.failure(), e.to_string());
                let until = now + RETRY_FAILED.as_secs();
                slot.failed = Some((id.clone(), until, f, why.clone()));
                match cached {
                    Some(a) => {
                        tracing::warn!(domain = %domain, id = %id, tls_failure = %f, error = %why, "MTA-STS policy fetch failed, keeping the cached policy");
                        Found::Policy(a)
                    }
                    None => {
                        tracing::warn!(domain = %domain, id = %id, tls_failure = %f, error = %why, "MTA-STS policy fetch failed, delivering as without a policy");
                        Found::Failed(f, why)
                    }
                }
            }
        }
    }

    /// Fetches and parses the policy of `domain` now, past the cache (the doctor).
    pub async fn fetch_now(
        &self,
        domain: &str,
        resolver: &TokioResolver,
    ) -> Result<Policy, FetchError> {
        self.fetcher.fetch(domain, resolver).await
    }

    fn slot(&self, domain: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().expect("lock");
        if slots.len() >= PRUNE_AT && !slots.contains_key(domain) {
            // Domains without a policy leave empty slots: drop those nobody holds.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock()
                        .map_or(true, |g| g.cached.is_some() || g.failed.is_some())
            });
        }
        slots.entry(domain.to_string()).or_default().clone()
    }

    async fn farm_get(&self, domain: &str) -> Option<Stored> {
        let json = self.farm.as_ref()?.get_policy(domain).await?;
        serde_json::from_str(&json).ok()
    }

    async fn farm_put(&self, domain: &str, stored: &Stored) {
        let Some(farm) = &self.farm else { return };
        let json = serde_json::to_string(stored).expect("serializable");
        let ttl = stored.expires_at().saturating_sub(now_unix()).max(1);
        farm.put_policy(domain, json, ttl).await;
    }

    fn load(&self, domain: &str) -> Option<(Stored, Arc<Active>)> {
        let json = self.state.as_ref()?.mta_sts_get(domain).ok()??;
        let stored: Stored = serde_json::from_str(&json).ok()?;
        let active = Arc::new(Active::new(
            domain,
            stored.id.clone(),
            stored.policy.clone(),
        ));
        Some((stored, active))
    }

    fn save(&self, domain: &str, stored: &Stored) {
        let Some(state) = &self.state else { return };
        let json = serde_json::to_string(stored).expect("serializable");
        if let Err(e) = state.mta_sts_put(domain, &json) {
            tracing::warn!(domain = %domain, error = %e, "cannot store the MTA-STS policy");
        }
    }
}

/// The domain as A-labels, lowercased, without a final dot (`Bücher.example.` →
/// `xn--bcher-kva.example`): the form DNS, the `mta-sts.` host's certificate, the cache, Redis
/// and TLS-RPT all use. A name IDNA refuses stays lowercased as it was.
pub fn a_label(domain: &str) -> String {
    let domain = domain.trim_end_matches('.');
    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// The `id` of the domain's `_mta-sts` TXT record: None when there is no single valid one
/// (or DNS failed).
pub async fn txt_id(domain: &str, resolver: &TokioResolver) -> Option<String> {
    let name = format!("_mta-sts.{domain}.");
    let lookup = match resolver.txt_lookup(name.as_str()).await {
        Ok(l) => l,
        Err(e) => {
            if !e.is_nx_domain() && !e.is_no_records_found() {
                tracing::debug!(domain = %domain, error = %e, "MTA-STS TXT lookup failed");
            }
            return None;
        }
    };
    let records: Vec<Vec<u8>> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.concat()),
            _ => None,
        })
        .filter(|t| t.starts_with(b"v=STSv1"))
        .collect();
    let [record] = records.as_slice() else {
        return None;
    };
    mail_auth::mta_sts::MtaSts::parse(record).ok().map(|r| r.id)
}
