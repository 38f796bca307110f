//! The test zones and sinks of `doctor.rs`: one IP and one domain in order, one broken in each
//! way a receiver checks.

use std::net::IpAddr;
use std::path::Path;

use crate::V6;
use crate::common::*;

pub fn v6() -> IpAddr {
    V6.parse().unwrap()
}

/// A pool IP named `host` both ways (PTR and A/AAAA).
pub fn named_ip(dns: &DnsServer, ip: IpAddr, host: &str) {
    dns.add_ptr(ip, host);
    dns.add_ip(host, ip);
}

/// A sending domain with SPF, DMARC and an MX on `mx_ip` (each `None` leaves it out).
pub fn domain(dns: &DnsServer, d: &str, spf: Option<&str>, dmarc: Option<&str>, mx_ip: IpAddr) {
    if let Some(s) = spf {
        dns.add_txt(d, s);
    }
    // Unrelated TXT records at the same names must not confuse the checks.
    dns.add_txt(d, "site-verification=abc");
    if let Some(m) = dmarc {
        dns.add_txt(&format!("_dmarc.{d}"), m);
    }
    dns.add_mx(d, 10, &format!("mx.{d}"));
    dns.add_ip(&format!("mx.{d}"), mx_ip);
}

pub const REJECT: &str = "v=DMARC1; p=reject; rua=mailto:dmarc@example.test";
pub const GOOD_SPF: &str = "v=spf1 include:_spf.good.test -all";

/// The good IP and domain: everything a receiver checks is in order.
pub fn publish_good(dns: &DnsServer, dir: &Path) -> String {
    named_ip(dns, lo(10), "out10.good.test");
    dns.add_txt("out10.good.test", "v=spf1 a -all"); // the HELO identity's SPF
    dns.add_txt("_spf.good.test", "v=spf1 ip4:127.0.0.10 ip6:::1 ~all");
    domain(dns, "good.test", Some(GOOD_SPF), Some(REJECT), lo(20));
    dns.add_txt("_mta-sts.good.test", "v=STSv1; id=20260101T000000");
    dns.add_txt(
        "_smtp._tls.good.test",
        "v=TLSRPTv1; rua=mailto:tls@good.test",
    );
    let mut dkim = String::new();
    for (sel, alg) in [("s1", "ed25519"), ("s2", "rsa2048")] {
        let (path, txt) = keygen(dir, "good.test", sel, alg);
        dns.add_txt(&format!("{sel}._domainkey.good.test"), &txt);
        dkim.push_str(&format!(
            "[[dkim]]\ndomain = \"good.test\"\nselector = \"{sel}\"\nprivate_key = \"{}\"\n",
            path.display()
        ));
    }
    dkim
}

pub fn base_config(dns: &DnsServer, sink_port: u16, rest: &str) -> String {
    config_with(dns, sink_port, "", rest)
}

/// `base_config` with `delivery` lines added to `[delivery]`.
pub fn config_with(dns: &DnsServer, sink_port: u16, delivery: &str, rest: &str) -> String {
    format!(
        r#"
hostname = "relay.test"
data_dir = "data"

[[listen]]
address = "127.0.0.1:{listen}"
tls = "none"
auth = "none"

[access]
networks = ["127.0.0.0/8"]

[dns]
nameservers = ["{ns}"]

[delivery]
port = {sink_port}
{delivery}

[reputation]
dnsbl = ["bl.test"]

{rest}
"#,
        listen = free_port(),
        ns = dns.nameserver(),
    )
}

/// Sinks offering STARTTLS: 127.0.0.20 accepts every RCPT; 127.0.0.21 refuses postmaster@.
pub fn sinks(dir: &Path) -> Sink {
    let certs = make_certs(dir, &["mx.good.test", "mta-sts.good.test"]);
    Sink::builder(&[lo(20), lo(21)])
        .starttls(&certs)
        .script(|s: &Step| match &s.stage {
            Stage::RcptTo(a) if s.local.ip() == lo(21) && a.starts_with("postmaster@") => Some(
                format!("550 5.1.1 <{a}>: Recipient address rejected: User unknown"),
            ),
            _ => None,
        })
        .start()
}

/// good.test's MTA-STS policy (`enforce`, its MX) over HTTPS on 127.0.0.30 with the sinks'
/// certificate (call `sinks` first). Returns the server (keep it) and the `[delivery]` lines
/// and section that make the relay trust and reach it.
pub fn policy_server(dns: &DnsServer, dir: &Path) -> (HttpsServer, String, String) {
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        chain: dir.join("chain.pem"),
    };
    let web = HttpsServer::start(lo(30), &certs);
    dns.add_ip("mta-sts.good.test", lo(30));
    web.set(
        "mta-sts.good.test",
        Served::text("version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 86400\n"),
    );
    let delivery = "ca_file = \"ca.pem\"\n".to_string();
    let section = format!("\n[delivery.mta_sts]\nhttps_port = {}\n", web.port());
    (web, delivery, section)
}

