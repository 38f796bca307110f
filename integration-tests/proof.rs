//! Proof (issue 7): zero loss under SIGKILL, faults (destination down, DNS down, disk full) and
//! hostile sessions. The real binary on loopback, delivering to test sinks on 127.0.0.20+.

mod common;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A relay config: plain listener, trusted 127/8, everything routed to `[127.0.0.20]:sink_port`,
/// 1 s retry. `limits` and `delivery` add keys to those tables, `rest` adds tables.
fn config(port: u16, sink_port: u16, dns: SocketAddr, limits: &str, delivery: &str) -> String {
    format!(
        r#"
hostname = "relay.test"
data_dir = "data"

[[listen]]
address = "127.0.0.1:{port}"
tls = "none"
auth = "none"

[access]
networks = ["127.0.0.0/8"]

[limits]
{limits}

[dns]
nameservers = ["{dns}"]

[delivery]
port = {sink_port}
retry = ["1s"]
connect_timeout = "2s"
command_timeout = "5s"
{delivery}
"#
    )
}

fn route_all(sink_port: u16) -> String {
    format!("\n[[route]]\ndomain = \"*\"\nhost = \"[127.0.0.20]:{sink_port}\"\n")
}

/// Message-ID values of what the sink received (one entry per delivered copy).
fn message_ids(sink: &Sink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| header_value(&m.data, "message-id"))
        .collect()
}

fn header_value(data: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// About 1 KB of body with a unique Message-ID.
fn body(id: &str) -> Vec<u8> {
    let mut b = format!(
        "From: <load@snd.test>\r\nTo: <rcpt@dest.test>\r\nSubject: load {id}\r\nMessage-ID: {id}\r\n\r\n"
    );
    for i in 0..16 {
        b.push_str(&format!(
            "line {i:02} of the proof message, padding padding padding.\r\n"
        ));
    }
    b.into_bytes()
}

/// One transaction on an open session, every error returned (the relay may die at any byte).
fn try_send(c: &mut SmtpClient, from: &str, rcpt: &str, data: &[u8]) -> io::Result<Reply> {
    let r = c.try_cmd(&format!("MAIL FROM:<{from}>"))?;
    if r.code != 250 {
        return Ok(r);
    }
    let r = c.try_cmd(&format!("RCPT TO:<{rcpt}>"))?;
    if r.code != 250 {
        return Ok(r);
    }
    let r = c.try_cmd("DATA")?;
    if r.code != 354 {
        return Ok(r);
    }
    c.try_send_raw(&dot_stuff(data))?;
    c.try_send_raw(b".\r\n")?;
    c.try_read_reply()
}

fn queue_empty(relay: &Relay) -> bool {
    relay.spool_files("env").is_empty() && relay.spool_files("msg").is_empty()
}

fn tmp_files(relay: &Relay) -> Vec<String> {
    std::fs::read_dir(relay.data_dir().join("spool").join("tmp"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A small deterministic generator (xorshift64*), so a failing kill schedule can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Steady load from 4 client threads, SIGKILL the relay 5 times at seeded random moments,
/// restart it each time, let the queue drain: every Message-ID a client saw 250 for must reach
/// the sink. Duplicates (at-least-once) are counted and printed, not refused.
#[test]
fn zero_loss_under_sigkill() {
    let seed: u64 = std::env::var("PROOF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2026);
    println!("zero_loss_under_sigkill: seed {seed} (set PROOF_SEED to replay another)");
    let mut rng = Rng(seed | 1);

    let dir = tempdir("proof-zero-loss");
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20)]);
    let port = free_port();
    let cfg = config(port, sink.port(), dns.nameserver(), "", "") + &route_all(sink.port());
    let mut relay = Relay::start(&dir, &cfg);
    let addr = relay.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let conn_errors = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for t in 0..4 {
        let (stop, acked, attempts, conn_errors) = (
            stop.clone(),
            acked.clone(),
            attempts.clone(),
            conn_errors.clone(),
        );
        clients.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = SmtpClient::try_connect(addr, None) else {
                    // The relay is down (killed): try again shortly.
                    conn_errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if c.greeting.code != 220 || c.try_cmd("EHLO load.test").is_err() {
                    continue;
                }
                // Up to 8 messages per session, so kills land in every phase of a session.
                for _ in 0..8 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    n += 1;
                    let id = format!("<z{t}-{n}@proof.test>");
                    attempts.fetch_add(1, Ordering::Relaxed);
                    match try_send(&mut c, "load@snd.test", "rcpt@dest.test", &body(&id)) {
                        Ok(r) if r.code == 250 => {
                            acked.lock().unwrap().insert(id);
                        }
                        Ok(_) => break,
                        Err(_) => {
                            conn_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                let _ = c.try_cmd("QUIT");
            }
        }));
    }

    let count = |a: &Arc<Mutex<HashSet<String>>>| a.lock().unwrap().len();
    let started = Instant::now();
    for k in 0..5 {
        // Let some load through after each restart (progress is polled, not assumed), then
        // wait a seeded random time before the crash.
        let base = count(&acked);
        assert!(
            wait_until(Duration::from_secs(20), || count(&acked) >= base + 20),
            "no progress after restart {k}: {}",
            relay.log_current()
        );
        let delay = rng.range(50, 700);
        std::thread::sleep(Duration::from_millis(delay));
        let before = count(&acked);
        relay.kill();
        println!(
            "kill {k}: {delay} ms after progress, {before} acknowledged, {} delivered so far",
            sink.messages().len()
        );
        relay.restart();
    }
    // A little more load after the last restart, then stop the clients.
    let base = count(&acked);
    assert!(wait_until(Duration::from_secs(20), || count(&acked) >= base + 20));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let acked = acked.lock().unwrap().clone();

    // Drain: every acknowledged id at the sink and nothing left in the queue.
    let drained = wait_until(Duration::from_secs(40), || {
        let got: HashSet<String> = message_ids(&sink).into_iter().collect();
        acked.iter().all(|id| got.contains(id)) && queue_empty(&relay)
    });
    let ids = message_ids(&sink);
    let unique: HashSet<&String> = ids.iter().collect();
    let mut per_id: HashMap<&String, usize> = HashMap::new();
    for id in &ids {
        *per_id.entry(id).or_default() += 1;
    }
    let duplicates = ids.len() - unique.len();
    let lost: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    let unacked_delivered = unique.iter().filter(|id| !acked.contains(**id)).count();
    println!(
        "zero_loss_under_sigkill: {} attempts, {} acknowledged (250), {} delivered copies, \
         {} unique, {duplicates} duplicates, {unacked_delivered} delivered without a 250 seen, \
         {} client connection errors, {:.1} s",
        attempts.load(Ordering::Relaxed),
        acked.len(),
        ids.len(),
        unique.len(),
        conn_errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged messages never reached the sink (first: {:?}); queue: {:?}\n{}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>(),
        relay.spool_files("env"),
        relay.log_current()
    );
    assert!(
        drained,
        "queue did not drain: {:?}",
        relay.spool_files("env")
    );
    assert!(acked.len() >= 100, "too little load to prove anything");
    assert!(
        tmp_files(&relay).is_empty(),
        "spool/tmp: {:?}",
        tmp_files(&relay)
    );
}
