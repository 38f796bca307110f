//! One SMTP session: a tokio task reading strict CRLF command lines, answering pipelined groups in
//! order (replies are buffered and flushed whenever we must wait for input), and streaming DATA
//! to the spool.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Inbound;
use super::address::{AddrError, is_xtext, parse_params, parse_path, split_command};
use super::auth::{Failure, decode_b64, parse_plain};
use super::data::DataReader;
use super::received::{ReceivedInfo, header};
use crate::config::{Listen, ListenAuth, ListenTls};
use crate::reply::Reply;
use crate::spool::{Envelope, MessageWriter, Recipient, Spool, now_unix};

/// Longest command line accepted, CRLF excluded (RFC 5321 asks for at least 512).
pub const MAX_LINE: usize = 4096;
/// An overlong line is skipped up to its end; past this the client is not talking SMTP.
const MAX_DISCARD: usize = 64 * 1024;
/// DATA is written to the spool in chunks of about this size.
const CHUNK: usize = 64 * 1024;
const READ_SIZE: usize = 16 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// (protocol version, cipher suite) of a server TLS stream, for logs and `Received:`.
fn tls_info(s: &TlsStream<TcpStream>) -> (String, String) {
    let c = s.get_ref().1;
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    let cipher = c
        .negotiated_cipher_suite()
        .map(|s| {
            let s = s.suite();
            s.as_str().map(str::to_string).unwrap_or(format!("{s:?}"))
        })
        .unwrap_or_default();
    (version, cipher)
}

/// The session ends (the last reply, if any, is already queued).
struct End;

type Flow = Result<(), End>;

enum Line {
    Cmd(Vec<u8>),
    Bad(&'static str),
    TooLong,
    Eof,
}

/// The mail transaction between MAIL FROM and the end of DATA.
struct Tx {
    sender: String,
    smtputf8: bool,
    body_8bit: bool,
    ret: Option<String>,
    envid: Option<String>,
    rcpts: Vec<Recipient>,
    /// The message being received with BDAT, between chunks.
    bdat: Option<Bdat>,
}

struct Bdat {
    id: String,
    /// None after a write error (the reply at the end is 452).
    writer: Option<MessageWriter>,
    size: u64,
    bare: bool,
    prev_cr: bool,
}

impl Bdat {
    /// Flags bare CR / bare LF, also across chunk boundaries.
    fn scan(&mut self, piece: &[u8]) {
        self.size += piece.len() as u64;
        for &c in piece {
            if (self.prev_cr && c != b'\n') || (!self.prev_cr && c == b'\n') {
                self.bare = true;
            }
            self.prev_cr = c == b'\r';
        }
    }
}

struct Session {
    ctx: Arc<Inbound>,
    listen: Listen,
    peer: IpAddr,
    conn: Option<Conn>,
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    tls: Option<(String, String)>,
    trusted: bool,
    tx: Option<Tx>,
    errors: u32,
}

/// Answers a client when `limits.max_sessions` sessions are running.
pub async fn refuse_busy(ctx: Arc<Inbound>, listen: Listen, stream: TcpStream, peer: SocketAddr) {
    tracing::warn!(client = %peer.ip(), "session limit reached, connection refused");
    let msg = Reply::new(
        421,
        "4.3.2",
        format!(
            "{} Too many connections, try again later",
            ctx.config.hostname
        ),
    )
    .to_wire();
    let work = async {
        match (&ctx.tls, listen.tls) {
            (Some(acceptor), ListenTls::Implicit) => {
                if let Ok(mut s) = acceptor.accept(stream).await {
                    let _ = s.write_all(msg.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            }
            _ => {
                let mut s = stream;
                let _ = s.write_all(msg.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
}

pub async fn run(ctx: Arc<Inbound>, listen: Listen, stream: TcpStream, peer: SocketAddr) {
    let ip = super::access::normalise(peer.ip());
    let trusted = super::access::is_trusted(&ctx.config.access.networks, ip);
    tracing::debug!(client = %ip, listener = %listen.address, trusted, "session start");
    let (conn, tls) = match (&ctx.tls, listen.tls) {
        (Some(acceptor), ListenTls::Implicit) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let info = tls_info(&s);
                    (Conn::Tls(Box::new(s)), Some(info))
                }
                Ok(Err(e)) => {
                    tracing::debug!(client = %ip, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %ip, "TLS handshake timed out");
                    return;
                }
            }
        }
        _ => (Conn::Plain(stream), None),
    };
    let mut s = Session {
        ctx,
        listen,
        peer: ip,
        conn: Some(conn),
        rbuf: Vec::with_capacity(READ_SIZE),
        rpos: 0,
        out: Vec::with_capacity(1024),
        helo: None,
        esmtp: false,
        user: None,
        tls,
        trusted,
        tx: None,
        errors: 0,
    };
    let greeting = format!("220 {} ESMTP poolrelay\r\n", s.ctx.config.hostname);
    s.out.extend_from_slice(greeting.as_bytes());
    let _ = s.serve().await;
    let _ = s.flush().await;
    if let Some(mut c) = s.conn.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.shutdown()).await;
    }
    tracing::debug!(client = %s.peer, "session end");
}

impl Session {
    fn cfg(&self) -> &crate::config::Config {
        &self.ctx.config
    }

    fn may_relay(&self) -> bool {
        self.user.is_some() || (self.trusted && self.listen.auth != ListenAuth::Required)
    }

    fn auth_offered(&self) -> bool {
        self.listen.auth != ListenAuth::None && self.ctx.users.is_some()
    }

    /// Queues a reply; negative ones count as errors, and too many end the session.
    fn send(&mut self, r: Reply) -> Flow {
        self.out.extend_from_slice(r.to_wire().as_bytes());
        if r.code >= 400 {
            self.errors += 1;
            if self.errors > self.cfg().limits.max_errors {
                tracing::info!(client = %self.peer, errors = self.errors, "too many errors, closing");
                let bye = Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Too many errors, closing connection",
                        self.cfg().hostname
                    ),
                );
                self.out.extend_from_slice(bye.to_wire().as_bytes());
                return Err(End);
            }
        }
        Ok(())
    }

