//! What a receiver learns about a sending domain's own mail service:
//! - `mx`: the domain has an MX (replies and bounces reach it; many receivers refuse senders
//!   whose domain cannot receive). No MX but an address warns (implicit MX); a null MX
//!   (RFC 7505 §4.2) or a domain that does not exist fails;
//! - `mta_sts` (`_mta-sts`), `tls_rpt` (`_smtp._tls`): reported when present, checked with
//!   mail-auth's parsers; absent is only a note.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{MtaSts, TlsRpt};

use super::dns::{self, Found};
use super::report::Check;

pub async fn check_mx(resolver: &TokioResolver, domain: &str) -> Check {
    let publish = format!("publish {domain}. IN MX 10 mx.{domain}. (a host that accepts its mail)");
    match dns::mx(resolver, domain).await {
        Found::Records(mut mx) => {
            mx.sort();
            if mx.iter().all(|(_, h)| h.is_empty()) {
                return Check::fail(
                    "mx",
                    format!(
                        "null MX: {domain} says it receives no mail, so receivers refuse mail from it (RFC 7505)"
                    ),
                    format!(
                        "replace the null MX: {}",
                        publish.trim_start_matches("publish ")
                    ),
                );
            }
            let list: Vec<String> = mx.iter().map(|(p, h)| format!("{p} {h}")).collect();
            Check::pass("mx", list.join(", "))
        }
        Found::NxDomain => Check::fail(
            "mx",
            format!("{domain} does not exist in DNS (NXDOMAIN)"),
            publish,
        ),
        Found::NoData => {
            let v4 = dns::addrs(resolver, domain, IpAddr::from([0, 0, 0, 0])).await;
            let v6 = dns::addrs(resolver, domain, IpAddr::from([0u16; 8])).await;
            match (v4, v6) {
                (Found::Records(_), _) | (_, Found::Records(_)) => Check::warn(
                    "mx",
                    format!("no MX: mail to {domain} goes to its address record (implicit MX)"),
                )
                .fix(publish),
                (Found::Error(e), _) | (_, Found::Error(e)) => {
                    Check::warn("mx", format!("no MX; address lookup failed: {e}"))
                }
                _ => Check::fail(
                    "mx",
                    format!("no MX and no address: {domain} cannot receive replies or bounces"),
                    publish,
                ),
            }
        }
        Found::Error(e) => Check::warn("mx", format!("lookup failed: {e}")),
    }
}

/// An optional policy record: `info` when absent, `pass` when valid, `warn` when not.
async fn optional<T: TxtRecordParser>(
    resolver: &TokioResolver,
    check: &'static str,
    name: &str,
    prefix: &str,
    describe: impl Fn(&T) -> String,
) -> Check {
    let recs = match dns::txt(resolver, name).await {
        Found::Error(e) => return Check::warn(check, format!("lookup failed: {e}")),
        f => dns::with_prefix(f.records().unwrap_or_default(), prefix),
    };
    match recs.as_slice() {
        [] => Check::info(check, format!("no record at {name}")),
        [one] => match T::parse(one.as_bytes()) {
            Ok(t) => Check::pass(check, format!("{name}: {}", describe(&t))),
            Err(e) => Check::warn(
                check,
                format!("malformed record at {name} ({e}): \"{one}\""),
            ),
        },
        many => Check::warn(
            check,
            format!(
                "{} records at {name}: receivers ignore them all",
                many.len()
            ),
        ),
    }
}

pub async fn check_mta_sts(resolver: &TokioResolver, domain: &str) -> Check {
    optional::<MtaSts>(
        resolver,
        "mta_sts",
        &format!("_mta-sts.{domain}"),
        "v=STSv1",
        |r| format!("id={} (the policy file: check mta_sts_policy)", r.id),
    )
    .await
}

pub async fn check_tls_rpt(resolver: &TokioResolver, domain: &str) -> Check {
    optional::<TlsRpt>(
        resolver,
        "tls_rpt",
        &format!("_smtp._tls.{domain}"),
        "v=TLSRPTv1",
        |r| format!("{} report address(es)", r.rua.len()),
    )
    .await
}
