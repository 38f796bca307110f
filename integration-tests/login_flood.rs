//! Users who log in get in, whatever clients that never log in do (issue 25): a flood from 64
//! holder addresses over four /24s (NOOP keepalive, slowloris partial lines, STARTTLS then idle,
//! each reconnecting when closed) and reconnect loops from 200 more addresses over four other
//! /24s, while eight users from one further /24 log in at once and a trusted client sends. Only
//! 127.0.0.1 is trusted; every route points at the closed 127.0.0.1:9, so mail stays queued.
//! (Only `::1` is configured here: the IPv6 /48 and /64 counting is unit-tested in `anvil`.)

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const HOST: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(30);
const MESSAGE: &[u8] = b"From: a@example.com\r\nSubject: t\r\n\r\nhi\r\n";

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// What the flood threads saw.
#[derive(Default)]
struct Seen {
    connected: AtomicUsize,
    /// `421 4.3.2` replies: turned away, or shed to make room.
    busy: AtomicUsize,
    /// Closed with the shedding reply.
    shed: AtomicUsize,
}

struct Flood {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    fn finish(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("flood thread");
        }
        self.seen
    }
}

#[derive(Clone)]
struct Target {
    port25: SocketAddr,
    submission: SocketAddr,
    ca: PathBuf,
}

