//! Interop with software we did not write: Postfix as a client, swaks, dnsmasq.
//! Every interop test is `#[ignore]`d (run by `.ci/run` after it installs the tools) and fails if
//! a tool is missing. The `kit_*` tests check the shared test kit itself and run everywhere.

mod common;

use std::time::Duration;

use common::*;

/// Sink + client: STARTTLS verified against the test CA, peer address, dot-unstuffing, the
/// tempfail/permfail conventions and a per-peer scripted refusal.
#[test]
fn kit_sink_records_sessions_and_scripts() {
    let dir = tempdir("kit-sink");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    let sink = Sink::builder(&[lo(20), lo(21)])
        .starttls(&certs)
        .script(|s: &Step| match &s.stage {
            Stage::RcptTo(a) if s.peer == lo(12) && a.starts_with("blocked") => {
                Some("550 5.7.1 blocked (S3150)".into())
            }
            _ => None,
        })
        .start();

    let mut c = SmtpClient::connect_from(sink.addr(1), lo(10));
    assert_eq!(c.greeting.code, 220);
    assert!(c.ehlo("out1.test").contains(&"STARTTLS".to_string()));
    c.starttls("mx.dest.test", &certs.ca);
    assert!(!c.ehlo("out1.test").contains(&"STARTTLS".to_string()));
    let body = b"Subject: t\r\n\r\n.leading dot\r\nline\r\n";
    let r = c.send_mail(
        "a@src.test",
        &["ok@dest.test", "tempfail@dest.test", "permfail@dest.test"],
        body,
    );
    assert_eq!(r.code, 250, "{r}");
    let r = c.cmd("MAIL FROM:<>");
    assert_eq!(r.code, 250);
    assert_eq!(c.cmd("RCPT TO:<tempfail@dest.test>").code, 451);
    assert_eq!(c.cmd("RCPT TO:<permfail@dest.test>").code, 550);
    c.quit();

    let m = &sink.wait_for_messages(1, Duration::from_secs(5))[0];
    assert_eq!(m.peer, lo(10));
    assert_eq!(m.local, sink.addr(1));
    assert_eq!(m.ehlo, "out1.test");
    assert!(
        m.tls.as_deref().unwrap_or("").starts_with("TLSv1_"),
        "{m:?}"
    );
    assert_eq!(m.rcpt_to, vec!["ok@dest.test"]);
    assert_eq!(m.data, body);

    // The scripted refusal applies to one source address only.
    let mut c = SmtpClient::connect_from(sink.addr(0), lo(12));
    c.ehlo("out3.test");
    assert_eq!(c.cmd("MAIL FROM:<a@src.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<blocked@dest.test>").code, 550);
    let mut c = SmtpClient::connect_from(sink.addr(0), lo(11));
    c.ehlo("out2.test");
    let r = c.send_mail("a@src.test", &["blocked@dest.test"], b"x\r\n");
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(
        sink.wait_for_messages(2, Duration::from_secs(5))[1].peer,
        lo(11)
    );
    assert_eq!(sink.sessions().len(), 3);
}

/// A sink whose STARTTLS is broken: 220 and then no handshake.
#[test]
fn kit_sink_broken_tls() {
    let dir = tempdir("kit-sink-broken");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    for mode in [SinkTls::BrokenClose, SinkTls::BrokenGarbage] {
        let sink = Sink::builder(&[lo(22)]).tls(mode).start();
        let mut c = SmtpClient::connect(sink.addr(0));
        assert!(c.ehlo("x.test").contains(&"STARTTLS".to_string()));
        assert!(c.try_starttls("mx.dest.test", &certs.ca).is_err());
    }
}

fn resolver(ns: std::net::SocketAddr) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    let mut server = NameServerConfig::udp_and_tcp(ns.ip());
    for c in &mut server.connections {
        c.port = ns.port();
    }
    let mut b = hickory_resolver::TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    b.options_mut().ndots = 0;
    b.options_mut().timeout = Duration::from_secs(2);
    b.build().expect("resolver")
}

