//! REQUIRETLS (RFC 8689): what a sender's TLS request does to the policy of one MX host.
//!
//! Rules:
//! - `MAIL FROM:<..> REQUIRETLS` is accepted only inside TLS (`530 5.7.10` in plaintext) and is
//!   kept with the message (`TlsRequest::Required`); `REQUIRETLS` is advertised only after TLS.
//! - A REQUIRETLS message goes only to an MX host whose identity the policy verifies: DANE
//!   (`Requirement::Dane`) or web PKI (`Requirement::WebPki`: MTA-STS, or a route's `required`),
//!   and whose name is vouched for (`MxCheck::Passed`). `[delivery] tls = "required"` alone
//!   does not vouch for an MX host's name (an unsigned MX RRset may be spoofed).
//!   An MTA-STS policy in `testing` mode counts as `enforce` for it (§4.2.1): failures stop it,
//!   and an MX host the policy does not list is refused (defer, `451 4.7.5`), as under `enforce`.
//! - An MTA-STS policy that could not be fetched (none cached) → defer, `451 4.7.5`: the next
//!   try may get it.
//! - No verified policy for the host (opportunistic, plain) → bounce at once, `5.7.30`: retrying
//!   will not make the destination publish one. Never plaintext, never an unverified certificate.
//! - The server must advertise `REQUIRETLS` in its EHLO reply after STARTTLS, and `REQUIRETLS`
//!   goes on our MAIL FROM; a server that does not advertise it → bounce, `5.7.30`.
//! - A TLS failure on a verified host defers as the policy says (the message expires into a
//!   bounce like any other); a `Refuse` stays a refusal.
//! - The DSN of a REQUIRETLS message is itself REQUIRETLS (§5) and returns headers only.
//! - `TLS-Required: No` (§5) with no REQUIRETLS: the sender asks that MTA-STS and DANE failures
//!   not stop delivery. Honoured, with STARTTLS still used whenever offered: an MTA-STS host is
//!   handled as under `testing` (verified first, a failure reported, then opportunistic); a
//!   DANE host and a host refused by MTA-STS or DANE become opportunistic. A route's own `tls`
//!   setting is the operator's and stays, and so does `[delivery] tls = "required"` (web PKI,
//!   as a route). With REQUIRETLS too, the header is ignored (§4.1).

use super::{Applied, HostPolicy, MxCheck, Requirement};
use crate::spool::TlsRequest;

/// The request kept in the envelope, from the MAIL FROM parameter and the header field.
pub fn request(requiretls: bool, tls_required_no: bool) -> TlsRequest {
    match (requiretls, tls_required_no) {
        (true, _) => TlsRequest::Required,
        (false, true) => TlsRequest::NotRequired,
        (false, false) => TlsRequest::None,
    }
}

/// The `TLS-Required: No` reading is signing's (its one pass over the headers).
pub use crate::signing::is_tls_required_no;

/// Why a REQUIRETLS message cannot go to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// The host's policy does not verify its identity (no MTA-STS, no DANE).
    NoVerifiedPolicy,
    /// The server did not advertise REQUIRETLS after STARTTLS.
    NotAdvertised,
}

impl Unmet {
    pub fn as_str(self) -> &'static str {
        match self {
            Unmet::NoVerifiedPolicy => "no-verified-policy",
            Unmet::NotAdvertised => "requiretls-not-advertised",
        }
    }

    /// The local reply recorded for the recipient (a permanent failure, RFC 8689 §5);
    /// `about`: the destination domain, or the MX host that did not offer REQUIRETLS.
    pub fn reply_text(self, about: &str) -> String {
        match self {
            Unmet::NoVerifiedPolicy => format!(
                "REQUIRETLS support required: no MTA-STS or DANE policy verifies the servers of {about}"
            ),
            Unmet::NotAdvertised => {
                format!("REQUIRETLS support required: {about} does not offer REQUIRETLS")
            }
        }
    }

    pub const CODE: u16 = 550;
    pub const STATUS: &'static str = "5.7.30";
}

