//! A small synchronous SMTP client for driving the relay byte by byte.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines as received (with their codes), CRLF removed, joined by '\n'.
    pub text: String,
}

impl Reply {
    /// The text part of each line (after `250-` / `250 `).
    pub fn lines(&self) -> Vec<&str> {
        self.text
            .split('\n')
            .map(|l| l.get(4..).unwrap_or(""))
            .collect()
    }
    /// Panics with the full reply unless the code is `code`.
    #[track_caller]
    pub fn expect(self, code: u16) -> Reply {
        assert_eq!(self.code, code, "unexpected reply: {}", self.text);
        self
    }
    pub fn is_ok(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Gone,
}

/// A synchronous SMTP client. Panicking methods are for the happy path; `try_*` return errors
/// so a test can assert on a closed connection.
pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    /// The server's greeting (220 … or e.g. 421/554).
    pub greeting: Reply,
}

pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// rustls client config trusting only the PEM certificates in `ca`.
pub fn client_tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tcp(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    let s = match local {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(10))?,
        Some(ip) => {
            // std has no bind-before-connect; socket2 does (and works inside async tests too).
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&addr.into(), Duration::from_secs(10))?;
            TcpStream::from(sock)
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn tls_wrap(
    tcp: TcpStream,
    server_name: &str,
    ca: &Path,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn =
        rustls::ClientConnection::new(client_tls_config(ca), name).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now so certificate errors show up here, not at the first read.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

impl SmtpClient {
    /// Connects and reads the greeting (panics on connection errors).
    pub fn connect(addr: SocketAddr) -> SmtpClient {
        Self::try_connect(addr, None).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects from a chosen local address (e.g. 127.0.0.66 to look untrusted).
    pub fn connect_from(addr: SocketAddr, local: IpAddr) -> SmtpClient {
        Self::try_connect(addr, Some(local)).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<SmtpClient> {
        Self::greeted(Stream::Plain(tcp(addr, local)?))
    }

    /// Implicit TLS (465-style): handshake verifying `server_name` against `ca`, then greeting.
    pub fn connect_tls(addr: SocketAddr, server_name: &str, ca: &Path) -> SmtpClient {
        Self::try_connect_tls(addr, None, server_name, ca)
            .unwrap_or_else(|e| panic!("TLS connect {addr}: {e}"))
    }

    pub fn connect_tls_from(
        addr: SocketAddr,
        local: IpAddr,
        server_name: &str,
        ca: &Path,
    ) -> SmtpClient {
        Self::try_connect_tls(addr, Some(local), server_name, ca)
            .unwrap_or_else(|e| panic!("TLS connect {addr}: {e}"))
    }

    pub fn try_connect_tls(
        addr: SocketAddr,
        local: Option<IpAddr>,
        server_name: &str,
        ca: &Path,
    ) -> io::Result<SmtpClient> {
        let s = tls_wrap(tcp(addr, local)?, server_name, ca)?;
        Self::greeted(Stream::Tls(Box::new(s)))
    }

    /// A client on `stream` once the server's greeting is read.
    fn greeted(stream: Stream) -> io::Result<SmtpClient> {
        let mut c = SmtpClient {
            stream,
            buf: Vec::new(),
            greeting: Reply {
                code: 0,
                text: String::new(),
            },
        };
        c.greeting = c.try_read_reply()?;
        Ok(c)
    }

    fn read_some(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut tmp)?,
            Stream::Tls(s) => s.read(&mut tmp)?,
            Stream::Gone => return Err(io::ErrorKind::NotConnected.into()),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.read_some()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed (pending: {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Reads one (multi-line) reply; errors on EOF, timeout or a malformed line.
    pub fn try_read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line()?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"))
                })?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return Ok(Reply {
                    code,
                    text: lines.join("\n"),
                });
            }
        }
    }

    #[track_caller]
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .unwrap_or_else(|e| panic!("reading reply: {e}"))
    }

    /// Writes bytes as they are (no CRLF added).
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes)?,
            Stream::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()?;
            }
            Stream::Gone => return Err(io::ErrorKind::NotConnected.into()),
        }
        Ok(())
    }

    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"))
    }

    /// Sends `line` + CRLF and reads the reply.
    #[track_caller]
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    pub fn try_cmd(&mut self, line: &str) -> io::Result<Reply> {
        self.try_send_raw(format!("{line}\r\n").as_bytes())?;
        self.try_read_reply()
    }

    /// EHLO; panics unless 250; returns the capability lines (without the first greeting line),
    /// e.g. `["PIPELINING", "SIZE 50000000", "STARTTLS"]`.
    #[track_caller]
    pub fn ehlo(&mut self, name: &str) -> Vec<String> {
        let r = self.cmd(&format!("EHLO {name}")).expect(250);
        r.lines().iter().skip(1).map(|s| s.to_string()).collect()
    }

    /// STARTTLS then a handshake verifying `server_name` against `ca`. Panics on failure.
    /// Re-issue EHLO afterwards.
    #[track_caller]
    pub fn starttls(&mut self, server_name: &str, ca: &Path) {
        self.try_starttls(server_name, ca)
            .unwrap_or_else(|e| panic!("STARTTLS: {e}"))
    }

    pub fn try_starttls(&mut self, server_name: &str, ca: &Path) -> Result<(), String> {
        let r = self.try_cmd("STARTTLS").map_err(|e| e.to_string())?;
        if r.code != 220 {
            return Err(format!("STARTTLS refused: {r}"));
        }
        if !self.buf.is_empty() {
            return Err(format!(
                "plaintext bytes after 220 to STARTTLS (injection): {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        let tcp = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(s) => s,
            _ => return Err("STARTTLS on a TLS stream".into()),
        };
        let s = tls_wrap(tcp, server_name, ca).map_err(|e| format!("handshake: {e}"))?;
        self.stream = Stream::Tls(Box::new(s));
        Ok(())
    }

    /// `TLSv1_3` / `TLSv1_2` once TLS is up.
    pub fn tls_version(&self) -> Option<String> {
        match &self.stream {
            Stream::Tls(s) => s.conn.protocol_version().map(|v| format!("{v:?}")),
            _ => None,
        }
    }

    /// The server's leaf certificate (DER) once TLS is up.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Stream::Tls(s) => s.conn.peer_certificates()?.first().map(|c| c.to_vec()),
            _ => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// AUTH PLAIN with an initial response; returns the final reply (235 on success).
    pub fn auth_plain(&mut self, user: &str, pass: &str) -> Reply {
        let token = B64.encode(format!("\0{user}\0{pass}"));
        self.cmd(&format!("AUTH PLAIN {token}"))
    }

    /// AUTH LOGIN in three steps; returns the first non-334 reply.
    pub fn auth_login(&mut self, user: &str, pass: &str) -> Reply {
        let r = self.cmd("AUTH LOGIN");
        if r.code != 334 {
            return r;
        }
        let r = self.cmd(&B64.encode(user));
        if r.code != 334 {
            return r;
        }
        self.cmd(&B64.encode(pass))
    }

    /// MAIL, RCPT for each recipient, DATA, body (dot-stuffed here; a final CRLF is added if
    /// missing), `.`. Returns the first refusal (MAIL not 250, every RCPT refused, DATA not 354)
    /// or the reply after the final dot.
    pub fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if r.code != 250 {
            return r;
        }
        let mut last_refusal = None;
        let mut accepted = 0;
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            if (200..300).contains(&r.code) {
                accepted += 1;
            } else {
                last_refusal = Some(r);
            }
        }
        if accepted == 0
            && let Some(r) = last_refusal
        {
            return r;
        }
        self.data(data)
    }

    /// DATA, the dot-stuffed body and the final dot; returns the final (or the DATA) reply.
    pub fn data(&mut self, data: &[u8]) -> Reply {
        let r = self.cmd("DATA");
        if r.code != 354 {
            return r;
        }
        self.send_raw(&dot_stuff(data));
        self.send_raw(b".\r\n");
        self.read_reply()
    }

    /// QUIT (ignores errors: the server may already have closed).
    pub fn quit(mut self) {
        let _ = self.try_cmd("QUIT");
    }

    /// True if the server has closed the connection (reads until EOF or `timeout`).
    pub fn is_closed(&mut self, timeout: Duration) -> bool {
        let set = |s: &Stream, t| match s {
            Stream::Plain(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.sock.set_read_timeout(t),
            Stream::Gone => Ok(()),
        };
        let _ = set(&self.stream, Some(timeout));
        let closed = loop {
            match self.read_some() {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break false;
                }
                Err(_) => break true,
            }
        };
        let _ = set(&self.stream, Some(Duration::from_secs(30)));
        closed
    }
}

