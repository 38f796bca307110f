//! DNSBL monitor: every pool IP against every configured zone, every `check_interval`, through
//! the relay's own resolver. A listing quarantines the IP (all providers, or the list's) with a
//! record of its own per zone; after `clean_checks` clean answers in a row that record is
//! released: the IP goes on probation (unless other records still hold it), like after any
//! quarantine. DNS errors, timeouts and a list's "query refused" codes are never listings.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::pool::{Cause, Pools, Scope};
use crate::reputation::Settings;

/// The reason text of DNSBL quarantines (how they are recognised after a restart).
pub const REASON: &str = "dnsbl listing";

/// Why the lists cannot be checked: a list's settings, or no resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsblError {
    #[error("empty DNSBL zone")]
    EmptyZone,
    #[error("bad DNSBL answer range {0:?}")]
    BadRange(String),
    /// As the resolver's builder words it.
    #[error(transparent)]
    Resolver(crate::routing::ResolverError),
}

/// One list as checked.
#[derive(Debug, Clone)]
pub struct List {
    /// As configured (shown in evidence).
    pub zone: String,
    /// Where queries go (the DQS zone for Spamhaus with a key).
    pub query_zone: String,
    pub providers: Vec<String>,
    /// Inclusive ranges of answers that mean "listed".
    pub listed: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Listed {
        code: Ipv4Addr,
        txt: String,
    },
    Clean,
    /// Not a verdict: DNS failure, timeout, or the list refusing to answer.
    Error(String),
}

fn is_spamhaus(zone: &str) -> bool {
    let z = zone.trim_end_matches('.').to_ascii_lowercase();
    z.ends_with("spamhaus.org") || z.ends_with("spamhaus.net") || z.contains(".spamhaus.")
}

fn range(s: &str) -> Result<(u32, u32), DnsblError> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let p = |x: &str| {
        x.trim()
            .parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| DnsblError::BadRange(s.to_string()))
    };
    Ok((p(a)?, p(b)?))
}

impl List {
    pub fn from_settings(s: &Settings) -> Result<Vec<List>, DnsblError> {
        s.dnsbl
            .iter()
            .map(|spec| {
                let d = spec.dnsbl();
                let zone = d.zone.trim().trim_end_matches('.').to_ascii_lowercase();
                if zone.is_empty() {
                    return Err(DnsblError::EmptyZone);
                }
                let spamhaus = is_spamhaus(&zone);
                let query_zone = match (&s.spamhaus_dqs_key, zone.strip_suffix(".spamhaus.org")) {
                    // DQS: zen.spamhaus.org → KEY.zen.dq.spamhaus.net
                    (Some(key), Some(prefix)) if !key.trim().is_empty() => {
                        format!("{}.{prefix}.dq.spamhaus.net", key.trim())
                    }
                    _ => zone.clone(),
                };
                let listed = if !d.listed.is_empty() {
                    d.listed
                        .iter()
                        .map(|r| range(r))
                        .collect::<Result<_, _>>()?
                } else if spamhaus {
                    // 127.0.0.2–127.0.0.255: SBL/CSS/XBL/PBL; 127.255.255.x: errors.
                    vec![range("127.0.0.2-127.0.0.255")?]
                } else {
                    // 127.0.0.1 and 127.255.255.x are "query refused"/test codes on many lists.
                    vec![range("127.0.0.2-127.255.254.255")?]
                };
                Ok(List {
                    zone,
                    query_zone,
                    providers: d.providers.clone(),
                    listed,
                })
            })
            .collect()
    }

    /// What one A answer means.
    pub fn interpret(&self, code: Ipv4Addr) -> Option<bool> {
        let n = u32::from(code);
        if self.listed.iter().any(|(a, b)| (*a..=*b).contains(&n)) {
            Some(true)
        } else {
            None
        }
    }

    pub fn scopes(&self) -> Vec<Scope> {
        if self.providers.is_empty() {
            vec![Scope::All]
        } else {
            self.providers
                .iter()
                .map(|p| Scope::Provider(p.clone()))
                .collect()
        }
    }
}

/// `10.0.0.127` → `10.0.0.127.ZONE`'s label part: v4 octets reversed, v6 nibbles reversed.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut parts = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0xf));
                parts.push(format!("{:x}", b >> 4));
            }
            parts.join(".")
        }
    }
}

