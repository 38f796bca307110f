//! One outbound SMTP session on a socket bound to a pool IP: greeting, EHLO with that IP's name,
//! STARTTLS per policy, then MAIL/RCPT/DATA driven by hand so every recipient keeps its own reply.
//! Built on mail-send's low-level `SmtpClient` (command/reply framing, EHLO parsing).

use std::io;
use std::net::SocketAddr;

use crate::spool::Body;
use std::time::Duration;

use mail_send::SmtpClient;
use rustls_pki_types::ServerName;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
    Response,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::TlsPolicy;
use crate::pool::Source;
use crate::spool::{Envelope, RemoteReply};

/// Plain TCP or TLS after STARTTLS, so one `SmtpClient` type covers both.
pub type Stream = crate::tls::MaybeTls<TlsStream<TcpStream>>;

/// Why a session could not be set up; decides what the caller tries next.
#[derive(Debug)]
pub enum OpenError {
    /// The source IP could not be bound: try the next pool IP.
    Bind(io::Error),
    /// TCP connect failed or timed out: try the next IP / address / MX.
    Connect(RemoteReply),
    /// The server refused us at greeting or EHLO: next MX.
    Refused(RemoteReply),
    /// STARTTLS handshake failed (opportunistic: reconnect in plaintext).
    Handshake(RemoteReply),
    /// `tls = "required"` not satisfiable here: defer (4.7.5), try the next MX.
    TlsRequired(RemoteReply),
}

pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

pub struct Session {
    client: SmtpClient<Stream>,
    caps: u32,
    size_limit: usize,
    pub source: Source,
    pub host: String,
    pub addr: SocketAddr,
    /// "TLSv1_3/TLS13_AES_256_GCM_SHA384" or "none".
    pub tls: String,
    pub transactions: u32,
    /// Reused without an RSET first: if it turns out closed before any reply, `send` says
    /// `stale` and the caller takes another connection.
    pub unchecked: bool,
}

/// A reply made up locally (no server reply to report).
pub fn local_reply(code: u16, status: &str, text: impl Into<String>) -> RemoteReply {
    RemoteReply {
        code,
        status: status.into(),
        text: text.into(),
        host: String::new(),
        addr: String::new(),
        source_ip: String::new(),
    }
}

fn to_reply(r: &Response<String>) -> RemoteReply {
    let status = if r.esc[0] == 0 {
        format!("{}.0.0", r.code / 100)
    } else {
        format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
    };
    local_reply(r.code, &status, r.message.trim().to_string())
}

fn err_reply(e: &mail_send::Error, what: &str) -> RemoteReply {
    match e {
        mail_send::Error::UnexpectedReply(r) => to_reply(r),
        mail_send::Error::Timeout => local_reply(451, "4.4.2", format!("timeout {what}")),
        other => local_reply(451, "4.4.2", format!("connection lost {what}: {other}")),
    }
}

