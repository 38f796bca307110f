//! Fetching a policy file (RFC 8461 §3.3) with hyper's HTTP/1.1 client.
//!
//! Rules:
//! - `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`; the name resolved by the delivery
//!   resolver; the certificate verified for that name with the delivery's verifying
//!   connector (`[delivery] ca_file` + system roots).
//! - Only `200` with `text/plain` counts; redirects are not followed (§3.3); at most 64 KiB;
//!   the whole fetch within `fetch_timeout`.
//! - Errors are typed for TLS-RPT: `sts-policy-fetch-error` (DNS, TCP, TLS, HTTP) or
//!   `sts-policy-invalid` (a body that is no policy).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Policy;
use crate::delivery::policy::TlsFailure;

/// RFC 8461 §3.3: senders may limit the policy's size; 64 KiB is plenty.
const MAX_BODY: usize = 64 * 1024;

pub struct Fetcher {
    /// None when no trust anchor could be loaded: every fetch fails.
    pub connector: Option<TlsConnector>,
    pub port: u16,
    pub timeout: Duration,
}

/// Why no policy came back.
pub type FetchError = (TlsFailure, String);

impl Fetcher {
    pub async fn fetch(
        &self,
        domain: &str,
        resolver: &TokioResolver,
    ) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{domain}");
        let text = match tokio::time::timeout(self.timeout, self.get(&host, resolver)).await {
            Ok(r) => r.map_err(|e| (TlsFailure::StsPolicyFetchError, e))?,
            Err(_) => {
                let why = format!("fetching https://{host}/ timed out");
                return Err((TlsFailure::StsPolicyFetchError, why));
            }
        };
        Policy::parse(&text).map_err(|e| (TlsFailure::StsPolicyInvalid, e))
    }

    async fn get(&self, host: &str, resolver: &TokioResolver) -> Result<String, String> {
        let connector = self
            .connector
            .as_ref()
            .ok_or("no CA certificates are available")?;
        let ips = resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let mut last = format!("{host}: no address");
        let mut tcp = None;
        for ip in ips.iter() {
            let addr = SocketAddr::new(ip, self.port);
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connect to {host}[{addr}]: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let conn = tokio::spawn(conn);
        let result = self.request(&mut sender, host).await;
        conn.abort();
        result
    }

    async fn request(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        host: &str,
    ) -> Result<String, String> {
        let authority = match self.port {
            443 => host.to_string(),
            port => format!("{host}:{port}"),
        };
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "poolrelay")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP with {host}: {e}"))?;
        let status = resp.status();
        if status != hyper::StatusCode::OK {
            // Redirects included (§3.3: not followed).
            return Err(format!(
                "https://{host}/.well-known/mta-sts.txt: HTTP {status}"
            ));
        }
        let media = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = media.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(format!("policy served as {media:?}, not text/plain"));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("policy body from {host}: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".to_string())
    }
}
