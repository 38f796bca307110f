//! Temp dirs, free ports, polling.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// A fresh, empty directory under the system temp dir, removed when the test passes and kept
/// (its path printed with the failure) when it fails.
///
/// The test's thread owns the directory: it is removed when that thread ends, after the test
/// function has returned and dropped its relays, sinks and servers (their processes are stopped
/// before their files go). A panic on the thread (a failed assertion, a relay that did not
/// start) keeps every directory the thread made; `POOLRELAY_KEEP_TEST_DIRS=1` keeps them all.
pub fn tempdir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "poolrelay-{name}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create tempdir");
    keep_on_panic();
    TEMP_DIRS.with(|t| t.dirs.borrow_mut().push(dir.clone()));
    dir
}

/// The directories `tempdir` made on this thread: removed when the thread ends unless it
/// panicked.
struct TempDirs {
    dirs: RefCell<Vec<PathBuf>>,
    keep: Cell<bool>,
    /// How many of `dirs` a panic message named already.
    printed: Cell<usize>,
}

thread_local! {
    static TEMP_DIRS: TempDirs = const {
        TempDirs {
            dirs: RefCell::new(Vec::new()),
            keep: Cell::new(false),
            printed: Cell::new(0),
        }
    };
}

impl Drop for TempDirs {
    fn drop(&mut self) {
        // libtest catches a test's panic before the thread ends: the hook noted it in `keep`.
        if self.keep.get() || std::thread::panicking() || keep_all() {
            return;
        }
        for dir in self.dirs.get_mut().drain(..) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn keep_all() -> bool {
    std::env::var_os("POOLRELAY_KEEP_TEST_DIRS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Installs (once) a panic hook that, after the usual message, marks the panicking thread's
/// directories as kept and prints their paths (in the failed test's output).
fn keep_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let _ = TEMP_DIRS.try_with(|t| {
                t.keep.set(true);
                if let Ok(dirs) = t.dirs.try_borrow() {
                    for dir in &dirs[t.printed.get()..] {
                        eprintln!("test dir kept: {}", dir.display());
                    }
                    t.printed.set(dirs.len());
                }
            });
        }));
    });
}

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
