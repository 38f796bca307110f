//! One outbound SMTP session on a socket bound to a pool IP: greeting, EHLO with that IP's name,
//! STARTTLS per policy, then MAIL/RCPT/DATA driven by hand so every recipient keeps its own reply.
//! Built on mail-send's low-level `SmtpClient` (command/reply framing, EHLO parsing).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use mail_send::SmtpClient;
use rustls_pki_types::ServerName;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse, Response,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::TlsPolicy;
use crate::pool::Source;
use crate::spool::{Envelope, RemoteReply};

/// Plain TCP or TLS after STARTTLS, so one `SmtpClient` type covers both.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
        return Err(OpenError::Refused(tag(to_reply(&greeting))));
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
    pub async fn send(&mut self, env: &Envelope, rcpts: &[&str], message: &Path) -> TxResult {
        self.transactions += 1;
        let n = rcpts.len();
        let fail_all = |s: &Self, r: RemoteReply, reusable: bool| TxResult {
            replies: vec![s.tag(r); n],
            reusable,
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
        match self.client.cmd(mail).await {
            Ok(r) if r.code / 100 == 2 => {}
            Ok(r) => {
                let reply = to_reply(&r);
                let ok = self.reset().await;
                return fail_all(self, reply, ok);
            }
            Err(e) => return fail_all(self, err_reply(&e, "after MAIL FROM"), false),
        }
        let mut replies: Vec<Option<RemoteReply>> = vec![None; n];
        let mut accepted = Vec::new();
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
            match self.client.cmd(cmd).await {
                Ok(r) => {
                    if r.code / 100 == 2 {
                        accepted.push(i);
                    }
                    replies[i] = Some(self.tag(to_reply(&r)));
                }
                Err(e) => {
                    let reply = self.tag(err_reply(&e, "after RCPT TO"));
                    return TxResult {
                        replies: replies
                            .into_iter()
                            .map(|r| match r {
                                // Accepted but never sent: defer with the connection error.
                                Some(r) if r.code / 100 != 2 => r,
                                _ => reply.clone(),
                            })
                            .collect(),
                        reusable: false,
                    };
                }
            }
        }
        let finish = |replies: Vec<Option<RemoteReply>>, reusable| TxResult {
            replies: replies
                .into_iter()
                .map(|r| r.expect("every rcpt answered"))
                .collect(),
            reusable,
        };
        if accepted.is_empty() {
            let ok = self.reset().await;
            return finish(replies, ok);
        }
        let data_reply = match self.client.cmd(b"DATA\r\n").await {
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

    async fn write_data(
        &mut self,
        env: &Envelope,
        message: &Path,
    ) -> mail_send::Result<Response<String>> {
        let timeout = self.client.timeout;
        let file = tokio::fs::File::open(message)
            .await
            .map_err(mail_send::Error::Io)?;
        match tokio::time::timeout(
            // A generous bound for the whole body; each reply still has `timeout`.
            timeout * 4 + Duration::from_secs(env.size / 10_000),
            write_dot_stuffed(&mut self.client.stream, env.prepend.as_bytes(), file),
        )
        .await
        {
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
    mut body: R,
) -> io::Result<()> {
    let mut line_start = true;
    let mut last_two = [0u8; 2];
    let mut outbuf = Vec::with_capacity(70 * 1024);
    let mut inbuf = vec![0u8; 64 * 1024];
    let mut feed = |chunk: &[u8], outbuf: &mut Vec<u8>| {
        for &b in chunk {
            if b == b'.' && line_start {
                outbuf.push(b'.');
            }
            outbuf.push(b);
            line_start = b == b'\n' || b == b'\r';
            last_two = [last_two[1], b];
        }
    };
    feed(prepend, &mut outbuf);
    loop {
        let n = body.read(&mut inbuf).await?;
        if n == 0 {
            break;
        }
        feed(&inbuf[..n], &mut outbuf);
        if outbuf.len() >= 64 * 1024 {
            out.write_all(&outbuf).await?;
            outbuf.clear();
        }
    }
    let empty = last_two == [0, 0];
    if !empty && last_two != *b"\r\n" {
        outbuf.extend_from_slice(b"\r\n");
    }
    outbuf.extend_from_slice(b".\r\n");
    out.write_all(&outbuf).await?;
    out.flush().await
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

    #[tokio::test]
    async fn large_body_streams_in_chunks() {
        let body = "0123456789.\r\n.abc\r\n".repeat(20_000);
        let out = stuff("", &body).await;
        assert_eq!(out.len(), body.len() + 20_000 + 3);
        assert!(out.ends_with("\r\n..abc\r\n.\r\n"));
    }
}
