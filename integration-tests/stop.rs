//! Running in production (issue 17): the graceful stop. SIGTERM during 20 open transactions
//! finishes them (250), tells idle sessions 421 4.3.2 at once and a stuck one after
//! `shutdown_grace`, exits 0 and loses nothing: every message is delivered once.

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn sigterm_lets_open_transactions_finish_and_loses_nothing() {
    let dir = tempdir("reload-stop");
    let sink = Sink::start(&[lo(20)]);
    let cfg = RelayConfig::new()
        .delivery_port(sink.port())
        .route("*", &format!("[127.0.0.20]:{}", sink.port()));
    // 8 s: time for 20 transactions to finish on a loaded machine, and the relay's last 10 s
    // still fit in the kit's 20 s wait for the exit.
    let toml = format!("shutdown_grace = \"8s\"\n{}", cfg.to_toml());
    let mut relay = Relay::start(&dir, &toml);
    let addr = relay.addr();

    let open_tx = |id: &str| {
        let mut c = SmtpClient::connect(addr);
        c.ehlo("client.test");
        c.cmd("MAIL FROM:<sender@client.test>").expect(250);
        c.cmd("RCPT TO:<rcpt@dest.test>").expect(250);
        c.cmd("DATA").expect(354);
        let msg = tagged_message(id);
        let half = msg.len() / 2;
        c.send_raw(&msg[..half]);
        (c, msg[half..].to_vec())
    };
    let mut open: Vec<_> = (0..20)
        .map(|i| (format!("open-{i}"), open_tx(&format!("open-{i}"))))
        .collect();
    let (mut stuck, _) = open_tx("stuck");
    let mut idle = SmtpClient::connect(addr);
    idle.ehlo("client.test");

    let pid = relay.pid().expect("relay running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    assert!(
        relay.wait_for_log("poolrelay stopping", WAIT),
        "{}",
        relay.log_current()
    );
    assert!(
        wait_until(WAIT, || TcpStream::connect(addr).is_err()),
        "still accepting after SIGTERM"
    );
    // Idle: told at once. Transactions in progress: finished.
    let r = idle.read_reply();
    assert_eq!((r.code, r.text.contains("4.3.2")), (421, true), "{r}");
    for (id, (c, rest)) in &mut open {
        let mut tail = rest.clone();
        tail.extend_from_slice(b".\r\n");
        c.send_raw(&tail);
        let r = c.read_reply();
        assert_eq!(r.code, 250, "{id}: {r}");
    }
    // The one that never ends its DATA: 421 4.3.2 once the grace is over.
    let r = stuck.read_reply();
    assert_eq!((r.code, r.text.contains("4.3.2")), (421, true), "{r}");
    let status = relay.stop();
    assert!(status.success(), "exit {status:?}\n{}", relay.log());
    assert!(relay.log().contains("poolrelay stopped"), "{}", relay.log());

    // Whatever was not delivered before the stop goes after the restart: each once.
    relay.restart();
    let ok = wait_until(Duration::from_secs(60), || {
        sink.messages().len() >= open.len()
    });
    let msgs = sink.messages();
    assert!(
        ok,
        "{} of {} delivered\n{}",
        msgs.len(),
        open.len(),
        relay.log()
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &msgs {
        *seen.entry(m.subject()).or_default() += 1;
    }
    for (id, _) in &open {
        assert_eq!(seen.get(id), Some(&1), "{id}: {seen:?}");
    }
    assert!(!seen.contains_key("stuck"), "half a message was delivered");
}
