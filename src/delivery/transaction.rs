//! One transaction on an open session: MAIL, one RCPT per recipient and DATA (pipelined when
//! the server offers it), every recipient keeping its own reply; the body streamed and
//! dot-stuffed (`dotstuff`).

use std::time::Duration;

use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_REQUIRE_TLS, EXT_SIZE, EXT_SMTP_UTF8,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{Session, err_reply, local_reply, to_reply};
use super::dotstuff::{dot_stuffed, write_dot_stuffed};
use super::policy::Assurance;
use super::policy::requiretls::Unmet;
use crate::spool::{Body, Envelope, RemoteReply, TlsRequest};

/// A session that broke before every reply of the exchange came.
struct BrokenOff {
    /// The replies that came (untagged).
    got: Vec<RemoteReply>,
    error: mail_send::Error,
    /// Nothing at all came back (a reused connection that was closed).
    stale: bool,
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

    /// One command and its reply (untagged), read before anything else is written.
    async fn ask(&mut self, cmd: impl AsRef<[u8]>) -> mail_send::Result<RemoteReply> {
        let r = self.client.cmd(cmd).await?;
        Ok(to_reply(&self.client.stream, &r, 0))
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
        let mail = match self.mail_command(env, rcpts) {
            Ok(m) => m,
            Err(r) => {
                return TxResult {
                    replies: vec![self.tag(*r); rcpts.len()],
                    reusable: true,
                    stale: false,
                };
            }
        };
        let mut replies: Vec<Option<RemoteReply>> = vec![None; rcpts.len()];
        let commands = self.rcpt_commands(env, rcpts, &mut replies);
        if commands.is_empty() {
            return TxResult {
                replies: replies.into_iter().flatten().collect(),
                reusable: true,
                stale: false,
            };
        }
        let pipelined = self.caps & EXT_PIPELINING != 0;
        let exchanged = if pipelined {
            self.exchange_pipelined(mail, &commands).await
        } else {
            self.exchange_one_by_one(mail, &commands).await
        };
        let answers = match exchanged {
            Ok(a) => a,
            Err(broken) => return self.broken_off(broken, &commands, replies),
        };
        let mail_reply = &answers[0];
        if mail_reply.code / 100 != 2 {
            // 421 first thing: the server is closing this (idle) connection.
            let closing = mail_reply.code == 421;
            let reply = self.tag(mail_reply.clone());
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
            replies[*i] = Some(self.tag(r.clone()));
        }
        let data_answer = if pipelined {
            answers
                .get(commands.len() + 1)
                .cloned()
                .ok_or(mail_send::Error::UnparseableReply)
        } else if accepted.is_empty() {
            // Not asked: nothing to send.
            Err(mail_send::Error::UnparseableReply)
        } else {
            self.ask(b"DATA\r\n").await
        };
        let reusable = self
            .data(
                env,
                message,
                data_answer,
                pipelined,
                &accepted,
                &mut replies,
            )
            .await;
        TxResult {
            replies: replies
                .into_iter()
                .map(|r| r.expect("every rcpt answered"))
                .collect(),
            reusable,
            stale: false,
        }
    }

