//! One round of checks over everything the config names, all IPs and domains at once, through
//! the relay's own resolver (`[dns] nameservers`).

use std::sync::Arc;

use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;
use tokio_rustls::TlsConnector;

use super::dns::PtrClient;
use super::report::{DomainReport, IpReport, Report};
use super::targets::{self, DomainTarget, IpTarget};
use super::{blocklist, dkim, dmarc, mx, probe, ptr, spf, sts_policy};
use crate::config::Config;
use crate::delivery::policy::mta_sts::MtaSts;
use crate::reputation::dnsbl::List;
use crate::routing::Router;

/// What one round covers besides the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--domain` arguments.
    pub domains: Vec<String>,
    /// Probe postmaster@/abuse@ at RCPT.
    pub probe: bool,
}

pub struct Doctor {
    config: Arc<Config>,
    resolver: TokioResolver,
    ptrs: PtrClient,
    lists: Vec<List>,
    router: Router,
    tls: Option<TlsConnector>,
    /// Fetches the operator's own MTA-STS policies as delivery would.
    sts: MtaSts,
}

impl Doctor {
    pub fn new(config: Arc<Config>) -> Result<Doctor, String> {
        let resolver =
            crate::routing::build_resolver(&config.dns.nameservers).map_err(|e| e.to_string())?;
        let lists = List::from_settings(&config.reputation)?;
        let router = Router::new(&config).map_err(|e| e.to_string())?;
        let connectors = crate::delivery::tls::connectors(&config.delivery).ok();
        let (tls, verifying) = match connectors {
            Some(c) => (Some(c.opportunistic), c.required),
            None => (None, None),
        };
        let sts = MtaSts::new(&config, verifying, None);
        Ok(Doctor {
            sts,
            ptrs: PtrClient::new(&config.dns.nameservers)?,
            config,
            resolver,
            lists,
            router,
            tls,
        })
    }

    /// All checks; `Err` only for bad input (a `--domain` that is not a domain name).
    pub async fn run(self: &Arc<Self>, opts: &Options) -> Result<Report, String> {
        let ips = targets::ips(&self.config);
        let domains = targets::domains(&self.config, &opts.domains)?;
        let mut ip_jobs = tokio::task::JoinSet::new();
        for (i, t) in ips.into_iter().enumerate() {
            let me = self.clone();
            ip_jobs.spawn(async move { (i, me.check_ip(t).await) });
        }
        let mut domain_jobs = tokio::task::JoinSet::new();
        for (i, t) in domains.into_iter().enumerate() {
            let (me, probe) = (self.clone(), opts.probe);
            domain_jobs.spawn(async move { (i, me.check_domain(t, probe).await) });
        }
        let mut ip_reports: Vec<(usize, IpReport)> = ip_jobs.join_all().await;
        let mut domain_reports: Vec<(usize, DomainReport)> = domain_jobs.join_all().await;
        ip_reports.sort_by_key(|(i, _)| *i);
        domain_reports.sort_by_key(|(i, _)| *i);
        Ok(Report::with_feeds(
            ip_reports.into_iter().map(|(_, r)| r).collect(),
            domain_reports.into_iter().map(|(_, r)| r).collect(),
            super::feeds::checks(&self.config),
        ))
    }

    async fn check_ip(&self, t: IpTarget) -> IpReport {
        let auth = MessageAuthenticator(self.resolver.clone());
        let (mut checks, helo_spf, listed) = tokio::join!(
            ptr::check(&self.resolver, &self.ptrs, t.ip, &t.helo),
            spf::check_helo(&auth, t.ip, &t.helo, &self.config.hostname),
            blocklist::check(&self.resolver, &self.lists, t.ip)
        );
        checks.push(helo_spf);
        checks.extend(listed);
        IpReport {
            ip: t.ip,
            helo: t.helo,
            pools: t.pools,
            checks,
        }
    }

    async fn check_domain(&self, t: DomainTarget, probe: bool) -> DomainReport {
        let d = t.domain.as_str();
        let auth = MessageAuthenticator(self.resolver.clone());
        let keys: Vec<_> = self
            .config
            .dkim
            .iter()
            .filter(|k| super::dns::norm(&k.domain) == d)
            .collect();
        let dkim_checks = async {
            let mut v = Vec::new();
            for k in keys {
                v.push(dkim::check(&self.resolver, k).await);
            }
            v
        };
        let probes = async {
            if !probe {
                return probe::MAILBOXES
                    .iter()
                    .map(|m| {
                        super::report::Check::info("rcpt", "not probed (--no-probe)")
                            .about(format!("{m}@{d}"))
                    })
                    .collect();
            }
            let sender = self.config.doctor.probe_sender.trim();
            let prober = probe::Prober {
                router: &self.router,
                tls: self.tls.as_ref(),
                sender,
                timeout: self.config.doctor.probe_timeout.0,
            };
            // No pool: the OS picks the address, the relay says its own name.
            let fallback = self
                .config
                .delivery
                .helo
                .as_deref()
                .unwrap_or(&self.config.hostname);
            let source = match t.senders.first() {
                Some(s) => (Some(s.ip), s.helo.as_str()),
                None => (None, fallback),
            };
            prober.check(d, source).await
        };
        let (spf, dkim, dmarc, mx, sts, sts_policy, rpt, rcpt) = tokio::join!(
            spf::check(&auth, d, &t.senders, &self.config.hostname),
            dkim_checks,
            dmarc::check(&self.resolver, d),
            mx::check_mx(&self.resolver, d),
            mx::check_mta_sts(&self.resolver, d),
            sts_policy::check(&self.resolver, &self.sts, d),
            mx::check_tls_rpt(&self.resolver, d),
            probes,
        );
        let mut checks = spf;
        checks.extend(dkim);
        checks.extend([dmarc, mx, sts]);
        checks.extend(sts_policy);
        checks.push(rpt);
        checks.extend(rcpt);
        DomainReport {
            ips: t.senders.iter().map(|s| s.ip).collect(),
            domain: t.domain,
            sources: t.sources,
            checks,
        }
    }
}
