//! Where each recipient domain goes: static routes first, else MX.

/// Parses a route target `host:port` or `[ip]:port` into (host, port).
pub fn parse_route_host(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}