/// Connects from `source` to `addr` and gets the session ready for MAIL FROM.
pub async fn open(
    host: &str,
    addr: SocketAddr,
    source: &Source,
    tls: TlsPolicy,
    connector: Option<&TlsConnector>,
    timeouts: &Timeouts,
) -> Result<Session, OpenError> {
    let tag = |mut r: RemoteReply| {
        r.host = host.to_string();
        r.addr = addr.to_string();
        r.source_ip = source.label();
        r
    };
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(OpenError::Bind)?;
    if let Some(ip) = source.ip {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(OpenError::Bind)?;
    }
    let tcp = match tokio::time::timeout(timeouts.connect, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(OpenError::Connect(tag(local_reply(
                451,
                "4.4.1",
                format!("connect to {host}[{addr}] failed: {e}"),
            ))));
        }
        Err(_) => {
            return Err(OpenError::Connect(tag(local_reply(
                451,
                "4.4.1",
                format!("connect to {host}[{addr}] timed out"),
            ))));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut client = SmtpClient {
        stream: Stream::Plain(tcp),
        timeout: timeouts.command,
    };
    let greeting = match tokio::time::timeout(timeouts.command, client.read()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(OpenError::Connect(tag(err_reply(&e, "at greeting")))),
        Err(_) => {
            return Err(OpenError::Connect(tag(local_reply(
                451,
                "4.4.2",
                "timeout at greeting",
            ))));
        }
    };
    if greeting.code != 220 {
        quick_quit(&mut client).await;
        let r = to_reply(&greeting);
        // Like Postfix (smtp_skip_5xx_greeting): a refusal at greeting is about this host, not
        // the recipients; it defers, with the server's words kept in the text.
        let r = local_reply(
            451,
            "4.4.2",
            format!(
                "{host} refused to talk to me: {} {} {}",
                r.code, r.status, r.text
            ),
        );
        return Err(OpenError::Refused(tag(r)));
    }
    let mut ehlo = hello(&mut client, &source.helo)
        .await
        .map_err(|r| OpenError::Refused(tag(r)))?;
    let mut tls_info = "none".to_string();
    if tls != TlsPolicy::None {
        if !ehlo.has_capability(EXT_START_TLS) {
            if tls == TlsPolicy::Required {
                quick_quit(&mut client).await;
                return Err(OpenError::TlsRequired(tag(local_reply(
                    451,
                    "4.7.5",
                    format!("TLS is required but {host} does not offer STARTTLS"),
                ))));
            }
        } else if let Some(connector) = connector {
            let r = client
                .cmd(b"STARTTLS\r\n")
                .await
                .map_err(|e| OpenError::Connect(tag(err_reply(&e, "after STARTTLS"))))?;
            if r.code != 220 {
                if tls == TlsPolicy::Required {
                    return Err(OpenError::TlsRequired(tag(local_reply(
                        451,
                        "4.7.5",
                        format!("STARTTLS refused: {} {}", r.code, r.message.trim()),
                    ))));
                }
                // Opportunistic: the session is still usable in plaintext.
            } else {
                let Stream::Plain(tcp) = client.stream else {
                    unreachable!("STARTTLS on a plain stream only")
                };
                let name = ServerName::try_from(host.to_string())
                    .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
                let tls_stream = match tokio::time::timeout(
                    timeouts.command,
                    connector.connect(name, tcp),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reply = tag(local_reply(
                            451,
                            "4.7.5",
                            format!("TLS handshake with {host}[{addr}] failed: {e}"),
                        ));
                        return Err(if tls == TlsPolicy::Required {
                            OpenError::TlsRequired(reply)
                        } else {
                            OpenError::Handshake(reply)
                        });
                    }
                    Err(_) => {
                        let reply = tag(local_reply(
                            451,
                            "4.7.5",
                            format!("TLS handshake with {host}[{addr}] timed out"),
                        ));
                        return Err(if tls == TlsPolicy::Required {
                            OpenError::TlsRequired(reply)
                        } else {
                            OpenError::Handshake(reply)
                        });
                    }
                };
                {
                    let conn = tls_stream.get_ref().1;
                    tls_info = format!(
                        "{}/{}",
                        conn.protocol_version()
                            .map(|v| format!("{v:?}"))
                            .unwrap_or_default(),
                        conn.negotiated_cipher_suite()
                            .map(|c| format!("{:?}", c.suite()))
                            .unwrap_or_default()
                    );
                }
                client = SmtpClient {
                    stream: Stream::Tls(Box::new(tls_stream)),
                    timeout: timeouts.command,
                };
                ehlo = hello(&mut client, &source.helo)
                    .await
                    .map_err(|r| OpenError::Refused(tag(r)))?;
            }
        } else if tls == TlsPolicy::Required {
            return Err(OpenError::TlsRequired(tag(local_reply(
                451,
                "4.7.5",
                "TLS is required but no CA certificates are available",
            ))));
        }
    }
    Ok(Session {
        caps: ehlo.capabilities,
        size_limit: ehlo.size,
        client,
        source: source.clone(),
        host: host.to_string(),
        addr,
        tls: tls_info,
        transactions: 0,
        unchecked: false,
    })
}

/// QUIT without waiting long for a server that is already refusing us.
async fn quick_quit(client: &mut SmtpClient<Stream>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.cmd(b"QUIT\r\n")).await;
}