fn note(seen: &Seen, r: &Reply) {
    if r.code == 421 && r.text.contains("4.3.2") {
        seen.busy.fetch_add(1, Ordering::Relaxed);
        if r.text.contains("making room") {
            seen.shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One holder: opens a session (kind by `i % 4`) and keeps it busy-looking; reconnects when closed.
fn holder(t: Target, ip: IpAddr, i: usize, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let addr = if i.is_multiple_of(2) {
        t.submission
    } else {
        t.port25
    };
    let mut session: Option<SmtpClient> = None;
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Some(c) = session.as_mut() else {
            session = SmtpClient::try_connect(addr, Some(ip))
                .ok()
                .and_then(|mut c| {
                    note(&seen, &c.greeting);
                    if c.greeting.code != 220 {
                        return None;
                    }
                    seen.connected.fetch_add(1, Ordering::Relaxed);
                    let r = c.try_cmd("EHLO holder.test").ok()?;
                    note(&seen, &r);
                    if i % 4 == 2 && addr == t.submission {
                        c.try_starttls(HOST, &t.ca).ok()?;
                    }
                    Some(c)
                });
            if session.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let alive = match i % 4 {
            // Slowloris: a byte of a command line that never ends.
            1 => c.try_send_raw(b"x").is_ok(),
            // NOOP keepalive (after STARTTLS for kind 2, less often).
            k if k != 2 || round.is_multiple_of(4) => match c.try_cmd("NOOP") {
                Ok(r) => {
                    note(&seen, &r);
                    r.code == 250
                }
                Err(_) => false,
            },
            _ => true,
        };
        if !alive {
            session = None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reconnect loop over `ips`: connect to submission, EHLO, drop; again.
fn looper(t: Target, ips: Vec<IpAddr>, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    for ip in ips.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut c) = SmtpClient::try_connect(t.submission, Some(*ip)) {
            note(&seen, &c.greeting);
            if c.greeting.code == 220 {
                seen.connected.fetch_add(1, Ordering::Relaxed);
                if let Ok(r) = c.try_cmd("EHLO looper.test") {
                    note(&seen, &r);
                }
            }
        }
    }
}

fn start_flood(t: &Target) -> Flood {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let mut threads = Vec::new();
    // 64 holders: 127.1.{1..4}.{1..16}.
    for i in 0..64usize {
        let ip = v4(1, 1 + (i / 16) as u8, 1 + (i % 16) as u8);
        let (t, stop, seen) = (t.clone(), stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || holder(t, ip, i, stop, seen)));
    }
    // 4 reconnect loops, each over 50 addresses of its own /24: 127.2.{1..4}.{1..50}.
    for n in 1..=4u8 {
        let ips = (1..=50).map(|h| v4(2, n, h)).collect();
        let (t, stop, seen) = (t.clone(), stop.clone(), seen.clone());
        threads.push(std::thread::spawn(move || looper(t, ips, stop, seen)));
    }
    Flood {
        stop,
        seen,
        threads,
    }
}

/// A user from `ip`: STARTTLS, AUTH, one message; the session is kept.
fn log_in_and_send(t: &Target, ip: IpAddr) -> Result<SmtpClient, String> {
    let mut c = SmtpClient::try_connect(t.submission, Some(ip)).map_err(|e| e.to_string())?;
    if c.greeting.code != 220 {
        return Err(format!("greeting: {}", c.greeting));
    }
    c.try_cmd("EHLO user.test").map_err(|e| e.to_string())?;
    c.try_starttls(HOST, &t.ca)?;
    c.try_cmd("EHLO user.test").map_err(|e| e.to_string())?;
    let r = c.auth_plain("alice", "secret");
    if r.code != 235 {
        return Err(format!("AUTH: {r}"));
    }
    let r = c.send_mail("a@example.com", &["b@example.org"], MESSAGE);
    if r.code != 250 {
        return Err(format!("message: {r}"));
    }
    Ok(c)
}

#[test]
fn users_log_in_and_trusted_clients_send_through_a_flood_from_many_networks() {
    let dir = tempdir("login-flood");
    let certs = make_certs(&dir, &[HOST]);
    let users = write_users(&dir, &[("alice", "secret")]);
    let submission = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // 40 slots, 8 reserved: at most 32 unauthenticated sessions, far fewer than the flood's.
    let cfg = RelayConfig::new()
        .listen("starttls", "none")
        .listener(submission, "starttls", "required")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("alice", &["example.com"])
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9")
        .limit("max_sessions", 40)
        .limit("reserved_sessions", 8)
        .limit("client_sessions", 0);
    let relay = Relay::start(&dir, &cfg.to_toml());
    let t = Target {
        port25: relay.addr(),
        submission,
        ca: certs.ca.clone(),
    };

    let flood = start_flood(&t);
    // The flood holds the whole unauthenticated share (a port-25 client, which cannot log in,
    // is turned away) and is shedding its own sessions.
    assert!(wait_until(WAIT, || {
        SmtpClient::try_connect(t.port25, Some(v4(3, 0, 1))).is_ok_and(|c| c.greeting.code == 421)
            && relay.plain_log().contains("unauthenticated sessions shed")
    }));

    // Eight users of one /24 log in at once: every one gets in, logs in and sends.
    let logins: Vec<_> = (1..=8u8)
        .map(|h| {
            let t = t.clone();
            std::thread::spawn(move || log_in_and_send(&t, v4(4, 0, h)))
        })
        .collect();
    let mut sessions = Vec::new();
    let mut failed = Vec::new();
    for (i, l) in logins.into_iter().enumerate() {
        match l.join().expect("user thread") {
            Ok(c) => sessions.push(c),
            Err(e) => failed.push(format!("user {}: {e}", i + 1)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 8 logged in: {failed:#?}",
        sessions.len()
    );

    // The trusted network keeps getting in, while the users hold their sessions.
    for _ in 0..3 {
        let mut c = SmtpClient::connect_from(t.port25, lo(1));
        c.greeting.clone().expect(220);
        c.ehlo("trusted.test");
        c.send_mail("a@example.com", &["b@example.org"], MESSAGE)
            .expect(250);
        c.quit();
    }
    // The flood goes on; sessions that logged in are never shed.
    let shed_before = flood.seen.shed.load(Ordering::Relaxed);
    assert!(wait_until(WAIT, || {
        flood.seen.shed.load(Ordering::Relaxed) >= shed_before + 50
    }));
    for mut c in sessions {
        c.cmd("NOOP").expect(250);
        c.send_mail("a@example.com", &["b@example.org"], MESSAGE)
            .expect(250);
        c.quit();
    }
    let seen = flood.finish();
    let (connected, busy, shed) = (
        seen.connected.load(Ordering::Relaxed),
        seen.busy.load(Ordering::Relaxed),
        seen.shed.load(Ordering::Relaxed),
    );
    eprintln!("flood: {connected} sessions, {busy} × 421 4.3.2, {shed} shed");
    assert!(shed > 0 && connected > 64, "{connected} {shed}");
    assert_eq!(relay.queued_ids().len(), 8 + 3 + 8);
}