/// The DNS server answers MX / null MX / A / long TXT, NXDOMAIN vs no-data, and changes live.
#[test]
fn kit_dns_server_answers_and_changes() {
    let dns = DnsServer::start();
    dns.add_mx("dest.test", 10, "mx1.dest.test");
    dns.add_mx("dest.test", 20, "mx2.dest.test");
    dns.add_a("mx1.dest.test", "127.0.0.20".parse().unwrap());
    dns.null_mx("nomail.test");
    let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
    dns.add_txt("s1._domainkey.src.test", &long);
    dns.add_a("10.0.0.127.dnsbl.test", "127.0.0.2".parse().unwrap());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = resolver(dns.nameserver());
    rt.block_on(async {
        let mx = r.mx_lookup("dest.test.").await.expect("MX");
        let mut got: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(10, "mx1.dest.test.".into()), (20, "mx2.dest.test.".into())]
        );
        let null = r.mx_lookup("nomail.test.").await.expect("null MX");
        let ex: Vec<String> = null
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::MX(m) => Some(m.exchange.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(ex, vec!["."]);

        let ip = r.ipv4_lookup("mx1.dest.test.").await.expect("A");
        assert_eq!(ip.answers().len(), 1);
        let txt = r.txt_lookup("s1._domainkey.src.test.").await.expect("TXT");
        let joined: String = txt
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                hickory_proto::rr::RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(joined, long);

        // No MX at mx1 (it has an A): no-data, not NXDOMAIN.
        let e = r.mx_lookup("mx1.dest.test.").await.unwrap_err();
        assert!(e.is_no_records_found(), "{e:?}");
        assert!(!e.is_nx_domain(), "{e:?}");
        let e = r.mx_lookup("unknown.test.").await.unwrap_err();
        assert!(e.is_nx_domain(), "{e:?}");

        // Delisting mid-test is seen by the next query.
        assert!(r.ipv4_lookup("10.0.0.127.dnsbl.test.").await.is_ok());
        dns.remove_name("10.0.0.127.dnsbl.test");
        let e = r.ipv4_lookup("10.0.0.127.dnsbl.test.").await.unwrap_err();
        assert!(e.is_nx_domain(), "{e:?}");
    });
    assert!(
        dns.queries()
            .contains(&("dest.test".to_string(), RecordType::MX))
    );
}

// ---------------------------------------------------------------------------------------------
// Interop with real tools (installed by .ci/run). A missing tool fails the test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const INTEROP_WAIT: Duration = Duration::from_secs(60);

/// The path of an external tool; panics (the test fails) if it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("interop tool `{name}` is not installed (run .ci/run)"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A relay config: plain listener, trusted 127/8, `delivery.port` = `port`, 1 s retry (no
/// delivery timeouts), one source IP 127.0.0.10 (`out1.relay.test`).
fn config(port: u16) -> RelayConfig {
    RelayConfig::new()
        .no_delivery()
        .delivery_port(port)
        .delivery("retry", "[\"1s\"]")
        .pool("default", &[PoolIp::new(10, "out1.relay.test")])
}

/// A private Postfix instance (own config, queue and data directories under `dir/postfix`,
/// no chroot, no DNS, its smtpd on `smtpd`). Stopped on drop.
struct Postfix {
    etc: PathBuf,
    root: PathBuf,
    smtpd: SocketAddr,
}

