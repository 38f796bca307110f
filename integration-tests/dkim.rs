//! DKIM: keys made by `poolrelay dkim keygen`, messages relayed through the real binary to a sink,
//! the delivered bytes verified by verifiers we did not write: mail-auth's verifier reading the
//! public keys from the in-process DNS server (plain `cargo test`), and dkimpy (interop, run by
//! .ci/run; needs the PyPI packages dkimpy, dnspython and pynacl).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use mail_auth::DkimResult;

const WAIT: Duration = Duration::from_secs(15);
const BIN: &str = env!("CARGO_BIN_EXE_poolrelay");

/// One `[[dkim]]` key: made by the binary, published in the test DNS.
struct Key {
    domain: &'static str,
    selector: &'static str,
    algorithm: &'static str,
    subdomains: bool,
}

const KEYS: &[Key] = &[
    Key {
        domain: "rsa.test",
        selector: "r2026",
        algorithm: "rsa2048",
        subdomains: false,
    },
    Key {
        domain: "ed.test",
        selector: "e2026",
        algorithm: "ed25519",
        subdomains: false,
    },
    // Dual signatures: Ed25519 and RSA side by side.
    Key {
        domain: "dual.test",
        selector: "ed",
        algorithm: "ed25519",
        subdomains: false,
    },
    Key {
        domain: "dual.test",
        selector: "rsa",
        algorithm: "rsa2048",
        subdomains: false,
    },
    Key {
        domain: "parent.test",
        selector: "p1",
        algorithm: "ed25519",
        subdomains: true,
    },
];

struct Bench {
    dir: PathBuf,
    dns: DnsServer,
    sink: Sink,
    relay: Relay,
    /// `(selector._domainkey.domain, TXT value)` as published.
    records: Vec<(String, String)>,
}

/// Keys, DNS, a sink on 127.0.0.20 and the relay (trusted 127/8, route `*` to the sink).
fn bench(name: &str, extra: &str) -> Bench {
    let dir = tempdir(name);
    let dns = DnsServer::start();
    let sink = Sink::start(&[lo(20)]);
    let mut dkim = String::new();
    let mut records = Vec::new();
    for k in KEYS {
        let (path, txt) = keygen(&dir, k.domain, k.selector, k.algorithm);
        let rname = format!("{}._domainkey.{}", k.selector, k.domain);
        dns.add_txt(&rname, &txt);
        records.push((rname, txt));
        dkim.push_str(&format!(
            "[[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nprivate_key = \"{}\"\nsubdomains = {}\n\n",
            k.domain,
            k.selector,
            path.display(),
            k.subdomains
        ));
    }
    let cfg = RelayConfig::new()
        .dns(&dns)
        .delivery_port(sink.port())
        .route("*", &format!("[127.0.0.20]:{}", sink.port()))
        .pool("default", &[PoolIp::new(10, "out1.relay.test")])
        // The doctor's own DKIM lookups would answer "the key came from DNS" below for the
        // verifier.
        .section("[doctor]\nbackground = false")
        .section(&dkim)
        .section(extra);
    let relay = Relay::start(&dir, &cfg.to_toml());
    Bench {
        dir,
        dns,
        sink,
        relay,
        records,
    }
}

fn message(from: &str, subject: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let id = subject.split_whitespace().next().unwrap_or("m");
    format!(
        "From: Sender <{from}>\r\nTo: <rcpt@dest.test>\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 17:00:00 +0000\r\nMessage-ID: <{id}@relay.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra_headers}\r\n{body}"
    )
    .into_bytes()
}