pub async fn check(resolver: &TokioResolver, list: &List, ip: IpAddr) -> Answer {
    let name = format!("{}.{}.", reversed(ip), list.query_zone);
    let lookup = match resolver.lookup(name.as_str(), RecordType::A).await {
        Ok(l) => l,
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Answer::Clean,
        Err(e) => return Answer::Error(format!("{name}: {e}")),
    };
    let codes: Vec<Ipv4Addr> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    let Some(code) = codes
        .iter()
        .copied()
        .find(|c| list.interpret(*c) == Some(true))
    else {
        return match codes.first() {
            Some(c) => Answer::Error(format!(
                "{name}: answer {c} is not a listing code of {} (query refused or error)",
                list.zone
            )),
            None => Answer::Clean,
        };
    };
    let txt = match resolver.lookup(name.as_str(), RecordType::TXT).await {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => String::new(),
    };
    Answer::Listed { code, txt }
}

#[derive(Debug, Clone, Default)]
struct ListState {
    /// Evidence of the listing in force.
    listed: Option<String>,
    clean: u32,
}

pub struct Monitor {
    resolver: TokioResolver,
    lists: Vec<List>,
    pools: Arc<Pools>,
    clean_checks: u32,
    /// (IP, zone) → state.
    states: HashMap<(IpAddr, String), ListState>,
    /// Quarantines this monitor put in place: IP → (scope, zone) → evidence.
    applied: HashMap<IpAddr, BTreeMap<(String, String), String>>,
}

impl Monitor {
    /// `nameservers`: `[dns] nameservers` (empty: the system's).
    pub fn new(
        settings: &Settings,
        nameservers: &[SocketAddr],
        pools: Arc<Pools>,
    ) -> Result<Option<Monitor>, DnsblError> {
        let lists = List::from_settings(settings)?;
        if lists.is_empty() || pools.ips().is_empty() {
            return Ok(None);
        }
        let resolver = crate::routing::build_resolver(nameservers).map_err(DnsblError::Resolver)?;
        let mut m = Monitor {
            resolver,
            lists,
            pools,
            clean_checks: settings.clean_checks.max(1),
            states: HashMap::new(),
            applied: HashMap::new(),
        };
        m.resume();
        Ok(Some(m))
    }

    /// After a restart: DNSBL quarantines still in force count as listings until clean checks.
    fn resume(&mut self) {
        for (ip, hold) in self.pools.holds() {
            let Cause::Dnsbl(zone) = &hold.cause else {
                continue;
            };
            if self.lists.iter().any(|l| &l.zone == zone) {
                self.states.entry((ip, zone.clone())).or_default().listed =
                    Some(hold.evidence.clone());
            }
            self.applied
                .entry(ip)
                .or_default()
                .insert((hold.scope.clone(), zone.clone()), hold.evidence.clone());
        }
    }

    /// One round: every IP against every list, then quarantines brought in line.
    pub async fn run_once(&mut self) {
        let ips = self.pools.ips();
        let mut jobs = tokio::task::JoinSet::new();
        for ip in &ips {
            for (i, l) in self.lists.iter().enumerate() {
                let (resolver, l, ip) = (self.resolver.clone(), l.clone(), *ip);
                jobs.spawn(async move { (ip, i, check(&resolver, &l, ip).await) });
            }
        }
        while let Some(done) = jobs.join_next().await {
            let Ok((ip, i, answer)) = done else { continue };
            let zone = self.lists[i].zone.clone();
            let st = self.states.entry((ip, zone.clone())).or_default();
            match answer {
                Answer::Listed { code, txt } => {
                    let evidence = if txt.is_empty() {
                        format!("{zone} {code}")
                    } else {
                        format!("{zone} {code} \"{txt}\"")
                    };
                    if st.listed.is_none() {
                        tracing::warn!(source_ip = %ip, zone = %zone, code = %code, txt = %txt, "DNSBL listing");
                    }
                    st.listed = Some(evidence);
                    st.clean = 0;
                }
                Answer::Clean => {
                    if st.listed.is_some() {
                        st.clean += 1;
                        tracing::info!(source_ip = %ip, zone = %zone, clean = st.clean, needed = self.clean_checks, "DNSBL clean check of a listed IP");
                        if st.clean >= self.clean_checks {
                            st.listed = None;
                            st.clean = 0;
                        }
                    }
                    tracing::debug!(source_ip = %ip, zone = %zone, "DNSBL clean");
                }
                Answer::Error(e) => {
                    tracing::warn!(source_ip = %ip, zone = %zone, error = %e, "DNSBL check failed (not a listing)");
                }
            }
        }
        for ip in ips {
            self.apply(ip);
        }
    }

