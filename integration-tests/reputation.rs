//! Reputation: reply classification (`poolrelay classify`, measured against a corpus of real
//! bounces), DNSBL monitoring of pool IPs, block replies and bounce rates leading to quarantine.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;

fn poolrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_poolrelay"))
}

fn run_json(args: &[&str], stdin: Option<&str>) -> Vec<serde_json::Value> {
    let mut child = poolrelay()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run poolrelay");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "poolrelay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const S3150: &str = "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.";

#[test]
fn classify_reply_from_argument_and_stdin() {
    let v = &run_json(&["classify", "--json", S3150], None)[0];
    assert_eq!(v["class"], "block", "{v}");
    assert_eq!(v["scope"], "ip");
    assert_eq!(v["blames_ip"], true);
    assert_eq!(v["provider"], "microsoft");
    assert_eq!(v["rule"], "microsoft-blocklist");
    assert_eq!(
        (v["code"].as_u64(), v["status"].as_str()),
        (Some(550), Some("5.7.1"))
    );

    // Multi-line replies on stdin, continuation prefixes included.
    let gmail = "421-4.7.28 [203.0.113.5 15] Our system has detected an unusual rate of\r\n421-4.7.28 unsolicited mail originating from your IP address.\r\n421 4.7.28 https://support.google.com/mail/?p=UnsolicitedRateLimitError\r\n";
    let v = &run_json(&["classify", "--json"], Some(gmail))[0];
    assert_eq!(
        (v["class"].as_str(), v["provider"].as_str()),
        (Some("reputation"), Some("gmail")),
        "{v}"
    );

    let v = &run_json(
        &[
            "classify",
            "--json",
            "550 5.1.1 <a@example.org>: user unknown",
        ],
        None,
    )[0];
    assert_eq!(
        (
            v["class"].as_str(),
            v["scope"].as_str(),
            v["blames_ip"].as_bool()
        ),
        (Some("bad-recipient"), Some("recipient"), Some(false)),
        "{v}"
    );

    // Human output names class, provider, blame and rule.
    let out = poolrelay()
        .args(["classify", "552 5.2.2 mailbox full"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "class:     mailbox-full",
        "blames:    the recipient",
        "rule:      ",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    // Nothing to classify is an error, not a guess.
    let out = poolrelay().args(["classify", "  "]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn classify_uses_operator_rules_from_the_config() {
    let dir = tempdir("classify-rules");
    std::fs::write(
        dir.join("extra-rules.toml"),
        "[[rule]]\nname = \"acme-ip-block\"\nclass = \"block\"\nprovider = \"acme\"\ntext = 'ACME-BLK-\\d+'\n",
    )
    .unwrap();
    let config = dir.join("poolrelay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[reputation]\nrules_file = \"{}\"\n[[reputation.rule]]\nname = \"inline-first\"\nclass = \"rate-limit\"\ncode = '^451$'\ntext = 'ACME-BLK-9'\n",
            dir.join("extra-rules.toml").display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let v = &run_json(
        &[
            "classify",
            "--json",
            "-c",
            c,
            "550 5.7.1 refused ACME-BLK-17",
        ],
        None,
    )[0];
    assert_eq!(
        (
            v["class"].as_str(),
            v["rule"].as_str(),
            v["provider"].as_str()
        ),
        (Some("block"), Some("acme-ip-block"), Some("acme")),
        "{v}"
    );
    let v = &run_json(
        &["classify", "--json", "-c", c, "451 4.7.1 ACME-BLK-9"],
        None,
    )[0];
    assert_eq!(v["rule"], "inline-first", "{v}");
    // Without the config the built-in rules decide.
    let v = &run_json(
        &["classify", "--json", "550 5.7.1 refused ACME-BLK-17"],
        None,
    )[0];
    assert_ne!(v["rule"], "acme-ip-block");

    // A broken regex is a config error naming the rule.
    std::fs::write(&config, "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[[reputation.rule]]\nname = \"broken\"\nclass = \"block\"\ntext = '('\n").unwrap();
    let out = poolrelay().args(["check-config", c]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("broken"), "{err}");
}

/// The bounce corpus (Sisimai's public sample set; see its README and LICENSE). CI has `shared/`
/// beside the checkout; `POOLRELAY_BOUNCE_CORPUS` points elsewhere.
fn corpus() -> PathBuf {
    let dir = std::env::var_os("POOLRELAY_BOUNCE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/bounces")
        });
    assert!(
        dir.join("expected.tsv").is_file(),
        "bounce corpus not found at {} (set POOLRELAY_BOUNCE_CORPUS)",
        dir.display()
    );
    dir
}

/// Sisimai's reasons in poolrelay's classes. Where Sisimai's reason spans two of ours (its
/// `blocked` is any refusal of the client IP: a block list or a reputation verdict), both count.
fn acceptable(reason: &str) -> Option<&'static [&'static str]> {
    Some(match reason {
        "userunknown" | "suspend" | "hasmoved" => &["bad-recipient"],
        // Sisimai says `filtered` for a refusal after DATA, often a "user unknown".
        "filtered" => &["bad-recipient", "policy", "content"],
        "mailboxfull" => &["mailbox-full"],
        "exceedlimit" => &["content", "mailbox-full"],
        "blocked" | "badreputation" => &["block", "reputation"],
        "toomanyconn" | "speeding" => &["rate-limit"],
        "rejected" | "policyviolation" | "authfailure" | "norelaying" | "requireptr" => &["policy"],
        "spamdetected" | "virusdetected" | "contenterror" | "mesgtoobig" | "notcompliantrfc" => {
            &["content"]
        }
        "hostunknown" | "notaccept" => &["dns", "bad-recipient"],
        "networkerror" => &["transient", "dns"],
        "expired" => &["transient"],
        "securityerror" => &["tls", "policy"],
        "systemerror" | "mailererror" | "onhold" | "undefined" => &["transient", "other"],
        "syntaxerror" => &["other"],
        // Not failures: feedback reports, vacation replies, delivery notices.
        "feedback" | "vacation" | "delivered" => return None,
        _ => &[],
    })
}

#[test]
fn classify_corpus_of_real_bounces() {
    let dir = corpus();
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in tsv
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("file\t"))
    {
        let f: Vec<&str> = line.split('\t').collect();
        expected
            .entry(f[0].to_string())
            .or_default()
            .push(f[4].to_string());
    }
    let files: Vec<String> = expected
        .keys()
        .map(|f| dir.join("eml").join(f).display().to_string())
        .collect();
    let mut args = vec!["classify", "--json", "--message"];
    args.extend(files.iter().map(String::as_str));
    let results = run_json(&args, None);
    assert_eq!(results.len(), expected.len());

    let (mut agree, mut total, mut not_failures, mut not_failures_ok) = (0, 0, 0, 0);
    let mut per_reason: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut disagreements = Vec::new();
    for (v, (file, reasons)) in results.iter().zip(&expected) {
        assert!(v["file"].as_str().unwrap().ends_with(file.as_str()));
        let failures: Vec<&serde_json::Value> = v["reports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["failure"] == true)
            .collect();
        for (i, reason) in reasons.iter().enumerate() {
            let Some(ok) = acceptable(reason) else {
                not_failures += 1;
                if failures.is_empty() {
                    not_failures_ok += 1;
                } else {
                    disagreements.push(format!("{file}: {reason}: reported as a failure"));
                }
                continue;
            };
            total += 1;
            let r = failures.get(i).or(failures.first());
            let class = r.map_or("none", |r| r["class"].as_str().unwrap());
            let e = per_reason.entry(reason.clone()).or_default();
            e.1 += 1;
            if ok.contains(&class) {
                agree += 1;
                e.0 += 1;
            } else {
                disagreements.push(format!(
                    "{file}: {reason} vs {class} (rule {}): {}",
                    r.map_or("-", |r| r["rule"].as_str().unwrap()),
                    r.map_or(String::new(), |r| r["diagnostic"]
                        .as_str()
                        .unwrap()
                        .chars()
                        .take(120)
                        .collect())
                ));
            }
        }
    }
    let rate = agree as f64 / total as f64;
    println!(
        "agreement with Sisimai: {agree}/{total} = {:.1}%; non-failures recognised {not_failures_ok}/{not_failures}",
        rate * 100.0
    );
    for (reason, (a, t)) in &per_reason {
        println!("  {reason:16} {a}/{t}");
    }
    println!("disagreements:\n  {}", disagreements.join("\n  "));
    assert!(rate >= 0.85, "agreement {:.1}% below 85%", rate * 100.0);
    // Block and reputation replies quarantine an IP. Sisimai's `blocked` also covers refusals
    // whose text names no cause ("550 Rejected"): those stay `other` here, on purpose.
    let (a, t) = per_reason.get("blocked").copied().unwrap_or_default();
    assert!(a * 10 >= t * 6, "blocked: {a}/{t}");
}

#[test]
fn classify_message_finds_recipients_in_dsn_and_prose() {
    let dir = tempdir("classify-message");
    let dsn = dir.join("dsn.eml");
    std::fs::write(&dsn, "From: MAILER-DAEMON@mx.example\r\nTo: s@example.com\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@outlook.example\r\nAction: failed\r\nStatus: 5.7.1\r\nRemote-MTA: dns; mx.outlook.example\r\nDiagnostic-Code: smtp; 550 5.7.1 Unfortunately, messages from [203.0.113.5]\r\n weren't sent. Please contact your Internet service provider since part of\r\n their network is on our block list (S3150).\r\n\r\nFinal-Recipient: rfc822; b@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n--b--\r\n").unwrap();
    let prose = dir.join("exim.eml");
    std::fs::write(&prose, "From: Mail Delivery System <Mailer-Daemon@mx.example>\r\nTo: s@example.com\r\nSubject: Mail delivery failed: returning message to sender\r\nAuto-Submitted: auto-replied\r\n\r\nThis message was created automatically by mail delivery software.\r\n\r\nA message that you sent could not be delivered to one or more of its\r\nrecipients. This is a permanent error. The following address(es) failed:\r\n\r\n  c@example.net\r\n    SMTP error from remote mail server after RCPT TO:<c@example.net>:\r\n    host mx.example.net [192.0.2.1]: 554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org\r\n\r\n------ This is a copy of the message, including all the headers. ------\r\n\r\nTo: c@example.net\r\n").unwrap();
    let out = run_json(
        &[
            "classify",
            "--json",
            "--message",
            dsn.to_str().unwrap(),
            prose.to_str().unwrap(),
        ],
        None,
    );
    let r = out[0]["reports"].as_array().unwrap();
    assert_eq!(out[0]["kind"], "dsn");
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[0]["recipient"].as_str(),
            r[0]["class"].as_str(),
            r[0]["remote_mta"].as_str()
        ),
        (
            Some("a@outlook.example"),
            Some("block"),
            Some("mx.outlook.example")
        )
    );
    assert_eq!(
        (r[1]["recipient"].as_str(), r[1]["class"].as_str()),
        (Some("b@example.org"), Some("bad-recipient"))
    );
    let r = out[1]["reports"].as_array().unwrap();
    assert_eq!(out[1]["kind"], "free-text", "{}", out[1]);
    assert_eq!(r.len(), 1, "{}", out[1]);
    assert_eq!(
        (
            r[0]["recipient"].as_str(),
            r[0]["code"].as_u64(),
            r[0]["status"].as_str(),
            r[0]["class"].as_str()
        ),
        (
            Some("c@example.net"),
            Some(554),
            Some("5.7.1"),
            Some("block")
        )
    );
}
