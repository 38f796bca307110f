//! Settings of the inbound stage: listeners, access (networks, users, sender logins), limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::sender_login::SenderLogin;
use crate::util::settings::{DurationStr, Size};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenTls {
    /// Plain start, STARTTLS offered when a certificate is configured (25/587-style).
    Starttls,
    /// TLS from the first byte (465-style, RFC 8314).
    Implicit,
    /// Plain; STARTTLS still offered if `[tls]` is set.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenAuth {
    /// Every client must AUTH before MAIL (530 5.7.0 otherwise), trusted networks included:
    /// submission ports, where per-user caps must apply.
    Required,
    /// AUTH offered; trusted networks relay without it.
    Optional,
    /// No AUTH offered; only trusted networks relay.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub address: SocketAddr,
    #[serde(default = "default_listen_tls")]
    pub tls: ListenTls,
    #[serde(default = "default_listen_auth")]
    pub auth: ListenAuth,
}

fn default_listen_tls() -> ListenTls {
    ListenTls::Starttls
}
fn default_listen_auth() -> ListenAuth {
    ListenAuth::Optional
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// Clients in these networks may relay without AUTH.
    #[serde(default)]
    pub networks: Vec<IpNet>,
    pub users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one address before it is locked out.
    #[serde(default = "default_auth_failures")]
    pub auth_max_failures: u32,
    #[serde(default = "default_auth_lockout")]
    pub auth_lockout: DurationStr,
    /// Put the authenticated user name into the Received header.
    #[serde(default)]
    pub received_auth_user: bool,
    /// Which senders each user (or network) may use beyond a login's own domain (see
    /// `inbound::sender_login`).
    #[serde(default)]
    pub sender_login: Vec<SenderLogin>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            networks: Vec::new(),
            users_file: None,
            auth_max_failures: default_auth_failures(),
            auth_lockout: default_auth_lockout(),
            received_auth_user: false,
            sender_login: Vec::new(),
        }
    }
}

fn default_auth_failures() -> u32 {
    5
}
fn default_auth_lockout() -> DurationStr {
    DurationStr(Duration::from_secs(600))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_message_size")]
    pub message_size: Size,
    #[serde(default = "default_recipients")]
    pub recipients_per_message: usize,
    /// Messages per authenticated user per day; 0 = no cap.
    #[serde(default)]
    pub per_user_daily: u64,
    /// Concurrent inbound sessions across all listeners.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Errors in one session before it is ended.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// RFC 5321 §4.5.3.2 server timeout for commands.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: DurationStr,
    /// Timeout waiting for the next chunk of DATA.
    #[serde(default = "default_data_timeout")]
    pub data_timeout: DurationStr,
    /// Free space the spool's filesystem keeps for the queue's own work (moving deferred
    /// messages, DSNs): below it plus a declared SIZE, new mail gets `452 4.3.1`.
    #[serde(default = "default_spool_min_free")]
    pub spool_min_free: Size,
    /// Longest header section (up to the first empty line) a client may send: `552 5.3.4`.
    #[serde(default = "default_header_size")]
    pub header_size: Size,
    /// Concurrent sessions per client address (IPv6: per /64); 0 = no limit.
    #[serde(default = "default_client_sessions")]
    pub client_sessions: usize,
    /// New connections per client address per minute; 0 = no limit.
    #[serde(default)]
    pub client_connection_rate: u32,
    /// Messages (MAIL FROM) per client address per minute; 0 = no limit.
    #[serde(default)]
    pub client_message_rate: u32,
    /// Slots only authenticated sessions and trusted networks may hold (see
    /// `inbound::admission`); default 10 %.
    #[serde(default)]
    pub reserved_sessions: Option<usize>,
    /// Command timeout while more than 80 % of `max_sessions` are in use.
    #[serde(default = "default_stress_command_timeout")]
    pub stress_command_timeout: DurationStr,
    /// Concurrent unauthenticated sessions per client network; 0 = no limit.
    #[serde(default = "default_network_sessions")]
    pub network_sessions: usize,
    /// The IPv4 network a client is counted in (`network_sessions`, shedding): /24.
    #[serde(default = "default_network_prefix_v4")]
    pub network_prefix_v4: u32,
    /// The IPv6 network a client is counted in: /48.
    #[serde(default = "default_network_prefix_v6")]
    pub network_prefix_v6: u32,
    /// An unauthenticated session older than this is shed first when slots run short.
    #[serde(default = "default_preauth_timeout")]
    pub preauth_timeout: DurationStr,
}

fn default_network_sessions() -> usize {
    100
}
fn default_network_prefix_v4() -> u32 {
    24
}
fn default_network_prefix_v6() -> u32 {
    48
}
fn default_preauth_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

fn default_header_size() -> Size {
    Size(102_400)
}
fn default_client_sessions() -> usize {
    50
}
fn default_stress_command_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(10))
}

impl Limits {
    /// `reserved_sessions`, or 10 % of `max_sessions` when unset.
    pub fn reserved(&self) -> usize {
        self.reserved_sessions.unwrap_or(self.max_sessions / 10)
    }
}

fn default_message_size() -> Size {
    Size(50 * 1000 * 1000)
}
fn default_recipients() -> usize {
    100
}
fn default_max_sessions() -> usize {
    2000
}
fn default_max_errors() -> u32 {
    10
}
fn default_command_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(300))
}
fn default_spool_min_free() -> Size {
    Size(1 << 20)
}
fn default_data_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(180))
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_size: default_message_size(),
            recipients_per_message: default_recipients(),
            per_user_daily: 0,
            max_sessions: default_max_sessions(),
            max_errors: default_max_errors(),
            command_timeout: default_command_timeout(),
            data_timeout: default_data_timeout(),
            spool_min_free: default_spool_min_free(),
            header_size: default_header_size(),
            client_sessions: default_client_sessions(),
            client_connection_rate: 0,
            client_message_rate: 0,
            reserved_sessions: None,
            stress_command_timeout: default_stress_command_timeout(),
            network_sessions: default_network_sessions(),
            network_prefix_v4: default_network_prefix_v4(),
            network_prefix_v6: default_network_prefix_v6(),
            preauth_timeout: default_preauth_timeout(),
        }
    }
}

/// What the inbound stage reads from the config (built by the caller from `Config`); each
/// session keeps the one it started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Banner, Received, replies.
    pub hostname: String,
    pub listen: Vec<Listen>,
    pub tls: Option<TlsFiles>,
    pub access: Access,
    pub limits: Limits,
    /// Complaint reports taken at DATA (`inbound::feedback`).
    pub feedback: Option<crate::feedback::Settings>,
}
