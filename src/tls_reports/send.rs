//! Sending reports (RFC 8460 §5): when a period is over (or on `POST /api/tls-reports/send`),
//! each policy domain with results and exactly one `_smtp._tls` record gets one report per
//! period, to every URI of its `rua=`:
//! - `mailto:` through poolrelay's own queue, like a DSN (DKIM-signed when a key covers the
//!   `From:` domain; never bounced; `TLS-Required: No` so TLS failures cannot stop it, §5.1);
//! - `https:` by POST, `Content-Type: application/tlsrpt+gzip`, certificate verified (system
//!   roots plus `ca_file`), the host resolved with the relay's own resolver. Not retried: a
//!   failed POST is logged and counted in the reply.
//!
//! At most `MAX_RUA` URIs of a record get the report (the first ones, in the record's order);
//! the others are logged as skipped: a destination's DNS must not make us send without bound.
//!
//! Results are forgotten once their report went out (a domain without a record: at once).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::mta_sts::ReportUri;
use serde::Serialize;

use super::report::{self, Reporter};
use super::settings::Settings;
use super::store::{Collector, DomainPeriod};
use crate::doctor::dns::DnsError;
use crate::signing::Signer;
use crate::spool::{Envelope, Recipient, Spool, TlsRequest, now_unix};
use crate::state::StateError;

/// `client` of the envelope of a report mail: its own sessions are not reported (§5.1 SHOULD).
pub const REPORT_CLIENT: &str = "local:tls-report";

