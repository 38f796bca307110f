//! The envelope of a queued message (`ID.env` as JSON, or a log record) and each recipient's
//! state.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds.
    pub received_at: u64,
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Client IP address, or "local" for messages poolrelay made itself (DSNs).
    pub client: String,
    #[serde(default)]
    pub helo: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Bytes in the `.msg` file.
    pub size: u64,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub body_8bit: bool,
    /// CRLF-terminated header lines sent before the `.msg` bytes (DKIM-Signature).
    #[serde(default)]
    pub prepend: String,
    /// DSN `RET=` and `ENVID=` from MAIL FROM.
    #[serde(default)]
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
    /// A DSN poolrelay generated: never bounced itself.
    #[serde(default)]
    pub is_dsn: bool,
    /// Pool chosen for this message, if any rule picked one.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub delay_warned: bool,
    /// What the sender asked of TLS on the way out (RFC 8689); absent in older spools.
    #[serde(default, skip_serializing_if = "TlsRequest::is_none")]
    pub tls_request: TlsRequest,
    /// The `From:` domain, lower case (what complaints name as the sender domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
}

/// The sender's TLS request for one message (RFC 8689). The delivery rules that follow from it
/// are in `delivery::policy::requiretls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsRequest {
    /// Nothing asked: the destination's policies decide.
    #[default]
    None,
    /// `MAIL FROM:<..> REQUIRETLS`: verified TLS to a REQUIRETLS server on every hop, or a bounce.
    Required,
    /// A `TLS-Required: No` header field (and no REQUIRETLS): MTA-STS and DANE failures do not
    /// stop delivery.
    NotRequired,
}

impl TlsRequest {
    pub fn is_none(&self) -> bool {
        *self == TlsRequest::None
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsRequest::None => "none",
            TlsRequest::Required => "requiretls",
            TlsRequest::NotRequired => "tls-required-no",
        }
    }
}

impl Envelope {
    /// The sender domains a per-sender-domain suppression matches: the `From:` domain and the
    /// envelope sender's.
    pub fn sender_domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self.from_domain.iter().cloned().collect();
        let env = crate::routing::domain_of(&self.sender);
        if !env.is_empty() && !d.contains(&env) {
            d.push(env);
        }
        d
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    #[default]
    Pending,
    Sent,
    Bounced,
}

impl RcptState {
    /// The word used in JSON, the CLI and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Sent => "sent",
            RcptState::Bounced => "bounced",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub orcpt: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
    #[serde(default)]
    pub state: RcptState,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds; 0 = as soon as possible.
    #[serde(default)]
    pub next_attempt: u64,
    #[serde(default)]
    pub last_reply: Option<RemoteReply>,
    /// Waiting for pool capacity (not an attempt): retried early when an IP comes back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Recipient {
    pub fn new(address: String) -> Recipient {
        Recipient {
            address,
            orcpt: None,
            notify: None,
            state: RcptState::Pending,
            attempts: 0,
            next_attempt: 0,
            last_reply: None,
            held: false,
        }
    }
}

/// What the remote side (or poolrelay, for local failures) said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReply {
    pub code: u16,
    pub status: String,
    pub text: String,
    /// MX host name (or route host); empty when no host was reached.
    #[serde(default)]
    pub host: String,
    /// Remote address, when connected.
    #[serde(default)]
    pub addr: String,
    /// Source IP used.
    #[serde(default)]
    pub source_ip: String,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
