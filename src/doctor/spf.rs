//! SPF of a sending domain, as a receiver evaluates MAIL FROM:<…@domain> (RFC 7208):
//! - `spf`: exactly one `v=spf1` TXT record, syntactically valid (mail-auth's parser);
//! - `spf_lookups`: at most 10 DNS-querying terms (include, a, mx, ptr, exists, redirect) over
//!   the whole include tree, no include/redirect loop, every included domain has a record;
//! - `spf_pass` per pool IP that sends for the domain: mail-auth's evaluator (include,
//!   redirect, macros) says `pass`. Its failures come with the record to publish, IPs added.
//!   A record that `spf` finds a permanent error (several records, bad syntax) is `permerror`
//!   for every IP, as receivers see it: mail-auth's evaluator picks one of several records
//!   and skips unknown mechanisms, so it would say `pass`.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::spf::{Macro, Mechanism, Spf};
use mail_auth::{MessageAuthenticator, SpfResult};

use super::dns::{self, Found};
use super::report::Check;

/// RFC 7208 §4.6.4.
const MAX_LOOKUPS: u32 = 10;
/// RFC 7208 §4.6.4: lookups answering nothing.
const MAX_VOID: u32 = 2;

/// A sending IP and the EHLO name it uses (the SPF `h` macro).
#[derive(Debug, Clone)]
pub struct Sender {
    pub ip: IpAddr,
    pub helo: String,
}

/// What a domain publishes as SPF.
enum Record {
    Absent,
    One(String),
    /// Several `v=spf1` records: permerror (RFC 7208 §4.5).
    Several(usize),
    /// The lookup failed: no verdict.
    Unreadable(String),
}

async fn record(resolver: &TokioResolver, domain: &str) -> Record {
    let all = match dns::txt(resolver, domain).await {
        Found::Error(e) => return Record::Unreadable(e),
        f => f.records().unwrap_or_default(),
    };
    let mut spf = dns::with_prefix(all, "v=spf1");
    match spf.len() {
        0 => Record::Absent,
        1 => Record::One(spf.pop().unwrap_or_default()),
        n => Record::Several(n),
    }
}

fn result_name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn term(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    }
}

/// `record` with `ips` added right after `v=spf1` (before any `all` or `redirect`).
pub fn with_ips(record: &str, ips: &[IpAddr]) -> String {
    let terms: Vec<String> = ips.iter().map(|i| term(*i)).collect();
    let rest = record.trim().get(6..).unwrap_or("").trim_start();
    if rest.is_empty() {
        format!("v=spf1 {} ~all", terms.join(" "))
    } else {
        format!("v=spf1 {} {rest}", terms.join(" "))
    }
}

/// A record for a domain that has none: the pool IPs, soft-fail for the rest (other senders of
/// the domain, if any, still need adding).
fn new_record(ips: &[IpAddr]) -> String {
    with_ips("v=spf1", ips)
}

/// All checks for `domain`, sent from `senders`; `host` is the relay's own name (`r` macro).
pub async fn check(
    auth: &MessageAuthenticator,
    domain: &str,
    senders: &[Sender],
    host: &str,
) -> Vec<Check> {
    let resolver = &auth.0;
    let mut out = Vec::new();
    let ips: Vec<IpAddr> = senders.iter().map(|s| s.ip).collect();
    let suggested = dns::zone_txt(domain, &new_record(&ips_or_example(&ips)));
    let text = match record(resolver, domain).await {
        Record::One(t) => t,
        other => {
            let basis = match &other {
                Record::Several(n) => Basis::PermError(format!("{n} SPF records")),
                _ => Basis::Missing,
            };
            out.push(match other {
                Record::Several(n) => Check::fail(
                    "spf",
                    format!("{n} SPF records at {domain}: receivers treat that as permerror (RFC 7208 §4.5)"),
                    format!("merge them into one, e.g. {suggested}"),
                ),
                Record::Unreadable(e) => Check::warn("spf", format!("lookup failed: {e}")),
                _ => Check::fail("spf", format!("no SPF record at {domain}"), format!("publish {suggested}")),
            });
            out.extend(evaluate(auth, domain, senders, host, basis).await);
            return out;
        }
    };
    let basis =
        match strict(&text).and_then(|_| Spf::parse(text.as_bytes()).map_err(SpfError::Parse)) {
            Ok(spf) => {
                out.push(Check::pass("spf", format!("\"{text}\"")));
                out.push(lookups(resolver, domain, spf, &ips).await);
                Basis::Valid(&text)
            }
            Err(e) => {
                let why = format!("the record is not valid SPF ({e})");
                out.push(Check::fail(
                    "spf",
                    format!("not valid SPF ({e}): \"{text}\""),
                    format!(
                        "publish a valid record, e.g. {}",
                        dns::zone_txt(domain, &new_record(&ips_or_example(&ips)))
                    ),
                ));
                Basis::PermError(why)
            }
        };
    out.extend(evaluate(auth, domain, senders, host, basis).await);
    out
}

