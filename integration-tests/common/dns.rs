//! An in-process authoritative DNS server for test zones (UDP + TCP on 127.0.0.1:<free port>),
//! changeable while the relay runs. Wire format by hickory-proto; the lookup logic is ours:
//! - a name with records but none of the asked type: NOERROR, no answers (+ SOA);
//! - a name that exists nowhere (not even as a parent of a stored name): NXDOMAIN;
//! - names marked with `fail` get SERVFAIL.
//!
//! TTLs are 0 by default so a change is seen by the next query of a caching resolver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    Txt(String),
    Ptr(String),
}

impl Rec {
    fn rtype(&self) -> RecordType {
        match self {
            Rec::A(_) => RecordType::A,
            Rec::Aaaa(_) => RecordType::AAAA,
            Rec::Mx(..) => RecordType::MX,
            Rec::Txt(_) => RecordType::TXT,
            Rec::Ptr(_) => RecordType::PTR,
        }
    }
}

#[derive(Default)]
struct Zone {
    records: BTreeMap<String, Vec<Rec>>,
    /// Names that exist without records (NOERROR / no data for every type).
    empty: BTreeSet<String>,
    fail: BTreeSet<String>,
    ttl: u32,
    queries: Vec<(String, RecordType)>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    fn exists(&self, name: &str) -> bool {
        let suffix = format!(".{name}");
        self.empty.contains(name)
            || self.records.contains_key(name)
            || self
                .records
                .keys()
                .chain(self.empty.iter())
                .any(|k| k.ends_with(&suffix))
    }
}

/// The test DNS server. Stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl DnsServer {
    /// Starts on 127.0.0.1 on a port free for both UDP and TCP.
    pub fn start() -> DnsServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("dns runtime");
        let zone = Arc::new(Mutex::new(Zone::default()));
        // std sockets + from_std under `enter`: works even when called from an async test.
        let guard = rt.enter();
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = udp.local_addr().ok()?.port();
                let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
                udp.set_nonblocking(true).ok()?;
                tcp.set_nonblocking(true).ok()?;
                Some((
                    tokio::net::UdpSocket::from_std(udp).ok()?,
                    tokio::net::TcpListener::from_std(tcp).ok()?,
                ))
            })
            .expect("no port free for DNS on both UDP and TCP");
        let addr = udp.local_addr().expect("dns addr");
        let udp = Arc::new(udp);
        let z = zone.clone();
        rt.spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(resp) = answer(&z, &buf[..n], true) {
                    let _ = udp.send_to(&resp, peer).await;
                }
            }
        });
        let z = zone.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let z = z.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        let Some(resp) = answer(&z, &msg, false) else {
                            return;
                        };
                        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        drop(guard);
        DnsServer {
            addr,
            zone,
            rt: Some(rt),
        }
    }

    /// For the relay's `[dns] nameservers`.
    pub fn nameserver(&self) -> SocketAddr {
        self.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut Zone) -> R) -> R {
        f(&mut self.zone.lock().unwrap())
    }

    fn add(&self, name: &str, rec: Rec) {
        self.with(|z| {
            let v = z.records.entry(key(name)).or_default();
            if !v.contains(&rec) {
                v.push(rec);
            }
        })
    }

    /// `domain MX pref host`; host `"."` gives a null MX (RFC 7505) — see also [`Self::null_mx`].
    pub fn add_mx(&self, domain: &str, pref: u16, host: &str) {
        self.add(domain, Rec::Mx(pref, key(host)))
    }

    /// `domain MX 0 .`
    pub fn null_mx(&self, domain: &str) {
        self.add_mx(domain, 0, ".")
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, Rec::A(ip))
    }

    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.add(name, Rec::Aaaa(ip))
    }

    /// A or AAAA by the address family.
    pub fn add_ip(&self, name: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add_a(name, v4),
            IpAddr::V6(v6) => self.add_aaaa(name, v6),
        }
    }

    /// One TXT record; text longer than 255 bytes is split into several strings (as DKIM keys
    /// need), which a reader concatenates.
    pub fn add_txt(&self, name: &str, text: &str) {
        self.add(name, Rec::Txt(text.to_string()))
    }

    /// `ip`'s PTR record (in-addr.arpa, or ip6.arpa nibbles for IPv6) pointing at `host`.
    pub fn add_ptr(&self, ip: IpAddr, host: &str) {
        let name = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(v6) => {
                let mut n = String::new();
                for b in v6.octets().iter().rev() {
                    n.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
                }
                n + "ip6.arpa"
            }
        };
        self.add(&name, Rec::Ptr(key(host)))
    }

    /// Removes every record of `rtype` at `name` (the name still exists if others remain).
    pub fn remove(&self, name: &str, rtype: RecordType) {
        self.with(|z| {
            if let Some(v) = z.records.get_mut(&key(name)) {
                v.retain(|r| r.rtype() != rtype);
                if v.is_empty() {
                    z.records.remove(&key(name));
                }
            }
        })
    }

    /// Removes the name and all its records (it becomes NXDOMAIN unless a child name exists).
    pub fn remove_name(&self, name: &str) {
        self.with(|z| {
            z.records.remove(&key(name));
            z.empty.remove(&key(name));
        })
    }

    /// Makes `name` exist with no records (NOERROR / no data).
    pub fn add_empty_name(&self, name: &str) {
        self.with(|z| {
            z.empty.insert(key(name));
        })
    }

    /// SERVFAIL for `name` (`true`) or back to normal (`false`).
    pub fn set_fail(&self, name: &str, fail: bool) {
        self.with(|z| {
            if fail {
                z.fail.insert(key(name));
            } else {
                z.fail.remove(&key(name));
            }
        })
    }

    /// TTL of every answer from now on (default 0).
    pub fn set_ttl(&self, ttl: u32) {
        self.with(|z| z.ttl = ttl)
    }

    /// Every query received so far: (name without trailing dot, lowercase; type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.with(|z| z.queries.clone())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn name(s: &str) -> Name {
    let mut n = if s.is_empty() || s == "." {
        Name::root()
    } else {
        Name::from_ascii(s).unwrap_or_else(|e| panic!("bad DNS name {s:?}: {e}"))
    };
    n.set_fqdn(true);
    n
}

