//! Results collected per report period, policy domain and policy: counted in memory, folded
//! into the state store by `flush` (every few seconds and at stop), so a restart keeps them.
//!
//! Each record is one RFC 8460 `policy` object (mail-auth's `Policy`: details, summary, failure
//! details) keyed `PERIOD|DOMAIN|POLICY-DETAILS-JSON`; failure details with the same fields
//! (result type, sending IP, MX host, receiving IP, reason) share one count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mail_auth::report::tlsrpt::{FailureDetails, Policy, PolicyDetails, Summary};

use super::results::{policy_type, result_type};
use crate::delivery::policy::SessionResult;
use crate::state::{State, StateError};

/// The results of one policy domain in one period, ready to report.
#[derive(Debug, Clone)]
pub struct DomainPeriod {
    /// Unix seconds of the period's start.
    pub start: u64,
    pub domain: String,
    pub policies: Vec<Policy>,
    /// The store keys these came from (removed once reported).
    pub keys: Vec<String>,
}

pub struct Collector {
    state: Option<Arc<State>>,
    /// Seconds per period (aligned on the epoch).
    interval: u64,
    pending: Mutex<HashMap<String, Policy>>,
}

impl Collector {
    pub fn new(state: Option<Arc<State>>, interval: std::time::Duration) -> Collector {
        Collector {
            state,
            interval: interval.as_secs().max(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The start of the period holding `at` (unix seconds).
    pub fn period_of(&self, at: u64) -> u64 {
        at - at % self.interval
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Counts one session at `now` (unix seconds).
    pub fn record(&self, r: &SessionResult, now: u64) {
        let details = PolicyDetails {
            policy_type: policy_type(r.policy.kind),
            policy_string: r.policy.strings.clone(),
            policy_domain: r.policy.domain.to_ascii_lowercase(),
            mx_host: r.policy.mx_patterns.clone(),
        };
        let key = format!(
            "{:012}|{}|{}",
            self.period_of(now),
            details.policy_domain,
            serde_json::to_string(&details).unwrap_or_default()
        );
        let mut one = Policy {
            policy: details,
            summary: Summary {
                total_success: 0,
                total_failure: 0,
            },
            failure_details: Vec::new(),
        };
        match r.result {
            Ok(()) => one.summary.total_success = 1,
            Err(f) => {
                one.summary.total_failure = 1;
                one.failure_details.push(FailureDetails {
                    result_type: result_type(f),
                    sending_mta_ip: r.sending_ip,
                    receiving_mx_hostname: Some(r.mx_host.clone()).filter(|h| !h.is_empty()),
                    receiving_mx_helo: None,
                    receiving_ip: r.receiving_ip,
                    failed_session_count: 1,
                    additional_information: None,
                    failure_reason_code: None,
                });
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get_mut(&key) {
            Some(p) => add(p, &one),
            None => {
                pending.insert(key, one);
            }
        }
    }

    /// Folds what was counted since the last flush into the state store (blocking: it commits).
    pub fn flush(&self) -> Result<(), StateError> {
        let batch: Vec<(String, Policy)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let Some(state) = &self.state else {
            // No store (unit tests): keep counting in memory.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, p) in batch {
                merge_into(&mut pending, k, p);
            }
            return Ok(());
        };
        let entries: Vec<(String, String)> = batch
            .iter()
            .map(|(k, p)| (k.clone(), serde_json::to_string(p).unwrap_or_default()))
            .collect();
        let result = state.tls_reports_merge(&entries, |old, new| {
            match (
                serde_json::from_str::<Policy>(old),
                serde_json::from_str::<Policy>(new),
            ) {
                (Ok(mut o), Ok(n)) => {
                    add(&mut o, &n);
                    serde_json::to_string(&o).unwrap_or_else(|_| new.to_string())
                }
                _ => new.to_string(),
            }
        });
        if result.is_err() {
            // Not lost: counted again at the next flush.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, p) in batch {
                merge_into(&mut pending, k, p);
            }
        }
        result
    }

    /// Every stored period that started before `before` (all when `None`), flushed first,
    /// grouped per period and domain, oldest first.
    pub fn collected(&self, before: Option<u64>) -> Result<Vec<DomainPeriod>, StateError> {
        self.flush()?;
        let records: Vec<(String, Policy)> = match &self.state {
            Some(state) => state
                .tls_reports_load()?
                .into_iter()
                .filter_map(|(k, v)| {
                    let p = serde_json::from_str(&v).ok();
                    if p.is_none() {
                        tracing::warn!(key = %k, "tls-reports: unreadable record dropped");
                    }
                    Some((k, p?))
                })
                .collect(),
            None => {
                let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                pending
                    .iter()
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect()
            }
        };
        let mut groups: std::collections::BTreeMap<(u64, String), DomainPeriod> =
            Default::default();
        for (key, policy) in records {
            let mut parts = key.splitn(3, '|');
            let (Some(Ok(start)), Some(domain)) =
                (parts.next().map(str::parse::<u64>), parts.next())
            else {
                continue;
            };
            if before.is_some_and(|b| start >= b) {
                continue;
            }
            let g = groups
                .entry((start, domain.to_string()))
                .or_insert_with(|| DomainPeriod {
                    start,
                    domain: domain.to_string(),
                    policies: Vec::new(),
                    keys: Vec::new(),
                });
            g.policies.push(policy);
            g.keys.push(key);
        }
        Ok(groups.into_values().collect())
    }

    /// Forgets reported records.
    pub fn forget(&self, keys: &[String]) -> Result<(), StateError> {
        match &self.state {
            Some(state) => state.tls_reports_remove(keys),
            None => {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for k in keys {
                    pending.remove(k);
                }
                Ok(())
            }
        }
    }
}

fn merge_into(map: &mut HashMap<String, Policy>, key: String, p: Policy) {
    match map.get_mut(&key) {
        Some(old) => add(old, &p),
        None => {
            map.insert(key, p);
        }
    }
}

/// Adds `more`'s counts to `to` (same policy).
fn add(to: &mut Policy, more: &Policy) {
    to.summary.total_success = to
        .summary
        .total_success
        .saturating_add(more.summary.total_success);
    to.summary.total_failure = to
        .summary
        .total_failure
        .saturating_add(more.summary.total_failure);
    for f in &more.failure_details {
        let same = to.failure_details.iter_mut().find(|d| {
            d.result_type == f.result_type
                && d.sending_mta_ip == f.sending_mta_ip
                && d.receiving_mx_hostname == f.receiving_mx_hostname
                && d.receiving_ip == f.receiving_ip
                && d.failure_reason_code == f.failure_reason_code
        });
        match same {
            Some(d) => {
                d.failed_session_count = d
                    .failed_session_count
                    .saturating_add(f.failed_session_count)
            }
            None => to.failure_details.push(f.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::policy::{PolicyKind, ReportPolicy, TlsFailure};
    use mail_auth::report::tlsrpt::ResultType;

    fn result(domain: &str, fail: Option<TlsFailure>) -> SessionResult {
        SessionResult {
            policy: Arc::new(ReportPolicy {
                domain: domain.into(),
                kind: PolicyKind::Sts,
                strings: vec!["version: STSv1".into(), "mode: enforce".into()],
                mx_patterns: vec!["mx.d.test".into()],
            }),
            sending_ip: Some("127.0.0.10".parse().unwrap()),
            mx_host: "mx.d.test".into(),
            receiving_ip: Some("127.0.0.20".parse().unwrap()),
            result: match fail {
                None => Ok(()),
                Some(t) => Err(t),
            },
        }
    }

    #[test]
    fn counts_per_period_domain_and_failure_and_survive_a_reopen() {
        let dir = crate::util::test_dir::tempdir("tlsrpt").join("data");
        let day = std::time::Duration::from_secs(86_400);
        {
            let state = Arc::new(State::open(&dir).unwrap());
            let c = Collector::new(Some(state), day);
            let t = 86_400 * 20_000 + 5;
            c.record(&result("d.test", None), t);
            c.record(&result("d.test", None), t + 1);
            c.flush().unwrap();
            c.record(
                &result("D.test", Some(TlsFailure::CertificateExpired)),
                t + 2,
            );
            c.record(
                &result("d.test", Some(TlsFailure::CertificateExpired)),
                t + 3,
            );
            c.record(
                &result("d.test", Some(TlsFailure::StarttlsNotSupported)),
                t + 4,
            );
            // The next day is another period.
            c.record(&result("d.test", None), t + 86_400);
            c.flush().unwrap();
        }
        let state = Arc::new(State::open(&dir).unwrap());
        let c = Collector::new(Some(state), day);
        let all = c.collected(None).unwrap();
        assert_eq!(all.len(), 2);
        let first = &all[0];
        assert_eq!(
            (first.start, first.domain.as_str()),
            (86_400 * 20_000, "d.test")
        );
        assert_eq!(first.policies.len(), 1);
        let p = &first.policies[0];
        assert_eq!((p.summary.total_success, p.summary.total_failure), (2, 3));
        let count = |t: ResultType| {
            p.failure_details
                .iter()
                .find(|d| d.result_type == t)
                .map(|d| d.failed_session_count)
        };
        assert_eq!(count(ResultType::CertificateExpired), Some(2));
        assert_eq!(count(ResultType::StartTlsNotSupported), Some(1));
        // Only periods over.
        let due = c.collected(Some(86_400 * 20_001)).unwrap();
        assert_eq!(due.len(), 1);
        c.forget(&due[0].keys).unwrap();
        assert_eq!(c.collected(None).unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
