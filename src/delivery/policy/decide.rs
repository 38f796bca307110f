//! The decision per destination domain, then per MX host, in the order of the rules in
//! `policy/mod.rs`: route, DANE, MTA-STS, opportunistic.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::dane::{Dane, Outcome};
use super::mta_sts::{self, Found, Mode, MtaSts};
use super::{
    Applied, HostPolicy, NoResults, PolicyKind, Refusal, ReportPolicy, Requirement, SessionResult,
    TlsFailure, TlsResults,
};
use crate::config::{Config, TlsPolicy};
use crate::routing::Destination;

/// What holds for a whole destination domain before its MX hosts are looked at.
#[derive(Debug, Clone)]
pub struct DomainPolicy {
    /// The recipient domain (TLS-RPT `policy-domain`).
    pub domain: String,
    /// A static setting decides every host (route, `[delivery] tls`, address literal).
    pub fixed: Option<TlsPolicy>,
    /// The MTA-STS policy in force, if any.
    pub sts: Option<Arc<mta_sts::Active>>,
    /// The MTA-STS policy could not be had (none cached): reported, delivery goes on.
    pub sts_failure: Option<(TlsFailure, String)>,
}

impl DomainPolicy {
    /// Recipients of domains sharing a destination go in one transaction only when neither
    /// has a policy of its own: `Some(domain)` keeps this domain's recipients apart.
    pub fn own_group(&self) -> Option<&str> {
        self.sts.as_ref().map(|_| self.domain.as_str())
    }
}

/// The TLS policy service the `Deliverer` holds.
pub struct Policies {
    dane: Dane,
    sts: MtaSts,
    results: ArcSwap<Box<dyn TlsResults>>,
}

impl Policies {
    pub fn new(config: &Config) -> Result<Policies, String> {
        Ok(Policies {
            dane: Dane::new(config)?,
            sts: MtaSts::new(config)?,
            results: ArcSwap::from_pointee(Box::new(NoResults)),
        })
    }

    /// Where session results go from now on (TLS-RPT).
    pub fn set_results(&self, sink: Box<dyn TlsResults>) {
        self.results.store(Arc::new(sink));
    }

    pub fn dane(&self) -> &Dane {
        &self.dane
    }

    /// The policy of `domain`, whose recipients go to `dest`.
    pub async fn for_domain(&self, domain: &str, dest: &Destination) -> DomainPolicy {
        let mut p = DomainPolicy {
            domain: domain.to_string(),
            fixed: None,
            sts: None,
            sts_failure: None,
        };
        if dest.static_tls || dest.tls != TlsPolicy::Opportunistic {
            p.fixed = Some(dest.tls);
            return p;
        }
        match self.sts.lookup(domain).await {
            Found::None => {}
            Found::Policy(a) => p.sts = Some(a),
            Found::Failed(f, why) => {
                // No session is about this: reported once per lookup, without an MX host.
                self.record(SessionResult {
                    policy: Arc::new(ReportPolicy {
                        domain: domain.to_string(),
                        kind: PolicyKind::Sts,
                        strings: Vec::new(),
                        mx_patterns: Vec::new(),
                    }),
                    mx_host: String::new(),
                    receiving_ip: None,
                    sending_ip: None,
                    result: Err(f),
                });
                p.sts_failure = Some((f, why));
            }
        }
        p
    }

    /// The policy for one MX host of the domain.
    pub async fn for_host(&self, domain: &DomainPolicy, mx: &str) -> HostPolicy {
        if let Some(tls) = domain.fixed {
            return HostPolicy {
                applied: Applied::Route,
                requirement: match tls {
                    TlsPolicy::None => Requirement::Plain,
                    TlsPolicy::Opportunistic => Requirement::Opportunistic,
                    TlsPolicy::Required => Requirement::WebPki,
                },
                report_only: false,
                report: None,
            };
        }
        let dane_report = || {
            Some(Arc::new(ReportPolicy {
                domain: domain.domain.clone(),
                kind: PolicyKind::Tlsa,
                strings: Vec::new(),
                mx_patterns: Vec::new(),
            }))
        };
        let refused = |reason: String| HostPolicy {
            applied: Applied::Dane,
            requirement: Requirement::Refuse(Refusal {
                failure: TlsFailure::DnssecInvalid,
                reason,
            }),
            report_only: false,
            report: dane_report(),
        };
        let unusable = match self.dane.lookup(mx).await {
            Outcome::Usable(tlsa) => {
                return HostPolicy {
                    applied: Applied::Dane,
                    requirement: Requirement::Dane(tlsa),
                    report_only: false,
                    report: dane_report(),
                };
            }
            Outcome::Bogus(why) => {
                return refused(format!("DANE: TLSA lookup bogus for {mx}: {why}"));
            }
            // Unknown is not insecure: a lookup an attacker can make fail must not downgrade.
            Outcome::Failed(why) => {
                return refused(format!("DANE: TLSA lookup failed for {mx}: {why}"));
            }
            Outcome::Unusable => true,
            Outcome::Insecure | Outcome::Absent => false,
        };
        let policy = sts_host(domain, mx);
        // RFC 7672 §2.2: secure TLSA records, none usable: TLS stays mandatory, unverified.
        if unusable && matches!(policy.requirement, Requirement::Opportunistic) {
            return HostPolicy {
                applied: Applied::Dane,
                requirement: Requirement::Encrypted,
                report_only: false,
                report: dane_report(),
            };
        }
        policy
    }

    /// Reports one session result (or refusal) of `mx` under its policy; no-op without one.
    pub fn report(
        &self,
        policy: &HostPolicy,
        mx: &str,
        receiving_ip: Option<IpAddr>,
        sending_ip: Option<IpAddr>,
        result: Result<(), TlsFailure>,
    ) {
        let Some(report) = &policy.report else {
            return;
        };
        self.record(SessionResult {
            policy: report.clone(),
            mx_host: mx.to_string(),
            receiving_ip,
            sending_ip,
            result,
        });
    }

    fn record(&self, r: SessionResult) {
        let result = r.result.err().map_or("success", TlsFailure::as_str);
        tracing::debug!(policy_domain = %r.policy.domain, mx = %r.mx_host, result, "TLS session result");
        self.results.load().record(r);
    }
}

/// The MTA-STS policy for one MX host of the domain (opportunistic without one).
fn sts_host(domain: &DomainPolicy, mx: &str) -> HostPolicy {
    let Some(sts) = &domain.sts else {
        return HostPolicy::opportunistic();
    };
    let report = Some(sts.report.clone());
    match sts.policy.mode {
        Mode::Enforce if sts.policy.allows(mx) => HostPolicy {
            applied: Applied::MtaSts,
            requirement: Requirement::WebPki,
            report_only: false,
            report,
        },
        Mode::Enforce => HostPolicy {
            applied: Applied::MtaSts,
            requirement: Requirement::Refuse(Refusal {
                failure: TlsFailure::ValidationFailure,
                reason: format!(
                    "MTA-STS: {mx} is not an MX host allowed by the policy of {}",
                    domain.domain
                ),
            }),
            report_only: false,
            report,
        },
        Mode::Testing => HostPolicy {
            applied: Applied::MtaSts,
            requirement: Requirement::Opportunistic,
            report_only: true,
            report,
        },
        Mode::None => HostPolicy::opportunistic(),
    }
}
