//! Temp dirs, free ports, polling.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

#[path = "../../src/util/test_dir.rs"]
mod test_dir;
pub use test_dir::tempdir;

/// A TCP port currently free on 127.0.0.1, never one handed out before in this test process
/// (so a relay's SMTP and admin ports always differ).
pub fn free_port() -> u16 {
    free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// Every port `free_port_on` has handed out in this process: a port is found free by binding
/// port 0 and closing it, so the kernel may offer it again before its taker binds it (a
/// relay's SMTP and admin ports were once equal: the relay refused to start).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port free on every one of `addrs` (e.g. all sink addresses sharing one port), never
/// one handed out before in this test process.
pub fn free_port_on(addrs: &[IpAddr]) -> u16 {
    assert!(!addrs.is_empty(), "free_port_on needs an address");
    for _ in 0..200 {
        let first = TcpListener::bind(SocketAddr::new(addrs[0], 0)).expect("bind :0");
        let port = first.local_addr().expect("local addr").port();
        let others: Result<Vec<_>, _> = addrs[1..]
            .iter()
            .map(|a| TcpListener::bind(SocketAddr::new(*a, port)))
            .collect();
        if others.is_ok()
            && udp_free(addrs, port)
            && HANDED_OUT
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(port)
        {
            return port;
        }
    }
    panic!("no port free on all of {addrs:?}");
}

fn udp_free(addrs: &[IpAddr], port: u16) -> bool {
    // Not needed for SMTP, but it lets a caller use the same port for a DNS server too.
    addrs
        .iter()
        .all(|a| std::net::UdpSocket::bind(SocketAddr::new(*a, port)).is_ok())
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loopback address `127.0.0.n`.
pub fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}
