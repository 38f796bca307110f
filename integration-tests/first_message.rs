//! The README's first message, followed with the real binary: the example config (a copy with
//! only its ports and file paths changed), `poolrelay capture` as the destination,
//! `poolrelay send` as the client. The captured copy must be DKIM-signed with the example key
//! (verified against the record in `config/dkim/example.com.s2026.txt`) and come from the
//! example pool IP; a refused recipient's DSN must land in the capture too. Plus the README's
//! promises about itself: at most 320 lines, and every relative link in it and in docs/ resolves.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mail_auth::DkimResult;

const BIN: &str = env!("CARGO_BIN_EXE_poolrelay");
const WAIT: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `poolrelay capture` as a child process, its stdout lines collected as they come.
struct Capture {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    dir: PathBuf,
}

impl Capture {
    fn start(listen: &str, dir: &Path) -> Capture {
        let mut child = Command::new(BIN)
            .args(["capture", "--listen", listen, "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn poolrelay capture");
        let out = child.stdout.take().expect("capture stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let c = Capture {
            child,
            lines,
            dir: dir.to_path_buf(),
        };
        // It prints this once its socket is bound.
        assert!(
            wait_until(WAIT, || c
                .lines()
                .iter()
                .any(|l| l.starts_with("capturing on"))),
            "capture did not start: {:?}",
            c.lines()
        );
        c
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn files(&self) -> Vec<PathBuf> {
        poolrelay::capture::captured_files(&self.dir).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s` with `from` replaced by `to`, which must occur: the test follows the example config, so
/// an example that changes shape fails here rather than testing something else.
fn swap(s: &str, from: &str, to: &str) -> String {
    assert!(
        s.contains(from),
        "config/poolrelay.toml no longer has {from}"
    );
    s.replace(from, to)
}

/// `poolrelay send` as the README runs it, pointed at this relay's port.
fn send(server: &str, to: &str) -> String {
    let o = Command::new(BIN)
        .args(["send", "--server", server, "--from", "demo@example.com"])
        .args(["--to", to])
        .output()
        .expect("run poolrelay send");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "poolrelay send: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.starts_with("250 2.0.0 Ok: queued as "), "{stdout}");
    stdout
}

#[test]
fn the_readme_first_message_is_delivered_signed_from_the_pool_ip() {
    let dir = tempdir("first-message");
    let root = repo();
    let example = std::fs::read_to_string(root.join("config/poolrelay.toml")).unwrap();

    // Only ports and paths change: the listeners, the admin API, the capture's port, and the
    // example files (certificate, users, DKIM key) read from the checkout.
    let (smtp, submission, submissions, admin, capture) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let mut toml = example.clone();
    for (old, new) in [
        (2525, smtp),
        (2587, submission),
        (2465, submissions),
        (8025, admin),
    ] {
        toml = swap(
            &toml,
            &format!("\"127.0.0.1:{old}\""),
            &format!("\"127.0.0.1:{new}\""),
        );
    }
    toml = swap(
        &toml,
        "host = \"127.0.0.1:2526\"",
        &format!("host = \"127.0.0.1:{capture}\""),
    );
    let abs = |p: &str| format!("\"{}/{p}", root.display());
    toml = swap(&toml, "\"certs-example/", &abs("certs-example/"));
    toml = swap(&toml, "\"config/", &abs("config/"));

    let cap = Capture::start(&format!("127.0.0.1:{capture}"), &dir.join("captured"));
    let relay = Relay::start(&dir, &toml);

    // The README: `poolrelay send --from demo@example.com --to you@example.test`.
    let server = format!("127.0.0.1:{smtp}");
    send(&server, "you@example.test");
    // Capture prints its line after the file's rename: wait for both.
    assert!(
        wait_until(WAIT, || cap.files().len() == 1
            && cap.lines().iter().any(|l| l.contains(".eml"))),
        "nothing captured; capture said {:?}; relay log:\n{}",
        cap.lines(),
        relay.log()
    );
    let file = &cap.files()[0];
    let data = std::fs::read(file).unwrap();
    let text = String::from_utf8_lossy(&data);
    // The pool IP of the example config, and its EHLO name.
    assert!(
        text.starts_with("X-Captured-Peer: 127.0.0.10\r\n"),
        "{text}"
    );
    assert!(
        text.contains("X-Captured-Helo: relay.example.net\r\n"),
        "{text}"
    );
    assert!(
        text.contains("X-Captured-Mail-From: <demo@example.com>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("X-Captured-Rcpt-To: <you@example.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nDKIM-Signature: "), "{text}");
    // The line the README shows.
    let line = cap
        .lines()
        .into_iter()
        .find(|l| l.contains(".eml"))
        .expect("a capture line");
    assert!(
        line.contains(
            "peer=127.0.0.10 helo=relay.example.net from=<demo@example.com> to=<you@example.test>"
        ) && line.ends_with("dkim=d=example.com/s=s2026"),
        "{line}"
    );

    // The signature verifies with the record the example publishes (a verifier we did not write).
    let record = std::fs::read_to_string(root.join("config/dkim/example.com.s2026.txt")).unwrap();
    let record: String = record.lines().filter(|l| !l.starts_with(';')).collect();
    let dns = DnsServer::start();
    dns.add_txt("s2026._domainkey.example.com", &txt_of(&record));
    assert_eq!(verify_dkim(&dns, &data), vec![DkimResult::Pass], "{text}");

    // A recipient the capture refuses: its DSN goes to demo@example.com, which the example
    // routes to the capture too, so the bounce is seen instead of lost.
    send(&server, "bounce@example.test");
    assert!(
        wait_until(WAIT, || cap.files().len() == 2),
        "no DSN captured; capture said {:?}; relay log:\n{}",
        cap.lines(),
        relay.log()
    );
    let dsn = std::fs::read_to_string(&cap.files()[1]).unwrap();
    assert!(dsn.starts_with("X-Captured-Peer: 127.0.0.10\r\n"), "{dsn}");
    assert!(dsn.contains("X-Captured-Mail-From: <>\r\n"), "{dsn}");
    assert!(
        dsn.contains("X-Captured-Rcpt-To: <demo@example.com>\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("bounce@example.test"), "{dsn}");
}

/// Relative link targets of a Markdown text: `](target)`, outside code blocks, without the
/// `#anchor`; URLs with a scheme and pure anchors are left out.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            rest = &rest[end..];
            let path = target.split('#').next().unwrap_or("");
            let scheme = path
                .split_once(':')
                .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()));
            if !path.is_empty() && !scheme {
                out.push(path.to_string());
            }
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ has no pages");
    files.extend(docs);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in relative_links(&text) {
            checked += 1;
            let target = file.parent().unwrap().join(&link);
            if target.exists() {
                continue;
            }
            broken.push(format!("{}: {link}", file.display()));
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the link reader broken?"
    );
    assert!(
        broken.is_empty(),
        "links to nothing:\n{}",
        broken.join("\n")
    );
}

#[test]
fn relative_links_are_read_from_markdown() {
    let text = "see [a](docs/a.md#x) and [b](https://x.test/) [c](#top)\n```\n[d](no.md)\n```\n[e](../e.md)";
    assert_eq!(relative_links(text), vec!["docs/a.md", "../e.md"]);
}

#[test]
fn the_readme_stays_short() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= 320,
        "README.md has {lines} lines (at most 320): move detail to docs/"
    );
    // The two commands come first, as the contract says.
    let first_block = text.split("```sh").nth(1).expect("a sh block");
    assert!(
        first_block.contains("serve --config config/poolrelay.toml")
            && first_block.contains("cargo test --workspace"),
        "{first_block}"
    );
}