impl Postfix {
    /// Starts an instance with the common settings plus `extra` main.cf lines.
    fn start(dir: &Path, smtpd: SocketAddr, extra: &[String]) -> Postfix {
        let postfix = tool("postfix");
        let postconf = tool("postconf");
        let root = dir.join("postfix");
        let etc = root.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(root.join("queue")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        // master.lock lives in data_directory, which must belong to mail_owner.
        let o = run(Command::new("chown").arg("postfix").arg(root.join("data")));
        assert!(o.status.success(), "chown: {}", text(&o));
        let master = [
            "/etc/postfix/master.cf",
            "/usr/share/postfix/master.cf.dist",
        ]
        .iter()
        .find(|p| Path::new(p).is_file())
        .expect("postfix master.cf template");
        std::fs::copy(master, etc.join("master.cf")).unwrap();
        if !etc.join("main.cf").exists() {
            std::fs::write(etc.join("main.cf"), "").unwrap();
        }
        let r = root.display();
        let mut settings = vec![
            "compatibility_level = 3.6".to_string(),
            format!("queue_directory = {r}/queue"),
            format!("data_directory = {r}/data"),
            format!("maillog_file = {r}/maillog"),
            format!("maillog_file_prefixes = {r}"),
            "mydestination =".into(),
            "alias_maps =".into(),
            "alias_database =".into(),
            "local_transport = error:local delivery disabled".into(),
            // Must name a configured interface; the smtpd entry below binds its own address.
            "inet_interfaces = 127.0.0.1".into(),
            "inet_protocols = ipv4".into(),
            "smtpd_peername_lookup = no".into(),
            "smtp_dns_support_level = disabled".into(),
            "smtp_tls_loglevel = 1".into(),
            "smtpd_tls_loglevel = 1".into(),
            // Retry quickly if the first attempt is deferred.
            "minimal_backoff_time = 1s".into(),
            "maximal_backoff_time = 2s".into(),
            "queue_run_delay = 1s".into(),
        ];
        settings.extend(extra.iter().cloned());
        let o = run(Command::new(&postconf)
            .arg("-c")
            .arg(&etc)
            .arg("-e")
            .args(&settings));
        assert!(o.status.success(), "postconf -e: {}", text(&o));
        // No chroot: nothing to copy into a jail. Our own listener instead of port 25.
        for args in [
            vec!["-F".to_string(), "*/*/chroot = n".into()],
            vec!["-MX".into(), "smtp/inet".into()],
            vec![
                "-M".into(),
                format!("{smtpd}/inet={smtpd} inet n - n - - smtpd"),
            ],
        ] {
            let o = run(Command::new(&postconf).arg("-c").arg(&etc).args(&args));
            assert!(o.status.success(), "postconf {args:?}: {}", text(&o));
        }
        let pf = Postfix { etc, root, smtpd };
        let o = run(Command::new(&postfix).arg("-c").arg(&pf.etc).arg("start"));
        assert!(
            o.status.success(),
            "postfix start: {}\nmaillog:\n{}",
            text(&o),
            pf.maillog()
        );
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
                smtpd
            )
            .is_ok()),
            "postfix smtpd not listening on {smtpd}; maillog:\n{}",
            pf.maillog()
        );
        pf
    }

    /// A client relaying everything to `[127.0.0.1]:relay_port` with SASL and mandatory TLS.
    fn client(dir: &Path, relay_port: u16, user: &str, pass: &str, ca: &Path) -> Postfix {
        let etc = dir.join("postfix").join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let relayhost = format!("[127.0.0.1]:{relay_port}");
        std::fs::write(
            etc.join("sasl_passwd"),
            format!("{relayhost} {user}:{pass}\n"),
        )
        .unwrap();
        let smtpd = SocketAddr::new(lo(1), free_port());
        Postfix::start(
            dir,
            smtpd,
            &[
                "myhostname = postfix.client.test".into(),
                "mydomain = client.test".into(),
                "myorigin = client.test".into(),
                "mynetworks = 127.0.0.0/8".into(),
                format!("relayhost = {relayhost}"),
                "smtp_sasl_auth_enable = yes".into(),
                format!(
                    "smtp_sasl_password_maps = texthash:{}/sasl_passwd",
                    etc.display()
                ),
                "smtp_sasl_security_options = noanonymous".into(),
                "smtp_sasl_tls_security_options = noanonymous".into(),
                "smtp_tls_security_level = encrypt".into(),
                format!("smtp_tls_CAfile = {}", ca.display()),
            ],
        )
    }

    /// A destination MX for `domain` on `smtpd`, offering STARTTLS with `certs`, delivering
    /// `users` of `domain` into Maildirs under `dir/postfix/mail/<user>/`.
    fn destination(
        dir: &Path,
        smtpd: SocketAddr,
        domain: &str,
        users: &[&str],
        certs: &Certs,
    ) -> Postfix {
        let root = dir.join("postfix");
        let mail = root.join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        let o = run(Command::new("chown").arg("postfix").arg(&mail));
        assert!(o.status.success(), "chown: {}", text(&o));
        let uid = String::from_utf8(run(Command::new("id").args(["-u", "postfix"])).stdout)
            .unwrap()
            .trim()
            .to_string();
        let maps = root.join("vmailbox");
        let entries: String = users
            .iter()
            .map(|u| format!("{u}@{domain} {u}/\n"))
            .collect();
        std::fs::write(&maps, entries).unwrap();
        Postfix::start(
            dir,
            smtpd,
            &[
                format!("myhostname = mx.{domain}"),
                format!("mynetworks = {}/32", smtpd.ip()),
                format!("virtual_mailbox_domains = {domain}"),
                format!("virtual_mailbox_base = {}", mail.display()),
                format!("virtual_mailbox_maps = texthash:{}", maps.display()),
                format!("virtual_uid_maps = static:{uid}"),
                format!("virtual_gid_maps = static:{uid}"),
                "smtpd_tls_security_level = may".into(),
                format!("smtpd_tls_cert_file = {}", certs.chain.display()),
                format!("smtpd_tls_key_file = {}", certs.key.display()),
                "smtpd_tls_received_header = yes".into(),
            ],
        )
    }

    /// Files delivered into `mail/<user>/new/`, read.
    fn mailbox(&self, user: &str) -> Vec<String> {
        let new = self.root.join("mail").join(user).join("new");
        let mut files: Vec<_> = std::fs::read_dir(new)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Local submission through Postfix's own sendmail(1).
    fn sendmail(&self, from: &str, to: &str, message: &str) {
        use std::io::Write;
        let mut child = Command::new(tool("sendmail"))
            .arg("-C")
            .arg(&self.etc)
            .arg("-f")
            .arg(from)
            .arg(to)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sendmail");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "sendmail: {}", text(&o));
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Postfix with `relayhost = [127.0.0.1]:PORT`, SASL and `smtp_tls_security_level = encrypt`
/// relays a normal message (local sendmail) and a bounce (null sender, via its smtpd) through
/// poolrelay, which accepts only authenticated clients here, to a sink.
#[test]
#[ignore = "interop: run by .ci/run"]
fn interop_postfix_relayhost_with_sasl_and_tls() {
    let dir = tempdir("interop-postfix");
    let certs = make_certs(&dir, &["relay.test"]);
    let users = write_users(&dir, &[("postfix-client", "pf-S3cret")]);
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20)]);
    let cfg = config(sink.port())
        .listen("starttls", "required")
        .tls(&certs)
        .networks(&[])
        .users_file(&users)
        .sender_login("postfix-client", &["client.test"])
        .dns(&dns)
        .route("*", &format!("127.0.0.20:{}", sink.port()));
    let port = cfg.port;
    let relay = Relay::start(&dir, &cfg.to_toml());
    let pf = Postfix::client(&dir, port, "postfix-client", "pf-S3cret", &certs.ca);

    pf.sendmail(
        "sender@client.test",
        "rcpt@dest.test",
        "From: <sender@client.test>\nTo: <rcpt@dest.test>\nSubject: via postfix token-7f3a\n\nHello through a real Postfix.\n.dot line\n",
    );
    let mut c = SmtpClient::connect(pf.smtpd);
    c.ehlo("app.client.test");
    let r = c.send_mail(
        "",
        &["bounced-sender@dest.test"],
        b"From: MAILER-DAEMON@client.test\r\nTo: <bounced-sender@dest.test>\r\nSubject: Undelivered Mail Returned to Sender token-9b1c\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--b1--\r\n",
    );
    assert_eq!(r.code, 250, "postfix smtpd: {r}");
    c.quit();

    let wait = wait_until(INTEROP_WAIT, || sink.messages().len() >= 2);
    assert!(
        wait,
        "sink got {} of 2 messages\n--- postfix maillog:\n{}\n--- relay log:\n{}\n--- sink:\n{}",
        sink.messages().len(),
        pf.maillog(),
        relay.log(),
        sink.transcripts()
    );
    let msgs = sink.messages();
    let normal = msgs
        .iter()
        .find(|m| m.data_str().contains("token-7f3a"))
        .expect("normal message");
    assert_eq!(normal.mail_from, "sender@client.test");
    assert_eq!(normal.rcpt_to, vec!["rcpt@dest.test"]);
    assert!(normal.data_str().contains("\r\n.dot line\r\n"));
    let bounce = msgs
        .iter()
        .find(|m| m.data_str().contains("token-9b1c"))
        .expect("bounce message");
    assert_eq!(bounce.mail_from, "", "null sender must stay null");
    assert_eq!(bounce.rcpt_to, vec!["bounced-sender@dest.test"]);

    // Postfix itself says it used TLS and that both were accepted by the relayhost.
    let log = pf.maillog();
    assert!(
        log.contains(&format!(
            "TLS connection established to 127.0.0.1[127.0.0.1]:{port}"
        )),
        "{log}"
    );
    assert_eq!(
        log.lines()
            .filter(
                |l| l.contains(&format!("relay=127.0.0.1[127.0.0.1]:{port}"))
                    && l.contains("status=sent")
            )
            .count(),
        2,
        "{log}"
    );
}

