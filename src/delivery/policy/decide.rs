//! The decision per destination domain, then per MX host, in the order of the rules in
//! `policy/mod.rs`: route, DANE, MTA-STS, opportunistic. With DANE on, the domain's MX RRset
//! is looked up validated too: DANE on a host from an insecure MX RRset does not override an
//! MTA-STS refusal (RFC 7672 §2.2.1).

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::dane::{Dane, DaneError, Outcome, Security};
use super::mta_sts::{self, Found, Mode, MtaSts};
use super::{
    Applied, HostPolicy, MxCheck, NoResults, PolicyKind, Refusal, ReportPolicy, Requirement,
    SessionResult, TlsFailure, TlsResults,
};
use crate::delivery::settings::Delivery;
use crate::routing::Destination;
use crate::routing::{Dns, TlsPolicy};
use crate::state::State;
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RecordType;
use tokio_rustls::TlsConnector;

/// What holds for a whole destination domain before its MX hosts are looked at.
#[derive(Debug, Clone)]
pub struct DomainPolicy {
    /// The recipient domain (TLS-RPT `policy-domain`).
    pub domain: String,
    /// A static setting decides every host (route, address literal, `[delivery] tls = "none"`).
    pub fixed: Option<TlsPolicy>,
    /// `[delivery] tls = "required"` for an MX destination: a floor under DANE and MTA-STS
    /// (web PKI at least); their refusals still apply.
    pub tls_floor: bool,
    /// The MTA-STS policy in force, if any.
    pub sts: Option<Arc<mta_sts::Active>>,
    /// The MTA-STS policy could not be had (none cached): reported, delivery goes on.
    pub sts_failure: Option<(TlsFailure, String)>,
    /// The domain's MX RRset is DNSSEC-secure (or securely denied): its MX host names are the
    /// domain's own. Looked up only with DANE on; false when unknown.
    pub mx_secure: bool,
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
    /// `verifying`: the web PKI connector (policy fetches use it); `state`: where MTA-STS
    /// policies persist.
    pub fn new(
        delivery: &Delivery,
        dns: &Dns,
        verifying: Option<TlsConnector>,
        state: Option<Arc<State>>,
    ) -> Result<Policies, DaneError> {
        Ok(Policies {
            dane: Dane::with(&dns.nameservers, &delivery.dane)?,
            sts: MtaSts::new(&delivery.mta_sts, verifying, state),
            results: ArcSwap::from_pointee(Box::new(NoResults)),
        })
    }

    /// Where session results go from now on (TLS-RPT).
    pub fn set_results(&self, sink: Box<dyn TlsResults>) {
        self.results.store(Arc::new(sink));
    }

    /// Shares MTA-STS policies with `farm` (`[cluster]`), handed while built.
    pub fn sharing(mut self, farm: Option<Arc<dyn super::mta_sts::PolicyFarm>>) -> Policies {
        self.sts = self.sts.sharing(farm);
        self
    }

    pub fn dane(&self) -> &Dane {
        &self.dane
    }

    /// The policy of `domain`, whose recipients go to `dest` (`resolver`: delivery's).
    pub async fn for_domain(
        &self,
        domain: &str,
        dest: &Destination,
        resolver: &TokioResolver,
    ) -> DomainPolicy {
        // A Unicode (SMTPUTF8) domain's policy lives under its A-labels: TLS-RPT too.
        let domain = &mta_sts::a_label(domain);
        let mut p = DomainPolicy {
            domain: domain.to_string(),
            fixed: None,
            tls_floor: false,
            sts: None,
            sts_failure: None,
            mx_secure: false,
        };
        if dest.static_tls || dest.tls == TlsPolicy::None {
            p.fixed = Some(dest.tls);
            return p;
        }
        p.tls_floor = dest.tls == TlsPolicy::Required;
        match self.sts.lookup(domain, resolver).await {
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
        if self.dane.enabled() {
            let name = format!("{}.", domain.trim_end_matches('.'));
            p.mx_secure = matches!(
                self.dane.security(&name, RecordType::MX).await,
                Security::Secure(_) | Security::Denied
            );
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
                mx_check: MxCheck::Passed,
                tls_floor: false,
            };
        }
        let dane = self.dane.lookup(mx).await;
        let mut p = host_policy(domain, mx, &dane);
        p.tls_floor = domain.tls_floor;
        if domain.tls_floor
            && matches!(
                p.requirement,
                Requirement::Opportunistic | Requirement::Encrypted
            )
        {
            raise_to_floor(&mut p);
        }
        p
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
        tracing::debug!(policy_domain = %r.policy.domain, mx = %r.mx_host, result = %result, "TLS session result");
        self.results.load().record(r);
    }
}

