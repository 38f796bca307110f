//! What to check, read from the config (`Inputs`): every pool IP with its EHLO name, and every sending
//! domain with the pool IPs that can send for it.
//!
//! Sending domains: `[[dkim]]` domains, pool-rule sender domains (and the domain of `sender`
//! patterns) when they name one domain (no `*`/`?`), `[doctor] domains`, `--domain`.
//! The IPs of a domain follow the pool rules as routing a message would: every rule that can
//! match a sender at the domain adds its pool; a rule on the sender domain alone matches every
//! such sender, so later rules and the default pool are not reached.

use std::net::IpAddr;

use crate::util::glob::glob;

use super::Inputs;
use super::dns::norm;
use super::spf::Sender;

#[derive(Debug, Clone)]
pub struct IpTarget {
    pub ip: IpAddr,
    pub helo: String,
    pub pools: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DomainTarget {
    pub domain: String,
    pub sources: Vec<String>,
    pub senders: Vec<Sender>,
}

/// Every pool IP once, in config order (the first `helo` given for it).
pub fn ips(inputs: &Inputs) -> Vec<IpTarget> {
    let mut out: Vec<IpTarget> = Vec::new();
    for pool in &inputs.pools {
        for (address, helo) in &pool.ips {
            match out.iter_mut().find(|t| t.ip == *address) {
                Some(t) => t.pools.push(pool.name.clone()),
                None => out.push(IpTarget {
                    ip: *address,
                    helo: norm(helo),
                    pools: vec![pool.name.clone()],
                }),
            }
        }
    }
    out
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// A domain name as given on the command line or in `[doctor] domains`.
pub fn valid_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.');
    d.contains('.')
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A target the config or the command line names that cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a domain name")]
    NotADomain(String),
}

/// Sending domains with why each is checked, in first-seen order. `Err` names a bad domain.
pub fn domains(inputs: &Inputs, extra: &[String]) -> Result<Vec<DomainTarget>, TargetError> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    let mut add = |d: &str, why: &str| {
        let d = norm(d);
        match found.iter_mut().find(|(x, _)| *x == d) {
            Some((_, w)) if !w.iter().any(|x| x == why) => w.push(why.to_string()),
            Some(_) => {}
            None => found.push((d, vec![why.to_string()])),
        }
    };
    for k in &inputs.dkim {
        add(&k.domain, "dkim");
    }
    for r in &inputs.rules {
        if let Some(d) = r.sender_domain.as_deref().filter(|d| !is_pattern(d)) {
            add(d, "pool_rule");
        }
        if let Some((_, d)) = r.sender.as_deref().and_then(|s| s.rsplit_once('@'))
            && !is_pattern(d)
        {
            add(d, "pool_rule");
        }
    }
    for (list, why) in [
        (&inputs.settings.domains, "config"),
        (&extra.to_vec(), "argument"),
    ] {
        for d in list {
            if !valid_domain(&norm(d)) {
                return Err(TargetError::NotADomain(d.clone()));
            }
            add(d, why);
        }
    }
    Ok(found
        .into_iter()
        .map(|(domain, sources)| DomainTarget {
            senders: senders_for(inputs, &domain),
            domain,
            sources,
        })
        .collect())
}

/// The pools that mail from `domain` can use, by the rules (see the module summary).
pub fn pools_for(inputs: &Inputs, domain: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: &str| {
        if !out.iter().any(|x| x == p) {
            out.push(p.to_string());
        }
    };
    for r in &inputs.rules {
        let by_domain = r.sender_domain.as_deref().is_none_or(|p| glob(p, domain));
        let by_sender = r
            .sender
            .as_deref()
            .is_none_or(|s| s.rsplit_once('@').is_none_or(|(_, d)| glob(d, domain)));
        if !(by_domain && by_sender) {
            continue;
        }
        push(&r.pool);
        if r.user.is_none() && r.sender.is_none() && r.sender_domain.is_some() {
            return out;
        }
    }
    let default = inputs
        .pools
        .iter()
        .find(|p| p.name == "default")
        .or(inputs.pools.first());
    if let Some(p) = default {
        push(&p.name);
    }
    out
}

fn senders_for(inputs: &Inputs, domain: &str) -> Vec<Sender> {
    let mut out: Vec<Sender> = Vec::new();
    for name in pools_for(inputs, domain) {
        for pool in inputs.pools.iter().filter(|p| p.name == name) {
            for (address, helo) in &pool.ips {
                if !out.iter().any(|s| s.ip == *address) {
                    out.push(Sender {
                        ip: *address,
                        helo: norm(helo),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Inputs {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n{extra}"
        );
        crate::config::Config::parse(Path::new("t.toml"), &text)
            .unwrap()
            .doctor_inputs()
    }

    const POOLS: &str = "[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"o10.test\"\n[[pool]]\nname = \"bulk\"\n[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"O11.test.\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"other\"\n[[pool]]\nname = \"vip\"\n[[pool.ip]]\naddress = \"127.0.0.12\"\nhelo = \"o12.test\"\n";

    #[test]
    fn ips_once_with_their_pools() {
        let t = ips(&config(POOLS));
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].pools, vec!["default", "bulk"]);
        assert_eq!(t[0].helo, "o10.test");
        assert_eq!(t[1].helo, "o11.test");
    }

    #[test]
    fn domains_and_their_pools_follow_the_rules() {
        let c = config(&format!(
            "{POOLS}[[pool_rule]]\nuser = \"vip-*\"\npool = \"vip\"\n[[pool_rule]]\nsender_domain = \"news.test\"\npool = \"bulk\"\n[[pool_rule]]\nsender_domain = \"*.wild.test\"\npool = \"bulk\"\n[[pool_rule]]\nsender = \"promo-*@shop.test\"\npool = \"bulk\"\n[doctor]\ndomains = [\"Extra.test\"]\n"
        ));
        let d = domains(&c, &["arg.test".into(), "news.test".into()]).unwrap();
        let names: Vec<&str> = d.iter().map(|t| t.domain.as_str()).collect();
        assert_eq!(names, ["news.test", "shop.test", "extra.test", "arg.test"]);
        assert_eq!(d[0].sources, ["pool_rule", "argument"]);
        // A user rule can match anyone; the domain rule then catches every news.test sender.
        assert_eq!(pools_for(&c, "news.test"), ["vip", "bulk"]);
        assert_eq!(pools_for(&c, "shop.test"), ["vip", "bulk", "default"]);
        assert_eq!(pools_for(&c, "a.wild.test"), ["vip", "bulk"]);
        let ips: Vec<String> = d[0].senders.iter().map(|s| s.ip.to_string()).collect();
        assert_eq!(ips, ["127.0.0.12", "127.0.0.11", "127.0.0.10"]);
        assert!(domains(&c, &["not a domain".into()]).is_err());
        assert!(domains(&c, &["nodot".into()]).is_err());
        let idn = domains(&c, &["Bücher.example".into()]).unwrap();
        assert_eq!(idn.last().unwrap().domain, "xn--bcher-kva.example");
    }
}
