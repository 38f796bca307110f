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
use super::parse::PolicyError;
use crate::delivery::policy::TlsFailure;

/// RFC 8461 §3.3: senders may limit the policy's size; 64 KiB is plenty.
const MAX_BODY: usize = 64 * 1024;

pub struct Fetcher {
    /// None when no trust anchor could be loaded: every fetch fails.
    pub connector: Option<TlsConnector>,
    pub port: u16,
    pub timeout: Duration,
}

/// Why no policy came back: it could not be had, or it is no policy.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Fetch(#[from] PolicyFetchError),
    #[error(transparent)]
    Invalid(#[from] PolicyError),
}

impl FetchError {
    /// The TLS-RPT result type it is reported as.
    pub fn failure(&self) -> TlsFailure {
        match self {
            FetchError::Fetch(_) => TlsFailure::StsPolicyFetchError,
            FetchError::Invalid(_) => TlsFailure::StsPolicyInvalid,
        }
    }
}

/// Why the policy file could not be had (TLS-RPT `sts-policy-fetch-error`).
#[derive(Debug, thiserror::Error)]
pub enum PolicyFetchError {
    #[error("fetching https://{host}/ timed out")]
    Timeout { host: String },
    #[error("no CA certificates are available")]
    NoCa,
    #[error("{host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error("{host}: no address")]
    NoAddress { host: String },
    #[error("connect to {host}[{addr}]: {source}")]
    Connect {
        host: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: {source}")]
    ServerName {
        host: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with {host}: {source}")]
    Http {
        host: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    /// Redirects included (§3.3: not followed).
    #[error("https://{host}/.well-known/mta-sts.txt: HTTP {status}")]
    Status {
        host: String,
        status: hyper::StatusCode,
    },
    #[error("policy served as {0:?}, not text/plain")]
    MediaType(String),
    #[error("policy body from {host}: {source}")]
    Body {
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("policy is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

impl Fetcher {
    pub async fn fetch(
        &self,
        domain: &str,
        resolver: &TokioResolver,
    ) -> Result<Policy, FetchError> {
        let host = format!("mta-sts.{domain}");
        let text = match tokio::time::timeout(self.timeout, self.get(&host, resolver)).await {
            Ok(r) => r?,
            Err(_) => return Err(PolicyFetchError::Timeout { host }.into()),
        };
        Ok(Policy::parse(&text)?)
    }

    async fn get(&self, host: &str, resolver: &TokioResolver) -> Result<String, PolicyFetchError> {
        let host_string = || host.to_string();
        let connector = self.connector.as_ref().ok_or(PolicyFetchError::NoCa)?;
        let ips = resolver
            .lookup_ip(format!("{host}.").as_str())
            .await
            .map_err(|source| PolicyFetchError::Resolve {
                host: host_string(),
                source,
            })?;
        let mut last = PolicyFetchError::NoAddress {
            host: host_string(),
        };
        let mut tcp = None;
        for ip in ips.iter() {
            let addr = SocketAddr::new(ip, self.port);
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(source) => {
                    last = PolicyFetchError::Connect {
                        host: host_string(),
                        addr,
                        source,
                    }
                }
            }
        }
        let tcp = tcp.ok_or(last)?;
        let name =
            ServerName::try_from(host_string()).map_err(|source| PolicyFetchError::ServerName {
                host: host_string(),
                source,
            })?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| PolicyFetchError::Tls {
                host: host_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PolicyFetchError::Http {
                host: host_string(),
                source,
            })?;
        let conn = tokio::spawn(conn);
        let result = self.request(&mut sender, host).await;
        conn.abort();
        result
    }

    async fn request(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        host: &str,
    ) -> Result<String, PolicyFetchError> {
        let host_string = || host.to_string();
        let authority = match self.port {
            443 => host.to_string(),
            port => format!("{host}:{port}"),
        };
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "poolrelay")
            .body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| PolicyFetchError::Http {
                host: host_string(),
                source,
            })?;
        let status = resp.status();
        if status != hyper::StatusCode::OK {
            return Err(PolicyFetchError::Status {
                host: host_string(),
                status,
            });
        }
        let media = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = media.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(PolicyFetchError::MediaType(media.to_string()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|source| PolicyFetchError::Body {
                host: host_string(),
                source,
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(PolicyFetchError::NotUtf8)
    }
}
