//! A hickory name server pool on `[dns] nameservers` (else the system's), for the clients that
//! ask the servers themselves rather than through a resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

/// Why no name server pool could be set up.
#[derive(Debug, thiserror::Error)]
pub enum NameServerError {
    #[error("system DNS configuration: {0}")]
    SystemConf(#[source] NetError),
    /// `what`: the client the pool is for (e.g. "DANE resolver").
    #[error("{what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: NetError,
    },
}

/// The same servers as `routing::build_resolver`: `nameservers` (UDP + TCP), else the system's;
/// `what` names the client in a TLS set-up error.
pub fn pool(
    nameservers: &[SocketAddr],
    what: &str,
) -> Result<NameServerPool<TokioRuntimeProvider>, NameServerError> {
    let servers: Vec<NameServerConfig> = if nameservers.is_empty() {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(NameServerError::SystemConf)?;
        config.name_servers().to_vec()
    } else {
        nameservers
            .iter()
            .map(|sa| {
                let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                for c in &mut ns.connections {
                    c.port = sa.port();
                }
                ns
            })
            .collect()
    };
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    let tls = TlsConfig::new().map_err(|source| NameServerError::Tls {
        what: what.to_string(),
        source,
    })?;
    let cx = Arc::new(PoolContext::new(opts, tls));
    Ok(NameServerPool::from_config(
        servers,
        cx,
        TokioRuntimeProvider::default(),
    ))
}
