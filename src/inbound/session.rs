//! One SMTP session: a tokio task reading strict CRLF command lines, answering pipelined groups in
//! order (replies are buffered and flushed whenever we must wait for input), and streaming DATA
//! to the spool.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Inbound;
use super::admission::Place;
use super::envelope::{Tx, relay_denied};
use super::settings::{Listen, ListenAuth, ListenTls};
use crate::reply::Reply;

/// Longest command line accepted, CRLF excluded (RFC 5321 asks for at least 512).
pub const MAX_LINE: usize = 4096;
/// An overlong line is skipped up to its end; past this the client is not talking SMTP.
const MAX_DISCARD: usize = 64 * 1024;
/// DATA is written to the spool in chunks of about this size.
pub(super) const CHUNK: usize = 64 * 1024;
pub(super) const READ_SIZE: usize = 16 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub type Conn = crate::tls::MaybeTls<TlsStream<TcpStream>>;

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
pub(super) struct End;

pub(super) type Flow = Result<(), End>;

pub(super) enum Line {
    Cmd(Vec<u8>),
    Bad(&'static str),
    TooLong,
    Eof,
}

pub(super) struct Session {
    pub(super) ctx: Arc<Inbound>,
    pub(super) listen: Listen,
    pub(super) peer: IpAddr,
    pub(super) conn: Option<Conn>,
    pub(super) rbuf: Vec<u8>,
    pub(super) rpos: usize,
    pub(super) out: Vec<u8>,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) user: Option<String>,
    pub(super) tls: Option<(String, String)>,
    pub(super) trusted: bool,
    pub(super) tx: Option<Tx>,
    /// The path of the MAIL FROM being handled, so a refusal logs the sender the client gave.
    pub(super) mail_from: Option<String>,
    pub(super) errors: u32,
    pub(super) place: Place,
}

/// How long a shed session may take to say goodbye: its slot is someone else's already.
const SHED_GOODBYE: Duration = Duration::from_secs(1);

/// The reply when all `limits.max_sessions` slots this client may take are in use.
pub fn busy_reply(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} Too many connections, try again later"),
    )
}

