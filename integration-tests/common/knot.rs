//! A real `knotd` (Knot DNS) on a loopback port serving DNSSEC-signed test zones, for DANE.
//! Needs the Debian packages `knot` and `knot-dnsutils` (`.ci/run` installs them); a missing
//! tool panics, it never skips.
//!
//! ```ignore
//! let knot = Knot::start(&dir, &[
//!     Zone::signed("test.", &["ns A 127.0.0.1"]),                     // the trust anchor's zone
//!     Zone::signed("d.test.", &["@ MX 10 mx.d.test.", "mx A 127.0.0.20"]).ds_in("test."),
//!     Zone::unsigned("plain.test.", &["@ MX 10 mx.plain.test."]).ns_in("test."),
//!     Zone::signed("bad.test.", &["mx A 127.0.0.20"]).wrong_ds_in("test."),
//! ]);
//! // [dns] nameservers = [knot.nameserver()]; [delivery.dane] trust_anchor = knot.trust_anchor("test.")
//! ```
//! Zones are delegations of the first zone (NS at `ns.<first>`). knotd signs a zone with one
//! key (a CSK, so the trust anchor is the zone's whole DNSKEY RRset) it makes at load; the DS of each child (`keymgr ZONE ds`), or a wrong
//! one, is then added to the parent, which knotd re-signs on reload.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::net::{free_port_on, wait_until};

/// How a child zone is delegated from its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delegation {
    /// The first zone: the root of the test tree.
    Top,
    /// NS only: the child is insecure (NSEC proves no DS).
    Unsigned(String),
    /// NS and the child's real DS.
    Ds(String),
    /// NS and a DS no key of the child has: the child is bogus.
    WrongDs(String),
}

#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    signed: bool,
    records: Vec<String>,
    delegation: Delegation,
    /// Owner (relative) of a TLSA RRset whose data is changed after signing: bogus.
    tampered: Option<String>,
}

impl Zone {
    /// A signed zone with these records (zone-file lines, names relative to the zone).
    pub fn signed(name: &str, records: &[&str]) -> Zone {
        Zone {
            name: name.into(),
            signed: true,
            records: records.iter().map(|r| r.to_string()).collect(),
            delegation: Delegation::Top,
            tampered: None,
        }
    }

    pub fn unsigned(name: &str, records: &[&str]) -> Zone {
        Zone {
            signed: false,
            ..Zone::signed(name, records)
        }
    }

    /// Delegated from `parent` with the child's DS (a secure chain).
    pub fn ds_in(mut self, parent: &str) -> Zone {
        self.delegation = Delegation::Ds(parent.into());
        self
    }

    /// Delegated from `parent` without DS (insecure).
    pub fn ns_in(mut self, parent: &str) -> Zone {
        self.delegation = Delegation::Unsigned(parent.into());
        self
    }

    /// Served with the TLSA RRset at `owner` (relative) changed after signing: its signature
    /// no longer matches (bogus), the rest of the zone stays secure.
    pub fn tampered(mut self, owner: &str) -> Zone {
        self.tampered = Some(owner.into());
        self
    }

    /// Delegated from `parent` with a DS matching no key (bogus).
    pub fn wrong_ds_in(mut self, parent: &str) -> Zone {
        self.delegation = Delegation::WrongDs(parent.into());
        self
    }
}

/// A running knotd; killed when dropped.
pub struct Knot {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Child,
    zones: Vec<Zone>,
}

/// A Knot tool by name; panics when it is not installed.
pub fn knot_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed (apt-get install knot knot-dnsutils; .ci/run does)")
        })
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// knot.conf; with `tampered`, zones to tamper are served from their dumps, unsigned.
fn conf(dir: &Path, port: u16, zones: &[Zone], tampered: bool) -> String {
    let mut conf = format!(
        "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}\ndatabase:\n    storage: {d}/db\n\
         policy:\n  - id: csk\n    single-type-signing: on\n\
         template:\n  - id: default\n    storage: {d}/zones\n    file: \"%s.zone\"\n\
         \x20 - id: signed\n    storage: {d}/zones\n    file: \"%s.zone\"\n    dnssec-signing: on\n    dnssec-policy: csk\n\
         \x20   zonefile-sync: -1\n    zonefile-load: difference-no-serial\n    journal-content: all\n\
         log:\n  - target: {d}/knot.log\n    any: info\nzone:\n",
        d = dir.display()
    );
    for z in zones {
        conf.push_str(&format!("  - domain: {}\n", z.name));
        if tampered && z.tampered.is_some() {
            conf.push_str(&format!(
                "    file: \"{}tampered\"\n    journal-content: none\n    zonefile-load: whole\n",
                z.name
            ));
        } else if z.signed {
            conf.push_str("    template: signed\n");
        }
    }
    conf
}

