//! Would `postmaster@` and `abuse@` of a sending domain accept mail? RFC 5321 §4.5.1 requires
//! postmaster, RFC 2142 abuse; receivers and blocklist operators write to them, and some
//! (e.g. RFC-Ignorant-style lists) list domains that refuse them. The probe talks to the
//! domain's mail server as delivery would (static routes first, else MX, `[delivery] port`,
//! from a pool IP with its EHLO name, STARTTLS when offered) and stops before DATA:
//! EHLO, MAIL FROM, RCPT per address, RSET, QUIT. No message is sent.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::{EXT_START_TLS, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::report::{Check, Status};
use crate::delivery::recorded::Recorded;
use crate::routing::Router;
use crate::routing::TlsPolicy;

/// Where and how to probe from.
pub struct Prober<'a> {
    pub router: &'a Router,
    /// Opportunistic STARTTLS (no certificate check: only the RCPT answer matters here).
    pub tls: Option<&'a TlsConnector>,
    /// MAIL FROM; empty = `<>`.
    pub sender: &'a str,
    pub timeout: Duration,
}

/// Why a server could not be asked.
enum Unasked {
    /// STARTTLS failed: worth asking again in plaintext.
    Tls(String),
    Other(String),
}

/// The local parts probed, in order.
pub const MAILBOXES: [&str; 2] = ["postmaster", "abuse"];

/// A reply as the report shows it: `code [status] text`, the status read whole (`Recorded`).
struct Answer {
    code: u16,
    text: String,
}

/// `r`, the reply to the last command written on `client`.
fn answer<T: AsyncRead + AsyncWrite + Unpin>(
    client: &SmtpClient<Recorded<T>>,
    r: &Response<String>,
) -> Answer {
    let esc = if r.esc[0] == 0 {
        String::new()
    } else {
        format!(" {}", client.stream.status(r, 0))
    };
    Answer {
        code: r.code,
        text: format!("{}{esc} {}", r.code, r.message.trim().replace('\n', " ")),
    }
}

/// The same `SmtpClient` with its replies' bytes kept (`Recorded`).
fn recorded<T: AsyncRead + AsyncWrite + Unpin>(c: SmtpClient<T>) -> SmtpClient<Recorded<T>> {
    SmtpClient {
        stream: Recorded::new(c.stream),
        timeout: c.timeout,
    }
}

/// The same verdict for every mailbox (the server could not be asked).
fn all(domain: &str, status: Status, detail: &str) -> Vec<Check> {
    MAILBOXES
        .iter()
        .map(|m| Check::new("rcpt", status, detail).about(format!("{m}@{domain}")))
        .collect()
}