/// A relay with a STARTTLS listener and an implicit-TLS listener, AUTH optional, trusting only
/// 127.0.0.1: swaks from the untrusted 127.0.0.66 relays after AUTH, and is refused without.
struct SwaksBench {
    certs: Certs,
    _dns: DnsServer,
    sink: Sink,
    relay: Relay,
    starttls: SocketAddr,
    implicit: SocketAddr,
}

fn swaks_bench(name: &str) -> SwaksBench {
    let dir = tempdir(name);
    let certs = make_certs(&dir, &["relay.test"]);
    let users = write_users(&dir, &[("alice", "Alice-pw-1")]);
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20)]);
    let p2 = free_port();
    let cfg = config(sink.port())
        .listen("starttls", "optional")
        .listener(format!("127.0.0.1:{p2}"), "implicit", "optional")
        .tls(&certs)
        .networks(&["127.0.0.1/32"])
        .users_file(&users)
        .sender_login("alice", &["client.test"])
        .dns(&dns)
        .route("*", &format!("127.0.0.20:{}", sink.port()));
    let p1 = cfg.port;
    let relay = Relay::start(&dir, &cfg.to_toml());
    let starttls = SocketAddr::new(lo(1), p1);
    let implicit = SocketAddr::new(lo(1), p2);
    SwaksBench {
        certs,
        _dns: dns,
        sink,
        relay,
        starttls,
        implicit,
    }
}