fn spawn_knotd(dir: &Path, conf: &Path) -> Child {
    let log = std::fs::File::create(dir.join("knotd.out")).expect("knotd.out");
    Command::new(knot_tool("knotd"))
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start knotd")
}

fn file_of(dir: &Path, zone: &str) -> PathBuf {
    dir.join("zones").join(format!("{}zone", zone))
}

impl Knot {
    pub fn start(dir: &Path, zones: &[Zone]) -> Knot {
        let dir = dir.join("knot");
        std::fs::create_dir_all(dir.join("zones")).expect("knot dir");
        std::fs::create_dir_all(dir.join("db")).expect("knot db dir");
        let port = free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let top = &zones[0].name;
        for z in zones {
            let mut text = format!(
                "$ORIGIN {}\n$TTL 60\n@ SOA ns.{top} admin.{top} 1 60 60 600 60\n@ NS ns.{top}\n",
                z.name
            );
            if z.name == *top {
                text.push_str("ns A 127.0.0.1\n");
            }
            for r in &z.records {
                text.push_str(r);
                text.push('\n');
            }
            for child in zones {
                if let Delegation::Unsigned(p) | Delegation::Ds(p) | Delegation::WrongDs(p) =
                    &child.delegation
                    && *p == z.name
                {
                    text.push_str(&format!("{} NS ns.{top}\n", child.name));
                }
            }
            std::fs::write(file_of(&dir, &z.name), text).expect("zone file");
        }
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf(&dir, port, zones, false)).expect("knot.conf");
        let child = spawn_knotd(&dir, &conf_path);
        let mut knot = Knot {
            dir,
            conf: conf_path,
            port,
            child,
            zones: zones.to_vec(),
        };
        for z in zones {
            assert!(
                wait_until(Duration::from_secs(20), || knot.answers(&z.name, "SOA")),
                "knotd does not serve {}: {}",
                z.name,
                knot.log()
            );
        }
        knot.add_ds_records();
        if zones.iter().any(|z| z.tampered.is_some()) {
            knot.serve_tampered();
        }
        knot
    }

    /// Dumps each zone to tamper as knotd serves it (signed), changes its TLSA data, and
    /// restarts knotd serving those dumps as they are (no signing).
    fn serve_tampered(&mut self) {
        for z in self.zones.iter().filter(|z| z.tampered.is_some()) {
            let owner = format!("{}.{}", z.tampered.as_deref().unwrap_or(""), z.name);
            let out = run(Command::new(knot_tool("knotc"))
                .arg("-c")
                .arg(&self.conf)
                .args(["zone-read", &z.name]));
            let dump = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut changed = false;
            let lines: Vec<String> = dump
                .lines()
                .map(|l| l.split_once("] ").map_or(l, |(_, r)| r).to_string())
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    if f.len() > 3 && f[0] == owner && f[2] == "TLSA" {
                        changed = true;
                        // Flip the last hex digit of the association data.
                        let last = if l.ends_with('0') { '1' } else { '0' };
                        format!("{}{last}", &l[..l.len() - 1])
                    } else {
                        l
                    }
                })
                .collect();
            assert!(changed, "no TLSA at {owner} in\n{dump}");
            let path = self.dir.join("zones").join(format!("{}tampered", z.name));
            std::fs::write(&path, lines.join("\n") + "\n").expect("tampered zone");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::write(&self.conf, conf(&self.dir, self.port, &self.zones, true)).expect("conf");
        self.child = spawn_knotd(&self.dir, &self.conf);
        for z in &self.zones {
            assert!(
                wait_until(Duration::from_secs(20), || self.answers(&z.name, "SOA")),
                "knotd does not serve {} after the restart: {}",
                z.name,
                self.log()
            );
        }
    }

    /// Puts each signed child's DS (or a wrong one) into its parent and waits until served.
    fn add_ds_records(&self) {
        for z in &self.zones {
            let (parent, wrong) = match &z.delegation {
                Delegation::Ds(p) => (p, false),
                Delegation::WrongDs(p) => (p, true),
                _ => continue,
            };
            let mut ds = String::new();
            assert!(
                wait_until(Duration::from_secs(20), || {
                    ds = self.keymgr(&z.name, "ds");
                    ds.contains(" DS ")
                }),
                "no DS for {}: {}",
                z.name,
                self.log()
            );
            // `d.test. DS 43035 13 2 <hex>`: keep the SHA-256 one.
            let line = ds
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("2"))
                .unwrap_or_else(|| panic!("no SHA-256 DS in {ds}"))
                .to_string();
            let line = if wrong {
                let f: Vec<&str> = line.split_whitespace().collect();
                format!("{} DS {} {} 2 {}", f[0], f[2], f[3], "00".repeat(32))
            } else {
                line
            };
            let path = file_of(&self.dir, parent);
            let mut text = std::fs::read_to_string(&path).expect("parent zone");
            text.push_str(&line);
            text.push('\n');
            std::fs::write(&path, text).expect("parent zone");
            run(Command::new(knot_tool("knotc"))
                .arg("-c")
                .arg(&self.conf)
                .args(["zone-reload", parent]));
            assert!(
                wait_until(Duration::from_secs(20), || self.answers(&z.name, "DS")),
                "{parent} does not serve the DS of {}: {}",
                z.name,
                self.log()
            );
        }
    }

    fn keymgr(&self, zone: &str, what: &str) -> String {
        let out = Command::new(knot_tool("keymgr"))
            .arg("-c")
            .arg(&self.conf)
            .args([zone, what])
            .stdin(Stdio::null())
            .output()
            .expect("keymgr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether knotd answers `name type` with at least one record.
    pub fn answers(&self, name: &str, rtype: &str) -> bool {
        !self.dig(name, rtype).trim().is_empty()
    }

    /// `kdig +short` of one query.
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let out = Command::new(knot_tool("kdig"))
            .arg("@127.0.0.1")
            .args([
                "-p",
                &self.port.to_string(),
                "+short",
                "+time=1",
                "+retry=0",
            ])
            .args([name, rtype])
            .stdin(Stdio::null())
            .output()
            .expect("kdig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip:port` for `[dns] nameservers`.
    pub fn nameserver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Writes the DNSKEY records of `zone` as `keymgr` prints them (no TTL, no class) to a file
    /// for `[delivery.dane] trust_anchor`.
    pub fn trust_anchor(&self, zone: &str) -> PathBuf {
        let keys = self.keymgr(zone, "dnskey");
        assert!(keys.contains("DNSKEY"), "no DNSKEY for {zone}: {keys}");
        let path = self.dir.join(format!("{}anchor", zone));
        std::fs::write(&path, keys).expect("trust anchor");
        path
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("knotd.out")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real validating resolver (`unbound`) in front of a `Knot` tree: it validates from the
/// tree's key and sets AD on secure answers, SERVFAIL on bogus ones (DANE's
/// `trusted_resolver`). Needs the Debian package `unbound`; killed when dropped.
pub struct Unbound {
    dir: PathBuf,
    port: u16,
    child: Child,
}

impl Unbound {
    /// Forwards (as a stub zone) every name under `zone` to `knot`; `zone`'s DNSKEY is the
    /// trust anchor.
    pub fn start(dir: &Path, knot: &Knot, zone: &str) -> Unbound {
        let dir = dir.join("unbound");
        std::fs::create_dir_all(&dir).expect("unbound dir");
        let keys = knot.keymgr(zone, "dnskey");
        // unbound reads zone-file lines: give keymgr's lines a TTL and class.
        let anchor: String = keys
            .lines()
            .filter_map(|l| l.split_once(" DNSKEY "))
            .map(|(name, key)| format!("{name} 3600 IN DNSKEY {key}\n"))
            .collect();
        std::fs::write(dir.join("anchor"), anchor).expect("anchor");
        let port = free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let d = dir.display();
        let conf = format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-ip6: no\n  username: \"\"\n\
             \x20 chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n\
             \x20 use-syslog: no\n  logfile: \"{d}/unbound.log\"\n  verbosity: 1\n\
             \x20 do-not-query-localhost: no\n  module-config: \"validator iterator\"\n\
             \x20 trust-anchor-file: \"{d}/anchor\"\n  local-zone: \"{zone}\" nodefault\n\
             \x20 access-control: 127.0.0.0/8 allow\n\
             stub-zone:\n  name: \"{zone}\"\n  stub-addr: 127.0.0.1@{kp}\n",
            kp = knot.port
        );
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, conf).expect("unbound.conf");
        let out = std::fs::File::create(dir.join("unbound.out")).expect("unbound.out");
        let child = Command::new(knot_tool("unbound"))
            .args(["-d", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("out"))
            .stderr(out)
            .spawn()
            .expect("start unbound");
        let u = Unbound { dir, port, child };
        assert!(
            wait_until(Duration::from_secs(20), || {
                let o = Command::new(knot_tool("kdig"))
                    .arg("@127.0.0.1")
                    .args(["-p", &port.to_string(), "+time=1", "+retry=0", zone, "SOA"])
                    .stdin(Stdio::null())
                    .output()
                    .expect("kdig");
                String::from_utf8_lossy(&o.stdout).contains("status: NOERROR")
            }),
            "unbound does not answer for {zone}: {}",
            u.log()
        );
        u
    }

    pub fn nameserver(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("unbound.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("unbound.out")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
