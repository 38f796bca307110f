//! One outbound SMTP session on a socket bound to a pool IP: greeting, EHLO with that IP's name,
//! STARTTLS per policy, then MAIL/RCPT/DATA driven by hand so every recipient keeps its own reply.
//! Built on mail-send's low-level `SmtpClient` (command/reply framing, EHLO parsing).

use std::io;
use std::net::SocketAddr;

use std::time::Duration;

use mail_send::SmtpClient;
use rustls_pki_types::ServerName;
use smtp_proto::{EXT_START_TLS, EhloResponse, Response};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::policy::{Assurance, TlsFailure};
use super::recorded::Recorded;
use crate::pool::Source;
use crate::spool::RemoteReply;
use crate::tls::MaybeTls;

/// Plain TCP or TLS after STARTTLS, so one `SmtpClient` type covers both; `Recorded` keeps the
/// replies' bytes so their statuses are read whole.
pub type Stream = Recorded<MaybeTls<TlsStream<TcpStream>>>;

/// Why a session could not be set up; decides what the caller tries next.
#[derive(Debug)]
pub enum OpenError {
    /// The source IP could not be bound: try the next pool IP.
    Bind(io::Error),
    /// TCP connect failed or timed out: try the next IP / address / MX.
    Connect(RemoteReply),
    /// The server refused us at greeting or EHLO: next MX.
    Refused(RemoteReply),
    /// Opportunistic STARTTLS handshake failed (the caller may reconnect in plaintext).
    Handshake(RemoteReply, TlsFailure),
    /// Mandatory TLS not had here (no STARTTLS, refused, handshake or certificate failed):
    /// defer (4.7.5), try the next MX; never plaintext.
    TlsRequired(RemoteReply, TlsFailure),
}

/// How `open` treats STARTTLS.
#[derive(Clone, Copy)]
pub enum StartTls<'a> {
    /// Never (a route's `tls = "none"`).
    Off,
    /// When offered, with this connector (any certificate); a failed handshake is
    /// `OpenError::Handshake`.
    Opportunistic(&'a TlsConnector),
    /// Mandatory, verified by this connector, which proves this; anything less is
    /// `OpenError::TlsRequired`.
    Mandatory(&'a TlsConnector, Assurance),
}

pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
}

pub struct Session {
    pub(super) client: SmtpClient<Stream>,
    pub(super) caps: u32,
    pub(super) size_limit: usize,
    pub source: Source,
    pub host: String,
    pub addr: SocketAddr,
    /// "TLSv1_3/TLS13_AES_256_GCM_SHA384" or "none".
    pub tls: String,
    /// What the TLS proved about the peer: reuse carries only deliveries it satisfies.
    pub assurance: Assurance,
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

/// `r`, the `n`-th reply read on `stream` since the last command, with its status whole. Call
/// it before the next command is written: that starts a new record.
pub(super) fn to_reply(stream: &Stream, r: &Response<String>, n: usize) -> RemoteReply {
    local_reply(r.code, &stream.status(r, n), r.message.trim().to_string())
}

pub(super) fn err_reply(stream: &Stream, e: &mail_send::Error, what: &str) -> RemoteReply {
    match e {
        mail_send::Error::UnexpectedReply(r) => to_reply(stream, r, 0),
        mail_send::Error::Timeout => local_reply(451, "4.4.2", format!("timeout {what}")),
        other => local_reply(451, "4.4.2", format!("connection lost {what}: {other}")),
    }
}

/// Connects from `source` to `addr` and gets the session ready for MAIL FROM.
pub async fn open(
    host: &str,
    addr: SocketAddr,
    source: &Source,
    starttls: StartTls<'_>,
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
        stream: Recorded::new(MaybeTls::Plain(tcp)),
        timeout: timeouts.command,
    };
    let greeting = match tokio::time::timeout(timeouts.command, client.read()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(OpenError::Connect(tag(err_reply(
                &client.stream,
                &e,
                "at greeting",
            ))));
        }
        Err(_) => {
            return Err(OpenError::Connect(tag(local_reply(
                451,
                "4.4.2",
                "timeout at greeting",
            ))));
        }
    };
    if greeting.code != 220 {
        let r = to_reply(&client.stream, &greeting, 0);
        quick_quit(&mut client).await;
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
    let (connector, mandatory) = match starttls {
        StartTls::Off => (None, None),
        StartTls::Opportunistic(c) => (Some(c), None),
        StartTls::Mandatory(c, a) => (Some(c), Some(a)),
    };
    let (mut tls_info, mut assurance) = ("none".to_string(), Assurance::Plain);
    // A TLS failure: the end of this session when TLS is mandatory, else the caller's choice.
    let failed = |text: String, failure: TlsFailure| {
        let reply = tag(local_reply(451, "4.7.5", text));
        if mandatory.is_some() {
            OpenError::TlsRequired(reply, failure)
        } else {
            OpenError::Handshake(reply, failure)
        }
    };
    if let Some(connector) = connector {
        if !ehlo.has_capability(EXT_START_TLS) {
            if mandatory.is_some() {
                quick_quit(&mut client).await;
                let text = format!("TLS is required but {host} does not offer STARTTLS");
                return Err(failed(text, TlsFailure::StarttlsNotSupported));
            }
        } else {
            let r = client.cmd(b"STARTTLS\r\n").await.map_err(|e| {
                OpenError::Connect(tag(err_reply(&client.stream, &e, "after STARTTLS")))
            })?;
            if r.code != 220 {
                if mandatory.is_some() {
                    let text = format!("STARTTLS refused: {} {}", r.code, r.message.trim());
                    return Err(failed(text, TlsFailure::StarttlsNotSupported));
                }
                // Opportunistic: the session is still usable in plaintext.
            } else {
                let MaybeTls::Plain(tcp) = client.stream.into_inner() else {
                    unreachable!("STARTTLS on a plain stream only")
                };
                let tls_stream = handshake(connector, host, addr, tcp, timeouts.command)
                    .await
                    .map_err(|(text, f)| failed(text, f))?;
                tls_info = describe(&tls_stream);
                assurance = mandatory.unwrap_or(Assurance::Encrypted);
                client = SmtpClient {
                    stream: Recorded::new(MaybeTls::Tls(Box::new(tls_stream))),
                    timeout: timeouts.command,
                };
                ehlo = hello(&mut client, &source.helo)
                    .await
                    .map_err(|r| OpenError::Refused(tag(r)))?;
            }
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
        assurance,
        transactions: 0,
        unchecked: false,
    })
}