/// Why no report went out (a round), or why one POST failed (its `Target::detail`).
#[derive(Debug, thiserror::Error)]
pub enum ReportSendError {
    /// As the certificate loader words it (with the path).
    #[error("tls_reports.ca_file: {0}")]
    CaFile(#[source] crate::tls::TlsFileError),
    /// As the resolver's builder words it.
    #[error(transparent)]
    Resolver(crate::routing::ResolverError),
    #[error(transparent)]
    Store(#[from] StateError),
    /// A blocking task that panicked.
    #[error("{0}")]
    Crashed(#[source] tokio::task::JoinError),
    /// The `_smtp._tls` lookup.
    #[error(transparent)]
    Lookup(#[from] DnsError),
    #[error("bad URI {url:?}: {source}")]
    BadUri {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("{0:?} is not https")]
    NotHttps(String),
    #[error("no host in {0:?}")]
    NoHost(String),
    #[error("{host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error("{0}: no address")]
    NoAddress(String),
    #[error("{0}")]
    Http(#[source] ureq::Error),
    /// An answer other than 2xx.
    #[error("HTTP {0}")]
    Status(u16),
}

/// One report and what became of it at each URI.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub domain: String,
    pub report_id: String,
    pub start: u64,
    pub end: u64,
    pub policies: usize,
    pub to: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub uri: String,
    pub ok: bool,
    /// The report mail's queue id, the HTTP status, or the error.
    pub detail: String,
}

pub struct Service {
    settings: Settings,
    hostname: String,
    collector: Arc<Collector>,
    resolver: TokioResolver,
    spool: Arc<Spool>,
    signer: Arc<Signer>,
    anchors: Vec<ureq::tls::Certificate<'static>>,
    /// One sending round at a time (the timer and the API).
    round: tokio::sync::Mutex<()>,
}

impl Service {
    /// `None` when `[tls_reports]` (`settings`) is not enabled. `hostname`: the relay's;
    /// `nameservers`: `[dns] nameservers`.
    pub fn new(
        settings: Settings,
        hostname: &str,
        nameservers: &[SocketAddr],
        state: Arc<crate::state::State>,
        spool: Arc<Spool>,
        signer: Arc<Signer>,
    ) -> Result<Option<Arc<Service>>, ReportSendError> {
        if !settings.enabled {
            return Ok(None);
        }
        let mut anchors: Vec<ureq::tls::Certificate<'static>> =
            rustls_native_certs::load_native_certs()
                .certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
        if let Some(ca) = &settings.ca_file {
            for c in crate::tls::load_certs(ca).map_err(ReportSendError::CaFile)? {
                anchors.push(ureq::tls::Certificate::from_der(c.as_ref()).to_owned());
            }
        }
        let collector = Arc::new(Collector::new(Some(state), settings.interval.0));
        Ok(Some(Arc::new(Service {
            resolver: crate::routing::build_resolver(nameservers)
                .map_err(ReportSendError::Resolver)?,
            hostname: hostname.to_string(),
            settings,
            collector,
            spool,
            signer,
            anchors,
            round: tokio::sync::Mutex::new(()),
        })))
    }

    /// Where delivery reports session results.
    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// Reports every period that is over.
    pub async fn send_due(&self) -> Result<Vec<Sent>, ReportSendError> {
        let now = now_unix();
        self.send(Some(self.collector.period_of(now)), now).await
    }

    /// Reports everything collected, the current period up to now included.
    pub async fn send_now(&self) -> Result<Vec<Sent>, ReportSendError> {
        self.send(None, now_unix()).await
    }

    async fn send(&self, before: Option<u64>, now: u64) -> Result<Vec<Sent>, ReportSendError> {
        let _round = self.round.lock().await;
        let c = self.collector.clone();
        let periods = tokio::task::spawn_blocking(move || c.collected(before))
            .await
            .map_err(ReportSendError::Crashed)??;
        let mut sent = Vec::new();
        for dp in periods {
            let end = (dp.start + self.collector.interval() - 1).min(now.max(dp.start));
            match self.lookup_rua(&dp.domain).await {
                Ok(Some(rua)) => {
                    let rua = capped(&dp.domain, rua);
                    sent.push(self.report(&dp, end, rua).await)
                }
                Ok(None) => {
                    tracing::debug!(domain = %dp.domain, "tls-reports: no TLSRPT record, results dropped")
                }
                Err(e) => {
                    // Asked again at the next round: the results stay.
                    tracing::warn!(domain = %dp.domain, error = %e, "tls-reports: TLSRPT lookup failed");
                    continue;
                }
            }
            let (c, keys) = (self.collector.clone(), dp.keys.clone());
            let forgotten = tokio::task::spawn_blocking(move || c.forget(&keys)).await;
            if !matches!(forgotten, Ok(Ok(()))) {
                tracing::error!(domain = %dp.domain, "tls-reports: cannot forget reported results");
            }
        }
        Ok(sent)
    }

    async fn lookup_rua(&self, domain: &str) -> Result<Option<Vec<ReportUri>>, DnsError> {
        let name = format!("_smtp._tls.{domain}");
        let records = crate::doctor::dns::txt(&self.resolver, &name)
            .await
            .records()?;
        Ok(report::rua(&records))
    }

    async fn report(&self, dp: &DomainPeriod, end: u64, rua: Vec<ReportUri>) -> Sent {
        let who = Reporter {
            organization: self.settings.organization.clone(),
            contact: self.settings.contact.clone(),
            submitter: self.settings.submitter(&self.hostname),
        };
        let report = report::build(&who, dp, end, rand::random());
        let gz = report::gzip(report::to_json(&report).as_bytes());
        let mut to = Vec::new();
        let mails: Vec<String> = rua
            .iter()
            .filter_map(|u| match u {
                ReportUri::Mail(m) => Some(m.clone()),
                ReportUri::Http(_) => None,
            })
            .collect();
        if !mails.is_empty() {
            let target = self
                .mail(&report, &dp.domain, &who.submitter, &mails, &gz)
                .await;
            for m in &mails {
                to.push(Target {
                    uri: format!("mailto:{m}"),
                    ..target.clone()
                });
            }
        }
        for u in &rua {
            if let ReportUri::Http(url) = u {
                to.push(self.post(url, &gz).await);
            }
        }
        for t in &to {
            let scheme = if t.uri.starts_with("mailto:") {
                "mailto"
            } else {
                "https"
            };
            crate::metrics::tls_report_sent(scheme, t.ok);
        }
        tracing::info!(
            domain = %dp.domain,
            report_id = %report.report_id,
            policies = dp.policies.len(),
            sent = to.iter().filter(|t| t.ok).count(),
            failed = to.iter().filter(|t| !t.ok).count(),
            "tls-report sent"
        );
        Sent {
            domain: dp.domain.clone(),
            report_id: report.report_id.clone(),
            start: dp.start,
            end,
            policies: dp.policies.len(),
            to,
        }
    }

    /// Queues one report mail to `to` (all the domain's `mailto:` addresses).
    async fn mail(
        &self,
        report: &mail_auth::report::tlsrpt::TlsReport,
        domain: &str,
        submitter: &str,
        to: &[String],
        gz: &[u8],
    ) -> Target {
        let from = self.settings.from(&self.hostname);
        let fail = |e: String| Target {
            uri: String::new(),
            ok: false,
            detail: e,
        };
        let mut bytes = match report::message(report, domain, submitter, &from, to, gz) {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot build the report mail: {e}")),
        };
        // §5.1: the report must go whatever TLS failures; tells delivery (and the next hops).
        bytes.splice(0..0, b"TLS-Required: No\r\n".iter().copied());
        let signed = self.signer.sign(&bytes).unwrap_or_default();
        let env = Envelope {
            id: Spool::new_id(),
            received_at: now_unix(),
            sender: from.clone(),
            recipients: to.iter().map(|a| Recipient::new(a.clone())).collect(),
            client: REPORT_CLIENT.into(),
            helo: String::new(),
            user: None,
            size: 0,
            smtputf8: false,
            body_8bit: !bytes.is_ascii(),
            prepend: signed.headers.clone(),
            ret: None,
            envid: None,
            // Never bounced: a report nobody can take is dropped, not returned to ourselves.
            is_dsn: true,
            pool: None,
            delay_warned: false,
            tls_request: TlsRequest::NotRequired,
            from_domain: signed.from_domain.clone(),
        };
        match self.spool.store(env, &bytes).await {
            Ok(stored) => {
                tracing::info!(queue_id = %stored.id, domain, rcpts = to.len(), dkim = %signed.summary(), "tls-report queued");
                Target {
                    uri: String::new(),
                    ok: true,
                    detail: stored.id,
                }
            }
            Err(e) => {
                tracing::error!(domain, error = %e, "tls-report: cannot queue the report mail");
                fail(format!("cannot queue: {e}"))
            }
        }
    }

    /// POSTs the gzipped report to an `https:` URI.
    async fn post(&self, url: &str, gz: &[u8]) -> Target {
        let result = match self.resolve(url).await {
            Ok(addrs) => {
                let (url2, body, anchors) = (url.to_string(), gz.to_vec(), self.anchors.clone());
                let timeout = self.settings.http_timeout.0;
                tokio::task::spawn_blocking(move || {
                    post_blocking(&url2, &body, addrs, anchors, timeout)
                })
                .await
                .unwrap_or_else(|e| Err(ReportSendError::Crashed(e)))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(url, error = %e, "tls-report: POST failed");
        }
        Target {
            uri: url.to_string(),
            ok: result.is_ok(),
            detail: result.unwrap_or_else(|e| e.to_string()),
        }
    }

    /// The URL's host resolved with the relay's resolver (an IP literal as it is).
    async fn resolve(&self, url: &str) -> Result<Vec<SocketAddr>, ReportSendError> {
        let uri: http::Uri = url.parse().map_err(|source| ReportSendError::BadUri {
            url: url.to_string(),
            source,
        })?;
        if uri.scheme_str() != Some("https") {
            return Err(ReportSendError::NotHttps(url.to_string()));
        }
        let host = uri
            .host()
            .ok_or_else(|| ReportSendError::NoHost(url.to_string()))?;
        let port = uri.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = self
            .resolver
            .lookup_ip(crate::doctor::dns::fqdn(host))
            .await
            .map_err(|source| ReportSendError::Resolve {
                host: host.to_string(),
                source,
            })?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(ReportSendError::NoAddress(host.to_string()));
        }
        Ok(addrs)
    }
}

fn post_blocking(
    url: &str,
    body: &[u8],
    addrs: Vec<SocketAddr>,
    anchors: Vec<ureq::tls::Certificate<'static>>,
    timeout: Duration,
) -> Result<String, ReportSendError> {
    use ureq::tls::{RootCerts, TlsConfig};
    crate::tls::install_crypto_provider();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&anchors))
                .build(),
        )
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Pinned(addrs),
    );
    let response = agent
        .post(url)
        .header("Content-Type", "application/tlsrpt+gzip")
        .send(body)
        .map_err(ReportSendError::Http)?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(ReportSendError::Status(status))
    }
}