    /// `MAIL FROM` with its parameters, or the reply that stops the transaction before it
    /// starts (SMTPUTF8 not offered, over the server's SIZE).
    fn mail_command(&self, env: &Envelope, rcpts: &[&str]) -> Result<String, Box<RemoteReply>> {
        let utf8 = self.caps & EXT_SMTP_UTF8 != 0;
        let need_utf8 = !env.sender.is_ascii();
        if need_utf8 && !utf8 {
            return Err(Box::new(local_reply(
                553,
                "5.6.7",
                format!(
                    "{} does not support SMTPUTF8, needed for the sender address",
                    self.host
                ),
            )));
        }
        let mut mail = format!("MAIL FROM:<{}>", env.sender);
        if env.tls_request == TlsRequest::Required {
            // RFC 8689 §4.2.1: only over verified TLS, to a server that offers REQUIRETLS.
            let verified = matches!(self.assurance, Assurance::WebPki | Assurance::Dane);
            if !verified || self.caps & EXT_REQUIRE_TLS == 0 {
                let unmet = if verified {
                    Unmet::NotAdvertised
                } else {
                    Unmet::NoVerifiedPolicy
                };
                let r = local_reply(Unmet::CODE, Unmet::STATUS, unmet.reply_text(&self.host));
                return Err(Box::new(r));
            }
            mail.push_str(" REQUIRETLS");
        }
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
                return Err(Box::new(local_reply(
                    552,
                    "5.3.4",
                    format!(
                        "message size {size} exceeds the limit of {} ({})",
                        self.size_limit, self.host
                    ),
                )));
            }
            mail.push_str(&format!(" SIZE={size}"));
        }
        if self.caps & EXT_DSN != 0 {
            if let Some(ret) = env.ret.as_deref().filter(|v| is_safe_param(v)) {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = env.envid.as_deref().filter(|v| is_safe_param(v)) {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        mail.push_str("\r\n");
        Ok(mail)
    }

    /// One `RCPT TO` per recipient that can be sent here, by index; the others get their
    /// refusal in `replies` at once.
    fn rcpt_commands(
        &self,
        env: &Envelope,
        rcpts: &[&str],
        replies: &mut [Option<RemoteReply>],
    ) -> Vec<(usize, String)> {
        let utf8 = self.caps & EXT_SMTP_UTF8 != 0;
        let dsn = self.caps & EXT_DSN != 0;
        let mut commands = Vec::with_capacity(rcpts.len());
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
        commands
    }

    /// RFC 2920: MAIL, every RCPT and DATA in one write; the replies in order.
    async fn exchange_pipelined(
        &mut self,
        mail: String,
        commands: &[(usize, String)],
    ) -> Result<Vec<RemoteReply>, BrokenOff> {
        let mut all = vec![mail];
        all.extend(commands.iter().map(|(_, c)| c.clone()));
        all.push("DATA\r\n".into());
        match self.pipeline(&all).await {
            (got, None) => Ok(got),
            // MAIL refused, then the server closed (a `421 4.7.0 [TSS04]` and close): the
            // refusal is the answer for every recipient.
            (got, Some(_)) if got.first().is_some_and(|r| r.code / 100 != 2) => Ok(got),
            (got, Some(error)) => Err(BrokenOff {
                stale: got.is_empty(),
                got,
                error,
            }),
        }
    }

    /// MAIL, then each RCPT, one round trip each (no PIPELINING); stops after a refused MAIL.
    async fn exchange_one_by_one(
        &mut self,
        mail: String,
        commands: &[(usize, String)],
    ) -> Result<Vec<RemoteReply>, BrokenOff> {
        let mut got = Vec::with_capacity(commands.len() + 1);
        match self.ask(mail).await {
            Ok(r) => {
                let go_on = r.code / 100 == 2;
                got.push(r);
                if go_on {
                    for (_, c) in commands {
                        match self.ask(c).await {
                            Ok(r) => got.push(r),
                            Err(error) => {
                                return Err(BrokenOff {
                                    got,
                                    error,
                                    stale: false,
                                });
                            }
                        }
                    }
                }
                Ok(got)
            }
            Err(error) => Err(BrokenOff {
                got,
                error,
                stale: true,
            }),
        }
    }

    /// The session broke before every reply came: refusals that arrived stand, everything
    /// else is deferred with the error.
    fn broken_off(
        &self,
        broken: BrokenOff,
        commands: &[(usize, String)],
        mut replies: Vec<Option<RemoteReply>>,
    ) -> TxResult {
        // Keep the RCPT replies that did arrive (the first reply is MAIL's).
        for ((i, _), r) in commands.iter().zip(broken.got.iter().skip(1)) {
            replies[*i] = Some(self.tag(r.clone()));
        }
        let answered = broken.got.len().saturating_sub(1);
        let what = if answered == 0 && replies.iter().all(Option::is_none) {
            "after MAIL FROM"
        } else {
            "after RCPT TO"
        };
        let reply = self.tag(err_reply(&self.client.stream, &broken.error, what));
        TxResult {
            replies: replies
                .into_iter()
                .map(|r| match r {
                    Some(r) if r.code / 100 != 2 => r,
                    _ => reply.clone(),
                })
                .collect(),
            reusable: false,
            stale: broken.stale,
        }
    }

    /// After the RCPT replies: the message to the accepted recipients (or, none accepted, the
    /// transaction ended cleanly). Sets their replies; returns whether the session is reusable.
    async fn data(
        &mut self,
        env: &Envelope,
        message: &Body,
        data_answer: mail_send::Result<RemoteReply>,
        pipelined: bool,
        accepted: &[usize],
        replies: &mut [Option<RemoteReply>],
    ) -> bool {
        if accepted.is_empty() {
            return match data_answer {
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
        }
        let data_reply = match data_answer {
            Ok(r) if r.code == 354 => self.write_data(env, message).await,
            other => other,
        };
        let (reply, reusable) = match data_reply {
            Ok(r) => (self.tag(r), true),
            Err(e) => (
                self.tag(err_reply(&self.client.stream, &e, "after DATA")),
                false,
            ),
        };
        for &i in accepted {
            replies[i] = Some(reply.clone());
        }
        reusable
    }

    /// Writes every command at once (RFC 2920) and reads the replies (untagged), keeping those
    /// that arrived when the server closes early (mail-send's `cmds` drops them).
    async fn pipeline(&mut self, cmds: &[String]) -> (Vec<RemoteReply>, Option<mail_send::Error>) {
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
                            got.push(to_reply(stream, &r, got.len()));
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
    ) -> mail_send::Result<RemoteReply> {
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
        let r = tokio::time::timeout(timeout, self.client.read())
            .await
            .map_err(|_| mail_send::Error::Timeout)??;
        Ok(to_reply(&self.client.stream, &r, 0))
    }
}