/// What one session to a host does for a message with this request.
#[derive(Debug, Clone)]
pub enum ForMessage {
    /// Go with this policy; `requiretls`: check the EHLO reply and send the MAIL parameter.
    Go {
        policy: HostPolicy,
        requiretls: bool,
    },
    /// Do not connect: the message bounces.
    Bounce(Unmet),
}

/// Applies the sender's request to the host's policy (the rules above).
pub fn for_message(policy: &HostPolicy, request: TlsRequest) -> ForMessage {
    let mut policy = policy.clone();
    match request {
        TlsRequest::None => ForMessage::Go {
            policy,
            requiretls: false,
        },
        TlsRequest::Required => {
            if matches!(policy.requirement, Requirement::Refuse(_)) {
                // A deferral (bogus DNSSEC, MX not in the policy): the policy's own answer.
                return ForMessage::Go {
                    policy,
                    requiretls: true,
                };
            }
            if let MxCheck::Refused(refusal) = &policy.mx_check {
                // §4.2.1: an MX host the MTA-STS policy does not list (`testing` included),
                // or a policy that could not be fetched now: defer, never bounce at once.
                policy.requirement = Requirement::Refuse(refusal.clone());
                policy.report_only = false;
                return ForMessage::Go {
                    policy,
                    requiretls: true,
                };
            }
            if policy.applied == Applied::MtaSts && policy.report_only {
                // §4.2.1: `testing` is `enforce` for REQUIRETLS.
                policy.requirement = Requirement::WebPki;
            }
            policy.report_only = false;
            if policy.requirement.verified() && policy.mx_check == MxCheck::Passed {
                ForMessage::Go {
                    policy,
                    requiretls: true,
                }
            } else {
                ForMessage::Bounce(Unmet::NoVerifiedPolicy)
            }
        }
        TlsRequest::NotRequired => {
            match (&policy.applied, &policy.requirement) {
                (Applied::Route, _) => {}
                (Applied::MtaSts, Requirement::WebPki) => {
                    // Verified first and reported, then opportunistic: as `testing` does.
                    policy.requirement = Requirement::Opportunistic;
                    policy.report_only = true;
                }
                (_, Requirement::Plain | Requirement::Opportunistic) => {}
                // DANE, a refusal, anything mandatory a policy asked: opportunistic.
                _ => {
                    policy.requirement = Requirement::Opportunistic;
                    policy.report_only = false;
                }
            }
            if policy.tls_floor && matches!(policy.requirement, Requirement::Opportunistic) {
                // The operator's `[delivery] tls = "required"` stays, as a route's would.
                super::decide::raise_to_floor(&mut policy);
            }
            ForMessage::Go {
                policy,
                requiretls: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(applied: Applied, requirement: Requirement, report_only: bool) -> HostPolicy {
        let mx_check = match applied {
            Applied::Opportunistic => MxCheck::Unchecked,
            _ => MxCheck::Passed,
        };
        HostPolicy {
            applied,
            requirement,
            report_only,
            report: None,
            mx_check,
            tls_floor: false,
        }
    }

    fn refuse(why: &str) -> Requirement {
        Requirement::Refuse(super::super::Refusal {
            failure: super::super::TlsFailure::DnssecInvalid,
            reason: why.into(),
        })
    }

    #[test]
    fn the_request_from_parameter_and_header() {
        assert_eq!(request(true, true), TlsRequest::Required);
        assert_eq!(request(true, false), TlsRequest::Required);
        assert_eq!(request(false, true), TlsRequest::NotRequired);
        assert_eq!(request(false, false), TlsRequest::None);
        assert!(is_tls_required_no(b" No\r\n"));
        assert!(is_tls_required_no(b"\r\n\tno"));
        assert!(!is_tls_required_no(b" Yes\r\n"));
        assert!(!is_tls_required_no(b" Nope\r\n"));
    }

    #[test]
    fn requiretls_needs_a_verified_host() {
        let opportunistic = policy(Applied::Opportunistic, Requirement::Opportunistic, false);
        assert!(matches!(
            for_message(&opportunistic, TlsRequest::Required),
            ForMessage::Bounce(Unmet::NoVerifiedPolicy)
        ));
        let plain = policy(Applied::Route, Requirement::Plain, false);
        assert!(matches!(
            for_message(&plain, TlsRequest::Required),
            ForMessage::Bounce(Unmet::NoVerifiedPolicy)
        ));
        let enforce = policy(Applied::MtaSts, Requirement::WebPki, false);
        assert!(matches!(
            for_message(&enforce, TlsRequest::Required),
            ForMessage::Go { requiretls: true, policy } if !policy.report_only
        ));
        // Testing mode counts as enforce.
        let testing = policy(Applied::MtaSts, Requirement::Opportunistic, true);
        match for_message(&testing, TlsRequest::Required) {
            ForMessage::Go { policy, requiretls } => {
                assert!(requiretls && !policy.report_only);
                assert!(matches!(policy.requirement, Requirement::WebPki));
            }
            other => panic!("{other:?}"),
        }
        let refuse = policy(Applied::Dane, refuse("bogus"), false);
        assert!(matches!(
            for_message(&refuse, TlsRequest::Required),
            ForMessage::Go { policy, .. } if matches!(policy.requirement, Requirement::Refuse(_))
        ));
    }

    #[test]
    fn tls_required_no_makes_policy_failures_report_only() {
        let enforce = policy(Applied::MtaSts, Requirement::WebPki, false);
        assert!(matches!(
            for_message(&enforce, TlsRequest::NotRequired),
            ForMessage::Go { policy, requiretls: false }
                if policy.report_only && matches!(policy.requirement, Requirement::Opportunistic)
        ));
        let refuse = policy(Applied::MtaSts, refuse("mx"), false);
        assert!(matches!(
            for_message(&refuse, TlsRequest::NotRequired),
            ForMessage::Go { policy, .. } if matches!(policy.requirement, Requirement::Opportunistic)
        ));
        // The operator's route stays as configured.
        let route = policy(Applied::Route, Requirement::WebPki, false);
        assert!(matches!(
            for_message(&route, TlsRequest::NotRequired),
            ForMessage::Go { policy, .. } if !policy.report_only
        ));
    }

    #[test]
    fn requiretls_defers_for_a_host_outside_a_testing_policy_or_a_failed_fetch() {
        for (failure, why) in [
            (
                super::super::TlsFailure::ValidationFailure,
                "MTA-STS: mx.evil.test is not an MX host allowed by the policy of d.test",
            ),
            (
                super::super::TlsFailure::StsPolicyFetchError,
                "MTA-STS: the policy of d.test could not be fetched: timeout",
            ),
        ] {
            let refusal = super::super::Refusal {
                failure,
                reason: why.into(),
            };
            let (applied, report_only) = match failure {
                super::super::TlsFailure::ValidationFailure => (Applied::MtaSts, true),
                _ => (Applied::Opportunistic, false),
            };
            let mut p = policy(applied, Requirement::Opportunistic, report_only);
            p.mx_check = MxCheck::Refused(refusal.clone());
            match for_message(&p, TlsRequest::Required) {
                ForMessage::Go { policy, requiretls } => {
                    assert!(requiretls && !policy.report_only);
                    let Requirement::Refuse(r) = &policy.requirement else {
                        panic!("{policy:?}")
                    };
                    assert_eq!(r, &refusal);
                }
                other => panic!("{other:?}"),
            }
            // Without REQUIRETLS the host is still tried (testing, or no policy).
            assert!(matches!(
                for_message(&p, TlsRequest::None),
                ForMessage::Go { policy, .. } if matches!(policy.requirement, Requirement::Opportunistic)
            ));
        }
    }

    #[test]
    fn tls_required_no_keeps_the_global_required_floor() {
        for applied in [Applied::MtaSts, Applied::Dane] {
            let mut p = policy(applied, Requirement::WebPki, false);
            p.tls_floor = true;
            match for_message(&p, TlsRequest::NotRequired) {
                ForMessage::Go { policy, .. } => {
                    assert_eq!(policy.applied, Applied::Route);
                    assert!(matches!(policy.requirement, Requirement::WebPki));
                    assert!(!policy.report_only);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