/// What the per-IP verdicts rest on.
enum Basis<'a> {
    /// The domain's one valid record: mail-auth's verdict, fixes amend the record.
    Valid(&'a str),
    /// No record, or none readable: mail-auth's verdict, the fix is a new record.
    Missing,
    /// The record is a permanent error by itself (why): `permerror` for every IP.
    PermError(String),
}

/// Why a published SPF record is not valid.
#[derive(Debug, thiserror::Error)]
enum SpfError {
    /// Against RFC 7208 §12 (`strict`).
    #[error("bad term {0:?}")]
    BadTerm(String),
    /// Refused by mail-auth's parser.
    #[error("{0}")]
    Parse(#[source] mail_auth::Error),
}

/// RFC 7208 §12 term syntax, stricter than mail-auth's parser (it accepts unknown mechanisms
/// and out-of-range addresses, which libspf2 and pyspf receivers reject as permerror).
fn strict(record: &str) -> Result<(), SpfError> {
    let cidr = |s: &str, max: u8| s.parse::<u8>().ok().filter(|n| *n <= max).is_some();
    for t in record.split_ascii_whitespace().skip(1) {
        let bad = || Err(SpfError::BadTerm(t.to_string()));
        let qualified = t.starts_with(['+', '-', '~', '?']);
        let body = if qualified { &t[1..] } else { t };
        let name_end = body.find([':', '/', '=']).unwrap_or(body.len());
        let (name, rest) = body.split_at(name_end);
        if rest.starts_with('=') {
            let ok_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if qualified || !ok_name {
                return bad();
            }
            continue;
        }
        let arg = rest.strip_prefix(':');
        let (target, mask) = match arg.unwrap_or(rest).split_once('/') {
            Some((a, m)) => (a, Some(m)),
            None => (arg.unwrap_or(""), None),
        };
        let ok = match name.to_ascii_lowercase().as_str() {
            "all" => rest.is_empty(),
            "include" | "exists" => arg.is_some_and(|a| !a.is_empty()) && mask.is_none(),
            "ptr" => mask.is_none() && arg.is_none_or(|a| !a.is_empty()),
            "a" | "mx" => {
                (arg.is_none() || !target.is_empty())
                    && mask.is_none_or(|m| match m.split_once("//") {
                        Some((v4, v6)) => (v4.is_empty() || cidr(v4, 32)) && cidr(v6, 128),
                        None => m.strip_prefix('/').map_or(cidr(m, 32), |v6| cidr(v6, 128)),
                    })
            }
            "ip4" => {
                arg.is_some()
                    && target.parse::<std::net::Ipv4Addr>().is_ok()
                    && mask.is_none_or(|m| cidr(m, 32))
            }
            "ip6" => {
                arg.is_some()
                    && target.parse::<std::net::Ipv6Addr>().is_ok()
                    && mask.is_none_or(|m| cidr(m, 128))
            }
            _ => false,
        };
        if !ok {
            return bad();
        }
    }
    Ok(())
}

fn ips_or_example(ips: &[IpAddr]) -> Vec<IpAddr> {
    if ips.is_empty() {
        vec![IpAddr::from([192, 0, 2, 1])]
    } else {
        ips.to_vec()
    }
}

/// mail-auth's verdict for each sender; the fix adds every failing IP at once.
async fn evaluate(
    auth: &MessageAuthenticator,
    domain: &str,
    senders: &[Sender],
    host: &str,
    basis: Basis<'_>,
) -> Vec<Check> {
    let mailbox = format!("postmaster@{domain}");
    let record = match basis {
        Basis::Valid(r) => Some(r),
        Basis::Missing => None,
        Basis::PermError(why) => return permerror(&mailbox, senders, &why),
    };
    let mut results = Vec::with_capacity(senders.len());
    for s in senders {
        let params = SpfParameters::verify_mail_from(s.ip, &s.helo, host, &mailbox);
        results.push(auth.verify_spf(params).await.result());
    }
    // permerror is the record's own fault (see spf / spf_lookups): adding IPs cannot fix it.
    let failing: Vec<IpAddr> = senders
        .iter()
        .zip(&results)
        .filter(|(_, r)| {
            !matches!(
                r,
                SpfResult::Pass | SpfResult::TempError | SpfResult::PermError
            )
        })
        .map(|(s, _)| s.ip)
        .collect();
    let fixed = match record {
        Some(r) => with_ips(r, &failing),
        None => new_record(&ips_or_example(
            &senders.iter().map(|s| s.ip).collect::<Vec<_>>(),
        )),
    };
    senders
        .iter()
        .zip(results)
        .map(|(s, r)| {
            let c = match r {
                SpfResult::Pass => Check::pass("spf_pass", "pass"),
                SpfResult::TempError => {
                    Check::warn("spf_pass", "temperror: a DNS lookup failed, try again")
                }
                SpfResult::PermError if record.is_some() => Check::fail(
                    "spf_pass",
                    format!("permerror for MAIL FROM:<{mailbox}> from {}", s.ip),
                    format!(
                        "fix the record first (see spf_lookups); it must then still cover {}",
                        term(s.ip)
                    ),
                ),
                other => Check::fail(
                    "spf_pass",
                    format!(
                        "{} for MAIL FROM:<{mailbox}> from {}",
                        result_name(other),
                        s.ip
                    ),
                    format!("publish {}", dns::zone_txt(domain, &fixed)),
                ),
            };
            c.about(s.ip.to_string())
        })
        .collect()
}

/// Every sender's `spf_pass` when the record itself is a permanent error.
fn permerror(mailbox: &str, senders: &[Sender], why: &str) -> Vec<Check> {
    let check = |s: &Sender| {
        Check::fail(
            "spf_pass",
            format!("permerror for MAIL FROM:<{mailbox}> from {}: {why}", s.ip),
            format!(
                "fix the record first (see spf); it must then still cover {}",
                term(s.ip)
            ),
        )
        .about(s.ip.to_string())
    };
    senders.iter().map(check).collect()
}

/// `spf_helo`: SPF of the HELO identity (RFC 7208 §2.3). Receivers judge the relay's own
/// bounces (`MAIL FROM:<>`) by it; never a failure, since mail with a sender is judged by the
/// sender's domain.
pub async fn check_helo(auth: &MessageAuthenticator, ip: IpAddr, helo: &str, host: &str) -> Check {
    let params = SpfParameters::verify_ehlo(ip, helo, host);
    let publish = format!(
        "publish {}",
        dns::zone_txt(helo, &with_ips("v=spf1 -all", &[ip]))
    );
    match auth.verify_spf(params).await.result() {
        SpfResult::Pass => Check::pass("spf_helo", format!("{helo}: pass")),
        SpfResult::None => Check::info(
            "spf_helo",
            format!("no SPF record at {helo}: bounces from this IP get SPF none"),
        )
        .fix(publish),
        SpfResult::TempError => Check::warn("spf_helo", "temperror: a DNS lookup failed"),
        other => Check::warn(
            "spf_helo",
            format!(
                "{} for HELO {helo}: bounces from this IP fail SPF",
                result_name(other)
            ),
        )
        .fix(publish),
    }
}

/// What walking the include tree found.
#[derive(Debug, Default)]
struct Walk {
    lookups: u32,
    void: u32,
    loops: Vec<String>,
    /// Included or redirected domains without a usable record.
    broken: Vec<String>,
    /// Lookups that failed (no verdict).
    errors: Vec<String>,
    /// Targets built from macros: counted, not followed (they depend on the sender).
    macros: u32,
}

fn literal(m: &Macro) -> Option<String> {
    match m {
        Macro::Literal(b) => Some(dns::norm(&String::from_utf8_lossy(b))),
        _ => None,
    }
}

type Visit<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Counts the DNS-querying terms of `spf` and of every record it includes or redirects to.
fn visit<'a>(
    resolver: &'a TokioResolver,
    spf: Spf,
    chain: Vec<String>,
    w: &'a mut Walk,
) -> Visit<'a> {
    Box::pin(async move {
        let mut targets = Vec::new();
        for d in spf.directives.iter() {
            match &d.mechanism {
                Mechanism::Include { macro_string } => {
                    w.lookups += 1;
                    targets.push(("include", macro_string.clone()));
                }
                Mechanism::A { .. }
                | Mechanism::Mx { .. }
                | Mechanism::Ptr { .. }
                | Mechanism::Exists { .. } => w.lookups += 1,
                Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
            }
        }
        let has_all = spf
            .directives
            .iter()
            .any(|d| matches!(d.mechanism, Mechanism::All));
        if let (Some(r), false) = (&spf.redirect, has_all) {
            w.lookups += 1;
            targets.push(("redirect", r.clone()));
        }
        for (kind, target) in targets {
            // Deep or wide enough to know the limit is passed: stop asking.
            if w.lookups > 2 * MAX_LOOKUPS || chain.len() > 12 {
                return;
            }
            let Some(t) = literal(&target) else {
                w.macros += 1;
                continue;
            };
            if chain.contains(&t) {
                w.loops.push(format!("{} → {t}", chain.join(" → ")));
                continue;
            }
            let from = chain.last().cloned().unwrap_or_default();
            match record(resolver, &t).await {
                Record::One(text) => match Spf::parse(text.as_bytes()) {
                    Ok(inner) => {
                        let mut next = chain.clone();
                        next.push(t);
                        visit(resolver, inner, next, w).await;
                    }
                    Err(e) => w
                        .broken
                        .push(format!("{kind}:{t} (from {from}) is not valid SPF: {e}")),
                },
                Record::Absent => {
                    w.void += 1;
                    w.broken
                        .push(format!("{kind}:{t} (from {from}) has no SPF record"));
                }
                Record::Several(n) => w
                    .broken
                    .push(format!("{kind}:{t} (from {from}) has {n} SPF records")),
                Record::Unreadable(e) => w.errors.push(e),
            }
        }
    })
}