/// `[delivery] tls = "required"` where no policy asks as much: web PKI, decided as a route
/// (`tls_policy=route`). The host's name stays as vouched for as it was (`mx_check`): the
/// global setting alone does not make it good enough for REQUIRETLS.
pub(super) fn raise_to_floor(p: &mut HostPolicy) {
    p.applied = Applied::Route;
    p.requirement = Requirement::WebPki;
    p.report_only = false;
}

/// DANE, then MTA-STS, for one MX host whose TLSA lookup gave `dane`.
fn host_policy(domain: &DomainPolicy, mx: &str, dane: &Outcome) -> HostPolicy {
    let policy = sts_host(domain, mx);
    if let Some(mut decided) = dane_policy(domain, mx, dane) {
        if domain.mx_secure || !matches!(decided.requirement, Requirement::Dane(_)) {
            return decided;
        }
        // RFC 7672 §2.2.1: an insecure MX RRset may be spoofed to a host with TLSA records of
        // its own; DANE is used, but the MTA-STS policy still decides which hosts may be used,
        // and whether the name is vouched for (REQUIRETLS).
        if matches!(policy.requirement, Requirement::Refuse(_)) {
            return policy;
        }
        decided.mx_check = policy.mx_check;
        return decided;
    }
    // RFC 7672 §2.2: secure TLSA records, none usable: TLS stays mandatory, unverified.
    if *dane == Outcome::Unusable && matches!(policy.requirement, Requirement::Opportunistic) {
        return HostPolicy {
            applied: Applied::Dane,
            requirement: Requirement::Encrypted,
            report_only: false,
            report: tlsa_report(domain),
            mx_check: policy.mx_check,
            tls_floor: false,
        };
    }
    policy
}

/// DANE's decision for `mx` when it makes one: usable records, or a lookup that failed.
fn dane_policy(domain: &DomainPolicy, mx: &str, dane: &Outcome) -> Option<HostPolicy> {
    let refuse = |reason: String| {
        Requirement::Refuse(Refusal {
            failure: TlsFailure::DnssecInvalid,
            reason,
        })
    };
    let requirement = match dane {
        Outcome::Usable(tlsa) => Requirement::Dane(tlsa.clone()),
        Outcome::Bogus(why) => refuse(format!("DANE: TLSA lookup bogus for {mx}: {why}")),
        // Unknown is not insecure: a lookup an attacker can make fail must not downgrade.
        Outcome::Failed(why) => refuse(format!("DANE: TLSA lookup failed for {mx}: {why}")),
        Outcome::Unusable | Outcome::Insecure | Outcome::Absent => return None,
    };
    Some(HostPolicy {
        applied: Applied::Dane,
        requirement,
        report_only: false,
        report: tlsa_report(domain),
        mx_check: MxCheck::Passed,
        tls_floor: false,
    })
}

/// Results under DANE are reported as the domain's `tlsa` policy (RFC 8460).
fn tlsa_report(domain: &DomainPolicy) -> Option<Arc<ReportPolicy>> {
    Some(Arc::new(ReportPolicy {
        domain: domain.domain.clone(),
        kind: PolicyKind::Tlsa,
        strings: Vec::new(),
        mx_patterns: Vec::new(),
    }))
}

