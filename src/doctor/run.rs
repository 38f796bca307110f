//! One round of checks over everything the config names, all IPs and domains at once, through
//! the relay's own resolver (`[dns] nameservers`).

use std::sync::Arc;

use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;
use tokio_rustls::TlsConnector;

use super::dns::{DnsError, PtrClient};
use super::report::{DomainReport, IpReport, Report};
use super::targets::{self, DomainTarget, IpTarget, TargetError};
use super::{Inputs, blocklist, dkim, dmarc, mx, probe, ptr, spf, sts_policy};
use crate::delivery::policy::mta_sts::MtaSts;
use crate::reputation::dnsbl::{DnsblError, List};
use crate::routing::Router;

/// What one round covers besides the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--domain` arguments.
    pub domains: Vec<String>,
    /// Probe postmaster@/abuse@ at RCPT.
    pub probe: bool,
}

/// Why the checks cannot run: their resolver, lists or routes cannot be built, or a target
/// is not a domain name. Texts as the parts word them.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The resolver (`[dns] nameservers`).
    #[error(transparent)]
    Resolver(crate::routing::ResolverError),
    /// The PTR client (the same nameservers).
    #[error(transparent)]
    PtrClient(#[from] DnsError),
    #[error(transparent)]
    Dnsbl(#[from] DnsblError),
    /// The routes (`[[route]]`).
    #[error(transparent)]
    Routing(crate::routing::ResolverError),
    #[error(transparent)]
    Target(#[from] TargetError),
}

pub struct Doctor {
    inputs: Inputs,
    tools: Tools,
}

/// What the checks go through, built by the caller (`server::doctor_tools`) as delivery's are.
pub struct Tools {
    /// The relay's own resolver (`[dns] nameservers`).
    pub resolver: TokioResolver,
    pub ptrs: PtrClient,
    /// `[reputation] dnsbl`.
    pub lists: Vec<List>,
    pub router: Router,
    pub tls: Option<TlsConnector>,
    /// Fetches the operator's own MTA-STS policies as delivery would.
    pub sts: MtaSts,
}

impl Doctor {
    pub fn new(inputs: Inputs, tools: Tools) -> Doctor {
        Doctor { inputs, tools }
    }

    /// All checks; `Err` only for bad input (a `--domain` that is not a domain name).
    pub async fn run(self: &Arc<Self>, opts: &Options) -> Result<Report, DoctorError> {
        let ips = targets::ips(&self.inputs);
        let domains = targets::domains(&self.inputs, &opts.domains)?;
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
            super::feeds::checks(self.inputs.feeds.as_ref(), &self.inputs.data_dir),
        ))
    }

    async fn check_ip(&self, t: IpTarget) -> IpReport {
        let tools = &self.tools;
        let auth = MessageAuthenticator(tools.resolver.clone());
        let (mut checks, helo_spf, listed) = tokio::join!(
            ptr::check(&tools.resolver, &tools.ptrs, t.ip, &t.helo),
            spf::check_helo(&auth, t.ip, &t.helo, &self.inputs.hostname),
            blocklist::check(&tools.resolver, &tools.lists, t.ip)
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
        let tools = &self.tools;
        let auth = MessageAuthenticator(tools.resolver.clone());
        let keys: Vec<_> = self
            .inputs
            .dkim
            .iter()
            .filter(|k| super::dns::norm(&k.domain) == d)
            .collect();
        let dkim_checks = async {
            let mut v = Vec::new();
            for k in keys {
                v.push(dkim::check(&tools.resolver, k).await);
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
            let sender = self.inputs.settings.probe_sender.trim();
            let prober = probe::Prober {
                router: &tools.router,
                tls: tools.tls.as_ref(),
                sender,
                timeout: self.inputs.settings.probe_timeout.0,
            };
            // No pool: the OS picks the address, the relay says its own name.
            let fallback = self.inputs.helo.as_deref().unwrap_or(&self.inputs.hostname);
            let source = match t.senders.first() {
                Some(s) => (Some(s.ip), s.helo.as_str()),
                None => (None, fallback),
            };
            prober.check(d, source).await
        };
        let (spf, dkim, dmarc, mx, sts, sts_policy, rpt, rcpt) = tokio::join!(
            spf::check(&auth, d, &t.senders, &self.inputs.hostname),
            dkim_checks,
            dmarc::check(&tools.resolver, d),
            mx::check_mx(&tools.resolver, d),
            mx::check_mta_sts(&tools.resolver, d),
            sts_policy::check(&tools.resolver, &tools.sts, d),
            mx::check_tls_rpt(&tools.resolver, d),
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