impl Prober<'_> {
    /// One `rcpt` check per mailbox of `domain`, from `source` (IP if any, EHLO name).
    pub async fn check(&self, domain: &str, source: (Option<IpAddr>, &str)) -> Vec<Check> {
        let dest = match self.router.resolve(domain).await {
            Ok(d) => d,
            Err(r) => {
                let status = if r.is_permanent() {
                    Status::Fail
                } else {
                    Status::Warn
                };
                let mut v = all(domain, status, &format!("no mail server: {}", r.text));
                for c in &mut v {
                    if status == Status::Fail {
                        c.fix = Some(format!(
                            "publish an MX for {domain} pointing at a server that accepts {}",
                            c.subject.as_deref().unwrap_or("")
                        ));
                    }
                }
                return v;
            }
        };
        let (local, helo) = source;
        let tls = if dest.tls == TlsPolicy::None {
            None
        } else {
            self.tls
        };
        let mut tried = Vec::new();
        for host in &dest.hosts {
            if let Some(e) = &host.error {
                tried.push(format!("{}: {}", host.name, e.text));
            }
            for ip in &host.addrs {
                let addr = SocketAddr::new(*ip, host.port);
                let first = self
                    .session(domain, &host.name, addr, local, helo, tls)
                    .await;
                // A broken STARTTLS: delivery would go on in plaintext, so does the probe.
                let result = match first {
                    Err(Unasked::Tls(_)) => {
                        self.session(domain, &host.name, addr, local, helo, None)
                            .await
                    }
                    other => other,
                };
                match result {
                    Ok(replies) => return self.verdicts(domain, &host.name, addr, replies),
                    Err(Unasked::Tls(e) | Unasked::Other(e)) => {
                        tried.push(format!("{}[{addr}]: {e}", host.name))
                    }
                }
            }
        }
        all(
            domain,
            Status::Warn,
            &format!("could not ask any mail server: {}", tried.join("; ")),
        )
    }

    fn verdicts(
        &self,
        domain: &str,
        host: &str,
        addr: SocketAddr,
        replies: Result<Vec<Answer>, Answer>,
    ) -> Vec<Check> {
        let replies = match replies {
            Ok(r) => r,
            Err(mail) => {
                return all(
                    domain,
                    Status::Warn,
                    &format!(
                        "{host}[{addr}] refused MAIL FROM:<{}>: {} (cannot tell)",
                        self.sender, mail.text
                    ),
                );
            }
        };
        MAILBOXES
            .iter()
            .zip(replies)
            .map(|(m, r)| {
                let mailbox = format!("{m}@{domain}");
                let text = format!("{host}[{addr}]: {}", r.text);
                let c = match r.code {
                    200..=299 => Check::pass("rcpt", format!("accepted by {text}")),
                    500..=599 => Check::fail(
                        "rcpt",
                        format!("refused by {text}"),
                        format!(
                            "create the mailbox or an alias {mailbox} on {host} (RFC {} requires it)",
                            if *m == "postmaster" { "5321 §4.5.1" } else { "2142" }
                        ),
                    ),
                    _ => Check::warn("rcpt", format!("deferred by {text} (try again later)")),
                };
                c.about(mailbox)
            })
            .collect()
    }

    /// One session: `Ok(Ok(RCPT replies))`, `Ok(Err(MAIL reply))` when MAIL is refused,
    /// `Err` when the server could not be asked.
    async fn session(
        &self,
        domain: &str,
        host: &str,
        addr: SocketAddr,
        local: Option<IpAddr>,
        helo: &str,
        tls: Option<&TlsConnector>,
    ) -> Result<Result<Vec<Answer>, Answer>, Unasked> {
        let connected = match local.filter(|l| l.is_ipv4() == addr.is_ipv4()) {
            Some(l) => match SmtpClient::connect_using(l, addr, self.timeout).await {
                // Run on a machine without the pool IPs: ask from its own address.
                Err(mail_send::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    SmtpClient::connect(addr, self.timeout).await
                }
                other => other,
            },
            None => SmtpClient::connect(addr, self.timeout).await,
        };
        let other = Unasked::Other;
        let mut client = recorded(connected.map_err(|e| other(format!("connect: {e}")))?);
        let greeting = tokio::time::timeout(self.timeout, client.read())
            .await
            .map_err(|_| other("greeting: timeout".into()))?
            .map_err(|e| other(format!("greeting: {e}")))?;
        if greeting.code != 220 {
            return Err(other(format!(
                "greeting {}",
                answer(&client, &greeting).text
            )));
        }
        let ehlo = hello(&mut client, helo)
            .await
            .map_err(|e| other(e.to_string()))?;
        match tls {
            Some(connector) if ehlo & EXT_START_TLS != 0 => {
                let plain = SmtpClient {
                    stream: client.stream.into_inner(),
                    timeout: client.timeout,
                };
                let mut client = recorded(
                    plain
                        .start_tls(connector, host)
                        .await
                        .map_err(|e| Unasked::Tls(format!("STARTTLS: {e}")))?,
                );
                hello(&mut client, helo)
                    .await
                    .map_err(|e| Unasked::Tls(e.to_string()))?;
                Ok(self.transaction(&mut client, domain).await)
            }
            _ => Ok(self.transaction(&mut client, domain).await),
        }
    }

    /// MAIL FROM, one RCPT per mailbox, RSET, QUIT. `Err` is a refused MAIL.
    async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<Recorded<T>>,
        domain: &str,
    ) -> Result<Vec<Answer>, Answer> {
        let lost = |e: mail_send::Error| Answer {
            code: 451,
            text: format!("451 4.4.2 no reply: {e}"),
        };
        let mail = client
            .cmd(format!("MAIL FROM:<{}>\r\n", self.sender))
            .await
            .map_err(lost)?;
        let mail = answer(client, &mail);
        if mail.code / 100 != 2 {
            quit(client).await;
            return Err(mail);
        }
        let mut replies = Vec::with_capacity(MAILBOXES.len());
        for m in MAILBOXES {
            let r = client.cmd(format!("RCPT TO:<{m}@{domain}>\r\n")).await;
            replies.push(r.map_or_else(lost, |r| answer(client, &r)));
        }
        let _ = client.cmd(b"RSET\r\n").await;
        quit(client).await;
        Ok(replies)
    }
}

async fn quit<T: AsyncRead + AsyncWrite + Unpin>(client: &mut SmtpClient<T>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), client.cmd(b"QUIT\r\n")).await;
}

/// Why the server would not say hello.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("EHLO: {0}")]
    Ehlo(#[source] mail_send::Error),
    #[error("HELO: {0}")]
    Helo(#[source] mail_send::Error),
    /// The server's reply, quoted.
    #[error("HELO refused: {0}")]
    HeloRefused(String),
}

/// EHLO (HELO if EHLO is refused); the capability bits.
async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<Recorded<T>>,
    name: &str,
) -> Result<u32, HelloError> {
    match client.ehlo(name).await {
        Ok(r) => Ok(r.capabilities),
        Err(mail_send::Error::UnexpectedReply(r)) if r.code >= 500 => {
            let h = client
                .cmd(format!("HELO {name}\r\n"))
                .await
                .map_err(HelloError::Helo)?;
            if h.code == 250 {
                Ok(0)
            } else {
                Err(HelloError::HeloRefused(answer(client, &h).text))
            }
        }
        Err(e) => Err(HelloError::Ehlo(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// The report quotes a reply's status whole (smtp-proto alone says 5.7.255).
    #[tokio::test]
    async fn answers_keep_three_digit_status_details() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut client = recorded(SmtpClient {
            stream: ours,
            timeout: Duration::from_secs(5),
        });
        theirs
            .write_all(b"550-5.7.606 Access denied, banned sending IP [127.0.0.10].\r\n550 5.7.606 To request removal visit https://sender.office.com/\r\n")
            .await
            .unwrap();
        let r = client
            .cmd(b"RCPT TO:<postmaster@m.test>\r\n")
            .await
            .unwrap();
        assert_eq!(r.esc, [5, 7, 255]);
        let a = answer(&client, &r);
        assert_eq!(a.code, 550);
        assert!(
            a.text
                .starts_with("550 5.7.606 Access denied, banned sending IP"),
            "{}",
            a.text
        );
    }
}