/// The addresses found by the relay's resolver, for the URL's name (which the certificate
/// must carry).
#[derive(Debug)]
struct Pinned(Vec<SocketAddr>);

impl ureq::unversioned::resolver::Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        for a in self.0.iter().take(16) {
            addrs.push(*a);
        }
        Ok(addrs)
    }
}

/// Flushes the counts every few seconds and sends each period's reports once it is over
/// (and at start, for periods that ended while the relay was down).
pub fn start(service: Arc<Service>) {
    let flusher = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tick.tick().await;
            let c = flusher.collector.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.flush()).await {
                tracing::error!(error = %e, "tls-reports: cannot save results");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            if let Err(e) = service.send_due().await {
                tracing::error!(error = %e, "tls-reports: sending failed");
            }
            let now = now_unix();
            let next = service.collector.period_of(now) + service.collector.interval();
            tokio::time::sleep(Duration::from_secs(next.saturating_sub(now).max(1))).await;
        }
    });
}

/// How often counted results reach the state store (a crash loses at most this much).
/// How many `rua=` URIs of one record get a report.
pub const MAX_RUA: usize = 5;

/// The first `MAX_RUA` URIs of `rua`; the rest are logged as skipped.
fn capped(domain: &str, mut rua: Vec<ReportUri>) -> Vec<ReportUri> {
    if rua.len() > MAX_RUA {
        for u in &rua[MAX_RUA..] {
            let uri = match u {
                ReportUri::Mail(m) => format!("mailto:{m}"),
                ReportUri::Http(h) => h.clone(),
            };
            tracing::warn!(domain = %domain, uri = %uri, max = MAX_RUA, "tls-reports: too many rua URIs, this one skipped");
        }
        rua.truncate(MAX_RUA);
    }
    rua
}

const FLUSH_EVERY: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_rua_uris_get_a_report() {
        let rua: Vec<ReportUri> = (0..8)
            .map(|i| ReportUri::Mail(format!("tlsrpt{i}@d.test")))
            .chain([ReportUri::Http("https://r.d.test/".into())])
            .collect();
        let kept = capped("d.test", rua.clone());
        assert_eq!(kept, rua[..MAX_RUA]);
        assert_eq!(capped("d.test", rua[..2].to_vec()), rua[..2]);
    }
}