    /// Quarantines `ip` for every (scope, zone) some list lists it for; releases the records
    /// of lists that no longer do.
    fn apply(&mut self, ip: IpAddr) {
        let mut want: BTreeMap<(String, String), String> = BTreeMap::new();
        for l in &self.lists {
            let Some(ev) = self
                .states
                .get(&(ip, l.zone.clone()))
                .and_then(|s| s.listed.clone())
            else {
                continue;
            };
            for scope in l.scopes() {
                want.insert((scope.as_str().to_string(), l.zone.clone()), ev.clone());
            }
        }
        let have = self.applied.remove(&ip).unwrap_or_default();
        for ((scope, zone), ev) in &want {
            if have.get(&(scope.clone(), zone.clone())) != Some(ev)
                && let Err(e) = self.pools.quarantine(
                    ip,
                    Scope::parse(Some(scope)),
                    Cause::Dnsbl(zone.clone()),
                    REASON,
                    ev,
                    None,
                )
            {
                tracing::error!(source_ip = %ip, error = %e, "cannot quarantine");
            }
        }
        for (scope, zone) in have.keys().filter(|k| !want.contains_key(*k)) {
            tracing::info!(source_ip = %ip, scope = %scope, zone = %zone, "DNSBL delisted: on probation");
            let cause = Cause::Dnsbl(zone.clone());
            if let Err(e) = self.pools.release(ip, Scope::parse(Some(scope)), cause) {
                tracing::error!(source_ip = %ip, error = %e, "cannot release the DNSBL quarantine");
            }
        }
        if !want.is_empty() {
            self.applied.insert(ip, want);
        }
    }
}

/// Starts the periodic checks (first one at once) when lists are configured.
pub fn start(
    settings: &Settings,
    nameservers: &[SocketAddr],
    pools: Arc<Pools>,
) -> Result<(), DnsblError> {
    let Some(mut m) = Monitor::new(settings, nameservers, pools)? else {
        return Ok(());
    };
    let every = settings.check_interval.0.max(Duration::from_millis(100));
    tracing::info!(lists = m.lists.len(), interval = %humantime::format_duration(every), "DNSBL monitor started");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            m.run_once().await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(toml: &str) -> Vec<List> {
        let s: Settings = toml::from_str(toml).unwrap();
        List::from_settings(&s).unwrap()
    }

    #[test]
    fn reversed_names() {
        assert_eq!(reversed("127.0.0.10".parse().unwrap()), "10.0.0.127");
        assert_eq!(
            reversed("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn return_codes_per_list_and_dqs() {
        let l = lists(
            "dnsbl = [\"zen.spamhaus.org\", \"bl.example\", { zone = \"b.example\", listed = [\"127.0.0.4\"], providers = [\"microsoft\"] }]\nspamhaus_dqs_key = \"K3Y\"",
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(l[0].query_zone, "K3Y.zen.dq.spamhaus.net");
        assert_eq!(l[0].interpret(ip("127.0.0.2")), Some(true));
        assert_eq!(l[0].interpret(ip("127.0.0.11")), Some(true));
        for refused in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert_eq!(l[0].interpret(ip(refused)), None, "{refused}");
        }
        assert_eq!(l[1].query_zone, "bl.example");
        assert_eq!(l[1].interpret(ip("127.0.0.1")), None);
        assert_eq!(l[1].interpret(ip("127.0.0.2")), Some(true));
        assert_eq!(l[1].interpret(ip("192.0.2.1")), None, "not a DNSBL answer");
        assert_eq!(l[2].interpret(ip("127.0.0.2")), None);
        assert_eq!(l[2].interpret(ip("127.0.0.4")), Some(true));
        assert_eq!(l[2].scopes(), vec![Scope::Provider("microsoft".into())]);
        assert_eq!(l[1].scopes(), vec![Scope::All]);
    }
}