/// Submits `msg` (MAIL FROM with `params`), waits for the sink; returns the delivered bytes.
fn relay_one(b: &Bench, params: &str, msg: &[u8]) -> Vec<u8> {
    let before = b.sink.messages().len();
    let mut c = SmtpClient::connect(b.relay.addr());
    c.ehlo("client.test");
    c.cmd(&format!("MAIL FROM:<sender@client.test>{params}"))
        .expect(250);
    c.cmd("RCPT TO:<rcpt@dest.test>").expect(250);
    let r = c.data(msg);
    assert_eq!(r.code, 250, "{r}\n{}", b.relay.log());
    c.quit();
    let msgs = b.sink.wait_for_messages(before + 1, WAIT);
    let data = msgs[before].data.clone();
    check_only_prepended(msg, &data);
    data
}

/// The delivered message is `DKIM-Signature:` fields, our Received, then the client's bytes.
fn check_only_prepended(sent: &[u8], delivered: &[u8]) {
    assert!(
        delivered.ends_with(sent),
        "message changed in transit:\n{}",
        String::from_utf8_lossy(delivered)
    );
    let head = String::from_utf8_lossy(&delivered[..delivered.len() - sent.len()]).into_owned();
    let mut fields: Vec<String> = Vec::new();
    for line in head.split_inclusive("\r\n") {
        if line.starts_with([' ', '\t']) {
            fields
                .last_mut()
                .expect("continuation first")
                .push_str(line);
        } else {
            fields.push(line.to_string());
        }
    }
    let (last, sigs) = fields.split_last().expect("a Received field");
    assert!(last.starts_with("Received: "), "{head}");
    assert!(
        sigs.iter().all(|f| f.starts_with("DKIM-Signature: ")),
        "{head}"
    );
}

fn signature_count(data: &[u8]) -> usize {
    String::from_utf8_lossy(data)
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .matches("\r\nDKIM-Signature:")
        .count()
        + usize::from(data.starts_with(b"DKIM-Signature:"))
}

/// `d=`/`s=` of each signature, in order.
fn signers(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data).replace("\r\n\t", " ");
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("DKIM-Signature:"))
        .map(|l| {
            let tag = |t: &str| {
                l.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k.trim() == t)
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            };
            format!("{}/{}", tag("d"), tag("s"))
        })
        .collect()
}

const DKIMPY: &str = r#"
headers, _ = dkim.rfc822_parse(raw)
count = sum(1 for h in headers if h[0].lower() == b'dkim-signature')
def ok(i):
    try:
        return bool(dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc))
    except dkim.DKIMException as e:
        print(f'signature {i}: {e}', file=sys.stderr)
        return False
print(json.dumps([ok(i) for i in range(count)]))
"#;

/// dkimpy's verdict for each signature, keys from the bench's records. Fails if dkimpy (or
/// PyNaCl, which it needs for Ed25519) is missing.
fn verify_dkimpy(b: &Bench, data: &[u8], tag: &str) -> Vec<bool> {
    let out = run_dkimpy(&b.dir, "dkim, dns, nacl", DKIMPY, tag, data, &b.records);
    serde_json::from_slice(&out).expect("dkimpy output")
}

fn tamper(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let i = data
        .windows(from.len())
        .rposition(|w| w == from)
        .expect("pattern in message");
    [&data[..i], to, &data[i + from.len()..]].concat()
}

// ---- plain `cargo test`: mail-auth verifier over the test DNS server ----

#[test]
fn relayed_messages_verify_rsa_ed25519_dual_and_subdomain() {
    let b = bench("dkim-verify", "");
    let cases: &[(&str, &[&str])] = &[
        ("a@rsa.test", &["rsa.test/r2026"]),
        ("a@ed.test", &["ed.test/e2026"]),
        ("a@dual.test", &["dual.test/ed", "dual.test/rsa"]),
        ("a@news.parent.test", &["parent.test/p1"]),
    ];
    for (i, (from, want)) in cases.iter().enumerate() {
        let msg = message(from, &format!("m{i}"), "", "Hello.\r\n");
        let data = relay_one(&b, "", &msg);
        assert_eq!(signers(&data), *want, "{from}");
        let results = verify_dkim(&b.dns, &data);
        assert_eq!(results, vec![DkimResult::Pass; want.len()], "{from}");

        // A changed body no longer passes.
        let bad = tamper(&data, b"Hello.", b"Hellp.");
        assert!(
            verify_dkim(&b.dns, &bad)
                .iter()
                .all(|r| *r != DkimResult::Pass),
            "{from}"
        );
    }
    // The public key really came from the DNS server.
    assert!(
        b.dns
            .queries()
            .iter()
            .any(|(n, _)| n.starts_with("p1._domainkey.parent.test")),
        "{:?}",
        b.dns.queries()
    );
}