fn rdata(rec: &Rec) -> RData {
    match rec {
        Rec::A(ip) => RData::A(A(*ip)),
        Rec::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Rec::Mx(pref, host) => RData::MX(MX::new(*pref, name(host))),
        Rec::Ptr(host) => RData::PTR(PTR(name(host))),
        Rec::Txt(text) => {
            let bytes = text.as_bytes();
            let parts = if bytes.is_empty() {
                vec![String::new()]
            } else {
                bytes
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect()
            };
            RData::TXT(TXT::new(parts))
        }
    }
}

fn answer(zone: &Mutex<Zone>, req: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(req).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    resp.queries = req.queries.clone();
    let max_udp = match &req.edns {
        Some(e) => {
            let mut edns = Edns::new();
            edns.set_max_payload(e.max_payload().max(512));
            resp.set_edns(edns);
            e.max_payload().max(512) as usize
        }
        None => 512,
    };
    if req.metadata.op_code != OpCode::Query || req.queries.len() != 1 {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    let q = &req.queries[0];
    let qname = key(&q.name().to_ascii());
    let qtype = q.query_type();
    let mut z = zone.lock().unwrap();
    z.queries.push((qname.clone(), qtype));
    let ttl = z.ttl;
    if z.fail.contains(&qname) {
        resp.metadata.response_code = ResponseCode::ServFail;
    } else if !z.exists(&qname) {
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.add_authority(soa(&qname, ttl));
    } else {
        let recs: Vec<Rec> = z
            .records
            .get(&qname)
            .map(|v| {
                v.iter()
                    .filter(|r| qtype == RecordType::ANY || r.rtype() == qtype)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if recs.is_empty() {
            resp.add_authority(soa(&qname, ttl));
        }
        for r in &recs {
            resp.add_answer(Record::from_rdata(q.name().clone(), ttl, rdata(r)));
        }
    }
    drop(z);
    let bytes = resp.to_vec().ok()?;
    if udp && bytes.len() > max_udp {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// A negative-answer SOA with TTL/minimum = the zone TTL, so "no such name" is not cached long.
fn soa(qname: &str, ttl: u32) -> Record {
    let owner = qname
        .split_once('.')
        .map(|(_, parent)| parent)
        .filter(|p| !p.is_empty())
        .unwrap_or(qname);
    Record::from_rdata(
        name(owner),
        ttl,
        RData::SOA(SOA::new(
            name(&format!("ns.{owner}")),
            name(&format!("hostmaster.{owner}")),
            1,
            3600,
            600,
            86400,
            ttl,
        )),
    )
}
