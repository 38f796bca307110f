//! What the checks found: one `Check` per thing a receiver looks at, grouped per pool IP and per
//! sending domain, printed as a table or as JSON. Every failure carries its fix: the record to
//! publish or the setting to change, spelled out.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use crate::text::Escaped;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Reported, not judged (an optional record absent, a skipped probe).
    Info,
    /// Worth a look, or could not be decided (DNS error): never changes an enforced hold.
    Warn,
    /// A receiver would hold this against the mail.
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Info => "info",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier: ptr, fcrdns, helo, spf_helo, dnsbl, spf, spf_lookups, spf_pass, dkim,
    /// dmarc, mx, mta_sts, tls_rpt, rcpt.
    pub name: &'static str,
    /// What the check is about when a name has several: a zone, an IP, a selector, an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to publish or change (set for every failure, and for warnings with a remedy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            subject: None,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Pass, detail)
    }
    pub fn info(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Info, detail)
    }
    pub fn warn(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }
    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail).fix(fix)
    }

    pub fn about(mut self, subject: impl Into<String>) -> Check {
        self.subject = Some(subject.into());
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IpReport {
    pub ip: IpAddr,
    pub helo: String,
    pub pools: Vec<String>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    pub domain: String,
    /// Why it is checked: `dkim`, `pool_rule`, `config` (`[doctor] domains`), `argument`.
    pub sources: Vec<String>,
    /// The pool IPs that can send mail from it.
    pub ips: Vec<IpAddr>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub info: usize,
    pub warn: usize,
    pub fail: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Unix seconds when the checks finished.
    pub checked_at: u64,
    /// True when nothing failed.
    pub ok: bool,
    pub summary: Summary,
    pub ips: Vec<IpReport>,
    pub domains: Vec<DomainReport>,
    /// Provider feeds' last polls and domain spam rates (`doctor::feeds`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<Check>,
}

impl Report {
    pub fn new(ips: Vec<IpReport>, domains: Vec<DomainReport>) -> Report {
        Report::with_feeds(ips, domains, Vec::new())
    }

    pub fn with_feeds(ips: Vec<IpReport>, domains: Vec<DomainReport>, feeds: Vec<Check>) -> Report {
        let mut summary = Summary::default();
        let all = ips
            .iter()
            .flat_map(|i| &i.checks)
            .chain(domains.iter().flat_map(|d| &d.checks))
            .chain(&feeds);
        for c in all {
            match c.status {
                Status::Pass => summary.pass += 1,
                Status::Info => summary.info += 1,
                Status::Warn => summary.warn += 1,
                Status::Fail => summary.fail += 1,
            }
        }
        Report {
            checked_at: crate::spool::now_unix(),
            ok: summary.fail == 0,
            summary,
            ips,
            domains,
            feeds,
        }
    }

    /// Every check with the section it belongs to (`ip 127.0.0.10`, `domain example.com`).
    pub fn checks(&self) -> impl Iterator<Item = (String, &Check)> {
        let ips = self
            .ips
            .iter()
            .flat_map(|i| i.checks.iter().map(move |c| (format!("ip {}", i.ip), c)));
        let domains = self.domains.iter().flat_map(|d| {
            d.checks
                .iter()
                .map(move |c| (format!("domain {}", d.domain), c))
        });
        let feeds = self.feeds.iter().map(|c| ("feeds".to_string(), c));
        ips.chain(domains).chain(feeds)
    }

    /// The human table: one block per IP and per domain, a fix line under each failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for ip in &self.ips {
            let _ = writeln!(
                out,
                "IP {} (helo {}; pool {})",
                ip.ip,
                ip.helo,
                ip.pools.join(", ")
            );
            table(&mut out, &ip.checks);
            out.push('\n');
        }
        for d in &self.domains {
            let ips: Vec<String> = d.ips.iter().map(|i| i.to_string()).collect();
            let _ = writeln!(
                out,
                "domain {} ({}; sent from {})",
                d.domain,
                d.sources.join(", "),
                if ips.is_empty() {
                    "no pool IP".to_string()
                } else {
                    ips.join(", ")
                }
            );
            table(&mut out, &d.checks);
            out.push('\n');
        }
        if !self.feeds.is_empty() {
            let _ = writeln!(out, "provider feeds");
            table(&mut out, &self.feeds);
            out.push('\n');
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "{}: {} passed, {} failed, {} warnings, {} notes",
            if self.ok { "OK" } else { "FAILED" },
            s.pass,
            s.fail,
            s.warn,
            s.info
        );
        out
    }
}

fn table(out: &mut String, checks: &[Check]) {
    // Details, subjects and fixes quote DNS records and remote replies: escaped for the terminal.
    let label = |c: &Check| match &c.subject {
        Some(s) => format!("{} {}", c.name, Escaped(s)),
        None => c.name.to_string(),
    };
    let width = checks.iter().map(|c| label(c).len()).max().unwrap_or(0);
    for c in checks {
        let _ = writeln!(
            out,
            "  {:<4}  {:<width$}  {}",
            c.status.label(),
            label(c),
            Escaped(&c.detail)
        );
        if let Some(fix) = &c.fix {
            for (i, line) in fix.lines().enumerate() {
                let head = if i == 0 { "fix:" } else { "" };
                let line = Escaped(line);
                let _ = writeln!(out, "  {:<4}  {:<width$}  {head:<4} {line}", "", "");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_text() {
        let r = Report::new(
            vec![IpReport {
                ip: "127.0.0.10".parse().unwrap(),
                helo: "out.test".into(),
                pools: vec!["default".into()],
                checks: vec![
                    Check::pass("ptr", "10.0.0.127.in-addr.arpa → out.test"),
                    Check::fail(
                        "fcrdns",
                        "out.test has no A record",
                        "publish out.test. IN A 127.0.0.10",
                    )
                    .about("x"),
                ],
            }],
            vec![],
        );
        assert!(!r.ok);
        assert_eq!((r.summary.pass, r.summary.fail), (1, 1));
        let t = r.to_text();
        assert!(t.contains("FAIL  fcrdns x"), "{t}");
        assert!(t.contains("fix: publish out.test. IN A 127.0.0.10"), "{t}");
        assert!(
            t.ends_with("FAILED: 1 passed, 1 failed, 0 warnings, 0 notes\n"),
            "{t}"
        );
    }
}