    /// A refused envelope step or message: one log event with the reply sent.
    fn refuse(&mut self, stage: &'static str, r: Reply) -> Flow {
        tracing::info!(
            client = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            sender = self.tx.as_ref().map(|t| t.sender.as_str()).unwrap_or(""),
            stage,
            reply = %r,
            "refused"
        );
        self.send(r)
    }

    /// Replies, then ends the session.
    fn close_with(&mut self, r: Reply) -> Flow {
        self.out.extend_from_slice(r.to_wire().as_bytes());
        Err(End)
    }

    async fn flush(&mut self) -> Flow {
        if self.out.is_empty() {
            return Ok(());
        }
        let conn = self.conn.as_mut().ok_or(End)?;
        let timeout = self.ctx.config.limits.command_timeout.0;
        let res = tokio::time::timeout(timeout, async {
            conn.write_all(&self.out).await?;
            conn.flush().await
        })
        .await;
        self.out.clear();
        match res {
            Ok(Ok(())) => Ok(()),
            _ => Err(End),
        }
    }

    /// Flushes pending replies, then reads more input. `Ok(false)` at end of input.
    async fn fill(&mut self, timeout: Duration) -> Result<bool, End> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut buf = [0u8; READ_SIZE];
        let conn = self.conn.as_mut().ok_or(End)?;
        match tokio::time::timeout(timeout, conn.read(&mut buf)).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.rbuf.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.peer, error = %e, "read error");
                Err(End)
            }
            Err(_) => {
                tracing::info!(client = %self.peer, "timeout, closing");
                let host = self.cfg().hostname.clone();
                self.close_with(Reply::new(
                    421,
                    "4.4.2",
                    format!("{host} Error: timeout exceeded"),
                ))
                .map(|_| false)
            }
        }
    }

    /// The next command line: CRLF-terminated, no other CR or LF inside, at most MAX_LINE bytes.
    async fn next_line(&mut self) -> Result<Line, End> {
        let timeout = self.cfg().limits.command_timeout.0;
        loop {
            let avail = &self.rbuf[self.rpos..];
            let window = &avail[..avail.len().min(MAX_LINE + 2)];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                let line = avail[..i].to_vec();
                self.rpos += i + 1;
                let Some((b'\r', body)) = line.split_last() else {
                    return Ok(Line::Bad("bare LF in command"));
                };
                if body.contains(&b'\r') {
                    return Ok(Line::Bad("bare CR in command"));
                }
                return Ok(Line::Cmd(body.to_vec()));
            }
            if avail.len() >= MAX_LINE + 2 {
                return self.skip_line().await;
            }
            if !self.fill(timeout).await? {
                return Ok(Line::Eof);
            }
        }
    }

    /// Drops the rest of an overlong line (bounded), so the next command starts cleanly.
    async fn skip_line(&mut self) -> Result<Line, End> {
        let timeout = self.cfg().limits.command_timeout.0;
        let mut skipped = 0;
        loop {
            let avail = &self.rbuf[self.rpos..];
            if let Some(i) = avail.iter().position(|&b| b == b'\n') {
                self.rpos += i + 1;
                return Ok(Line::TooLong);
            }
            skipped += avail.len();
            self.rpos = self.rbuf.len();
            if skipped > MAX_DISCARD {
                tracing::info!(client = %self.peer, "endless command line, closing");
                let host = self.cfg().hostname.clone();
                return self
                    .close_with(Reply::new(
                        421,
                        "4.7.0",
                        format!("{host} Line too long, closing connection"),
                    ))
                    .map(|_| Line::Eof);
            }
            if !self.fill(timeout).await? {
                return Ok(Line::Eof);
            }
        }
    }

    async fn serve(&mut self) -> Flow {
        loop {
            match self.next_line().await? {
                Line::Eof => return Err(End),
                Line::Bad(why) => {
                    self.send(Reply::new(500, "5.5.2", format!("Syntax error: {why}")))?
                }
                Line::TooLong => self.send(Reply::new(500, "5.5.2", "Line too long"))?,
                Line::Cmd(line) => self.command(line).await?,
            }
        }
    }

    async fn command(&mut self, line: Vec<u8>) -> Flow {
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let verb = line[..verb_end].to_ascii_uppercase();
        if verb == b"MAIL" || verb == b"RCPT" {
            let rest = line.get(verb_end + 1..).unwrap_or_default();
            let Ok(rest) = std::str::from_utf8(rest) else {
                if verb == b"RCPT" && self.tx.is_some() && !self.may_relay() {
                    return self.refuse("rcpt", relay_denied());
                }
                return self.send(Reply::new(501, "5.6.7", "Invalid UTF-8 in command"));
            };
            let rest = rest.to_string();
            return if verb == b"MAIL" {
                self.mail(&rest)
            } else {
                self.rcpt(&rest)
            };
        }
        let mut with_crlf = line;
        with_crlf.extend_from_slice(b"\r\n");
        let req = match Request::parse(&mut with_crlf.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::UnknownCommand) => {
                return self.send(Reply::new(500, "5.5.1", "Unknown command"));
            }
            Err(smtp_proto::Error::SyntaxError { syntax }) if verb != b"AUTH" => {
                return self.send(Reply::new(501, "5.5.4", format!("Syntax: {syntax}")));
            }
            Err(_) if verb == b"AUTH" => {
                return self.send(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
            }
            Err(_) => return self.send(Reply::new(501, "5.5.4", "Syntax error")),
        };
        match req {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.tx = None;
                self.send(Reply::new(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => self.send(Reply::new(250, "2.0.0", "Ok")),
            Request::Quit => self.close_with(Reply::new(221, "2.0.0", "Bye")),
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Help { .. } => self.send(Reply::new(214, "2.0.0", "See RFC 5321")),
            Request::Vrfy { .. } => self.send(Reply::new(502, "5.5.1", "VRFY command is disabled")),
            Request::Expn { .. } => self.send(Reply::new(502, "5.5.1", "EXPN command is disabled")),
            _ => self.send(Reply::new(502, "5.5.1", "Command not implemented")),
        }
    }

    fn hello(&mut self, host: String, esmtp: bool) -> Flow {
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.tx = None;
        let hostname = self.cfg().hostname.clone();
        if !esmtp {
            return self.send(Reply::new(250, "", hostname));
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg().limits.message_size.0),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.tls.is_none() && self.ctx.tls.is_some() {
            lines.push("STARTTLS".to_string());
        }
        if self.tls.is_some() && self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.send(Reply::new(250, "", lines.join("\n")))
    }

    async fn starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            return self.send(Reply::new(503, "5.5.1", "TLS already active"));
        }
        let Some(acceptor) = self.ctx.tls.clone() else {
            return self.send(Reply::new(502, "5.5.1", "STARTTLS not available"));
        };
        // Anything pipelined after STARTTLS arrived in plaintext: never let it count as
        // commands inside the TLS session (CVE-2011-0411 class).
        let pending = self.rbuf.len() - self.rpos;
        if pending > 0 {
            tracing::info!(client = %self.peer, bytes = pending, "discarding input pipelined after STARTTLS");
        }
        self.rbuf.clear();
        self.rpos = 0;
        self.send(Reply::new(220, "2.0.0", "Ready to start TLS"))?;
        self.flush().await?;
        let Some(Conn::Plain(tcp)) = self.conn.take() else {
            return Err(End);
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                self.tls = Some(tls_info(&s));
                self.conn = Some(Conn::Tls(Box::new(s)));
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.peer, error = %e, "STARTTLS handshake failed");
                return Err(End);
            }
            Err(_) => {
                tracing::info!(client = %self.peer, "STARTTLS handshake timed out");
                return Err(End);
            }
        }
        // RFC 3207 §4.2: forget everything learned before TLS.
        self.helo = None;
        self.esmtp = false;
        self.user = None;
        self.tx = None;
        Ok(())
    }

    /// Reads one SASL response line; `None` when the client cancelled or sent garbage (already
    /// answered).
    async fn sasl_line(&mut self, prompt: &str) -> Result<Option<Vec<u8>>, End> {
        self.send(Reply::new(334, "", prompt))?;
        let line = match self.next_line().await? {
            Line::Cmd(l) => l,
            Line::Eof => return Err(End),
            Line::Bad(_) | Line::TooLong => {
                self.send(Reply::new(501, "5.5.2", "Invalid AUTH response"))?;
                return Ok(None);
            }
        };
        if line == b"*" {
            self.send(Reply::new(501, "5.0.0", "Authentication cancelled"))?;
            return Ok(None);
        }
        self.decode_sasl(&String::from_utf8_lossy(&line))
    }

    fn decode_sasl(&mut self, text: &str) -> Result<Option<Vec<u8>>, End> {
        match decode_b64(text) {
            Some(v) => Ok(Some(v)),
            None => {
                self.send(Reply::new(501, "5.5.2", "Invalid base64 data"))?;
                Ok(None)
            }
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Flow {
        if !self.auth_offered() {
            return self.send(Reply::new(502, "5.5.1", "AUTH not available"));
        }
        if self.tls.is_none() {
            return self.send(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        if !self.esmtp {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.user.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.tx.is_some() {
            return self.send(Reply::new(
                503,
                "5.5.1",
                "AUTH not allowed during a mail transaction",
            ));
        }
        if self.ctx.guard.is_locked(self.peer) {
            return self.close_with(lockout_reply());
        }
        let (user, password) = if mechanism == AUTH_PLAIN {
            let raw = if initial.is_empty() {
                self.sasl_line("").await?
            } else {
                self.decode_sasl(&initial)?
            };
            let Some(raw) = raw else { return Ok(()) };
            parse_plain(&raw).unwrap_or_default()
        } else if mechanism == AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.sasl_line("VXNlcm5hbWU6").await?
            } else {
                self.decode_sasl(&initial)?
            };
            let Some(user) = user else { return Ok(()) };
            let Some(pass) = self.sasl_line("UGFzc3dvcmQ6").await? else {
                return Ok(());
            };
            (
                String::from_utf8(user).unwrap_or_default(),
                String::from_utf8(pass).unwrap_or_default(),
            )
        } else {
            return self.send(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
        };
        let users = self.ctx.users.clone().ok_or(End)?;
        let ok = !user.is_empty() && !password.is_empty() && users.check(&user, &password).await;
        if ok {
            tracing::info!(client = %self.peer, user = %user, "authenticated");
            self.user = Some(user);
            return self.send(Reply::new(235, "2.7.0", "Authentication successful"));
        }
        match self.ctx.guard.fail(self.peer) {
            Failure::Counted => {
                tracing::info!(client = %self.peer, "authentication failed");
                self.send(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))
            }
            Failure::LockedOut => {
                tracing::warn!(
                    client = %self.peer,
                    failures = self.cfg().access.auth_max_failures,
                    lockout = ?self.cfg().access.auth_lockout.0,
                    "AUTH lockout: too many failed attempts from this address"
                );
                self.close_with(lockout_reply())
            }
        }
    }

    fn mail(&mut self, args: &str) -> Flow {
        if self.helo.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO/HELO first"));
        }
        if self.tx.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        if self.listen.auth == ListenAuth::Required && self.user.is_none() {
            return self.refuse("mail", Reply::new(530, "5.7.0", "Authentication required"));
        }
        let Some((path, params)) = split_command(args, "FROM") else {
            return self.send(Reply::new(
                501,
                "5.5.4",
                "Syntax: MAIL FROM:<address> [parameters]",
            ));
        };
        let params = match parse_params(params) {
            Ok(p) => p,
            Err(r) => return self.send(r),
        };
        if !self.esmtp && !params.is_empty() {
            return self.send(Reply::new(555, "5.5.4", "Parameters need EHLO"));
        }
        let mut tx = Tx {
            sender: String::new(),
            smtputf8: false,
            body_8bit: false,
            ret: None,
            envid: None,
            rcpts: Vec::new(),
            bdat: None,
        };
        let max = self.cfg().limits.message_size.0;
        for (key, value) in params {
            let v = value.as_deref();
            match (key.as_str(), v) {
                ("SIZE", Some(n)) => match n.parse::<u64>() {
                    Ok(n) if n > max => {
                        return self.refuse(
                            "mail",
                            Reply::new(
                                552,
                                "5.3.4",
                                "Message size exceeds fixed maximum message size",
                            ),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => return self.send(Reply::new(501, "5.5.4", "Bad SIZE value")),
                },
                ("BODY", Some(b)) if b.eq_ignore_ascii_case("8BITMIME") => tx.body_8bit = true,
                ("BODY", Some(b)) if b.eq_ignore_ascii_case("7BIT") => {}
                ("BODY", _) => {
                    return self.send(Reply::new(555, "5.5.4", "Unsupported BODY type"));
                }
                ("SMTPUTF8", None) => tx.smtputf8 = true,
                ("RET", Some(r))
                    if r.eq_ignore_ascii_case("FULL") || r.eq_ignore_ascii_case("HDRS") =>
                {
                    tx.ret = Some(r.to_ascii_uppercase());
                }
                ("ENVID", Some(e)) if e.len() <= 100 && is_xtext(e) => {
                    tx.envid = Some(e.to_string());
                }
                // RFC 4954 §5: accepted and not passed on (we are not a trusted submitter).
                ("AUTH", Some(a)) if a == "<>" || is_xtext(a) => {}
                ("SIZE" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH", _) => {
                    return self.send(Reply::new(501, "5.5.4", format!("Bad {key} parameter")));
                }
                _ => {
                    return self.send(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ));
                }
            }
        }
        match parse_path(path, tx.smtputf8) {
            Ok(sender) => tx.sender = sender,
            Err(AddrError::NeedsUtf8) => {
                return self.refuse("mail", needs_utf8());
            }
            Err(AddrError::Syntax(why)) => {
                return self.refuse(
                    "mail",
                    Reply::new(501, "5.1.7", format!("Bad sender address syntax: {why}")),
                );
            }
        }
        if let Some(user) = self.user.clone()
            && let Err(r) = self.ctx.cap.check(&self.ctx.state, &user)
        {
            return self.refuse("mail", r);
        }
        self.tx = Some(tx);
        self.send(Reply::new(250, "2.1.0", "Ok"))
    }

    fn rcpt(&mut self, args: &str) -> Flow {
        let Some(smtputf8) = self.tx.as_ref().map(|t| t.smtputf8) else {
            return self.send(Reply::new(503, "5.5.1", "Need MAIL command"));
        };
        // Whatever the address looks like: no relay without AUTH or a trusted address.
        if !self.may_relay() {
            return self.refuse("rcpt", relay_denied());
        }
        let Some((path, params)) = split_command(args, "TO") else {
            return self.send(Reply::new(
                501,
                "5.5.4",
                "Syntax: RCPT TO:<address> [parameters]",
            ));
        };
        let params = match parse_params(params) {
            Ok(p) => p,
            Err(r) => return self.send(r),
        };
        if !self.esmtp && !params.is_empty() {
            return self.send(Reply::new(555, "5.5.4", "Parameters need EHLO"));
        }
        let (mut notify, mut orcpt) = (None, None);
        for (key, value) in params {
            match (key.as_str(), value) {
                ("NOTIFY", Some(n)) if valid_notify(&n) => notify = Some(n.to_ascii_uppercase()),
                ("ORCPT", Some(o)) if valid_orcpt(&o) => orcpt = Some(o),
                ("NOTIFY" | "ORCPT", _) => {
                    return self.send(Reply::new(501, "5.5.4", format!("Bad {key} parameter")));
                }
                _ => {
                    return self.send(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ));
                }
            }
        }
        let address = match parse_path(path, smtputf8) {
            Ok(a) if a.is_empty() => {
                return self.refuse("rcpt", Reply::new(501, "5.1.3", "Null recipient"));
            }
            Ok(a) => a,
            Err(AddrError::NeedsUtf8) => return self.refuse("rcpt", needs_utf8()),
            Err(AddrError::Syntax(why)) => {
                return self.refuse(
                    "rcpt",
                    Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {why}")),
                );
            }
        };
        let count = self.tx.as_ref().map(|t| t.rcpts.len()).unwrap_or(0);
        if count >= self.cfg().limits.recipients_per_message {
            return self.refuse("rcpt", Reply::new(452, "4.5.3", "Too many recipients"));
        }
        if let Some(user) = self.user.clone()
            && let Err(r) = self.ctx.cap.check(&self.ctx.state, &user)
        {
            return self.refuse("rcpt", r);
        }
        let mut r = Recipient::new(address);
        r.notify = notify;
        r.orcpt = orcpt;
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(r);
        }
        self.send(Reply::new(250, "2.1.5", "Ok"))
    }

    /// Creates the spool file for the current transaction and writes our Received header.
    async fn start_message(&mut self) -> Result<(String, MessageWriter), Reply> {
        let id = Spool::new_id();
        let mut writer = self.ctx.spool.writer(&id).await.map_err(|e| {
            tracing::error!(error = %e, "spool: cannot create message file");
            storage_reply()
        })?;
        let received = {
            let tx = self.tx.as_ref().expect("transaction present");
            header(&ReceivedInfo {
                helo: self.helo.as_deref().unwrap_or(""),
                ip: self.peer,
                hostname: &self.ctx.config.hostname,
                esmtp: self.esmtp,
                smtputf8: tx.smtputf8,
                tls: self.tls.as_ref().map(|(v, c)| (v.as_str(), c.as_str())),
                authenticated: self.user.is_some(),
                show_user: self
                    .user
                    .as_deref()
                    .filter(|_| self.ctx.config.access.received_auth_user),
                id: &id,
                rcpt: (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str()),
                now: now_unix(),
            })
        };
        writer.write(received.as_bytes()).await.map_err(|e| {
            tracing::error!(queue_id = %id, error = %e, "spool: write failed");
            storage_reply()
        })?;
        Ok((id, writer))
    }

    /// BDAT (RFC 3030): exactly `size` octets follow the command, always read (even when the
    /// command is refused) so they are never taken as commands. The same rules as DATA apply:
    /// CRLF line endings only, size limit, 250 only after the commit of the LAST chunk.
    async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        let mut problem = match &self.tx {
            None => Some(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(t) if t.rcpts.is_empty() => Some(Reply::new(554, "5.5.1", "No valid recipients")),
            Some(_) => None,
        };
        if problem.is_none() && self.tx.as_ref().is_some_and(|t| t.bdat.is_none()) {
            match self.start_message().await {
                Ok((id, writer)) => {
                    if let Some(t) = self.tx.as_mut() {
                        t.bdat = Some(Bdat {
                            id,
                            writer: Some(writer),
                            size: 0,
                            bare: false,
                            prev_cr: false,
                        });
                    }
                }
                Err(r) => {
                    self.tx = None;
                    problem = Some(r);
                }
            }
        }
        let mut st = self.tx.as_mut().and_then(|t| t.bdat.take());
        let max = self.cfg().limits.message_size.0;
        let timeout = self.cfg().limits.data_timeout.0;
        let mut left = size;
        let mut pending = Vec::with_capacity(CHUNK.min(size) + READ_SIZE);
        while left > 0 {
            if self.rpos == self.rbuf.len() {
                if !self.fill(timeout).await? {
                    tracing::info!(client = %self.peer, "connection lost in BDAT");
                    return Err(End);
                }
                continue;
            }
            let n = (self.rbuf.len() - self.rpos).min(left);
            if let Some(b) = st.as_mut() {
                let piece = &self.rbuf[self.rpos..self.rpos + n];
                b.scan(piece);
                if !b.bare && b.size <= max && b.writer.is_some() {
                    pending.extend_from_slice(piece);
                }
            }
            self.rpos += n;
            left -= n;
            if pending.len() >= CHUNK || (left == 0 && !pending.is_empty()) {
                if let Some(b) = st.as_mut()
                    && let Some(w) = b.writer.as_mut()
                    && let Err(e) = w.write(&pending).await
                {
                    tracing::error!(queue_id = %b.id, error = %e, "spool: write failed");
                    b.writer = None;
                }
                pending.clear();
            }
        }
        if let Some(r) = problem {
            return self.refuse("bdat", r);
        }
        let Some(mut b) = st else {
            return Err(End);
        };
        if last && b.prev_cr {
            b.bare = true; // the message ends in a lone CR
        }
        let refusal = if b.bare {
            Some(Reply::new(550, "5.6.11", "Bare LF/CR not allowed"))
        } else if b.size > max {
            Some(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ))
        } else if b.writer.is_none() {
            Some(storage_reply())
        } else {
            None
        };
        if let Some(r) = refusal {
            // RFC 3030 §2: after a refused chunk the transaction is over.
            let tx = self.tx.take().expect("transaction present");
            return self.refuse_msg(&tx, r);
        }
        if !last {
            if let Some(t) = self.tx.as_mut() {
                t.bdat = Some(b);
            }
            return self.send(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        let tx = self.tx.take().expect("transaction present");
        let writer = b.writer.take().expect("checked above");
        self.queue(b.id, writer, tx).await
    }

    async fn data(&mut self) -> Flow {
        match &self.tx {
            None => return self.send(Reply::new(503, "5.5.1", "Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                return self.send(Reply::new(554, "5.5.1", "No valid recipients"));
            }
            Some(_) => {}
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.send(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
        }
        let (id, writer) = match self.start_message().await {
            Ok(w) => w,
            Err(r) => {
                // The transaction cannot go on; the client starts again with MAIL.
                let res = self.refuse("data", r);
                self.tx = None;
                return res;
            }
        };
        self.send(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"))?;

        let mut reader = DataReader::new(self.cfg().limits.message_size.0);
        let mut writer = Some(writer);
        let mut chunk = Vec::with_capacity(CHUNK + READ_SIZE);
        let timeout = self.cfg().limits.data_timeout.0;
        loop {
            let done = match reader.feed(&self.rbuf[self.rpos..], &mut chunk) {
                Some(n) => {
                    self.rpos += n;
                    true
                }
                None => {
                    self.rpos = self.rbuf.len();
                    false
                }
            };
            if (done || chunk.len() >= CHUNK) && !chunk.is_empty() {
                if let Some(w) = writer.as_mut()
                    && let Err(e) = w.write(&chunk).await
                {
                    tracing::error!(queue_id = %id, error = %e, "spool: write failed");
                    writer = None;
                }
                chunk.clear();
            }
            if done {
                break;
            }
            if !self.fill(timeout).await? {
                tracing::info!(client = %self.peer, queue_id = %id, "connection lost in DATA");
                return Err(End);
            }
        }
        let tx = self.tx.take().expect("transaction present");
        if reader.bare {
            return self.refuse_msg(&tx, Reply::new(550, "5.6.11", "Bare LF/CR not allowed"));
        }
        if reader.too_big() {
            return self.refuse_msg(
                &tx,
                Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ),
            );
        }
        let Some(writer) = writer else {
            return self.refuse_msg(&tx, storage_reply());
        };
        self.queue(id, writer, tx).await
    }

    fn refuse_msg(&mut self, tx: &Tx, r: Reply) -> Flow {
        tracing::info!(
            client = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            sender = %tx.sender,
            rcpts = tx.rcpts.len(),
            stage = "data",
            reply = %r,
            "message refused"
        );
        self.send(r)
    }

    /// Signs, reserves the daily-cap slot and commits; 250 only after the commit.
    async fn queue(&mut self, id: String, mut writer: MessageWriter, tx: Tx) -> Flow {
        let path = match writer.finish().await {
            Ok(p) => p.to_path_buf(),
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: fsync failed");
                return self.refuse_msg(&tx, storage_reply());
            }
        };
        // DKIM reads the finished file in chunks (memory stays bounded) on the blocking pool.
        let signer = self.ctx.signer.clone();
        let signed = tokio::task::spawn_blocking(move || signer.sign_file(&path))
            .await
            .unwrap_or_else(|_| Err(Reply::new(451, "4.3.0", "Temporary local problem")));
        let mut signed = match signed {
            Ok(s) => s,
            Err(r) => return self.refuse_msg(&tx, r),
        };
        // The state store fsyncs its commits: keep that off the async workers.
        let reserved = match self.user.clone() {
            Some(user) => {
                let ctx = self.ctx.clone();
                match tokio::task::spawn_blocking(move || ctx.cap.reserve(&ctx.state, &user))
                    .await
                    .unwrap_or_else(|_| Err(Reply::new(451, "4.3.0", "Temporary local problem")))
                {
                    Ok(k) => k,
                    Err(r) => return self.refuse_msg(&tx, r),
                }
            }
            None => None,
        };
        let envelope = Envelope {
            id: id.clone(),
            received_at: now_unix(),
            sender: tx.sender.clone(),
            recipients: tx.rcpts.clone(),
            client: self.peer.to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            user: self.user.clone(),
            size: 0,
            smtputf8: tx.smtputf8,
            body_8bit: tx.body_8bit,
            prepend: std::mem::take(&mut signed.headers),
            ret: tx.ret.clone(),
            envid: tx.envid.clone(),
            is_dsn: false,
            pool: None,
            delay_warned: false,
        };
        match writer.commit(envelope).await {
            Ok(env) => {
                signed.log(&env.id);
                tracing::info!(
                    queue_id = %env.id,
                    client = %self.peer,
                    user = self.user.as_deref().unwrap_or(""),
                    sender = %env.sender,
                    rcpts = env.recipients.len(),
                    size = env.size,
                    tls = self.tls.as_ref().map(|t| t.0.as_str()).unwrap_or("no"),
                    "message accepted"
                );
                self.send(Reply::new(
                    250,
                    "2.0.0",
                    format!("Ok: queued as {}", env.id),
                ))
            }
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "spool: commit failed");
                if let Some(k) = reserved {
                    let ctx = self.ctx.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || ctx.cap.release(&ctx.state, &k)).await;
                }
                self.refuse_msg(&tx, storage_reply())
            }
        }
    }
}

fn relay_denied() -> Reply {
    Reply::new(554, "5.7.1", "Relay access denied")
}

fn needs_utf8() -> Reply {
    Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
}

fn storage_reply() -> Reply {
    Reply::new(452, "4.3.1", "Insufficient system storage")
}

fn lockout_reply() -> Reply {
    Reply::new(
        454,
        "4.7.0",
        "Too many authentication failures, try again later",
    )
}

/// RFC 3461 §4.1: `NEVER`, or a comma list of SUCCESS / FAILURE / DELAY.
fn valid_notify(v: &str) -> bool {
    let v = v.to_ascii_uppercase();
    v == "NEVER"
        || v.split(',')
            .all(|p| matches!(p, "SUCCESS" | "FAILURE" | "DELAY"))
}

/// RFC 3461 §4.2: `addr-type ";" xtext`.
fn valid_orcpt(v: &str) -> bool {
    v.split_once(';').is_some_and(|(t, a)| {
        !t.is_empty()
            && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && is_xtext(a)
            && !a.is_empty()
    })
}