async fn lookups(resolver: &TokioResolver, domain: &str, spf: Spf, ips: &[IpAddr]) -> Check {
    let mut w = Walk::default();
    visit(resolver, spf, vec![domain.to_string()], &mut w).await;
    let flat = dns::zone_txt(domain, &new_record(&ips_or_example(ips)));
    let macros = if w.macros > 0 {
        format!(" ({} macro targets not followed)", w.macros)
    } else {
        String::new()
    };
    if let Some(l) = w.loops.first() {
        let (from, to) = l
            .rsplit_once(" → ")
            .map(|(a, b)| (a.rsplit(" → ").next().unwrap_or(a), b))
            .unwrap_or((domain, domain));
        return Check::fail(
            "spf_lookups",
            format!("include loop: {l} (permerror at every receiver)"),
            format!("remove include:{to} (or redirect={to}) from the SPF record of {from}"),
        );
    }
    if w.lookups > MAX_LOOKUPS {
        let counted = if w.lookups > 2 * MAX_LOOKUPS {
            format!("more than {}", 2 * MAX_LOOKUPS)
        } else {
            w.lookups.to_string()
        };
        return Check::fail(
            "spf_lookups",
            format!(
                "{counted} DNS lookups, over the limit of {MAX_LOOKUPS} (permerror at every receiver){macros}"
            ),
            format!(
                "replace include/a/mx/ptr/exists terms with the ip4:/ip6: ranges they stand for, e.g. {flat}"
            ),
        );
    }
    if !w.broken.is_empty() {
        return Check::fail(
            "spf_lookups",
            w.broken.join("; "),
            "publish the missing record or remove the term that names it",
        );
    }
    if !w.errors.is_empty() {
        return Check::warn(
            "spf_lookups",
            format!("lookup failed: {}", w.errors.join("; ")),
        );
    }
    if w.void > MAX_VOID {
        return Check::warn(
            "spf_lookups",
            format!("{} lookups answer nothing (limit {MAX_VOID})", w.void),
        );
    }
    Check::pass(
        "spf_lookups",
        format!("{} of {MAX_LOOKUPS} DNS lookups{macros}", w.lookups),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_go_in_front_of_all() {
        let ips: Vec<IpAddr> = vec![
            "127.0.0.11".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        assert_eq!(
            with_ips("v=spf1 ip4:127.0.0.10 -all", &ips),
            "v=spf1 ip4:127.0.0.11 ip6:2001:db8::1 ip4:127.0.0.10 -all"
        );
        assert_eq!(with_ips("v=spf1", &ips[..1]), "v=spf1 ip4:127.0.0.11 ~all");
    }

    #[test]
    fn syntax() {
        for ok in [
            "v=spf1 ip4:127.0.0.10 include:a.test -all",
            "v=spf1 a mx:b.test/24 a:c.test/24//64 mx//48 ptr ip6:2001:db8::/32 ~all",
            "v=spf1 exists:%{i}.bl.test redirect=_spf.a.test",
            "v=spf1 ip4:10.0.0.0/8 exp=explain.test -ALL",
        ] {
            assert!(strict(ok).is_ok(), "{ok}");
            assert!(Spf::parse(ok.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "v=spf1 ip4:300.0.0.1 -all",
            "v=spf1 foo:bar -all",
            "v=spf1 ip4:1.2.3.4/40 -all",
            "v=spf1 +-all",
            "v=spf1 include -all",
            "v=spf1 ip6:::1/129",
            "v=spf1 a/33",
            "v=spf1 -redirect=x.test",
            "v=spf1 all:x",
        ] {
            assert!(strict(bad).is_err(), "{bad}");
        }
    }
}
