//! DMARC of a sending domain (RFC 7489, DMARCbis tree walk simplified to the parent domains):
//! - a record at `_dmarc.domain` (or inherited from a parent's `sp=`), exactly one, valid by
//!   mail-auth's parser: else fail (Gmail and Yahoo require one from bulk senders);
//! - its policy reported; `p=none` (or `t=y`) warns: receivers only watch, spoofing still works.

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Dmarc, Policy};

use super::dns::{self, DnsError, Found};
use super::report::Check;

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::None => "none",
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
        Policy::Unspecified => "unspecified",
    }
}

/// The DMARC TXT records at `_dmarc.name`.
async fn records(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, DnsError> {
    match dns::txt(resolver, &format!("_dmarc.{name}")).await {
        Found::Error(e) => Err(DnsError::Lookup(e)),
        f => Ok(dns::with_prefix(
            f.records().unwrap_or_default(),
            "v=DMARC1",
        )),
    }
}

/// `record` with its `p=` tag set to `policy` (added if missing).
fn with_policy(record: &str, policy: &str) -> String {
    let mut found = false;
    let tags: Vec<String> = record
        .split(';')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case("p") => {
                found = true;
                format!("p={policy}")
            }
            _ => t.to_string(),
        })
        .collect();
    let mut tags = tags;
    if !found {
        tags.insert(1.min(tags.len()), format!("p={policy}"));
    }
    tags.join("; ")
}

/// The domain's own DMARC records, else the nearest parent's (its `sp=` covers subdomains),
/// with the name they were found at; `Ok(None)` when no level has one.
async fn find(
    resolver: &TokioResolver,
    domain: &str,
) -> Result<Option<(String, Vec<String>)>, DnsError> {
    let labels: Vec<&str> = domain.split('.').collect();
    for skip in 0..labels.len().saturating_sub(1) {
        let at = labels[skip..].join(".");
        let r = records(resolver, &at).await?;
        if !r.is_empty() {
            return Ok(Some((at, r)));
        }
    }
    Ok(None)
}

pub async fn check(resolver: &TokioResolver, domain: &str) -> Check {
    let name = format!("_dmarc.{domain}");
    let suggested = format!("v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}");
    let publish = format!("publish {}", dns::zone_txt(&name, &suggested));
    let (at, recs) = match find(resolver, domain).await {
        Err(e) => return Check::warn("dmarc", format!("lookup failed: {e}")),
        Ok(None) => return Check::fail("dmarc", format!("no DMARC record at {name}"), publish),
        Ok(Some(found)) => found,
    };
    let own = at == domain;
    if recs.len() > 1 {
        return Check::fail(
            "dmarc",
            format!(
                "{} DMARC records at _dmarc.{at}: receivers then apply none (RFC 7489 §6.6.3)",
                recs.len()
            ),
            format!(
                "keep one: {}",
                dns::zone_txt(&format!("_dmarc.{at}"), &recs[0])
            ),
        );
    }
    let text = &recs[0];
    let dmarc = match Dmarc::parse(text.as_bytes()) {
        Ok(d) => d,
        Err(e) => {
            return Check::fail(
                "dmarc",
                format!("malformed record at _dmarc.{at} ({e}): \"{text}\""),
                publish,
            );
        }
    };
    let policy = if own || dmarc.sp == Policy::Unspecified {
        dmarc.p
    } else {
        dmarc.sp
    };
    let whence = if own {
        String::new()
    } else {
        format!(" (inherited from _dmarc.{at})")
    };
    let detail = format!("p={}{whence}: \"{text}\"", policy_name(policy));
    match policy {
        Policy::Quarantine | Policy::Reject if !dmarc.t => Check::pass("dmarc", detail),
        Policy::Quarantine | Policy::Reject => Check::warn(
            "dmarc",
            format!("{detail}; t=y: receivers apply one step less"),
        ),
        Policy::None => Check::warn(
            "dmarc",
            format!("{detail}; p=none only monitors: mail spoofing the domain is still delivered"),
        )
        .fix(format!(
            "once the reports show only your own mail, publish {}",
            dns::zone_txt(&format!("_dmarc.{at}"), &with_policy(text, "quarantine"))
        )),
        Policy::Unspecified => Check::fail(
            "dmarc",
            format!("{detail}; no valid p= tag"),
            format!(
                "publish {}",
                dns::zone_txt(&format!("_dmarc.{at}"), &with_policy(text, "quarantine"))
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rewrite() {
        assert_eq!(
            with_policy("v=DMARC1; p=none; rua=mailto:d@x.test", "quarantine"),
            "v=DMARC1; p=quarantine; rua=mailto:d@x.test"
        );
        assert_eq!(with_policy("v=DMARC1;", "reject"), "v=DMARC1; p=reject");
    }

    #[test]
    fn parser_is_mail_auths() {
        let d = Dmarc::parse(b"v=DMARC1; p=none").unwrap();
        assert_eq!(d.p, Policy::None);
        assert!(Dmarc::parse(b"v=DMARC1; p=reject; sp=quarantine").is_ok());
    }
}