/// The MTA-STS policy for one MX host of the domain (opportunistic without one).
fn sts_host(domain: &DomainPolicy, mx: &str) -> HostPolicy {
    let Some(sts) = &domain.sts else {
        let mut p = HostPolicy::opportunistic();
        if let Some((failure, why)) = &domain.sts_failure {
            // RFC 8461 §5 delivers on; REQUIRETLS waits for the policy (RFC 8689 §4.2.1).
            p.mx_check = MxCheck::Refused(Refusal {
                failure: *failure,
                reason: format!(
                    "MTA-STS: the policy of {} could not be fetched: {why}",
                    domain.domain
                ),
            });
        }
        return p;
    };
    if sts.policy.mode == Mode::None {
        return HostPolicy::opportunistic();
    }
    let report = Some(sts.report.clone());
    let mx_check = if sts.policy.allows(mx) {
        MxCheck::Passed
    } else {
        MxCheck::Refused(Refusal {
            failure: TlsFailure::ValidationFailure,
            reason: format!(
                "MTA-STS: {mx} is not an MX host allowed by the policy of {}",
                domain.domain
            ),
        })
    };
    let (requirement, report_only) = match (&sts.policy.mode, &mx_check) {
        (Mode::Enforce, MxCheck::Refused(r)) => (Requirement::Refuse(r.clone()), false),
        (Mode::Enforce, _) => (Requirement::WebPki, false),
        // `testing`: reported only; whether the host matched is kept for REQUIRETLS.
        _ => (Requirement::Opportunistic, true),
    };
    HostPolicy {
        applied: Applied::MtaSts,
        requirement,
        report_only,
        report,
        mx_check,
        tls_floor: false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Assurance;
    use super::*;
    use crate::config::Config;

    fn policies() -> Policies {
        let config: Config = toml::from_str("hostname = \"relay.test\"").expect("config");
        Policies::new(&config.delivery, &config.dns, None, None).expect("policies")
    }

    fn domain(fixed: Option<TlsPolicy>, policy: Option<&str>) -> DomainPolicy {
        DomainPolicy {
            domain: "d.test".into(),
            fixed,
            tls_floor: false,
            sts: policy.map(|text| {
                let p = mta_sts::Policy::parse(text).expect("policy");
                Arc::new(mta_sts::Active::new("d.test", "1".into(), p))
            }),
            sts_failure: None,
            mx_secure: false,
        }
    }

    const ENFORCE: &str = "version: STSv1\nmode: enforce\nmx: *.d.test\nmax_age: 60\n";

    #[test]
    fn dane_decides_usable_bogus_and_failed_hosts_and_leaves_the_rest() {
        let d = domain(None, Some(ENFORCE));
        let tlsa = super::super::dane::Tlsa::from_fields("mx.d.test", [(3, 1, 1, &[7u8; 32][..])])
            .expect("usable");
        let usable = dane_policy(&d, "mx.d.test", &Outcome::Usable(Arc::new(tlsa)));
        let usable = usable.expect("decided");
        assert_eq!(usable.applied, Applied::Dane);
        assert!(matches!(usable.requirement, Requirement::Dane(_)));
        assert!(usable.report.is_some());
        for (outcome, text) in [
            (
                Outcome::Bogus("bad sig".into()),
                "DANE: TLSA lookup bogus for mx.d.test: bad sig",
            ),
            (
                Outcome::Failed("timeout".into()),
                "DANE: TLSA lookup failed for mx.d.test: timeout",
            ),
        ] {
            let p = dane_policy(&d, "mx.d.test", &outcome).expect("decided");
            match p.requirement {
                Requirement::Refuse(r) => {
                    assert_eq!(r.reason, text);
                    assert_eq!(r.failure, TlsFailure::DnssecInvalid);
                }
                other => panic!("{other:?}"),
            }
        }
        for outcome in [Outcome::Insecure, Outcome::Absent, Outcome::Unusable] {
            assert!(
                dane_policy(&d, "mx.d.test", &outcome).is_none(),
                "{outcome:?}"
            );
        }
        // DANE off (the default): every host goes to MTA-STS.
        assert!(!policies().dane().enabled());
    }

    #[test]
    fn encrypted_takes_any_tls_session_and_is_not_verified() {
        let e = Requirement::Encrypted;
        assert!(!e.accepts("mx.d.test", "mx.d.test", Assurance::Plain));
        assert!(e.accepts("mx.d.test", "other.test", Assurance::Encrypted));
        assert!(e.accepts("mx.d.test", "mx.d.test", Assurance::Dane));
        assert!(!e.verified(), "REQUIRETLS needs a verified peer");
    }

    #[tokio::test]
    async fn a_static_setting_wins_over_a_policy() {
        let p = policies();
        for (tls, plain) in [(TlsPolicy::None, true), (TlsPolicy::Required, false)] {
            let h = p
                .for_host(&domain(Some(tls), Some(ENFORCE)), "other.test")
                .await;
            assert_eq!(h.applied, Applied::Route);
            assert!(h.report.is_none());
            assert_eq!(matches!(h.requirement, Requirement::Plain), plain);
            assert_eq!(matches!(h.requirement, Requirement::WebPki), !plain);
        }
    }

    #[tokio::test]
    async fn enforce_verifies_listed_hosts_and_refuses_the_others() {
        let p = policies();
        let d = domain(None, Some(ENFORCE));
        let h = p.for_host(&d, "MX1.d.test").await;
        assert_eq!(h.applied, Applied::MtaSts);
        assert!(matches!(h.requirement, Requirement::WebPki));
        assert!(!h.report_only);
        assert_eq!(h.report.as_ref().unwrap().mx_patterns, ["*.d.test"]);
        let h = p.for_host(&d, "mx.elsewhere.test").await;
        let Requirement::Refuse(r) = h.requirement else {
            panic!("{h:?}")
        };
        assert_eq!(r.failure, TlsFailure::ValidationFailure);
        assert!(r.reason.contains("mx.elsewhere.test"), "{}", r.reason);
    }

    #[tokio::test]
    async fn testing_reports_only_and_none_or_absent_is_opportunistic() {
        let p = policies();
        let testing = ENFORCE.replace("enforce", "testing");
        let h = p
            .for_host(&domain(None, Some(&testing)), "mx.other.test")
            .await;
        assert!(matches!(h.requirement, Requirement::Opportunistic));
        assert!(h.report_only && h.report.is_some());
        // Whether the host matched is kept: REQUIRETLS treats `testing` as `enforce`.
        assert!(
            matches!(&h.mx_check, MxCheck::Refused(r) if r.reason.contains("mx.other.test")),
            "{h:?}"
        );
        let h = p.for_host(&domain(None, Some(&testing)), "mx.d.test").await;
        assert_eq!(h.mx_check, MxCheck::Passed);
        let none = "version: STSv1\nmode: none\nmax_age: 60\n";
        for d in [domain(None, Some(none)), domain(None, None)] {
            let h = p.for_host(&d, "mx.d.test").await;
            assert_eq!(h.applied, Applied::Opportunistic);
            assert!(!h.report_only && h.report.is_none());
        }
    }

    #[test]
    fn reuse_needs_the_same_verification_for_the_same_host() {
        let web = Requirement::WebPki;
        assert!(web.accepts("mx.d.test", "MX.d.test", Assurance::WebPki));
        assert!(!web.accepts("mx.d.test", "mx.d.test", Assurance::Encrypted));
        assert!(!web.accepts("mx.d.test", "mx2.d.test", Assurance::WebPki));
        assert!(!web.accepts("mx.d.test", "mx.d.test", Assurance::Dane));
        for a in [Assurance::Plain, Assurance::Encrypted, Assurance::WebPki] {
            assert!(Requirement::Opportunistic.accepts("a", "b", a));
        }
    }

    #[test]
    fn handshake_errors_map_to_rfc_8460_result_types() {
        use rustls::CertificateError as C;
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        for (e, want) in [
            (C::NotValidForName, TlsFailure::CertificateHostMismatch),
            (C::Expired, TlsFailure::CertificateExpired),
            (C::UnknownIssuer, TlsFailure::CertificateNotTrusted),
            (C::BadEncoding, TlsFailure::ValidationFailure),
        ] {
            let got = TlsFailure::of_handshake(&io(rustls::Error::InvalidCertificate(e)));
            assert_eq!(got, want);
        }
        let other = std::io::Error::other("reset");
        assert_eq!(
            TlsFailure::of_handshake(&other),
            TlsFailure::ValidationFailure
        );
        assert_eq!(
            TlsFailure::StarttlsNotSupported.as_str(),
            "starttls-not-supported"
        );
    }

    #[tokio::test]
    async fn a_failed_policy_fetch_delivers_on_but_holds_requiretls() {
        use super::super::requiretls::{ForMessage, for_message};
        use crate::spool::TlsRequest;
        let p = policies();
        let mut d = domain(None, None);
        d.sts_failure = Some((TlsFailure::StsPolicyFetchError, "timeout".into()));
        let h = p.for_host(&d, "mx.d.test").await;
        assert!(matches!(h.requirement, Requirement::Opportunistic));
        // RFC 8689 §4.2.1 over a fetch that may work next time: defer, not bounce.
        match for_message(&h, TlsRequest::Required) {
            ForMessage::Go { policy, .. } => {
                let Requirement::Refuse(r) = policy.requirement else {
                    panic!("{policy:?}")
                };
                assert_eq!(r.failure, TlsFailure::StsPolicyFetchError);
                assert_eq!(
                    r.reason,
                    "MTA-STS: the policy of d.test could not be fetched: timeout"
                );
            }
            other => panic!("{other:?}"),
        }
        // No fetch failure, no policy: still a bounce (nothing to wait for).
        let h = p.for_host(&domain(None, None), "mx.d.test").await;
        assert!(matches!(
            for_message(&h, TlsRequest::Required),
            ForMessage::Bounce(_)
        ));
    }

    /// A domain with MTA-STS `enforce` and an unsigned MX RRset: a spoofed MX pointing to a
    /// host with TLSA records of its own must not win over the policy.
    #[test]
    fn dane_on_an_insecure_mx_does_not_bypass_mta_sts() {
        use super::super::requiretls::{ForMessage, for_message};
        use crate::spool::TlsRequest;
        let tlsa = |host: &str| {
            let t = super::super::dane::Tlsa::from_fields(host, [(3, 1, 1, &[7u8; 32][..])]);
            Outcome::Usable(Arc::new(t.expect("usable")))
        };
        let mut d = domain(None, Some(ENFORCE));
        let h = host_policy(&d, "mx.evil.test", &tlsa("mx.evil.test"));
        let Requirement::Refuse(r) = &h.requirement else {
            panic!("{h:?}")
        };
        assert_eq!(r.failure, TlsFailure::ValidationFailure);
        assert!(r.reason.contains("mx.evil.test"), "{}", r.reason);
        // A listed host keeps DANE, and counts for REQUIRETLS.
        let h = host_policy(&d, "mx.d.test", &tlsa("mx.d.test"));
        assert!(matches!(h.requirement, Requirement::Dane(_)), "{h:?}");
        assert!(matches!(
            for_message(&h, TlsRequest::Required),
            ForMessage::Go {
                requiretls: true,
                ..
            }
        ));
        // No MTA-STS and an insecure MX: DANE is used, but nothing vouches for the name.
        let none = domain(None, None);
        let h = host_policy(&none, "mx.evil.test", &tlsa("mx.evil.test"));
        assert!(matches!(h.requirement, Requirement::Dane(_)), "{h:?}");
        assert!(matches!(
            for_message(&h, TlsRequest::Required),
            ForMessage::Bounce(_)
        ));
        // A DNSSEC-secure MX RRset: the MX hosts are the domain's own, DANE decides.
        d.mx_secure = true;
        let h = host_policy(&d, "mx.elsewhere.test", &tlsa("mx.elsewhere.test"));
        assert!(matches!(h.requirement, Requirement::Dane(_)), "{h:?}");
        assert!(matches!(
            for_message(&h, TlsRequest::Required),
            ForMessage::Go {
                requiretls: true,
                ..
            }
        ));
    }

    /// `[delivery] tls = "required"` for an MX destination is a floor: DANE and MTA-STS still
    /// decide above it (refusals included), and it alone does not satisfy REQUIRETLS.
    #[tokio::test]
    async fn a_global_required_is_a_floor_under_the_policies() {
        use super::super::requiretls::{ForMessage, for_message};
        use crate::spool::TlsRequest;
        let p = policies();
        let mut d = domain(None, Some(ENFORCE));
        d.tls_floor = true;
        let h = p.for_host(&d, "mx.elsewhere.test").await;
        assert!(matches!(h.requirement, Requirement::Refuse(_)), "{h:?}");
        let h = p.for_host(&d, "mx.d.test").await;
        assert_eq!(h.applied, Applied::MtaSts);
        assert!(matches!(h.requirement, Requirement::WebPki));
        let mut none = domain(None, None);
        none.tls_floor = true;
        let h = p.for_host(&none, "mx.d.test").await;
        assert_eq!(h.applied, Applied::Route);
        assert!(matches!(h.requirement, Requirement::WebPki));
        assert!(matches!(
            for_message(&h, TlsRequest::Required),
            ForMessage::Bounce(_)
        ));
        // A route's own `required` still satisfies it.
        let route = p
            .for_host(&domain(Some(TlsPolicy::Required), None), "mx.d.test")
            .await;
        assert!(matches!(
            for_message(&route, TlsRequest::Required),
            ForMessage::Go {
                requiretls: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn the_floor_comes_from_delivery_tls_only_for_mx_destinations() {
        // No MTA-STS, no DANE: nothing is asked of the (unreachable) resolver.
        let config: Config =
            toml::from_str("hostname = \"relay.test\"\n[delivery.mta_sts]\nenabled = false")
                .expect("config");
        let p = Policies::new(&config.delivery, &config.dns, None, None).expect("policies");
        let resolver =
            crate::routing::build_resolver(&["127.0.0.1:9".parse().unwrap()]).expect("resolver");
        for (static_tls, fixed, floor) in [(true, true, false), (false, false, true)] {
            let dest = Destination {
                key: "k".into(),
                hosts: Vec::new(),
                tls: TlsPolicy::Required,
                static_tls,
            };
            let d = p.for_domain("d.test", &dest, &resolver).await;
            assert_eq!(d.fixed.is_some(), fixed);
            assert_eq!(d.tls_floor, floor);
        }
    }
}
