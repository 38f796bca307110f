//! One client cannot starve the rest (issue 18): per-client session, connection and message
//! limits, the reserve of session slots for trusted networks and authenticated users (and
//! shedding to make room, issue 25; the flood from many networks is `login_flood.rs`), shorter
//! timeouts under stress, and `limits.header_size`. The flood comes from untrusted loopback
//! addresses (127.0.0.5, .6); 127.0.0.1 is the trusted network; an AUTH user connects from
//! 127.0.0.8. Accepted mail stays queued (every route points at the closed 127.0.0.1:9).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const HOST: &str = "relay.test";
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    dir: PathBuf,
    certs: Certs,
    users: PathBuf,
    /// The submission listener (STARTTLS, AUTH required); the first one is port-25 style.
    submission: std::net::SocketAddr,
}

fn env(name: &str) -> Env {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &[HOST]);
    let users = write_users(&dir, &[("alice", "secret")]);
    let submission = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    Env {
        dir,
        certs,
        users,
        submission,
    }
}

/// A port-25 style listener (STARTTLS, no AUTH) and a submission listener (AUTH required);
/// only 127.0.0.1 is trusted.
fn config(e: &Env) -> RelayConfig {
    RelayConfig::new()
        .listen("starttls", "none")
        .listener(e.submission, "starttls", "required")
        .tls(&e.certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&e.users)
        .sender_login("alice", &["example.com"])
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9")
}

const MESSAGE: &[u8] = b"From: a@example.com\r\nSubject: t\r\n\r\nhi\r\n";

/// A trusted client on the port-25 listener sends one message.
fn trusted_sends(relay: &Relay) {
    let mut c = SmtpClient::connect_from(relay.addr(), lo(1));
    c.greeting.clone().expect(220);
    c.ehlo("trusted.test");
    c.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .expect(250);
    c.quit();
}

/// A user on submission from 127.0.0.8: STARTTLS, AUTH, one message.
fn user_sends(e: &Env) -> SmtpClient {
    let mut c = SmtpClient::connect_from(e.submission, lo(8));
    c.greeting.clone().expect(220);
    c.ehlo("user.test");
    c.starttls(HOST, &e.certs.ca);
    c.ehlo("user.test");
    c.auth_plain("alice", "secret").expect(235);
    c.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .expect(250);
    c
}

#[test]
fn a_flood_from_one_address_hits_its_own_limit_and_others_get_through() {
    let e = env("limits-flood");
    let cfg = config(&e)
        .limit("max_sessions", 50)
        .limit("client_sessions", 3);
    let relay = Relay::start(&e.dir, &cfg.to_toml());

    let mut held = Vec::new();
    for _ in 0..3 {
        let c = SmtpClient::connect_from(relay.addr(), lo(5));
        c.greeting.clone().expect(220);
        held.push(c);
    }
    for i in 0..20 {
        // Both listeners count for the same client.
        let addr = if i % 2 == 0 {
            relay.addr()
        } else {
            e.submission
        };
        let c = SmtpClient::connect_from(addr, lo(5));
        assert_eq!(c.greeting.code, 421, "{}", c.greeting);
        assert!(c.greeting.text.contains("4.7.0"), "{}", c.greeting);
        assert!(
            c.greeting
                .text
                .contains("Too many connections from 127.0.0.5"),
            "{}",
            c.greeting
        );
    }
    // Another untrusted address is not affected.
    let other = SmtpClient::connect_from(relay.addr(), lo(6));
    other.greeting.clone().expect(220);

    trusted_sends(&relay);
    user_sends(&e).quit();

    // The flood's sessions still work.
    held[0].cmd("NOOP").expect(250);
    // 20 refusals, one log line.
    let log = relay.plain_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("per-client limit reached") && l.contains("127.0.0.5"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("client_sessions"), "{}", lines[0]);

    // A session given back frees a place for that client.
    held.pop().unwrap().quit();
    assert!(wait_until(WAIT, || {
        SmtpClient::try_connect(relay.addr(), Some(lo(5))).is_ok_and(|c| c.greeting.code == 220)
    }));
}

