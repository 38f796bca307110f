//! Test SMTP destination servers ("sinks"): one or more loopback addresses sharing one port,
//! written independently of poolrelay's parser (plain line-based, tokio, own runtime).
//!
//! ```ignore
//! let certs = make_certs(&dir, &["mx1.dest.test"]);
//! let sink = Sink::builder(&[lo(20), lo(21)])
//!     .starttls(&certs)
//!     .script(|s: &Step| match &s.stage {
//!         Stage::RcptTo(_) if s.peer == lo(10) => Some("550 5.7.1 blocked (S3150)".into()),
//!         _ => None,
//!     })
//!     .start();
//! // relay config: [delivery] port = sink.port()
//! let msgs = sink.wait_for_messages(1, Duration::from_secs(10));
//! assert_eq!(msgs[0].peer, lo(11));
//! ```
//! Default replies: RCPT to local part `tempfail` → `451 4.3.0`, `permfail` → `550 5.1.1`.
//! Script replies: the full reply text (`"550 5.7.1 …"`, several lines joined by `\n`);
//! `"DROP"` closes the connection without a reply; a `421` reply or a non-2xx greeting closes the
//! connection after it is sent; `"DELAY:<ms>:<reply>"` waits before replying (timeouts).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::certs::Certs;
use super::net::{free_port_on, wait_until};

/// Where in the session a script is asked for a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Before the greeting (default `220`).
    Connect,
    /// EHLO or HELO with its argument.
    Ehlo(String),
    /// `MAIL FROM` with the address between `<>` (empty for the null sender).
    MailFrom(String),
    /// `RCPT TO` with the address between `<>`.
    RcptTo(String),
    /// The `DATA` command (default `354`).
    Data,
    /// After the final dot, with the dot-unstuffed message bytes.
    DataEnd(Vec<u8>),
}

/// What a script sees.
#[derive(Debug, Clone)]
pub struct Step {
    pub stage: Stage,
    /// The relay's source address.
    pub peer: IpAddr,
    /// The sink address the relay connected to (which "MX host").
    pub local: SocketAddr,
    pub tls: bool,
    /// Session number at this sink (0-based, in connection order).
    pub session: usize,
}

pub type Script = Arc<dyn Fn(&Step) -> Option<String> + Send + Sync>;

/// How STARTTLS is handled.
#[derive(Clone)]
pub enum SinkTls {
    /// STARTTLS not offered.
    None,
    /// STARTTLS offered and done with this certificate.
    Starttls(Arc<rustls::ServerConfig>),
    /// STARTTLS advertised, `220` sent, then the connection is closed.
    BrokenClose,
    /// STARTTLS advertised, `220` sent, then plaintext garbage instead of a handshake, then close.
    BrokenGarbage,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Message {
    pub peer: IpAddr,
    pub local: SocketAddr,
    pub ehlo: String,
    /// `Some("TLSv1_3")` if the message came over TLS.
    pub tls: Option<String>,
    pub mail_from: String,
    /// Everything after `MAIL FROM:<…>` (e.g. ` SIZE=123 BODY=8BITMIME`).
    pub mail_params: String,
    /// Accepted recipients only.
    pub rcpt_to: Vec<String>,
    /// The message bytes, dot-unstuffed, exactly as sent (ends with CRLF).
    pub data: Vec<u8>,
    pub session: usize,
}

impl Message {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// `Subject:` of the message (the id a test gave it with `tagged_message`).
    pub fn subject(&self) -> String {
        self.data_str()
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// One connection.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub ehlo: Option<String>,
    pub tls: Option<String>,
    /// `C: …` / `S: …` lines (DATA content not included).
    pub transcript: Vec<String>,
    pub closed: bool,
}

#[derive(Default)]
struct Shared {
    sessions: Mutex<Vec<Session>>,
    messages: Mutex<Vec<Message>>,
}

pub struct SinkBuilder {
    addrs: Vec<IpAddr>,
    port: Option<u16>,
    tls: SinkTls,
    script: Option<Script>,
    hostname: String,
    requiretls: bool,
}

impl SinkBuilder {
    /// Advertise REQUIRETLS (RFC 8689) in the EHLO reply after STARTTLS.
    pub fn requiretls(mut self) -> Self {
        self.requiretls = true;
        self
    }
    /// Use this port (default: one free on all addresses).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Offer STARTTLS with the leaf certificate of `certs` (chain sent: leaf + CA).
    pub fn starttls(mut self, certs: &Certs) -> Self {
        self.tls = SinkTls::Starttls(server_tls_config(&certs.chain, &certs.key));
        self
    }
    pub fn tls(mut self, tls: SinkTls) -> Self {
        self.tls = tls;
        self
    }
    pub fn script(mut self, f: impl Fn(&Step) -> Option<String> + Send + Sync + 'static) -> Self {
        self.script = Some(Arc::new(f));
        self
    }
    /// Name in the greeting and EHLO reply (default `sink.test`).
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.to_string();
        self
    }
    pub fn start(self) -> Sink {
        Sink::start_with(self)
    }
}

/// rustls server config from PEM files.
fn bind_all(addrs: &[IpAddr], port: u16) -> std::io::Result<Vec<std::net::TcpListener>> {
    addrs
        .iter()
        .map(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)))
        .collect()
}