#[test]
fn unsigned_domain_passes_unless_signing_is_required() {
    let b = bench("dkim-unsigned", "");
    let data = relay_one(&b, "", &message("a@nokey.test", "u1", "", "Hi.\r\n"));
    assert_eq!(signature_count(&data), 0);
    // subdomains = false: a subdomain of rsa.test is not covered.
    let data = relay_one(&b, "", &message("a@x.rsa.test", "u2", "", "Hi.\r\n"));
    assert_eq!(signature_count(&data), 0);
    // The log says so, per queue id; and names the keys that did sign.
    relay_one(&b, "", &message("a@rsa.test", "u3", "", "Hi.\r\n"));
    let log = b.relay.log();
    let unsigned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dkim=unsigned: no key for the From: domain"))
        .collect();
    assert_eq!(unsigned.len(), 2, "{log}");
    assert!(unsigned[0].contains("domain nokey.test"), "{log}");
    assert!(unsigned[1].contains("domain x.rsa.test"), "{log}");
    assert!(
        unsigned
            .iter()
            .all(|l| l.contains("queue_id=") && l.contains("message accepted")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("dkim=signed ") && l.contains("rsa.test/r2026")),
        "{log}"
    );
    drop(b);

    let b = bench("dkim-require", "[signing]\nrequire = true\n");
    let mut c = SmtpClient::connect(b.relay.addr());
    c.ehlo("client.test");
    let r = c.send_mail(
        "sender@client.test",
        &["rcpt@dest.test"],
        &message("a@nokey.test", "r1", "", "Hi.\r\n"),
    );
    assert_eq!(r.code, 554, "{r}");
    assert!(
        r.text.contains("5.7.1") && r.text.contains("nokey.test"),
        "{r}"
    );
    // The session goes on; a signable message is accepted.
    let r = c.send_mail(
        "sender@client.test",
        &["rcpt@dest.test"],
        &message("a@rsa.test", "r2", "", "Hi.\r\n"),
    );
    assert_eq!(r.code, 250, "{r}");
    c.quit();
    let msgs = b.sink.wait_for_messages(1, WAIT);
    assert!(msgs[0].data_str().contains("Subject: r2\r\n"));
    assert_eq!(signature_count(&msgs[0].data), 1);
}

#[test]
fn already_signed_by_the_same_key_is_not_signed_twice() {
    let b = bench("dkim-twice", "");
    let first = relay_one(&b, "", &message("a@dual.test", "t1", "", "Hi.\r\n"));
    assert_eq!(signers(&first), ["dual.test/ed", "dual.test/rsa"]);
    // Relay the delivered message again (as a second hop would): no second pair of signatures.
    let again = relay_one(&b, "", &first);
    assert_eq!(signature_count(&again), 2);
    assert_eq!(
        verify_dkim(&b.dns, &again),
        vec![DkimResult::Pass, DkimResult::Pass]
    );
}