/// RFC 5321 §4.5.2 dot-stuffing; adds a final CRLF if the data lacks one.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for (i, &b) in data.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && data[i - 1] == b'\r';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One message from `from` to `to` with that `From:` header and `subject`, sent to `addr` (a
/// trusted client, no login); asserts the 250.
pub fn send_from(addr: SocketAddr, from: &str, to: &str, subject: &str) {
    let mut c = SmtpClient::connect(addr);
    c.ehlo("client.test");
    let body = format!("From: <{from}>\r\nSubject: {subject}\r\n\r\nHello.\r\n");
    c.send_mail(from, &[to], body.as_bytes()).expect(250);
    c.quit();
}

/// One message from sender@snd.test to `rcpt` (a trusted client, no login), its subject and
/// Message-ID `<subject@snd.test>` telling it apart; asserts the 250.
pub fn submit_one(addr: SocketAddr, rcpt: &str, subject: &str) {
    let mut c = SmtpClient::connect(addr);
    c.ehlo("client.test");
    let body = format!(
        "From: <sender@snd.test>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@snd.test>\r\n\r\nHello.\r\n"
    );
    let r = c.send_mail("sender@snd.test", &[rcpt], body.as_bytes());
    assert_eq!(r.code, 250, "submit: {r}");
    c.quit();
}
