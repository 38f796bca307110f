//! Shared test kit: certificates, the relay process, a test SMTP client, SMTP sinks, a DNS server.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! let dir = tempdir("accept-auth");
//! let certs = make_certs(&dir, &["relay.test"]);          // Certs { ca, cert, key, chain }
//! let users = write_users(&dir, &[("alice", "secret")]);   // via `poolrelay hash-password`
//! let cfg = RelayConfig::new()                          // relay.test on 127.0.0.1:free port
//!     .listen("starttls", "required")
//!     .tls(&certs)
//!     .networks(&["127.0.0.1/32"])
//!     .users_file(&users)
//!     .sender_login("alice", &["example.com"]);  // else "alice" may use no sender (553)
//! let relay = Relay::start(&dir, &cfg.to_toml());
//!
//! let mut c = SmtpClient::connect_from(relay.addr(), lo(66));   // untrusted 127.0.0.66
//! c.ehlo("client.test");
//! c.starttls("relay.test", &certs.ca);
//! let caps = c.ehlo("client.test");                  // ["PIPELINING", "AUTH PLAIN LOGIN", …]
//! c.auth_plain("alice", "secret").expect(235);
//! let r = c.send_mail("a@example.com", &["b@example.org"], b"Subject: t\r\n\r\nhi\r\n");
//! assert_eq!(r.code, 250, "{r}");
//! assert!(relay.wait_for_log("queued", std::time::Duration::from_secs(5)));
//! ```
//!
//! - `Relay::start(dir, toml)` writes `dir/poolrelay.toml`, runs the binary with cwd `dir`,
//!   `POOLRELAY_LOG=debug`, output in `dir/relay.log`, and waits for every `[[listen]]` address
//!   and the `poolrelay ready` line (a relay that exits first fails the test with its log).
//!   `kill()` = crash (SIGKILL), `stop()` = SIGTERM, `restart()`, `log()`, `log_current()`,
//!   `wait_for_log(needle, timeout)` (current run), `data_dir()`, `queued_ids()`, `addr()`.
//!   `Relay::start_expect_exit(dir, toml, timeout)` for configs that must be refused.
//! - `SmtpClient`: `connect`, `connect_from(addr, ip)`, `connect_tls(addr, name, ca)`,
//!   `greeting`, `cmd(line) -> Reply { code, text }`, `send_raw`, `read_reply`, `ehlo`,
//!   `starttls`, `auth_plain`, `auth_login`, `send_mail`, `data`, `is_closed`, `try_*` variants
//!   that return errors instead of panicking. `Reply::expect(code)` asserts.
//! - `Sink::start(&[lo(20), lo(21)])` or `Sink::builder(&ips).starttls(&certs)
//!   .tls(SinkTls::BrokenClose | BrokenGarbage).script(|s: &Step| …).hostname(..).port(..)
//!   .start()`: SMTP destinations on those addresses sharing `sink.port()` (the relay's
//!   `delivery.port`). `messages() -> Vec<Message { peer, local, ehlo, tls, mail_from,
//!   mail_params, rcpt_to, data, session }>`, `wait_for_messages(n, timeout)` (panics with the
//!   transcripts), `sessions()`, `transcripts()`, `set_script(..)`, `clear()`. A script gets
//!   `Step { stage: Stage::{Connect, Ehlo, MailFrom, RcptTo, Data, DataEnd}, peer, local, tls,
//!   session }` and returns `Some("550 5.7.1 …")`, `Some("DROP")`, `Some("DELAY:ms:reply")` or
//!   `None` (defaults; RCPT local part `tempfail` → 451 4.3.0, `permfail` → 550 5.1.1).
//! - `DnsServer::start()`: `nameserver()` for `[dns] nameservers`; `add_mx(domain, pref, host)`,
//!   `null_mx(domain)`, `add_a`, `add_aaaa`, `add_ip`, `add_txt` (long text split in 255-byte
//!   strings), `add_ptr(ip, host)` (in-addr.arpa / ip6.arpa), `remove(name, RecordType::MX)`,
//!   `remove_name`, `add_empty_name`,
//!   `set_fail(name, bool)` (SERVFAIL), `set_ttl` (default 0), `queries()`. Unknown names are
//!   NXDOMAIN, known names without the type NOERROR/no data.
//! - `RelayConfig::new()`: the one config builder (`config.rs`): a plain listener trusting
//!   127/8, 1 s retry, short delivery timeouts. `listen(tls, auth)`, `listener(addr, tls, auth)`,
//!   `tls(&certs)`, `networks`, `users_file`, `sender_login(user, &patterns)`, `access(key, v)`, `limit(key, v)`, `dns(&dns)` or
//!   `nameserver(addr)`, `delivery(key, v)`, `delivery_port`, `no_delivery()`, `admin()`,
//!   `admin_key(key, v)`,
//!   `provider(name, suffixes)`, `provider_key(name, key, v)`, `pool(name, &[PoolIp::new(n,
//!   helo) | PoolIp::at(addr, helo)])`, `route(domain, host)`, `section(raw)`, then
//!   `to_toml()`; `port`, `addr()`, `admin_addr()`.
//! - `admin::{start, http, get, get_text, pool_status, ip_entry, hold, hold_of}` talk to the
//!   admin API with the relay's bearer token (`start` runs a relay and waits for its API);
//!   `request(addr, method, path, headers, body)` and `raw(addr, bytes)` send exactly what a
//!   test gives (no token); `token(addr)`, `token_file(addr)`.
//! - `bench(script)`: a test DNS with `a.test` → mx.alpha.test (127.0.0.20) and `b.test` →
//!   mx.beta.test (127.0.0.21), one sink on both; `Bench::config()` delivers there with the
//!   admin API and providers alpha and beta.
//! - `RedisServer::start(dir)` (`redis.rs`): a private redis-server on a free loopback port for
//!   `[cluster]` tests; `url()`, `kill()`, `restart()`, `pause()`/`resume()`, `query(&["GET", k])`, `keys(pattern)`.
//! - `Receiver::start(&[lo(20)], day_ms, Model { .. })` (`receiver.rs`): a simulated receiving
//!   provider with a hidden acceptance model per source IP (allowance, hourly pace, throttling
//!   `421 4.7.28` / `451 4.7.650`, blocks `550 5.7.1`); `days(ip)`, `accepted(ip)`, `blocks(ip)`.
//! - `Knot::start(dir, &[Zone::signed(..), Zone::unsigned(..).ns_in(..), ..])` (`knot.rs`): a real
//!   knotd serving DNSSEC-signed test zones (DANE); `nameserver()`, `trust_anchor(zone)`, `dig`.
//! - `HttpsServer::start(lo(30), &certs)` (`https.rs`): HTTPS on a free port of that address,
//!   answering per `Host` what `set(host, Served::text(..) | Served::Reply(status, type, body) |
//!   Served::Hang)` says (404 otherwise); `port()`, `requests()`, `requests_for(host)`,
//!   `posts()` (every POST: host, path, content type, body).
//! - `tempdir(name)`: a fresh dir under the system temp dir, removed when the test passes, kept
//!   (path printed) when it fails or with `POOLRELAY_KEEP_TEST_DIRS=1`; `free_port()` never
//!   hands out the same port twice in one test process.
//! - `wait_until(timeout, || cond)` polls; `lo(n)` = 127.0.0.n; `free_port_on(&[ips])`.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod bench;
pub mod certs;
pub mod client;
pub mod config;
pub mod dns;
pub mod feeds;
pub mod https;
pub mod keys;
pub mod knot;
pub mod net;
pub mod receiver;
pub mod redis;
pub mod relay;
pub mod sink;

pub use self::redis::{RedisServer, farm};
pub use bench::{Bench, bench};
pub use certs::{Certs, make_certs};
pub use client::{Reply, SmtpClient, dot_stuff, install_crypto_provider, send_from, submit_one};
pub use config::{PoolIp, RelayConfig};
pub use dns::{DnsServer, RecordType};
pub use https::{HttpsServer, Posted, Served};
pub use keys::{keygen, run_dkimpy, txt_of, verify_dkim};
pub use knot::{Knot, Unbound, Zone};
pub use net::{free_port, free_port_on, lo, tempdir, wait_until};
pub use relay::{
    Relay, check_config, deferred_once, listen_addresses, output_text, run_poolrelay, strip_ansi,
    suppression_cli, write_users,
};
pub use sink::{Message, Session, Sink, SinkTls, Stage, Step, tagged_message};