#[test]
fn eight_bit_body_and_long_folded_headers_verify() {
    let b = bench("dkim-8bit", "");
    let to: Vec<String> = (0..30).map(|i| format!("user{i}@dest.test")).collect();
    let refs: Vec<String> = (0..20)
        .map(|i| format!("<ref{i}.long.message.id@dual.test>"))
        .collect();
    let extra = format!(
        "Cc: {}\r\nReferences: {}\r\nList-Unsubscribe: <mailto:u@dual.test?subject=unsubscribe>,\r\n  <https://dual.test/u?id=1234567890abcdef1234567890abcdef>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        to.join(",\r\n\t"),
        refs.join("\r\n ")
    );
    let body = "Grüße aus Köln — ünïcödé body.\r\n\r\nTrailing  spaces   and tabs\t\r\n\r\n\r\n";
    let msg = message(
        "a@dual.test",
        "a subject\r\n that is folded   across lines",
        &extra,
        body,
    );
    let data = relay_one(&b, " BODY=8BITMIME", &msg);
    let results = verify_dkim(&b.dns, &data);
    assert_eq!(results, vec![DkimResult::Pass, DkimResult::Pass]);
    let h = String::from_utf8_lossy(&data).replace("\r\n\t", "");
    for name in [
        "Cc",
        "References",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ] {
        assert!(
            h.split(';').any(|t| t
                .trim()
                .strip_prefix("h=")
                .is_some_and(|l| l.split(':').any(|n| n.trim().eq_ignore_ascii_case(name)))),
            "{name} not signed: {h}"
        );
    }
}

#[test]
fn bad_key_is_a_config_error_naming_the_file() {
    let dir = tempdir("dkim-badkey");
    let bad = dir.join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let port = free_port();
    let config = format!(
        "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:{port}\"\ntls = \"none\"\nauth = \"none\"\n\
         [[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
        bad.display()
    );
    let (code, err) = check_config(&dir, &config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(err.contains("example.com"), "{err}");

    // The relay refuses to start with it.
    let (status, log) = Relay::start_expect_exit(&dir, &config, Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("relay started with a bad key: {log}"));
    assert!(!status.success());
    assert!(log.contains("bad.pem"), "{log}");

    // A good key passes check-config.
    let (good, _) = keygen(&dir, "example.com", "s1", "ed25519");
    let good_config = config.replace(&bad.display().to_string(), &good.display().to_string());
    let (code, err) = check_config(&dir, &good_config);
    assert!(code == Some(0), "{err}");
}

/// Issue 25: DKIM signs through aws-lc-rs only. A 1024-bit RSA key is refused by `check-config`,
/// at start and on reload (SIGHUP), with the reason; the running relay keeps its old key.
#[test]
fn rsa_keys_under_2048_bits_are_refused_everywhere_with_the_reason() {
    const REASON: &str = "RSA keys under 2048 bits are not allowed for DKIM signing";
    let dir = tempdir("dkim-rsa1024");
    let short = dir.join("rsa1024.pem");
    std::fs::write(
        &short,
        include_str!("../src/signing/testdata/rsa1024-pkcs1.pem"),
    )
    .unwrap();
    let (good, _) = keygen(&dir, "example.com", "s1", "ed25519");
    let cfg = |key: &Path| {
        RelayConfig::new().section(&format!(
            "[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{}\"",
            key.display()
        ))
    };
    let bad = cfg(&short).to_toml();
    let (code, err) = check_config(&dir, &bad);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(REASON) && err.contains("RFC 8301"), "{err}");
    assert!(err.contains("rsa1024.pem"), "{err}");

    let (status, log) = Relay::start_expect_exit(&dir, &bad, Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("relay started with a 1024-bit key: {log}"));
    assert!(!status.success());
    assert!(log.contains(REASON), "{log}");

    let mut relay = Relay::start(&dir, &cfg(&good).to_toml());
    relay.set_config(&bad);
    let pid = relay.pid().expect("relay running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    assert!(
        wait_until(WAIT, || relay.log_current().contains("reload refused")),
        "{}",
        relay.log_current()
    );
    assert!(
        relay.log_current().contains(REASON),
        "{}",
        relay.log_current()
    );
    assert!(relay.is_running());
}