/// EHLO, falling back to HELO when EHLO is not understood (5xx).
async fn hello(
    client: &mut SmtpClient<Stream>,
    name: &str,
) -> Result<EhloResponse<String>, RemoteReply> {
    match client.ehlo(name).await {
        Ok(r) => Ok(r),
        Err(mail_send::Error::UnexpectedReply(r)) if r.code >= 500 => {
            let h = client
                .cmd(format!("HELO {name}\r\n"))
                .await
                .map_err(|e| err_reply(&e, "after HELO"))?;
            if h.code == 250 {
                let mut e = EhloResponse::new(h.message);
                e.capabilities = 0;
                Ok(e)
            } else {
                Err(to_reply(&h))
            }
        }
        Err(e) => Err(err_reply(&e, "after EHLO")),
    }
}

/// What one transaction gave: a reply per recipient (same order) and whether the session can
/// carry another transaction.
pub struct TxResult {
    pub replies: Vec<RemoteReply>,
    pub reusable: bool,
    /// An unchecked reused connection was closed (no reply at all, or 421 to MAIL): nothing
    /// was delivered or refused; send again on another connection.
    pub stale: bool,
}

fn is_safe_param(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic())
}

impl Session {
    fn tag(&self, mut r: RemoteReply) -> RemoteReply {
        r.host = self.host.clone();
        r.addr = self.addr.to_string();
        r.source_ip = self.source.label();
        r
    }