fn swaks(args: &[&str]) -> Output {
    run(Command::new(tool("swaks"))
        .args(["--timeout", "20"])
        .args(args))
}

#[test]
#[ignore = "interop: run by .ci/run"]
fn interop_swaks_auth_plain_over_starttls_and_implicit_tls() {
    let b = swaks_bench("interop-swaks-auth");
    let ca = b.certs.ca.display().to_string();
    let cases: [(&str, SocketAddr, &str, &str); 3] = [
        ("--tls", b.starttls, "PLAIN", "token-starttls-plain"),
        (
            "--tls-on-connect",
            b.implicit,
            "PLAIN",
            "token-implicit-plain",
        ),
        ("--tls", b.starttls, "LOGIN", "token-starttls-login"),
    ];
    for (mode, addr, mech, token) in cases {
        let server = addr.to_string();
        let o = swaks(&[
            "--server",
            &server,
            mode,
            "--tls-verify",
            "--tls-ca-path",
            &ca,
            "--tls-sni",
            "relay.test",
            "-li",
            "127.0.0.66",
            "--ehlo",
            "swaks.client.test",
            "-a",
            mech,
            "-au",
            "alice",
            "-ap",
            "Alice-pw-1",
            "--from",
            "alice@client.test",
            "--to",
            "rcpt@dest.test",
            "--header",
            &format!("Subject: {token}"),
        ]);
        let out = text(&o);
        assert!(
            o.status.success(),
            "swaks {mode} {mech}: {out}\n{}",
            b.relay.log()
        );
        assert!(out.contains("<~  235 "), "AUTH over TLS: {out}");
        assert!(
            out.lines().any(|l| l.starts_with("<~  250 2.0.0")),
            "queued: {out}"
        );
    }
    let msgs = b.sink.wait_for_messages(3, INTEROP_WAIT);
    for token in [
        "token-starttls-plain",
        "token-implicit-plain",
        "token-starttls-login",
    ] {
        let m = msgs
            .iter()
            .find(|m| m.data_str().contains(token))
            .unwrap_or_else(|| panic!("{token} not delivered"));
        assert_eq!(m.mail_from, "alice@client.test");
    }
    assert!(
        !b.relay.log().contains("Alice-pw-1"),
        "password in the relay log"
    );
}