pub fn server_tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    super::client::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("read cert")
        .collect::<Result<_, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server TLS config"),
    )
}

struct Ctx {
    shared: Arc<Shared>,
    tls: SinkTls,
    script: Arc<RwLock<Option<Script>>>,
    hostname: String,
    requiretls: bool,
}

/// Running sinks; stopped when dropped.
pub struct Sink {
    addrs: Vec<IpAddr>,
    port: u16,
    shared: Arc<Shared>,
    script: Arc<RwLock<Option<Script>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Sink {
    /// Plain sinks (no STARTTLS, default replies) on `addrs`.
    pub fn start(addrs: &[IpAddr]) -> Sink {
        Self::builder(addrs).start()
    }

    pub fn builder(addrs: &[IpAddr]) -> SinkBuilder {
        SinkBuilder {
            addrs: addrs.to_vec(),
            port: None,
            tls: SinkTls::None,
            script: None,
            hostname: "sink.test".into(),
            requiretls: false,
        }
    }

    fn start_with(b: SinkBuilder) -> Sink {
        // A port found free can be taken again before the listeners bind (parallel tests, a
        // real Postfix's connections): with no port asked for, bind first, then keep them.
        let (port, std_listeners) = match b.port {
            Some(p) => (
                p,
                bind_all(&b.addrs, p).unwrap_or_else(|e| panic!("sink bind {p}: {e}")),
            ),
            None => (0..20)
                .find_map(|_| {
                    let p = free_port_on(&b.addrs);
                    bind_all(&b.addrs, p).ok().map(|l| (p, l))
                })
                .expect("sink: no port free on all its addresses"),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("sink runtime");
        let shared = Arc::new(Shared::default());
        let script = Arc::new(RwLock::new(b.script));
        let ctx = Arc::new(Ctx {
            shared: shared.clone(),
            tls: b.tls,
            script: script.clone(),
            hostname: b.hostname,
            requiretls: b.requiretls,
        });
        // std bind + from_std under `enter`: works even when called from an async test.
        let guard = rt.enter();
        for std_listener in std_listeners {
            std_listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let ctx = ctx.clone();
            rt.spawn(async move {
                loop {
                    let Ok((s, peer)) = listener.accept().await else {
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move { run_session(ctx, s, peer).await });
                }
            });
        }
        drop(guard);
        Sink {
            addrs: b.addrs,
            port,
            shared,
            script,
            rt: Some(rt),
        }
    }

    /// The port shared by all sink addresses (the relay's `delivery.port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `addrs[i]:port`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.addrs[i], self.port)
    }

    /// Replaces the script (or removes it with `None`) for new replies from now on.
    pub fn set_script(&self, f: Option<Script>) {
        *self.script.write().unwrap() = f;
    }

    /// Messages accepted so far (in acceptance order).
    pub fn messages(&self) -> Vec<Message> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Polls until at least `n` messages arrived; panics with the sessions' transcripts if not.
    #[track_caller]
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Message> {
        if !wait_until(timeout, || self.messages().len() >= n) {
            panic!(
                "sink: {} of {n} messages after {timeout:?}; sessions:\n{}",
                self.messages().len(),
                self.transcripts()
            );
        }
        self.messages()
    }

    /// Polls until at least `n` sessions were opened.
    pub fn wait_for_sessions(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.sessions().len() >= n)
    }

