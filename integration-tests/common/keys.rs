//! DKIM keys made by the real `poolrelay dkim keygen`, with the TXT value it prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

use super::DnsServer;

/// Runs `poolrelay dkim keygen`; returns the key path and the TXT value from its output.
pub fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out = dir.join(format!("keys/{domain}.{selector}.pem"));
    let o = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&out)
        .output()
        .expect("run poolrelay dkim keygen");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "keygen: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let name = format!("{selector}._domainkey.{domain}. IN TXT ( \"");
    assert!(stdout.starts_with(&name), "{stdout}");
    (out, txt_of(&stdout))
}

/// The TXT value of a zone-file record: its quoted strings, concatenated.
pub fn txt_of(record: &str) -> String {
    record.split('"').skip(1).step_by(2).collect()
}

/// DKIM results of `data` by mail-auth's verifier, keys from the test DNS server.
pub fn verify_dkim(dns: &DnsServer, data: &[u8]) -> Vec<DkimResult> {
    use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ns = dns.nameserver();
        let mut server = NameServerConfig::udp_and_tcp(ns.ip());
        for c in &mut server.connections {
            c.port = ns.port();
        }
        let auth = MessageAuthenticator::new(
            ResolverConfig::from_parts(None, vec![], vec![server]),
            ResolverOpts::default(),
        )
        .unwrap();
        let msg = AuthenticatedMessage::parse(data).expect("parses");
        auth.verify_dkim(&msg)
            .await
            .into_iter()
            .map(|o| o.result().clone())
            .collect()
    })
}

/// What every dkimpy script starts with: the message as `raw`, and `dnsfunc` answering TXT
/// look-ups from the records file (argv: the message file, a JSON map of DNS name → TXT value).
const DKIMPY_PRELUDE: &str = r#"
import json, sys, dkim
raw = open(sys.argv[1], 'rb').read()
records = json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    n = (name.decode() if isinstance(name, bytes) else name).rstrip('.').lower()
    v = records.get(n)
    return v.encode() if v is not None else None
"#;

/// Runs the dkimpy `script` (after `DKIMPY_PRELUDE`, which gives it `raw` and `dnsfunc`) on
/// `data`, written as `dir/<name>.eml` beside `dir/records.json`; returns its stdout. Asserts
/// that python3 can `import <modules>` (dkimpy is a verifier we did not write; .ci/run installs
/// it) and that the script exited 0.
pub fn run_dkimpy(
    dir: &Path,
    modules: &str,
    script: &str,
    name: &str,
    data: &[u8],
    records: &[(String, String)],
) -> Vec<u8> {
    let check = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .expect("python3 must be installed for the dkimpy interop tests");
    assert!(
        check.status.success(),
        "dkimpy missing: pip install dkimpy dnspython pynacl\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let msg = dir.join(format!("{name}.eml"));
    std::fs::write(&msg, data).unwrap();
    let recs = dir.join("records.json");
    let map: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    std::fs::write(&recs, serde_json::to_vec(&map).unwrap()).unwrap();
    let o = Command::new("python3")
        .args(["-c", &format!("{DKIMPY_PRELUDE}{script}")])
        .arg(&msg)
        .arg(&recs)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}