    /// RSET before reusing the session for another message.
    pub async fn reset(&mut self) -> bool {
        matches!(self.client.cmd(b"RSET\r\n").await, Ok(r) if r.code == 250)
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.cmd(b"QUIT\r\n")).await;
    }

    /// MAIL, one RCPT per recipient, DATA with the spooled message (prepend first), streamed
    /// and dot-stuffed.
    pub async fn send(&mut self, env: &Envelope, rcpts: &[&str], message: &Body) -> TxResult {
        let unchecked = std::mem::take(&mut self.unchecked);
        let mut result = self.send_checked(env, rcpts, message).await;
        if unchecked && result.stale {
            // Not a transaction: the count of this connection stays as it was.
            self.transactions -= 1;
        }
        result.stale &= unchecked;
        result
    }

    async fn send_checked(&mut self, env: &Envelope, rcpts: &[&str], message: &Body) -> TxResult {
        self.transactions += 1;
        let n = rcpts.len();
        let fail_all = |s: &Self, r: RemoteReply, reusable: bool| TxResult {
            replies: vec![s.tag(r); n],
            reusable,
            stale: false,
        };
        let utf8 = self.caps & EXT_SMTP_UTF8 != 0;
        let need_utf8 = !env.sender.is_ascii();
        if need_utf8 && !utf8 {
            return fail_all(
                self,
                local_reply(
                    553,
                    "5.6.7",
                    format!(
                        "{} does not support SMTPUTF8, needed for the sender address",
                        self.host
                    ),
                ),
                true,
            );
        }
        let mut mail = format!("MAIL FROM:<{}>", env.sender);
        if env.body_8bit && self.caps & EXT_8BIT_MIME != 0 {
            mail.push_str(" BODY=8BITMIME");
        }
        let any_utf8 = need_utf8 || rcpts.iter().any(|r| !r.is_ascii());
        if utf8 && (env.smtputf8 || any_utf8) {
            mail.push_str(" SMTPUTF8");
        }
        let size = env.size + env.prepend.len() as u64;
        if self.caps & EXT_SIZE != 0 {
            if self.size_limit > 0 && size > self.size_limit as u64 {
                return fail_all(
                    self,
                    local_reply(
                        552,
                        "5.3.4",
                        format!(
                            "message size {size} exceeds the limit of {} ({})",
                            self.size_limit, self.host
                        ),
                    ),
                    true,
                );
            }
            mail.push_str(&format!(" SIZE={size}"));
        }
        let dsn = self.caps & EXT_DSN != 0;
        if dsn {
            if let Some(ret) = env.ret.as_deref().filter(|v| is_safe_param(v)) {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = env.envid.as_deref().filter(|v| is_safe_param(v)) {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        mail.push_str("\r\n");
        let mut replies: Vec<Option<RemoteReply>> = vec![None; n];
        let mut commands: Vec<(usize, String)> = Vec::with_capacity(n);
        for (i, rcpt) in rcpts.iter().enumerate() {
            if !rcpt.is_ascii() && !utf8 {
                replies[i] = Some(self.tag(local_reply(
                    553,
                    "5.6.7",
                    format!("{} does not support SMTPUTF8", self.host),
                )));
                continue;
            }
            let mut cmd = format!("RCPT TO:<{rcpt}>");
            if dsn && let Some(r) = env.recipients.iter().find(|r| r.address == *rcpt) {
                if let Some(notify) = r.notify.as_deref().filter(|v| is_safe_param(v)) {
                    cmd.push_str(&format!(" NOTIFY={notify}"));
                }
                if let Some(orcpt) = r
                    .orcpt
                    .as_deref()
                    .filter(|v| is_safe_param(v) && v.contains(';'))
                {
                    cmd.push_str(&format!(" ORCPT={orcpt}"));
                }
            }
            cmd.push_str("\r\n");
            commands.push((i, cmd));
        }
        if commands.is_empty() {
            return TxResult {
                replies: replies.into_iter().flatten().collect(),
                reusable: true,
                stale: false,
            };
        }
        let mut stale = false;
        // RFC 2920: MAIL, every RCPT and DATA in one write when the server allows it.
        let pipelined = self.caps & EXT_PIPELINING != 0;
        let answers = if pipelined {
            let mut all = vec![mail];
            all.extend(commands.iter().map(|(_, c)| c.clone()));
            all.push("DATA\r\n".into());
            match self.pipeline(&all).await {
                (got, None) => Ok(got),
                // MAIL refused, then the server closed (a `421 4.7.0 [TSS04]` and close): the
                // refusal is the answer for every recipient.
                (got, Some(_)) if got.first().is_some_and(|r| r.code / 100 != 2) => Ok(got),
                (got, Some(e)) => {
                    stale = got.is_empty();
                    for ((i, _), r) in commands.iter().zip(got.iter().skip(1)) {
                        replies[*i] = Some(self.tag(to_reply(r)));
                    }
                    Err((e, got.len().saturating_sub(1)))
                }
            }
        } else {
            let mut got = Vec::with_capacity(commands.len() + 1);
            let mut result = Ok(());
            match self.client.cmd(mail).await {
                Ok(r) => {
                    let go_on = r.code / 100 == 2;
                    got.push(r);
                    if go_on {
                        for (_, c) in &commands {
                            match self.client.cmd(c).await {
                                Ok(r) => got.push(r),
                                Err(e) => {
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    stale = true;
                    result = Err(e);
                }
            }
            match result {
                Ok(()) => Ok(got),
                Err(e) => {
                    let answered = got.len().saturating_sub(1);
                    // Keep the RCPT replies that did arrive.
                    for ((i, _), r) in commands.iter().zip(got.iter().skip(1)) {
                        replies[*i] = Some(self.tag(to_reply(r)));
                    }
                    Err((e, answered))
                }
            }
        };
        let answers = match answers {
            Ok(a) => a,
            Err((e, answered)) => {
                let what = if answered == 0 && replies.iter().all(Option::is_none) {
                    "after MAIL FROM"
                } else {
                    "after RCPT TO"
                };
                let reply = self.tag(err_reply(&e, what));
                return TxResult {
                    replies: replies
                        .into_iter()
                        .map(|r| match r {
                            // A refusal stands; anything else is deferred with the error.
                            Some(r) if r.code / 100 != 2 => r,
                            _ => reply.clone(),
                        })
                        .collect(),
                    reusable: false,
                    stale,
                };
            }
        };
        let mail_reply = &answers[0];
        if mail_reply.code / 100 != 2 {
            // 421 first thing: the server is closing this (idle) connection.
            let closing = mail_reply.code == 421;
            let reply = self.tag(to_reply(mail_reply));
            for (i, _) in &commands {
                replies[*i] = Some(reply.clone());
            }
            let ok = !closing && self.reset().await;
            return TxResult {
                replies: replies.into_iter().flatten().collect(),
                reusable: ok,
                stale: closing,
            };
        }
        let mut accepted = Vec::new();
        for ((i, _), r) in commands.iter().zip(answers.iter().skip(1)) {
            if r.code / 100 == 2 {
                accepted.push(*i);
            }
            replies[*i] = Some(self.tag(to_reply(r)));
        }
        let finish = |replies: Vec<Option<RemoteReply>>, reusable| TxResult {
            replies: replies
                .into_iter()
                .map(|r| r.expect("every rcpt answered"))
                .collect(),
            reusable,
            stale: false,
        };
        let data_answer = if pipelined {
            answers
                .get(commands.len() + 1)
                .cloned()
                .ok_or(mail_send::Error::UnparseableReply)
        } else if accepted.is_empty() {
            // Not asked: nothing to send.
            Err(mail_send::Error::UnparseableReply)
        } else {
            self.client.cmd(b"DATA\r\n").await
        };
        if accepted.is_empty() {
            let ok = match data_answer {
                // Every recipient refused yet DATA accepted (pipelined): end it empty, as
                // RFC 2920 says, and let the server refuse the empty message.
                Ok(r) if r.code == 354 => {
                    let ended = self.client.cmd(b".\r\n").await;
                    ended.is_ok() && self.reset().await
                }
                Ok(_) => self.reset().await,
                Err(_) if pipelined => false,
                Err(_) => self.reset().await,
            };
            return finish(replies, ok);
        }
        let data_reply = match data_answer {
            Ok(r) if r.code == 354 => self.write_data(env, message).await,
            Ok(r) => Ok(r),
            Err(e) => Err(e),
        };
        let (reply, reusable) = match data_reply {
            Ok(r) => (self.tag(to_reply(&r)), true),
            Err(e) => (self.tag(err_reply(&e, "after DATA")), false),
        };
        for i in accepted {
            replies[i] = Some(reply.clone());
        }
        finish(replies, reusable)
    }

    /// Writes every command at once (RFC 2920) and reads the replies, keeping those that
    /// arrived when the server closes early (mail-send's `cmds` drops them).
    async fn pipeline(
        &mut self,
        cmds: &[String],
    ) -> (Vec<Response<String>>, Option<mail_send::Error>) {
        use smtp_proto::response::parser::ResponseReceiver;
        let timeout = self.client.timeout;
        let stream = &mut self.client.stream;
        let mut got = Vec::with_capacity(cmds.len());
        let work = async {
            // One write: one segment on the wire, one syscall.
            stream.write_all(cmds.concat().as_bytes()).await?;
            stream.flush().await?;
            let mut buf = vec![0u8; 4096];
            let mut parser = ResponseReceiver::default();
            while got.len() < cmds.len() {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(mail_send::Error::UnparseableReply);
                }
                let mut iter = buf[..n].iter();
                while got.len() < cmds.len() {
                    match parser.parse(&mut iter) {
                        Ok(r) => {
                            got.push(r);
                            parser.reset();
                        }
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                        Err(_) => return Err(mail_send::Error::UnparseableReply),
                    }
                }
            }
            Ok::<(), mail_send::Error>(())
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.err(),
            Err(_) => Some(mail_send::Error::Timeout),
        };
        (got, result)
    }

    async fn write_data(
        &mut self,
        env: &Envelope,
        message: &Body,
    ) -> mail_send::Result<Response<String>> {
        let timeout = self.client.timeout;
        // A bound for the whole body; each reply still has `timeout`.
        let limit = timeout * 4 + Duration::from_secs(env.size / 10_000);
        let prepend = env.prepend.as_bytes();
        let stream = &mut self.client.stream;
        // Log messages are in memory and small files are read in one trip to the blocking
        // pool: stuffed into one buffer, one write. Large ones stream.
        let written = match message {
            Body::File(path) if env.size > 64 * 1024 => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(mail_send::Error::Io)?;
                tokio::time::timeout(limit, write_dot_stuffed(stream, prepend, file)).await
            }
            small => {
                let out = match small {
                    Body::Memory(bytes) => dot_stuffed(prepend, bytes),
                    Body::File(path) => dot_stuffed(
                        prepend,
                        &tokio::fs::read(path).await.map_err(mail_send::Error::Io)?,
                    ),
                };
                tokio::time::timeout(limit, async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                })
                .await
            }
        };
        match written {
            Ok(r) => r.map_err(mail_send::Error::Io)?,
            Err(_) => return Err(mail_send::Error::Timeout),
        }
        tokio::time::timeout(timeout, self.client.read())
            .await
            .map_err(|_| mail_send::Error::Timeout)?
    }
}

/// Writes `prepend` then `body` as DATA content: a dot is doubled at the start of every line
/// (and after a bare CR or LF, as mail-send does, so nothing can be smuggled), then the
/// terminator. A body that already ends in CRLF gets only `.\r\n`: mail-send's `write_message`
/// always adds `\r\n.\r\n`, which would append an empty line, so it is not used here.
pub async fn write_dot_stuffed<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    out: &mut W,
    prepend: &[u8],
    body: R,
) -> io::Result<()> {
    write_dot_stuffed_sized(out, prepend, body, 64 * 1024).await
}

/// `write_dot_stuffed` with buffers sized for a body of about `size` bytes (64 KiB at most):
/// a small message costs small allocations (large ones were a measurable share of the CPU).
pub async fn write_dot_stuffed_sized<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    out: &mut W,
    prepend: &[u8],
    mut body: R,
    size: u64,
) -> io::Result<()> {
    let size = usize::try_from(size).unwrap_or(usize::MAX).min(64 * 1024);
    let mut stuffer = DotStuffer::default();
    let mut outbuf = Vec::with_capacity(prepend.len() + size + size / 16 + 8);
    let mut inbuf = vec![0u8; size + 1];
    stuffer.feed(prepend, &mut outbuf);
    loop {
        let n = body.read(&mut inbuf).await?;
        if n == 0 {
            break;
        }
        stuffer.feed(&inbuf[..n], &mut outbuf);
        if outbuf.len() >= 64 * 1024 {
            out.write_all(&outbuf).await?;
            outbuf.clear();
        }
    }
    stuffer.finish(&mut outbuf);
    out.write_all(&outbuf).await?;
    out.flush().await
}

/// `prepend` then `body` dot-stuffed and terminated, in one buffer: for a message already in
/// memory (no read buffer, no second copy).
pub fn dot_stuffed(prepend: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prepend.len() + body.len() + body.len() / 16 + 8);
    let mut stuffer = DotStuffer::default();
    stuffer.feed(prepend, &mut out);
    stuffer.feed(body, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Dot-stuffing state carried across chunks.
struct DotStuffer {
    line_start: bool,
    last_two: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            last_two: [0, 0],
        }
    }
}