/// Pool IPs broken in each way (127.0.0.10 from `publish_good` and ::1 are in order).
pub fn publish_broken_ips(dns: &DnsServer) {
    dns.add_ip("out11.good.test", lo(11)); // no PTR
    dns.add_ptr(lo(12), "out12.good.test"); // PTR without A
    named_ip(dns, lo(13), "out13.good.test"); // HELO says another name
    named_ip(dns, lo(14), "out14.good.test"); // listed
    dns.add_a("14.0.0.127.bl.test", "127.0.0.2".parse().unwrap());
    dns.add_txt(
        "14.0.0.127.bl.test",
        "Listed for testing: see https://bl.test/14",
    );
    named_ip(dns, v6(), "out6.good.test"); // IPv6 in ip6.arpa, all good
    dns.add_txt("out6.good.test", "v=spf1 a -all");
}

/// Domains broken in each way, everything else in order; returns their `[[dkim]]` entries.
pub fn publish_broken_domains(dns: &DnsServer, dir: &Path) -> String {
    const SPF: &str = "v=spf1 ip4:127.0.0.10 -all";
    let includes: String = (1..=11)
        .map(|i| format!(" include:i{i}.spflong.test"))
        .collect();
    let long = format!("v=spf1{includes} -all");
    let pnone = "v=DMARC1; p=none; rua=mailto:d@pnone.test";
    for (d, spf, dmarc, mx) in [
        ("spfmiss.test", SPF, Some(REJECT), 20), // pool "mixed" also sends from ::1
        ("spflong.test", &long, Some(REJECT), 20),
        (
            "spfloop.test",
            "v=spf1 include:a.spfloop.test ip4:127.0.0.10 -all",
            Some(REJECT),
            20,
        ),
        (
            "spfsyntax.test",
            "v=spf1 ip4:127.0.0.300 -all",
            Some(REJECT),
            20,
        ),
        // Permanent errors mail-auth's evaluator passes: an unknown mechanism; two records.
        (
            "spfunknown.test",
            "v=spf1 ip4:127.0.0.10 frob -all",
            Some(REJECT),
            20,
        ),
        ("spftwo.test", SPF, Some(REJECT), 20),
        ("dkimother.test", SPF, Some(REJECT), 20),
        ("dkimbad.test", SPF, Some(REJECT), 20),
        ("nodmarc.test", SPF, None, 20),
        ("pnone.test", SPF, Some(pnone), 20),
        ("refusedpm.test", SPF, Some(REJECT), 21), // its MX refuses postmaster@
    ] {
        domain(dns, d, Some(spf), dmarc, lo(mx));
    }
    for i in 1..=11 {
        let body = if i == 11 { "ip4:127.0.0.10 " } else { "" };
        dns.add_txt(&format!("i{i}.spflong.test"), &format!("v=spf1 {body}-all"));
    }
    dns.add_txt("a.spfloop.test", "v=spf1 include:spfloop.test -all");
    dns.add_txt("spftwo.test", "v=spf1 ip4:127.0.0.10 ~all");
    // dkimother.test publishes another key than its own; dkimbad.test a truncated one.
    let (other_key, _) = keygen(dir, "dkimother.test", "s1", "ed25519");
    let (_, other) = keygen(dir, "dkimother.test", "unused", "ed25519");
    dns.add_txt("s1._domainkey.dkimother.test", &other);
    let (bad_key, _) = keygen(dir, "dkimbad.test", "s1", "rsa2048");
    let truncated = "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A";
    dns.add_txt("s1._domainkey.dkimbad.test", truncated);
    [("dkimother.test", other_key), ("dkimbad.test", bad_key)]
        .iter()
        .map(|(d, path)| {
            format!(
                "[[dkim]]\ndomain = \"{d}\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
                path.display()
            )
        })
        .collect()
}

/// Pools for the broken IPs and ::1 (with 127.0.0.10 for spfmiss.test), the extra domains.
pub const BROKEN: &str = r#"
[[pool]]
name = "default"
[[pool.ip]]
address = "127.0.0.10"
helo = "out10.good.test"

[[pool]]
name = "bad"
[[pool.ip]]
address = "127.0.0.11"
helo = "out11.good.test"
[[pool.ip]]
address = "127.0.0.12"
helo = "out12.good.test"
[[pool.ip]]
address = "127.0.0.13"
helo = "mail13.good.test"
[[pool.ip]]
address = "127.0.0.14"
helo = "out14.good.test"

[[pool]]
name = "mixed"
[[pool.ip]]
address = "127.0.0.10"
helo = "out10.good.test"
[[pool.ip]]
address = "::1"
helo = "out6.good.test"

[[pool_rule]]
sender_domain = "spfmiss.test"
pool = "mixed"

[doctor]
domains = ["spflong.test", "spfloop.test", "spfsyntax.test", "spfunknown.test", "spftwo.test",
  "nodmarc.test", "pnone.test"]
"#;
