//! The start-up check: does DNSSEC validation work behind the configured resolver?
//! - once at start, the SOA of `check_secure` must validate as secure and the SOA of
//!   `check_bogus` as bogus (defaults: names kept signed, and kept broken, on the internet);
//! - anything else is logged once as a warning naming what came back, so an operator behind a
//!   resolver that strips DNSSEC records learns it before DANE mail is deferred;
//! - `check_bogus = ""` skips the check (no name to test against, e.g. a private root).

use hickory_resolver::proto::rr::RecordType;

use super::lookup::{Dane, Security};
use super::settings::Settings;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The secure name validated and the broken one was refused.
    Works,
    /// Validation does not work; the text says what came back.
    Broken(String),
    Skipped,
}

impl Verdict {
    pub fn works(&self) -> bool {
        matches!(self, Verdict::Works)
    }
}

fn status(s: &Security) -> String {
    match s {
        Security::Secure(_) => "secure".into(),
        Security::Denied => "secure, but has no SOA".into(),
        Security::Insecure => "insecure (no DNSSEC records came back)".into(),
        Security::Bogus(e) => format!("bogus ({e})"),
        Security::Failed(e) => format!("lookup failed ({e})"),
    }
}

/// Runs the two lookups.
pub async fn validation(dane: &Dane, settings: &Settings) -> Verdict {
    let (good, bad) = (&settings.check_secure, &settings.check_bogus);
    if good.is_empty() || bad.is_empty() {
        return Verdict::Skipped;
    }
    let fqdn = |n: &str| format!("{}.", n.trim_end_matches('.'));
    let secure = dane.security(&fqdn(good), RecordType::SOA).await;
    let bogus = dane.security(&fqdn(bad), RecordType::SOA).await;
    let mut problems = Vec::new();
    if !matches!(secure, Security::Secure(_)) {
        problems.push(format!(
            "{good} should be secure but is {}",
            status(&secure)
        ));
    }
    if !matches!(bogus, Security::Bogus(_)) {
        problems.push(format!("{bad} should be bogus but is {}", status(&bogus)));
    }
    if problems.is_empty() {
        Verdict::Works
    } else {
        Verdict::Broken(problems.join("; "))
    }
}

/// Runs the check with the service's own settings and logs its verdict once; nothing when DANE
/// is off.
pub async fn run(dane: &Dane) -> Option<Verdict> {
    if !dane.enabled() {
        return None;
    }
    let settings = dane.settings();
    let verdict = validation(dane, settings).await;
    match &verdict {
        Verdict::Works => tracing::info!(
            secure = %settings.check_secure,
            bogus = %settings.check_bogus,
            "DANE: DNSSEC validation works"
        ),
        Verdict::Broken(why) => tracing::warn!(
            "DANE: DNSSEC validation does not work behind the configured resolver: {why}; \
             TLSA records cannot be trusted and mail to DANE hosts will be deferred \
             (a resolver that strips DNSSEC records? see docs/dane.md)"
        ),
        Verdict::Skipped => tracing::info!("DANE: start-up DNSSEC check skipped (no check names)"),
    }
    Some(verdict)
}
