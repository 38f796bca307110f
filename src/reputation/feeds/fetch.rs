//! HTTPS for the feeds: ureq on the process's rustls provider (aws-lc-rs), certificates always
//! verified (the system roots, or only `[feeds] ca_file`), one time limit per request, a size
//! limit per body. Blocking: callers run it on the blocking pool. Secrets in URLs (the SNDS
//! key) never reach an error text: URLs are shown with `secret` replaced.

use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::Settings;

pub struct Client {
    agent: ureq::Agent,
    max_size: u64,
}

/// A request's failure, for the feed's status and the log (no secret in it).
#[derive(Debug, Clone, PartialEq)]
pub struct FetchError {
    /// The HTTP status when the server answered.
    pub status: Option<u16>,
    pub message: String,
}

impl FetchError {
    fn new(message: String) -> FetchError {
        FetchError {
            status: None,
            message,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FetchError {}

/// No HTTPS client: the CA file `[feeds] ca_file` names cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The reason as the certificate loader words it (with the path).
    #[error(transparent)]
    CaFile(crate::tls::TlsFileError),
}

/// `url` with every occurrence of `secret` replaced, for messages.
pub fn redact(url: &str, secret: &str) -> String {
    if secret.is_empty() {
        url.to_string()
    } else {
        url.replace(secret, "…")
    }
}

pub enum Body<'a> {
    None,
    Form(&'a [(&'a str, &'a str)]),
    Json(&'a serde_json::Value),
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Client, ClientError> {
        crate::tls::install_crypto_provider();
        let anchors: Vec<Certificate<'static>> = match &settings.ca_file {
            Some(file) => crate::tls::load_certs(file)
                .map_err(ClientError::CaFile)?
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
            None => rustls_native_certs::load_native_certs()
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        };
        let timeout = settings.timeout.0;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect to http:// would skip the certificate check.
            .https_only(true)
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .timeout_global(Some(timeout))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&anchors))
                    .build(),
            )
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            max_size: settings.max_size.0,
        })
    }

    /// One request; `Ok` only for a 2xx answer, with its body as text. `shown` is the URL as
    /// messages may show it.
    pub fn request(
        &self,
        url: &str,
        shown: &str,
        bearer: Option<&str>,
        body: Body<'_>,
    ) -> Result<String, FetchError> {
        let auth = bearer.map(|t| format!("Bearer {t}"));
        let sent = match body {
            Body::None => {
                let mut r = self.agent.get(url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            Body::Form(form) => {
                let mut r = self.agent.post(url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_form(form.iter().copied())
            }
            Body::Json(v) => {
                let mut r = self
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(v.to_string().as_str())
            }
        };
        let mut response = sent.map_err(|e| FetchError::new(format!("{shown}: {}", cause(&e))))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(self.max_size)
            .read_to_string()
            .map_err(|e| FetchError::new(format!("{shown}: reading the body: {}", cause(&e))))?;
        if !status.is_success() {
            return Err(FetchError {
                status: Some(status.as_u16()),
                message: format!("{shown}: HTTP {status}: {}", snippet(&text)),
            });
        }
        Ok(text)
    }
}

/// A ureq error in words, without the URL (which may carry a secret).
fn cause(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("{io}"),
        ureq::Error::BodyExceedsLimit(n) => format!("body larger than {n} bytes"),
        other => other.to_string(),
    }
}

/// The start of an error body, on one line, for the status.
fn snippet(text: &str) -> String {
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one.trim().to_string()
}