/// The TLS handshake after `220` to STARTTLS; Err: what to say, and the failure type.
async fn handshake(
    connector: &TlsConnector,
    host: &str,
    addr: SocketAddr,
    tcp: TcpStream,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, (String, TlsFailure)> {
    let name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err((
            format!(
                "TLS handshake with {host}[{addr}] failed: {}",
                handshake_error(&e)
            ),
            TlsFailure::of_handshake(&e),
        )),
        Err(_) => Err((
            format!("TLS handshake with {host}[{addr}] timed out"),
            TlsFailure::ValidationFailure,
        )),
    }
}

/// A failed handshake for a reply: DANE's own words when no TLSA record matched (rustls
/// would print its error's debug form).
fn handshake_error(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(super::policy::dane::no_match)
        .map_or_else(|| e.to_string(), |m| m.to_string())
}

/// "TLSv1_3/TLS13_AES_256_GCM_SHA384".
fn describe(s: &TlsStream<TcpStream>) -> String {
    let conn = s.get_ref().1;
    format!(
        "{}/{}",
        conn.protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        conn.negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default()
    )
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
                .map_err(|e| err_reply(&client.stream, &e, "after HELO"))?;
            if h.code == 250 {
                let mut e = EhloResponse::new(h.message);
                e.capabilities = 0;
                Ok(e)
            } else {
                Err(to_reply(&client.stream, &h, 0))
            }
        }
        Err(e) => Err(err_reply(&client.stream, &e, "after EHLO")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Body, Envelope};
    use tokio::io::AsyncWriteExt;
    /// A scripted server without PIPELINING or SMTPUTF8: commands go one by one, a UTF-8
    /// recipient fails permanently with 5.6.7 without being sent, and a three-digit status
    /// detail (4.7.650) is kept whole.
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
                } else if cmd.starts_with("RCPT TO:<slow@") {
                    b"451-4.7.650 The mail server [127.0.0.1] has been temporarily\r\n451 4.7.650 rate limited due to IP reputation. (S775)\r\n"
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
        let mut session = open("mx.test", addr, &source, StartTls::Off, &timeouts)
            .await
            .unwrap();
        assert_eq!(session.tls, "none");
        let dir = crate::util::test_dir::tempdir("client");
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
            tls_request: Default::default(),
            from_domain: None,
        };
        let r = session
            .send(
                &env,
                &[
                    "good@b.test",
                    "bad@b.test",
                    "slow@b.test",
                    "j\u{f6}rg@b.test",
                ],
                &Body::File(msg.clone()),
            )
            .await;
        assert!(r.reusable);
        let codes: Vec<(u16, &str)> = r
            .replies
            .iter()
            .map(|r| (r.code, r.status.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (250, "2.0.0"),
                (550, "5.1.1"),
                (451, "4.7.650"),
                (553, "5.6.7")
            ]
        );
        assert_eq!(r.replies[0].host, "mx.test");
        assert_eq!(r.replies[0].source_ip, "127.0.0.1");
        session.quit().await;
        let seen = server.await.unwrap();
        assert_eq!(seen[0], "EHLO out.test");
        assert_eq!(seen[1], "MAIL FROM:<s@a.test> BODY=8BITMIME SIZE=42");
        assert_eq!(seen[2], "RCPT TO:<good@b.test>");
        assert_eq!(seen[3], "RCPT TO:<bad@b.test>");
        assert_eq!(seen[4], "RCPT TO:<slow@b.test>");
        assert_eq!(seen[5], "DATA");
        assert_eq!(
            seen[6],
            "DKIM-Signature: v=1\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
        );
        assert!(!seen.iter().any(|l| l.contains("j\u{f6}rg")), "{seen:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
