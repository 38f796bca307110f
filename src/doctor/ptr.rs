//! Naming of a pool IP, as receivers check it (Gmail, Microsoft and most filters refuse or
//! penalise without these):
//! - `ptr`: the IP has a PTR record (in-addr.arpa, or ip6.arpa for IPv6);
//! - `fcrdns`: forward-confirmed: an A/AAAA of a PTR name is the IP itself;
//! - `helo`: the name the relay says in EHLO from that IP is a PTR name, or resolves to the IP.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;

use super::dns::{self, Found, PtrClient};
use super::report::Check;

fn address_record(name: &str, ip: IpAddr) -> String {
    let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
    format!("{name}. IN {rtype} {ip}")
}

/// The three naming checks of one IP whose EHLO name is `helo`.
pub async fn check(
    resolver: &TokioResolver,
    ptrs: &PtrClient,
    ip: IpAddr,
    helo: &str,
) -> Vec<Check> {
    let rname = dns::reverse_name(ip);
    let helo = dns::norm(helo);
    let names = match ptrs.ptr(ip).await {
        Found::Records(names) => names,
        Found::Error(e) => {
            let why = format!("PTR lookup failed: {e}");
            return vec![
                Check::warn("ptr", why.clone()),
                Check::warn("fcrdns", "not checked (no PTR answer)"),
                helo_by_address(resolver, ip, &helo, &[]).await,
            ];
        }
        Found::NoData | Found::NxDomain => {
            return vec![
                Check::fail(
                    "ptr",
                    format!("no PTR record at {rname}"),
                    format!(
                        "publish {rname}. IN PTR {helo}. (in the reverse zone of the IP's owner, usually the hosting provider)"
                    ),
                ),
                Check::fail(
                    "fcrdns",
                    "nothing to confirm: the IP has no PTR",
                    format!(
                        "publish {rname}. IN PTR {helo}. and {}",
                        address_record(&helo, ip)
                    ),
                ),
                helo_by_address(resolver, ip, &helo, &[]).await,
            ];
        }
    };
    let ptr = Check::pass("ptr", format!("{rname} → {}", names.join(", ")));
    let mut confirmed = Vec::new();
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    for name in &names {
        match dns::addrs(resolver, name, ip).await {
            Found::Records(a) if a.contains(&ip) => confirmed.push(name.clone()),
            Found::Records(a) => seen.push(format!(
                "{name} → {}",
                a.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Found::NoData | Found::NxDomain => seen.push(format!(
                "{name} has no {} record",
                if ip.is_ipv4() { "A" } else { "AAAA" }
            )),
            Found::Error(e) => errors.push(e),
        }
    }
    let fcrdns = if let Some(name) = confirmed.first() {
        Check::pass("fcrdns", format!("{name} → {ip}"))
    } else if !errors.is_empty() {
        Check::warn("fcrdns", format!("lookup failed: {}", errors.join("; ")))
    } else {
        Check::fail(
            "fcrdns",
            format!("not forward-confirmed: {}", seen.join("; ")),
            format!("publish {}", address_record(&names[0], ip)),
        )
    };
    let helo_check = if names.contains(&helo) {
        Check::pass("helo", format!("{helo} is the PTR name"))
    } else {
        helo_by_address(resolver, ip, &helo, &names).await
    };
    vec![ptr, fcrdns, helo_check]
}

/// The HELO check when the HELO name is not a PTR name: pass if it resolves to the IP.
async fn helo_by_address(
    resolver: &TokioResolver,
    ip: IpAddr,
    helo: &str,
    ptr_names: &[String],
) -> Check {
    let fix = match ptr_names.first() {
        Some(p) => format!(
            "set helo = \"{p}\" for {ip} in its [[pool.ip]] (or point the PTR at {helo} and publish {})",
            address_record(helo, ip)
        ),
        None => format!("publish {}", address_record(helo, ip)),
    };
    let differs = match ptr_names.first() {
        Some(p) => format!("{helo} is not the PTR name {p}"),
        None => format!("{helo} cannot match a PTR"),
    };
    match dns::addrs(resolver, helo, ip).await {
        Found::Records(a) if a.contains(&ip) => {
            Check::pass("helo", format!("{helo} resolves to {ip}"))
        }
        Found::Records(a) => Check::fail(
            "helo",
            format!(
                "{differs} and resolves to {}, not {ip}",
                a.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix,
        ),
        Found::NoData | Found::NxDomain => {
            Check::fail("helo", format!("{differs} and does not resolve"), fix)
        }
        Found::Error(e) => Check::warn("helo", format!("{differs}; lookup failed: {e}")),
    }
}