#[test]
#[ignore = "interop: run by .ci/run"]
fn interop_swaks_untrusted_without_auth_is_refused() {
    let b = swaks_bench("interop-swaks-noauth");
    for (mode, addr) in [("--tls", b.starttls), ("", b.starttls)] {
        let server = addr.to_string();
        let mut args = vec![
            "--server",
            &server,
            "-li",
            "127.0.0.66",
            "--from",
            "someone@client.test",
            "--to",
            "victim@dest.test",
        ];
        if !mode.is_empty() {
            args.push(mode);
        }
        let o = swaks(&args);
        let out = text(&o);
        assert!(!o.status.success(), "relay refused? {out}");
        let rcpt_reply = out
            .lines()
            .skip_while(|l| !l.contains("RCPT TO:<victim@dest.test>"))
            .nth(1)
            .unwrap_or("");
        assert!(
            rcpt_reply.contains(" 554 5.7.1"),
            "RCPT reply {rcpt_reply:?} in: {out}"
        );
    }
    // The trusted address relays without AUTH (the control case).
    let server = b.starttls.to_string();
    let o = swaks(&[
        "--server",
        &server,
        "-li",
        "127.0.0.1",
        "--from",
        "app@client.test",
        "--to",
        "ok@dest.test",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let msgs = b.sink.wait_for_messages(1, INTEROP_WAIT);
    assert!(msgs.iter().all(|m| m.rcpt_to != vec!["victim@dest.test"]));
}

/// dnsmasq (a DNS server we did not write) serves MX and A records; the relay resolves the MX
/// through it and delivers to the sink on the MX host's address.
#[test]
#[ignore = "interop: run by .ci/run"]
fn interop_dnsmasq_mx_routing() {
    let dir = tempdir("interop-dnsmasq");
    let sink = Sink::start(&[lo(21), lo(22)]);
    let dns_port = free_port();
    let mut dnsmasq = Command::new(tool("dnsmasq"))
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            "--log-queries",
        ])
        .arg(format!("--port={dns_port}"))
        .arg(format!(
            "--log-facility={}",
            dir.join("dnsmasq.log").display()
        ))
        .args([
            "--local=/dm.test/",
            "--mx-host=dm.test,mx1.dm.test,10",
            "--mx-host=dm.test,mx2.dm.test,20",
            "--host-record=mx1.dm.test,127.0.0.22",
            "--host-record=mx2.dm.test,127.0.0.21",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = KillOnDrop(&mut dnsmasq);
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", dns_port)).is_ok()
        }),
        "dnsmasq not listening"
    );
    let cfg = config(sink.port()).nameserver(format!("127.0.0.1:{dns_port}"));
    let relay = Relay::start(&dir, &cfg.to_toml());
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.send_mail(
        "a@client.test",
        &["user@dm.test"],
        b"Subject: via dnsmasq MX\r\n\r\nhi\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    let m = &sink.wait_for_messages(1, INTEROP_WAIT)[0];
    assert_eq!(m.local.ip(), lo(22), "lowest-preference MX first");
    assert_eq!(m.rcpt_to, vec!["user@dm.test"]);
    let qlog = std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default();
    assert!(qlog.contains("dm.test"), "dnsmasq saw no query: {qlog}");
    drop(guard);
}