#[test]
fn the_reserve_keeps_trusted_and_authenticated_clients_in() {
    let e = env("limits-reserve");
    // 6 slots, 2 reserved: unauthenticated clients hold at most 4.
    let cfg = config(&e)
        .limit("max_sessions", 6)
        .limit("reserved_sessions", 2)
        .limit("client_sessions", 0);
    let relay = Relay::start(&e.dir, &cfg.to_toml());

    // A flood on the port-25 listener (no AUTH there) fills the unauthenticated share only.
    let mut flood = Vec::new();
    for _ in 0..4 {
        let c = SmtpClient::connect_from(relay.addr(), lo(5));
        c.greeting.clone().expect(220);
        flood.push(c);
    }
    let refused = SmtpClient::connect_from(relay.addr(), lo(5));
    assert_eq!(refused.greeting.code, 421, "{}", refused.greeting);
    assert!(
        refused.greeting.text.contains("4.3.2"),
        "{}",
        refused.greeting
    );

    // A user on submission: the flood session idle longest is shed to make room, the user
    // logs in and sends, and keeps the session.
    flood[1].cmd("NOOP").expect(250);
    flood[2].cmd("NOOP").expect(250);
    flood[3].cmd("NOOP").expect(250);
    let mut user = user_sends(&e);
    let bye = flood[0].try_read_reply().expect("a reply before the close");
    assert_eq!(bye.code, 421, "{bye}");
    assert!(bye.text.contains("4.3.2"), "{bye}");
    assert!(bye.text.contains("making room"), "{bye}");
    // The user left the unauthenticated share: another untrusted client may come in (4 of 4)…
    let mut fourth = None;
    assert!(wait_until(WAIT, || {
        fourth = SmtpClient::try_connect(relay.addr(), Some(lo(6)))
            .ok()
            .filter(|c| c.greeting.code == 220);
        fourth.is_some()
    }));
    // …but no fifth, though a slot is free: it is the reserve.
    let fifth = SmtpClient::connect_from(relay.addr(), lo(6));
    assert_eq!(fifth.greeting.code, 421, "{}", fifth.greeting);
    // A trusted client takes it, and another one sheds an unauthenticated session.
    trusted_sends(&relay);
    let mut t1 = SmtpClient::connect_from(relay.addr(), lo(1));
    t1.greeting.clone().expect(220);
    let mut t2 = SmtpClient::connect_from(relay.addr(), lo(1));
    t2.greeting.clone().expect(220);
    // Authenticated and trusted sessions are never shed.
    user.cmd("NOOP").expect(250);
    t1.cmd("NOOP").expect(250);
    t2.cmd("NOOP").expect(250);
    user.quit();
    let log = relay.plain_log();
    assert!(log.contains("unauthenticated sessions shed"), "{log}");
    assert_eq!(relay.queued_ids().len(), 2);
}

#[test]
fn under_stress_idle_sessions_are_cut_sooner() {
    let e = env("limits-stress");
    // 5 slots, all in use = stress; command_timeout is far beyond the client's 30 s read timeout.
    let cfg = config(&e)
        .listen("none", "none")
        .limit("max_sessions", 5)
        .limit("reserved_sessions", 0)
        .limit("client_sessions", 0)
        .limit("command_timeout", "\"300s\"")
        .limit("stress_command_timeout", "\"2s\"");
    let relay = Relay::start(&e.dir, &cfg.to_toml());

    let mut idle = SmtpClient::connect_from(relay.addr(), lo(5));
    idle.greeting.clone().expect(220);
    // Four busy clients (a NOOP every 300 ms) keep the relay under stress.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let mut c = SmtpClient::connect_from(relay.addr(), lo(6));
            c.greeting.clone().expect(220);
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.cmd("NOOP").expect(250);
                    std::thread::sleep(Duration::from_millis(300));
                }
                c.quit();
            })
        })
        .collect();
    let r = idle.try_read_reply().expect("cut before command_timeout");
    assert_eq!(r.code, 421, "{r}");
    assert!(r.text.contains("4.4.2"), "{r}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in busy {
        t.join().expect("busy clients were never cut");
    }
}

#[test]
fn connection_and_message_rates_per_client() {
    let e = env("limits-rates");
    let cfg = config(&e)
        .listen("none", "none")
        .limit("client_connection_rate", 3)
        .limit("client_message_rate", 2);
    let relay = Relay::start(&e.dir, &cfg.to_toml());

    for _ in 0..3 {
        let c = SmtpClient::connect_from(relay.addr(), lo(5));
        c.greeting.clone().expect(220);
        c.quit();
    }
    let c = SmtpClient::connect_from(relay.addr(), lo(5));
    assert_eq!(c.greeting.code, 421, "{}", c.greeting);
    assert!(c.greeting.text.contains("4.7.0"), "{}", c.greeting);
    assert!(c.greeting.text.contains("per minute"), "{}", c.greeting);

    // Messages: counted at MAIL FROM.
    let mut c = SmtpClient::connect_from(relay.addr(), lo(6));
    c.ehlo("client.test");
    for _ in 0..2 {
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.cmd("RSET").expect(250);
    }
    let r = c.cmd("MAIL FROM:<a@example.com>");
    assert_eq!(r.code, 450, "{r}");
    assert!(r.text.contains("4.7.1"), "{r}");
    assert!(r.text.contains("Too many messages"), "{r}");
    // The session goes on.
    c.cmd("NOOP").expect(250);
    c.quit();

    // Trusted networks are exempt from both.
    for _ in 0..5 {
        let mut c = SmtpClient::connect_from(relay.addr(), lo(1));
        c.greeting.clone().expect(220);
        c.ehlo("trusted.test");
        c.cmd("MAIL FROM:<a@example.com>").expect(250);
        c.quit();
    }
    let log = relay.plain_log();
    assert!(log.contains("client_connection_rate"), "{log}");
    assert!(log.contains("client_message_rate"), "{log}");
}

