//! A hickory name server pool on `[dns] nameservers` (else the system's), for the clients that
//! ask the servers themselves rather than through a resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

/// The same servers as `routing::build_resolver`: `nameservers` (UDP + TCP), else the system's;
/// `what` names the client in a TLS set-up error.
pub fn pool(
    nameservers: &[SocketAddr],
    what: &str,
) -> Result<NameServerPool<TokioRuntimeProvider>, String> {
    let servers: Vec<NameServerConfig> = if nameservers.is_empty() {
        let (config, _) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("system DNS configuration: {e}"))?;
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
    let tls = TlsConfig::new().map_err(|e| format!("{what}: {e}"))?;
    let cx = Arc::new(PoolContext::new(opts, tls));
    Ok(NameServerPool::from_config(
        servers,
        cx,
        TokioRuntimeProvider::default(),
    ))
}