#[test]
fn keygen_writes_a_private_0600_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("dkim-keygen");
    // `dkim keygen` for `domain`, selector s2026, in `dir`.
    let keygen_cli = |domain: &str, more: &[&str]| {
        Command::new(BIN)
            .current_dir(&dir)
            .args(["dkim", "keygen", "--domain", domain, "--selector", "s2026"])
            .args(more)
            .output()
            .unwrap()
    };
    let o = keygen_cli("Example.COM", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = dir.join("config/dkim/example.com.s2026.pem");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.starts_with("s2026._domainkey.example.com. IN TXT ( \"v=DKIM1; k=rsa; p="),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("\" )"), "{stdout}");
    assert!(stdout.split('"').skip(1).step_by(2).all(|s| s.len() <= 255));
    let before = std::fs::read(&path).unwrap();
    let o = keygen_cli("example.com", &["--algorithm", "ed25519"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

// ---- interop: dkimpy (run by .ci/run) ----

#[test]
#[ignore = "interop: run by .ci/run"]
fn dkimpy_verifies_rsa_ed25519_dual_subdomain() {
    let b = bench("dkim-dkimpy", "");
    for (i, (from, n)) in [
        ("a@rsa.test", 1),
        ("a@ed.test", 1),
        ("a@dual.test", 2),
        ("a@deep.sub.parent.test", 1),
    ]
    .into_iter()
    .enumerate()
    {
        let data = relay_one(&b, "", &message(from, &format!("p{i}"), "", "Hello.\r\n"));
        assert_eq!(
            verify_dkimpy(&b, &data, &format!("p{i}")),
            vec![true; n],
            "{from}"
        );
        let bad = tamper(&data, b"Hello.", b"Jello.");
        assert_eq!(
            verify_dkimpy(&b, &bad, &format!("p{i}-bad")),
            vec![false; n],
            "{from} tampered"
        );
    }
}

#[test]
#[ignore = "interop: run by .ci/run"]
fn dkimpy_verifies_8bit_body_and_long_folded_headers() {
    let b = bench("dkim-dkimpy-8bit", "");
    let to: Vec<String> = (0..30).map(|i| format!("user{i}@dest.test")).collect();
    let extra = format!(
        "Cc: {}\r\nReferences: <a.very.long.id.0123456789@dual.test>\r\n <b.very.long.id.0123456789@dual.test>\r\n",
        to.join(",\r\n\t")
    );
    let body = "Grüße — ünïcödé body.\r\n\r\nTrailing  spaces\t \r\n\r\n";
    let msg = message("a@dual.test", "folded\r\n   subject", &extra, body);
    let data = relay_one(&b, " BODY=8BITMIME", &msg);
    assert_eq!(verify_dkimpy(&b, &data, "8bit"), vec![true, true]);
    let bad = tamper(&data, b"user29@dest.test", b"user99@dest.test");
    assert_eq!(verify_dkimpy(&b, &bad, "8bit-bad"), vec![false, false]);
}

/// A private Postfix (own config and queue under `dir`) relaying everything in plain SMTP to
/// `relayhost = [127.0.0.1]:relay_port` (a trusted network there). A trimmed copy of
/// interop.rs's harness: no SASL, no TLS. Stopped on drop.
struct Postfix {
    etc: PathBuf,
    root: PathBuf,
}

fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("interop tool `{name}` is not installed (run .ci/run)"))
}