/// Answers a client that gets no session (the caller logs why) and closes the connection.
pub async fn refuse_connection(ctx: Arc<Inbound>, listen: Listen, stream: TcpStream, reply: Reply) {
    let msg = reply.to_wire();
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

pub async fn run(
    ctx: Arc<Inbound>,
    listen: Listen,
    stream: TcpStream,
    peer: SocketAddr,
    place: Place,
) {
    let ip = super::access::normalise(peer.ip());
    let trusted = super::access::is_trusted(&ctx.settings.access.networks, ip);
    tracing::debug!(client = %ip, listener = %listen.address, trusted, "session start");
    // Shedding (`admission`) may end the session at any await, the TLS handshakes included.
    let shed = place.slot.shed_notice();
    let shed = async move {
        match shed {
            Some(p) => p.shed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shed);
    let (conn, tls) = match (&ctx.tls, listen.tls) {
        (Some(acceptor), ListenTls::Implicit) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let done = tokio::select! {
                done = handshake => done,
                _ = &mut shed => return,
            };
            match done {
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
        mail_from: None,
        errors: 0,
        place,
    };
    let greeting = format!("220 {} ESMTP poolrelay\r\n", s.ctx.settings.hostname);
    s.out.extend_from_slice(greeting.as_bytes());
    let was_shed = tokio::select! {
        _ = s.serve() => false,
        _ = &mut shed => true,
    };
    let mut goodbye = Duration::from_secs(5);
    if was_shed {
        goodbye = SHED_GOODBYE;
        tracing::debug!(client = %s.peer, "unauthenticated session shed to make room");
        let host = s.settings().hostname.clone();
        s.out.clear();
        let _ = s.close_with(Reply::new(
            421,
            "4.3.2",
            format!("{host} Too many connections, making room for users who log in"),
        ));
    }
    let _ = tokio::time::timeout(goodbye, s.flush()).await;
    if let Some(mut c) = s.conn.take() {
        let _ = tokio::time::timeout(goodbye, c.shutdown()).await;
    }
    tracing::debug!(client = %s.peer, "session end");
}

impl Session {
    pub(super) fn settings(&self) -> &super::Settings {
        &self.ctx.settings
    }

    /// The senders this client may use now (`[[access.sender_login]]`).
    pub(super) fn senders(&self) -> super::sender_login::Senders {
        super::sender_login::Senders::for_client(
            &self.settings().access.sender_login,
            self.user.as_deref(),
            self.peer,
        )
    }

    pub(super) fn may_relay(&self) -> bool {
        self.user.is_some() || (self.trusted && self.listen.auth != ListenAuth::Required)
    }

    pub(super) fn auth_offered(&self) -> bool {
        self.listen.auth != ListenAuth::None && self.ctx.users.is_some()
    }

    /// Queues a reply; negative ones count as errors, and too many end the session.
    pub(super) fn send(&mut self, r: Reply) -> Flow {
        self.out.extend_from_slice(r.to_wire().as_bytes());
        if r.code >= 400 {
            self.errors += 1;
            if self.errors > self.settings().limits.max_errors {
                tracing::info!(client = %self.peer, errors = self.errors, "too many errors, closing");
                let bye = Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Too many errors, closing connection",
                        self.settings().hostname
                    ),
                );
                self.out.extend_from_slice(bye.to_wire().as_bytes());
                return Err(End);
            }
        }
        Ok(())
    }

    /// A refused envelope step or message: one log event with the reply sent.
    pub(super) fn refuse(&mut self, stage: &'static str, r: Reply) -> Flow {
        crate::metrics::refused(stage, r.code);
        tracing::info!(
            client = %self.peer,
            user = self.user.as_deref().unwrap_or(""),
            sender = self
                .tx
                .as_ref()
                .map(|t| t.sender.as_str())
                .or(self.mail_from.as_deref())
                .unwrap_or(""),
            stage,
            reply = %r,
            "refused"
        );
        self.send(r)
    }

    /// Replies, then ends the session.
    pub(super) fn close_with(&mut self, r: Reply) -> Flow {
        self.out.extend_from_slice(r.to_wire().as_bytes());
        Err(End)
    }

    pub(super) async fn flush(&mut self) -> Flow {
        if self.out.is_empty() {
            return Ok(());
        }
        let conn = self.conn.as_mut().ok_or(End)?;
        let timeout = self.ctx.settings.limits.command_timeout.0;
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
    pub(super) async fn fill(&mut self, timeout: Duration) -> Result<bool, End> {
        match self.read_more(timeout).await? {
            Some(more) => Ok(more),
            None => self.timed_out(),
        }
    }

    /// `fill` that reports a timeout as `Ok(None)`.
    async fn read_more(&mut self, timeout: Duration) -> Result<Option<bool>, End> {
        self.flush().await?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        // Straight into rbuf's spare room: no copy through a stack buffer.
        self.rbuf.reserve(READ_SIZE);
        // A huge timeout must not overflow the clock: a year is "for ever" here.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 86400));
        let mut stop = self.ctx.stop.clone();
        loop {
            if let Some(r) = self.stop_reply(*stop.borrow_and_update()) {
                tracing::info!(client = %self.peer, "relay stopping, closing session");
                return self.close_with(r).map(|_| None);
            }
            let conn = self.conn.as_mut().ok_or(End)?;
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, conn.read_buf(&mut self.rbuf)) => read,
                // Reads are cancel-safe: look at the stop state, then read on. (No sender:
                // the relay is not stopping through it; never wake.)
                _ = async {
                    if stop.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                } => continue,
            };
            return match read {
                Ok(Ok(0)) => Ok(Some(false)),
                Ok(Ok(_)) => Ok(Some(true)),
                Ok(Err(e)) => {
                    tracing::debug!(client = %self.peer, error = %e, "read error");
                    Err(End)
                }
                Err(_) => Ok(None),
            };
        }
    }

    fn timed_out(&mut self) -> Result<bool, End> {
        tracing::info!(client = %self.peer, "timeout, closing");
        let host = self.settings().hostname.clone();
        self.close_with(Reply::new(
            421,
            "4.4.2",
            format!("{host} Error: timeout exceeded"),
        ))
        .map(|_| false)
    }

    /// Reads more of a command line begun at `started`. The deadline is looked at again every
    /// second, so a session already idle notices when stress begins.
    async fn fill_line(&mut self, started: tokio::time::Instant) -> Result<bool, End> {
        loop {
            let deadline = self.command_deadline(started);
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return self.timed_out();
            }
            let wait = (deadline - now).min(Duration::from_secs(1));
            if let Some(more) = self.read_more(wait).await? {
                return Ok(more);
            }
        }
    }

    /// While the relay stops: the reply that ends this session now, if any (idle sessions at
    /// once, a transaction in progress only when the grace is over).
    fn stop_reply(&self, stop: super::Stop) -> Option<Reply> {
        let now = match stop {
            super::Stop::Running => false,
            super::Stop::Draining => self.tx.is_none(),
            super::Stop::Closing => true,
        };
        now.then(|| {
            Reply::new(
                421,
                "4.3.2",
                format!(
                    "{} Service shutting down, try again later",
                    self.settings().hostname
                ),
            )
        })
    }

    /// The next command line: CRLF-terminated, no other CR or LF inside, at most MAX_LINE bytes.
    pub(super) async fn next_line(&mut self) -> Result<Line, End> {
        // One deadline for the whole line, not one per read: a client trickling a byte at a
        // time (slowloris) is cut after command_timeout instead of being kept for ever.
        let started = tokio::time::Instant::now();
        loop {
            let avail = &self.rbuf[self.rpos..];
            let window = &avail[..avail.len().min(MAX_LINE + 2)];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                let Some((b'\r', body)) = avail[..i].split_last() else {
                    self.rpos += i + 1;
                    return Ok(Line::Bad("bare LF in command"));
                };
                if body.contains(&b'\r') {
                    self.rpos += i + 1;
                    return Ok(Line::Bad("bare CR in command"));
                }
                // One copy, with room for the CRLF smtp-proto wants back.
                let mut cmd = Vec::with_capacity(i + 1);
                cmd.extend_from_slice(body);
                self.rpos += i + 1;
                self.place.slot.touch();
                return Ok(Line::Cmd(cmd));
            }
            if avail.len() >= MAX_LINE + 2 {
                return self.skip_line(started).await;
            }
            if !self.fill_line(started).await? {
                return Ok(Line::Eof);
            }
        }
    }

    /// When the next command line must be complete: `command_timeout`, shorter under stress
    /// (`admission`).
    fn command_deadline(&self, started: tokio::time::Instant) -> tokio::time::Instant {
        let limits = &self.settings().limits;
        let mut timeout = limits.command_timeout.0;
        if self.ctx.slots.stressed() {
            timeout = timeout.min(limits.stress_command_timeout.0);
        }
        // A huge command_timeout must not overflow the clock: a year is "for ever" here.
        started
            .checked_add(timeout)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 86400))
    }

    /// Drops the rest of an overlong line (bounded), so the next command starts cleanly.
    async fn skip_line(&mut self, started: tokio::time::Instant) -> Result<Line, End> {
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
                let host = self.settings().hostname.clone();
                return self
                    .close_with(Reply::new(
                        421,
                        "4.7.0",
                        format!("{host} Line too long, closing connection"),
                    ))
                    .map(|_| Line::Eof);
            }
            if !self.fill_line(started).await? {
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
        let is = |name: &[u8]| line[..verb_end].eq_ignore_ascii_case(name);
        let (mail, rcpt, is_auth) = (is(b"MAIL"), is(b"RCPT"), is(b"AUTH"));
        if mail || rcpt {
            let rest = line.get(verb_end + 1..).unwrap_or_default();
            let Ok(rest) = std::str::from_utf8(rest) else {
                if rcpt && self.tx.is_some() && !self.may_relay() {
                    return self.refuse("rcpt", relay_denied());
                }
                return self.send(Reply::new(501, "5.6.7", "Invalid UTF-8 in command"));
            };
            return if mail {
                self.mail(rest)
            } else {
                self.rcpt(rest)
            };
        }
        if is(b"BDAT") {
            let args = line.get(verb_end + 1..).unwrap_or_default();
            return self.bdat_command(args).await;
        }
        let mut with_crlf = line;
        with_crlf.extend_from_slice(b"\r\n");
        let req = match Request::parse(&mut with_crlf.iter()) {
            Ok(r) => r.into_owned(),
            Err(smtp_proto::Error::UnknownCommand) => {
                return self.send(Reply::new(500, "5.5.1", "Unknown command"));
            }
            Err(smtp_proto::Error::SyntaxError { syntax }) if !is_auth => {
                return self.send(Reply::new(501, "5.5.4", format!("Syntax: {syntax}")));
            }
            Err(_) if is_auth => {
                return self.send(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
            }
            Err(_) => return self.send(Reply::new(501, "5.5.4", "Syntax error")),
        };
        match req {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Data => self.data().await,
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
        let hostname = self.settings().hostname.clone();
        if !esmtp {
            return self.send(Reply::new(250, "", hostname));
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.settings().limits.message_size.0),
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
        // RFC 8689 §4: offered only where it can be used, inside TLS.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".to_string());
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
}
