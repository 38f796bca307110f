//! The traced complaint handed between stages, and the actors that act on it (the interface
//! shared with accounts, the IP × provider windows and suppression). It lives here, below
//! `feedback` (which traces complaints and re-exports it), so the actors need not import
//! `feedback`.

use std::net::IpAddr;

/// How a complaint was traced to what poolrelay sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    /// poolrelay's own authenticated trace header in the original message.
    Trace,
    /// The report's `Source-IP` field.
    SourceIp,
    /// The receiver's `Received:` header in the original.
    Received,
    /// Matched against poolrelay's delivery records (Message-ID, recipient).
    Records,
}

/// One complaint ("this is spam") traced back as far as the report allows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Complaint {
    /// `Feedback-Type` (abuse, fraud, virus, other, …), lower case.
    pub feedback_type: String,
    /// Who sent the report (`Reporting-MTA`, `User-Agent` or the report's From: domain).
    pub reporter: String,
    /// The provider the complaint counts against (`pool::provider`), e.g. "microsoft".
    pub provider: Option<String>,
    /// The pool IP the original left from.
    pub source_ip: Option<IpAddr>,
    pub queue_id: Option<String>,
    /// Authenticated login that submitted the original; `None` for trusted-network clients.
    pub login: Option<String>,
    /// The original's sender domain (`From:` domain, else MAIL FROM's), lower case.
    pub sender_domain: Option<String>,
    /// The complaining recipient, when the report names it (often redacted).
    pub recipient: Option<String>,
    /// Unix seconds the report arrived.
    pub arrived_at: u64,
    pub evidence: Evidence,
}

/// What an actor did with a complaint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Not this actor's business; the next one decides.
    Passed,
    /// Counted, and the next actor counts it too.
    Counted,
    /// This actor took the blame (e.g. the login is throttled or suspended for it): the pool
    /// IP's window does not count it.
    Blamed,
}

/// Acts on traced complaints (accounts per login, the IP × provider windows, suppression).
pub trait OnComplaint: Send + Sync {
    /// `blamed`: whether an earlier actor already took the blame for this complaint.
    fn complaint(&self, complaint: &Complaint, blamed: bool) -> Charge;
}

/// Hands a complaint to each actor in order; returns whether one took the blame.
pub fn dispatch(actors: &[std::sync::Arc<dyn OnComplaint>], complaint: &Complaint) -> bool {
    let mut blamed = false;
    for actor in actors {
        if actor.complaint(complaint, blamed) == Charge::Blamed {
            blamed = true;
        }
    }
    blamed
}