/// A header section of about `size` bytes: `X-Fill:` lines of 40 bytes after From/Subject.
fn message_with_header(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.com\r\nSubject: t\r\n".to_vec();
    let mut i = 0;
    while m.len() + 40 <= size {
        m.extend_from_slice(format!("X-Fill-{i:06}: {}\r\n", "x".repeat(22)).as_bytes());
        i += 1;
    }
    while m.len() + 8 < size {
        m.extend_from_slice(b"X: y\r\n");
    }
    m.extend_from_slice(b"\r\nbody\r\n");
    m
}

#[test]
fn a_header_section_over_header_size_is_refused_and_the_session_goes_on() {
    let e = env("limits-header");
    let cfg = config(&e).listen("none", "none").limit("header_size", 2048);
    let relay = Relay::start(&e.dir, &cfg.to_toml());

    let long = message_with_header(3000);
    let fits = message_with_header(2000);
    let header_len = |m: &[u8]| m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    assert!(header_len(&long) > 2048);
    assert!(
        (1900..=2048).contains(&header_len(&fits)),
        "{}",
        header_len(&fits)
    );

    let mut c = SmtpClient::connect_from(relay.addr(), lo(1));
    c.ehlo("trusted.test");
    let r = c.send_mail("a@example.com", &["b@example.org"], &long);
    assert_eq!(r.code, 552, "{r}");
    assert!(r.text.contains("5.3.4"), "{r}");
    assert!(r.text.contains("header"), "{r}");

    // BDAT: the same limit.
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.cmd("RCPT TO:<b@example.org>").expect(250);
    c.send_raw(format!("BDAT {} LAST\r\n", long.len()).as_bytes());
    c.send_raw(&long);
    let r = c.read_reply();
    assert_eq!(r.code, 552, "{r}");
    assert!(r.text.contains("5.3.4"), "{r}");

    // The session is still usable, and a header section just under the limit is accepted.
    c.cmd("NOOP").expect(250);
    c.send_mail("a@example.com", &["b@example.org"], &fits)
        .expect(250);
    c.quit();
    let queued = relay.queued();
    assert_eq!(queued.len(), 1, "only the message that fits is queued");
    assert!(
        queued[0].1.windows(12).any(|w| w == b"X-Fill-00000"),
        "the accepted message is whole"
    );
    let log = relay.plain_log();
    assert_eq!(
        log.matches("Message header section exceeds fixed maximum size")
            .count(),
        2,
        "{log}"
    );
}

/// Starts `poolrelay serve` in `dir` with RLIMIT_NOFILE set to (soft, hard) for it alone.
fn spawn_with_nofile(dir: &std::path::Path, soft: u64, hard: u64) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("relay.log")).expect("relay.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_poolrelay"));
    cmd.args(["serve", "--config", "poolrelay.toml"])
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log);
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn poolrelay")
}

#[test]
fn the_open_file_limit_is_raised_or_the_start_refused() {
    let e = env("limits-nofile");
    // 3000 sessions + 200 deliveries + 256: more than a hard limit of 1024 allows.
    let cfg = config(&e).limit("max_sessions", 3000);
    std::fs::write(e.dir.join("poolrelay.toml"), cfg.to_toml()).unwrap();
    let mut child = spawn_with_nofile(&e.dir, 512, 1024);
    let mut status = None;
    assert!(wait_until(WAIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    }));
    assert!(!status.unwrap().success());
    let log = std::fs::read_to_string(e.dir.join("relay.log")).unwrap();
    assert!(log.contains("open file limit too low"), "{log}");
    assert!(log.contains("LimitNOFILE=3456"), "{log}");
    assert!(log.contains("ulimit -n 3456"), "{log}");

    // 500 + 200 + 256 = 956 fit under the hard limit: the soft limit is raised to that.
    let cfg = config(&e).limit("max_sessions", 500);
    std::fs::write(e.dir.join("poolrelay.toml"), cfg.to_toml()).unwrap();
    let mut child = spawn_with_nofile(&e.dir, 256, 2048);
    let limits = format!("/proc/{}/limits", child.id());
    let raised = wait_until(WAIT, || {
        std::fs::read_to_string(&limits).is_ok_and(|l| {
            l.lines().any(|line| {
                line.starts_with("Max open files")
                    && line.split_whitespace().collect::<Vec<_>>()[3..5] == ["956", "2048"]
            })
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        raised,
        "{}",
        std::fs::read_to_string(e.dir.join("relay.log")).unwrap_or_default()
    );
}