impl Postfix {
    fn start(dir: &Path, relay_port: u16) -> Postfix {
        let root = dir.join("postfix");
        let etc = root.join("etc");
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let o = Command::new("chown")
            .arg("postfix")
            .arg(root.join("data"))
            .output()
            .unwrap();
        assert!(o.status.success(), "chown postfix: {o:?}");
        let master = [
            "/etc/postfix/master.cf",
            "/usr/share/postfix/master.cf.dist",
        ]
        .iter()
        .find(|p| Path::new(p).is_file())
        .expect("postfix master.cf template");
        std::fs::copy(master, etc.join("master.cf")).unwrap();
        std::fs::write(etc.join("main.cf"), "").unwrap();
        let r = root.display();
        let settings = [
            "compatibility_level = 3.6".to_string(),
            format!("queue_directory = {r}/queue"),
            format!("data_directory = {r}/data"),
            format!("maillog_file = {r}/maillog"),
            format!("maillog_file_prefixes = {r}"),
            "myhostname = postfix.client.test".into(),
            "mydomain = client.test".into(),
            "myorigin = client.test".into(),
            "mydestination =".into(),
            "alias_maps =".into(),
            "alias_database =".into(),
            "local_transport = error:local delivery disabled".into(),
            "inet_interfaces = 127.0.0.1".into(),
            "inet_protocols = ipv4".into(),
            "smtpd_peername_lookup = no".into(),
            "smtp_dns_support_level = disabled".into(),
            format!("relayhost = [127.0.0.1]:{relay_port}"),
            "minimal_backoff_time = 1s".into(),
            "maximal_backoff_time = 2s".into(),
            "queue_run_delay = 1s".into(),
        ];
        let postconf = tool("postconf");
        let o = Command::new(&postconf)
            .arg("-c")
            .arg(&etc)
            .arg("-e")
            .args(&settings)
            .output()
            .unwrap();
        assert!(o.status.success(), "postconf -e: {o:?}");
        // No chroot, and no smtpd on port 25: only local submission is needed.
        for args in [["-F", "*/*/chroot = n"], ["-MX", "smtp/inet"]] {
            let o = Command::new(&postconf)
                .arg("-c")
                .arg(&etc)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "postconf {args:?}: {o:?}");
        }
        let pf = Postfix { etc, root };
        let o = Command::new(tool("postfix"))
            .arg("-c")
            .arg(&pf.etc)
            .arg("start")
            .output()
            .unwrap();
        assert!(o.status.success(), "postfix start: {o:?}\n{}", pf.maillog());
        pf
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.root.join("maillog")).unwrap_or_default()
    }

    /// Local submission through Postfix's sendmail(1) (LF line endings, as applications write).
    fn sendmail(&self, from: &str, to: &str, message: &[u8]) {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(tool("sendmail"))
            .arg("-C")
            .arg(&self.etc)
            .args(["-f", from, to])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sendmail");
        child.stdin.take().unwrap().write_all(message).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "sendmail: {o:?}");
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(tool("postfix"))
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .output();
    }
}

/// A real Postfix as the client (it adds its own Received, Date and Message-ID, converts LF to
/// CRLF, sends BODY=8BITMIME): what it relays through poolrelay verifies with dkimpy.
#[test]
#[ignore = "interop: run by .ci/run"]
fn dkimpy_verifies_mail_relayed_from_a_real_postfix() {
    let b = bench("dkim-postfix", "");
    let pf = Postfix::start(&b.dir, b.relay.addr().port());
    pf.sendmail(
        "app@dual.test",
        "rcpt@dest.test",
        "From: App <app@dual.test>\nTo: rcpt@dest.test\nSubject: via postfix token-d1e2\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nGrüße through a real Postfix.\n.dot line\n"
            .as_bytes(),
    );
    let ok = wait_until(Duration::from_secs(60), || !b.sink.messages().is_empty());
    assert!(
        ok,
        "nothing delivered\n--- maillog:\n{}\n--- relay log:\n{}",
        pf.maillog(),
        b.relay.log()
    );
    let m = &b.sink.messages()[0];
    assert!(m.data_str().contains("token-d1e2"));
    assert!(m.data_str().contains("\r\n.dot line\r\n"));
    assert_eq!(signers(&m.data), ["dual.test/ed", "dual.test/rsa"]);
    assert_eq!(verify_dkimpy(&b, &m.data, "postfix"), vec![true, true]);
    assert_eq!(
        verify_dkim(&b.dns, &m.data),
        vec![DkimResult::Pass, DkimResult::Pass]
    );
}