/// A scripted delay holds the reply back (for timeout tests).
#[test]
fn kit_sink_delayed_greeting() {
    let sink = Sink::builder(&[lo(23)])
        .script(|s: &Step| (s.stage == Stage::Connect).then(|| "DELAY:300:220 slow sink".into()))
        .start();
    let t = std::time::Instant::now();
    let c = SmtpClient::connect(sink.addr(0));
    assert_eq!(c.greeting.text, "220 slow sink");
    assert!(t.elapsed() >= Duration::from_millis(300));
}

/// A real Postfix as the destination MX: poolrelay resolves the MX through the test DNS, sends
/// from its pool address with STARTTLS (`tls = "required"`, verified against the test CA) and
/// Postfix writes the message into a Maildir.
#[test]
#[ignore = "interop: run by .ci/run"]
fn interop_postfix_as_destination_mx_over_starttls() {
    let dir = tempdir("interop-postfix-mx");
    let certs = make_certs(&dir, &["mx.dest.test"]);
    let mx = SocketAddr::new(lo(24), free_port_on(&[lo(24)]));
    let pf = Postfix::destination(&dir, mx, "dest.test", &["alice"], &certs);
    let dns = DnsServer::start();
    dns.add_mx("dest.test", 10, "mx.dest.test");
    dns.add_a("mx.dest.test", "127.0.0.24".parse().unwrap());
    let cfg = config(mx.port())
        .dns(&dns)
        .delivery("tls", "\"required\"")
        .delivery("ca_file", format!("\"{}\"", certs.ca.display()));
    let relay = Relay::start(&dir, &cfg.to_toml());
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("app.client.test");
    let r = c.send_mail(
        "app@client.test",
        &["alice@dest.test"],
        b"From: <app@client.test>\r\nTo: <alice@dest.test>\r\nSubject: to a real MX token-44d1\r\n\r\nHello Postfix.\r\n..two dots\r\n",
    );
    assert_eq!(r.code, 250, "{r}");
    c.quit();

    let got = wait_until(INTEROP_WAIT, || !pf.mailbox("alice").is_empty());
    assert!(
        got,
        "nothing in alice's Maildir\n--- postfix maillog:\n{}\n--- relay log:\n{}",
        pf.maillog(),
        relay.log()
    );
    let mail = &pf.mailbox("alice")[0];
    assert!(mail.contains("token-44d1"), "{mail}");
    assert!(mail.contains("\n..two dots\n"), "dot-stuffing kept: {mail}");
    assert!(mail.contains("Return-Path: <app@client.test>"), "{mail}");
    let log = pf.maillog();
    assert!(
        log.contains("TLS connection established from unknown[127.0.0.10]"),
        "delivered from the pool address over TLS: {log}"
    );
    // Postfix's own Received line: the pool IP's EHLO name, its address, TLS.
    assert!(
        mail.contains("Received: from out1.relay.test (unknown [127.0.0.10])"),
        "{mail}"
    );
    assert!(mail.contains("with ESMTPS"), "{mail}");
}

/// The kit works from async tests too (no nested runtime).
#[tokio::test]
async fn kit_usable_from_async_tests() {
    let dns = DnsServer::start();
    dns.add_a("a.test", "127.0.0.20".parse().unwrap());
    let sink = Sink::start(&[lo(25)]);
    let addr = sink.addr(0);
    let r = tokio::task::spawn_blocking(move || {
        let mut c = SmtpClient::connect_from(addr, lo(13));
        c.ehlo("x.test");
        c.send_mail("a@b.test", &["c@d.test"], b"x\r\n")
    })
    .await
    .unwrap();
    assert_eq!(r.code, 250);
    assert_eq!(sink.messages()[0].peer, lo(13));
    drop(sink);
    drop(dns);
}