    pub fn sessions(&self) -> Vec<Session> {
        self.shared.sessions.lock().unwrap().clone()
    }

    /// All sessions as readable text (for assertion messages).
    pub fn transcripts(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.sessions().iter().enumerate() {
            out.push_str(&format!(
                "-- session {i} peer={:?} local={:?} tls={:?}\n",
                s.peer, s.local, s.tls
            ));
            for l in &s.transcript {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Forgets recorded messages (sessions stay: live sessions index into them).
    pub fn clear(&self) {
        self.shared.messages.lock().unwrap().clear();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Default)]
struct Envelope {
    from: Option<(String, String)>,
    rcpts: Vec<String>,
}

struct State {
    ctx: Arc<Ctx>,
    idx: usize,
    peer: SocketAddr,
    local: SocketAddr,
    ehlo: String,
    tls: Option<String>,
    env: Envelope,
}

enum End {
    Close,
    StartTls,
}

impl State {
    fn log(&self, line: String) {
        let mut s = self.ctx.shared.sessions.lock().unwrap();
        s[self.idx].transcript.push(line);
    }

    fn ask(&self, stage: Stage) -> Option<String> {
        let step = Step {
            stage,
            peer: self.peer.ip(),
            local: self.local,
            tls: self.tls.is_some(),
            session: self.idx,
        };
        let script = self.ctx.script.read().unwrap().clone();
        if let Some(f) = script
            && let Some(r) = f(&step)
        {
            return Some(r);
        }
        if let Stage::RcptTo(addr) = &step.stage {
            let local = addr.split('@').next().unwrap_or("").to_ascii_lowercase();
            if local == "tempfail" {
                return Some("451 4.3.0 temporary failure (sink convention)".into());
            }
            if local == "permfail" {
                return Some("550 5.1.1 no such user (sink convention)".into());
            }
        }
        None
    }
}

async fn write_reply<S: AsyncWrite + Unpin>(
    w: &mut S,
    st: &State,
    reply: &str,
) -> std::io::Result<()> {
    st.log(format!("S: {reply}"));
    let mut out = reply.replace('\n', "\r\n");
    out.push_str("\r\n");
    w.write_all(out.as_bytes()).await?;
    w.flush().await
}

/// Reply codes that end the session after being sent.
fn closes(reply: &str) -> bool {
    reply.starts_with("421")
}

async fn run_session(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let local = tcp.local_addr().expect("local addr");
    let idx = {
        let mut s = ctx.shared.sessions.lock().unwrap();
        s.push(Session {
            peer: Some(peer),
            local: Some(local),
            ..Session::default()
        });
        s.len() - 1
    };
    let mut st = State {
        ctx: ctx.clone(),
        idx,
        peer,
        local,
        ehlo: String::new(),
        tls: None,
        env: Envelope::default(),
    };
    let mut reader = BufReader::new(tcp);
    let greeting = st
        .ask(Stage::Connect)
        .unwrap_or_else(|| format!("220 {} ESMTP test sink", ctx.hostname));
    let greeting = delayed(greeting).await;
    if greeting == "DROP" {
        return finish(&st);
    }
    if write_reply(reader.get_mut(), &st, &greeting).await.is_err() || !greeting.starts_with('2') {
        return finish(&st);
    }
    let end = command_loop(&mut reader, &mut st).await;
    if let End::StartTls = end {
        let mut tcp = reader.into_inner();
        match ctx.tls.clone() {
            SinkTls::Starttls(cfg) => {
                if write_reply(&mut tcp, &st, "220 2.0.0 ready to start TLS")
                    .await
                    .is_err()
                {
                    return finish(&st);
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let version = tls.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
                        st.tls = version.clone();
                        st.ehlo.clear();
                        st.env = Envelope::default();
                        st.log(format!("-- TLS up: {version:?}"));
                        ctx.shared.sessions.lock().unwrap()[idx].tls = version;
                        let mut reader = BufReader::new(tls);
                        let _ = command_loop(&mut reader, &mut st).await;
                    }
                    Err(e) => st.log(format!("-- TLS handshake failed: {e}")),
                }
            }
            SinkTls::BrokenClose => {
                let _ = write_reply(&mut tcp, &st, "220 2.0.0 ready to start TLS").await;
                st.log("-- broken TLS: closing".into());
            }
            SinkTls::BrokenGarbage => {
                let _ = write_reply(&mut tcp, &st, "220 2.0.0 ready to start TLS").await;
                let _ = tcp
                    .write_all(b"this is not a TLS handshake\r\n\x00\x01\x02garbage\r\n")
                    .await;
                let _ = tcp.flush().await;
                st.log("-- broken TLS: sent garbage".into());
            }
            SinkTls::None => {}
        }
    }
    finish(&st)
}

fn finish(st: &State) {
    st.ctx.shared.sessions.lock().unwrap()[st.idx].closed = true;
}

fn angle_addr(arg: &str) -> Option<(String, String)> {
    let start = arg.find('<')?;
    let end = start + arg[start..].find('>')?;
    Some((arg[start + 1..end].to_string(), arg[end + 1..].to_string()))
}

async fn command_loop<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    st: &mut State,
) -> End {
    let offer_tls = !matches!(st.ctx.tls, SinkTls::None) && st.tls.is_none();
    let mut line = Vec::new();
    loop {
        if !read_line(reader, &mut line).await {
            return End::Close;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        st.log(format!("C: {text}"));
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        let w = reader.get_mut();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" => {
                st.ehlo = arg.clone();
                st.ctx.shared.sessions.lock().unwrap()[st.idx].ehlo = Some(arg.clone());
                st.env = Envelope::default();
                match st.ask(Stage::Ehlo(arg)) {
                    Some(r) => r,
                    None if verb == "HELO" => format!("250 {}", st.ctx.hostname),
                    None => {
                        let mut caps = vec![
                            st.ctx.hostname.clone(),
                            "PIPELINING".into(),
                            "SIZE 104857600".into(),
                            "8BITMIME".into(),
                            "ENHANCEDSTATUSCODES".into(),
                            "SMTPUTF8".into(),
                        ];
                        if offer_tls {
                            caps.push("STARTTLS".into());
                        }
                        if st.ctx.requiretls && st.tls.is_some() {
                            caps.push("REQUIRETLS".into());
                        }
                        let n = caps.len();
                        caps.iter()
                            .enumerate()
                            .map(|(i, c)| format!("250{}{c}", if i + 1 == n { ' ' } else { '-' }))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                }
            }
            "STARTTLS" if offer_tls => return End::StartTls,
            "MAIL" => match arg.strip_prefix_ci("FROM:").and_then(angle_addr) {
                None => "501 5.5.4 syntax: MAIL FROM:<address>".into(),
                Some((addr, params)) => {
                    let r = st
                        .ask(Stage::MailFrom(addr.clone()))
                        .unwrap_or_else(|| "250 2.1.0 ok".into());
                    if r.starts_with('2') {
                        st.env = Envelope {
                            from: Some((addr, params)),
                            rcpts: Vec::new(),
                        };
                    }
                    r
                }
            },
            "RCPT" => match arg.strip_prefix_ci("TO:").and_then(angle_addr) {
                None => "501 5.5.4 syntax: RCPT TO:<address>".into(),
                Some(_) if st.env.from.is_none() => "503 5.5.1 MAIL first".into(),
                Some((addr, _)) => {
                    let r = st
                        .ask(Stage::RcptTo(addr.clone()))
                        .unwrap_or_else(|| "250 2.1.5 ok".into());
                    if r.starts_with('2') {
                        st.env.rcpts.push(addr);
                    }
                    r
                }
            },
            "DATA" => {
                if st.env.rcpts.is_empty() {
                    "554 5.5.1 no valid recipients".into()
                } else {
                    let r = st
                        .ask(Stage::Data)
                        .unwrap_or_else(|| "354 end data with <CR><LF>.<CR><LF>".into());
                    if !r.starts_with("354") {
                        r
                    } else {
                        if write_reply(w, st, &r).await.is_err() {
                            return End::Close;
                        }
                        let Some(data) = read_data(reader).await else {
                            return End::Close;
                        };
                        st.log(format!("C: <{} bytes of data>", data.len()));
                        let r = st
                            .ask(Stage::DataEnd(data.clone()))
                            .unwrap_or_else(|| "250 2.0.0 ok: queued".into());
                        if r.starts_with('2') {
                            let (from, params) = st.env.from.clone().unwrap_or_default();
                            let mut msgs = st.ctx.shared.messages.lock().unwrap();
                            msgs.push(Message {
                                peer: st.peer.ip(),
                                local: st.local,
                                ehlo: st.ehlo.clone(),
                                tls: st.tls.clone(),
                                mail_from: from,
                                mail_params: params,
                                rcpt_to: st.env.rcpts.clone(),
                                data,
                                session: st.idx,
                            });
                        }
                        st.env = Envelope::default();
                        r
                    }
                }
            }
            "RSET" => {
                st.env = Envelope::default();
                "250 2.0.0 ok".into()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => {
                let _ = write_reply(reader.get_mut(), st, "221 2.0.0 bye").await;
                return End::Close;
            }
            _ => "502 5.5.2 command not implemented".into(),
        };
        let reply = delayed(reply).await;
        if reply == "DROP" {
            st.log("-- dropped".into());
            return End::Close;
        }
        if write_reply(reader.get_mut(), st, &reply).await.is_err() || closes(&reply) {
            return End::Close;
        }
    }
}

/// `DELAY:<ms>:<reply>` waits, then gives `<reply>` (for timeout tests).
async fn delayed(reply: String) -> String {
    if let Some(rest) = reply.strip_prefix("DELAY:")
        && let Some((ms, r)) = rest.split_once(':')
        && let Ok(ms) = ms.parse::<u64>()
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return r.to_string();
    }
    reply
}

/// Reads one line (its CRLF kept) into `line`, waiting up to 120 s; false on EOF or timeout.
async fn read_line<S: AsyncRead + Unpin>(reader: &mut BufReader<S>, line: &mut Vec<u8>) -> bool {
    line.clear();
    matches!(
        tokio::time::timeout(Duration::from_secs(120), reader.read_until(b'\n', line)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// Reads DATA lines up to `.` CRLF and undoes dot-stuffing; `None` on EOF/timeout.
async fn read_data<S: AsyncRead + Unpin>(reader: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(reader, &mut line).await {
            return None;
        }
        if line == b".\r\n" {
            return Some(data);
        }
        let l: &[u8] = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line
        };
        data.extend_from_slice(l);
    }
}

trait StripCi {
    fn strip_prefix_ci(&self, prefix: &str) -> Option<&str>;
}

impl StripCi for String {
    fn strip_prefix_ci(&self, prefix: &str) -> Option<&str> {
        let head = self.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| self[prefix.len()..].trim_start())
    }
}

/// A small message whose `Subject:` and `Message-ID` carry `id`, to tell deliveries apart.
pub fn tagged_message(id: &str) -> Vec<u8> {
    format!(
        "From: <sender@client.test>\r\nTo: <rcpt@dest.test>\r\nSubject: {id}\r\n\
         Message-ID: <{id}@client.test>\r\n\r\nbody of {id}\r\n"
    )
    .into_bytes()
}