impl DotStuffer {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        // Line by line (up to each CR or LF), not byte by byte.
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if first == b'.' && self.line_start {
                out.push(b'.');
            }
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(i) => {
                    out.extend_from_slice(&rest[..=i]);
                    self.line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.line_start = false;
                    rest = &[];
                }
            }
        }
        match *chunk {
            [.., a, b] => self.last_two = [a, b],
            [b] => self.last_two = [self.last_two[1], b],
            [] => {}
        }
    }

    /// CRLF unless the content ends in one (or is empty), then the terminating dot.
    fn finish(&self, out: &mut Vec<u8>) {
        let empty = self.last_two == [0, 0];
        if !empty && self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stuff(prepend: &str, body: &str) -> String {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, prepend.as_bytes(), body.as_bytes())
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn dot_stuffing_and_terminator() {
        assert_eq!(
            stuff("", "A: b\r\n\r\nx\r\n").await,
            "A: b\r\n\r\nx\r\n.\r\n"
        );
        assert_eq!(
            stuff("", "A: b\r\n\r\n.\r\n").await,
            "A: b\r\n\r\n..\r\n.\r\n"
        );
        assert_eq!(
            stuff("", "A: b\r\n\r\nno eol").await,
            "A: b\r\n\r\nno eol\r\n.\r\n"
        );
        assert_eq!(
            stuff("D: s\r\n", ".x\r\n..y\r\n").await,
            "D: s\r\n..x\r\n...y\r\n.\r\n"
        );
        assert_eq!(stuff("", "a\n.\r\nMAIL").await, "a\n..\r\nMAIL\r\n.\r\n");
        assert_eq!(stuff("", "").await, ".\r\n");
    }

    /// The same bytes whatever the read size: dots, CRs and LFs split across reads.
    #[tokio::test]
    async fn dot_stuffing_does_not_depend_on_read_boundaries() {
        let bodies = [
            ".a\r\n.\r\n..\r\nx.\r\n.",
            "a\r.b\n.c\r\n\r\n.\r\n",
            "no newline at all",
            "ends in cr\r",
            "\r\n",
            ".",
        ];
        for body in bodies {
            let mut whole = Vec::new();
            write_dot_stuffed(&mut whole, b"P: q\r\n", body.as_bytes())
                .await
                .unwrap();
            for size in [0, 1, 2, 3] {
                let mut pieces = Vec::new();
                write_dot_stuffed_sized(&mut pieces, b"P: q\r\n", body.as_bytes(), size)
                    .await
                    .unwrap();
                assert_eq!(pieces, whole, "{body:?} read {} at a time", size + 1);
            }
            assert_eq!(
                dot_stuffed(b"P: q\r\n", body.as_bytes()),
                whole,
                "{body:?} in memory"
            );
        }
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, b"", &b".a\r\n.\r\n..\r\nx.\r\n."[..])
            .await
            .unwrap();
        assert_eq!(out, b"..a\r\n..\r\n...\r\nx.\r\n..\r\n.\r\n");
    }

    /// A scripted server without PIPELINING or SMTPUTF8: commands go one by one, and a UTF-8
    /// recipient fails permanently with 5.6.7 without being sent.
    #[tokio::test]
    async fn sequential_session_keeps_per_recipient_replies() {
        use tokio::io::AsyncBufReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut seen = Vec::new();
            s.get_mut().write_all(b"220 test\r\n").await.unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let cmd = line.trim_end().to_string();
                seen.push(cmd.clone());
                let reply: &[u8] = if cmd.starts_with("EHLO") {
                    b"250-test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
                } else if cmd.starts_with("RCPT TO:<bad@") {
                    b"550 5.1.1 no such user\r\n"
                } else if cmd == "DATA" {
                    s.get_mut().write_all(b"354 go\r\n").await.unwrap();
                    let mut body = String::new();
                    while !body.ends_with("\r\n.\r\n") {
                        if s.read_line(&mut body).await.unwrap() == 0 {
                            break;
                        }
                    }
                    seen.push(body);
                    b"250 2.0.0 queued\r\n"
                } else if cmd == "QUIT" {
                    s.get_mut().write_all(b"221 bye\r\n").await.unwrap();
                    break;
                } else {
                    b"250 ok\r\n"
                };
                s.get_mut().write_all(reply).await.unwrap();
            }
            seen
        });
        let source = Source {
            ip: Some("127.0.0.1".parse().unwrap()),
            helo: "out.test".into(),
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            command: Duration::from_secs(5),
        };
        let mut session = open(
            "mx.test",
            addr,
            &source,
            TlsPolicy::Opportunistic,
            None,
            &timeouts,
        )
        .await
        .unwrap();
        assert_eq!(session.tls, "none");
        let dir = std::env::temp_dir().join(format!("poolrelay-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = dir.join("m.msg");
        std::fs::write(&msg, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let env = Envelope {
            id: "T".into(),
            received_at: 0,
            sender: "s@a.test".into(),
            recipients: Vec::new(),
            client: "local".into(),
            helo: String::new(),
            user: None,
            size: 21,
            smtputf8: true,
            body_8bit: true,
            prepend: "DKIM-Signature: v=1\r\n".into(),
            ret: None,
            envid: None,
            is_dsn: false,
            pool: None,
            delay_warned: false,
        };
        let r = session
            .send(
                &env,
                &["good@b.test", "bad@b.test", "j\u{f6}rg@b.test"],
                &Body::File(msg.clone()),
            )
            .await;
        assert!(r.reusable);
        let codes: Vec<(u16, &str)> = r
            .replies
            .iter()
            .map(|r| (r.code, r.status.as_str()))
            .collect();
        assert_eq!(codes, vec![(250, "2.0.0"), (550, "5.1.1"), (553, "5.6.7")]);
        assert_eq!(r.replies[0].host, "mx.test");
        assert_eq!(r.replies[0].source_ip, "127.0.0.1");
        session.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(seen[0], "EHLO out.test");
        assert_eq!(seen[1], "MAIL FROM:<s@a.test> BODY=8BITMIME SIZE=42");
        assert_eq!(seen[2], "RCPT TO:<good@b.test>");
        assert_eq!(seen[3], "RCPT TO:<bad@b.test>");
        assert_eq!(seen[4], "DATA");
        assert_eq!(
            seen[5],
            "DKIM-Signature: v=1\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
        );
        assert!(!seen.iter().any(|l| l.contains("j\u{f6}rg")), "{seen:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn large_body_streams_in_chunks() {
        let body = "0123456789.\r\n.abc\r\n".repeat(20_000);
        let out = stuff("", &body).await;
        assert_eq!(out.len(), body.len() + 20_000 + 3);
        assert!(out.ends_with("\r\n..abc\r\n.\r\n"));
    }
}
