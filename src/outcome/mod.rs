//! What a reply means for a recipient: sent, deferred (retry schedule, expiry) or bounced, and the
//! DSNs that follow.

pub mod classify;
pub mod dsn;

use std::sync::Arc;
use std::time::Duration;

use crate::spool::{Envelope, RcptState, Recipient, RemoteReply, Spool};
use crate::util::settings::DurationStr;

pub use dsn::DsnKind;

/// What became of one recipient after one try: the one type that delivery, pool and
/// reputation hand to this stage (the reply text is for people, never parsed for meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    /// Temporary failure: again on the retry schedule (bounced once past `max_age`).
    Deferred,
    /// The source IP was refused (block reply): again at once, from another IP.
    RetryElsewhere,
    /// No pool IP could take it: not an attempt; look again at this unix time.
    Held {
        until: u64,
    },
    Bounced,
}

impl Status {
    /// What a reply code alone means.
    pub fn of_code(code: u16) -> Status {
        match code {
            200..=299 => Status::Sent,
            500..=599 => Status::Bounced,
            _ => Status::Deferred,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::RetryElsewhere => "retry-elsewhere",
            Status::Held { .. } => "held",
            Status::Bounced => "bounced",
        }
    }
}

/// One recipient's result of a try: the reply to report and what it means.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reply: RemoteReply,
    pub status: Status,
}

impl Outcome {
    /// A reply whose code says it all.
    pub fn of_reply(reply: RemoteReply) -> Outcome {
        Outcome {
            status: Status::of_code(reply.code),
            reply,
        }
    }
}

/// The wait before attempt `attempts + 1`, after `attempts` failed ones (1-based into the
/// schedule; the last interval repeats).
pub fn retry_delay(retry: &[DurationStr], attempts: u32) -> Duration {
    let i = (attempts.max(1) as usize - 1).min(retry.len().saturating_sub(1));
    retry
        .get(i)
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(300))
}

/// The retry schedule and expiry of `[delivery]` (`retry`, `max_age`) that `apply` follows.
#[derive(Debug, Clone, Copy)]
pub struct Schedule<'a> {
    pub retry: &'a [DurationStr],
    pub max_age: Duration,
}

/// Records one try on a recipient and returns what became of it. A hold is not an attempt (it
/// never counts toward bounce or expiry); a deferral past `max_age` turns into a bounce (4.4.7);
/// the next attempt is never scheduled after expiry.
pub fn apply(
    rcpt: &mut Recipient,
    outcome: Outcome,
    schedule: &Schedule<'_>,
    received_at: u64,
    now: u64,
) -> Status {
    let Outcome { mut reply, status } = outcome;
    if let Status::Held { until } = status {
        rcpt.next_attempt = until;
        rcpt.held = true;
        rcpt.last_reply = Some(reply);
        return status;
    }
    rcpt.held = false;
    rcpt.attempts += 1;
    let expires = received_at + schedule.max_age.as_secs();
    let status = match status {
        Status::Deferred | Status::RetryElsewhere if now >= expires => {
            reply.text = format!(
                "message expired after {}; last reply: {} {} {}",
                humantime::format_duration(schedule.max_age),
                reply.code,
                reply.status,
                reply.text
            );
            // Postfix style: the last 4xx code, with the expiry status.
            reply.status = "4.4.7".into();
            Status::Bounced
        }
        other => other,
    };
    match status {
        Status::Sent => rcpt.state = RcptState::Sent,
        Status::Bounced => rcpt.state = RcptState::Bounced,
        Status::Deferred | Status::RetryElsewhere => {
            // Moved off a blocked IP: go again at once from another one.
            let wait = if status == Status::RetryElsewhere {
                1
            } else {
                retry_delay(schedule.retry, rcpt.attempts).as_secs()
            };
            rcpt.next_attempt = (now + wait).min(expires.max(now + 1));
        }
        Status::Held { .. } => unreachable!("handled above"),
    }
    rcpt.last_reply = Some(reply);
    status
}

/// Whether `notify` (RCPT NOTIFY=) asks for this kind of DSN; unset means failures only
/// (RFC 3461 §4.1 leaves delay to the MTA: we send it when configured).
fn wants(rcpt: &Recipient, kind: DsnKind) -> bool {
    let Some(n) = rcpt.notify.as_deref() else {
        return true;
    };
    let n = n.to_ascii_uppercase();
    match kind {
        DsnKind::Failure => n.contains("FAILURE"),
        DsnKind::Delay => n.contains("DELAY"),
    }
}

/// Queues a DSN about `recipients` to the envelope sender, unless the sender is null, the
/// message is itself a DSN, or no recipient asked for one. Returns the DSN's queue id.
pub async fn send_dsn(
    hostname: &str,
    spool: &Arc<Spool>,
    signer: &crate::signing::Signer,
    env: &Envelope,
    recipients: &[&Recipient],
    kind: DsnKind,
) -> std::io::Result<Option<String>> {
    if env.sender.is_empty() || env.is_dsn {
        return Ok(None);
    }
    let recipients: Vec<&Recipient> = recipients
        .iter()
        .copied()
        .filter(|r| wants(r, kind))
        .collect();
    if recipients.is_empty() {
        return Ok(None);
    }
    let head = read_head(spool, &env.id, &env.prepend).await;
    let bytes = dsn::build_dsn(hostname, env, &head, &recipients, kind);
    // From: MAILER-DAEMON@hostname: signed when a key covers the hostname's domain. Without one
    // the DSN still goes (unsigned), even with `signing.require`: a bounce is never dropped.
    let signed = signer.sign(&bytes).unwrap_or_default();
    let signed_summary = signed.summary();
    let dsn_env = Envelope {
        id: Spool::new_id(),
        received_at: crate::spool::now_unix(),
        sender: String::new(),
        recipients: vec![Recipient::new(env.sender.clone())],
        client: "local".into(),
        helo: String::new(),
        user: None,
        size: 0,
        smtputf8: !bytes.is_ascii() || !env.sender.is_ascii(),
        body_8bit: !bytes.is_ascii(),
        prepend: signed.headers,
        ret: None,
        envid: None,
        is_dsn: true,
        pool: env.pool.clone(),
        delay_warned: false,
        // RFC 8689 §5: the DSN of a REQUIRETLS message is protected like the message was.
        tls_request: match env.tls_request {
            crate::spool::TlsRequest::Required => crate::spool::TlsRequest::Required,
            _ => crate::spool::TlsRequest::None,
        },
        from_domain: None,
    };
    let stored = spool.store(dsn_env, &bytes).await?;
    tracing::info!(
        queue_id = %env.id,
        dsn_id = %stored.id,
        kind = ?kind,
        to = %env.sender,
        dkim = %signed_summary,
        "dsn queued"
    );
    Ok(Some(stored.id))
}

/// The message's header block (up to `dsn::HEAD_LIMIT`), DKIM prepend first.
async fn read_head(spool: &Spool, id: &str, prepend: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    const LIMIT: usize = dsn::HEAD_LIMIT;
    let mut chunk = Vec::with_capacity(LIMIT);
    match spool.body(id).await {
        Ok(crate::spool::Body::Memory(b)) => chunk.extend_from_slice(&b[..b.len().min(LIMIT)]),
        Ok(crate::spool::Body::File(path)) => {
            if let Ok(f) = tokio::fs::File::open(path).await {
                let _ = f.take(LIMIT as u64).read_to_end(&mut chunk).await;
            }
        }
        Err(e) => tracing::error!(queue_id = id, error = %e, "dsn: cannot read the message"),
    }
    // No blank line within the bound: keep the whole fields only.
    let end = memchr::memmem::find(&chunk, b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or_else(|| match chunk.len() {
            LIMIT => dsn::last_field_end(&chunk),
            n => n,
        });
    let mut buf = prepend.as_bytes().to_vec();
    buf.extend_from_slice(&chunk[..end]);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::settings::Delivery;

    fn delivery() -> Delivery {
        Delivery {
            retry: vec![
                DurationStr(Duration::from_secs(60)),
                DurationStr(Duration::from_secs(300)),
            ],
            max_age: DurationStr(Duration::from_secs(3600)),
            ..Delivery::default()
        }
    }

    fn reply(code: u16) -> RemoteReply {
        RemoteReply {
            code,
            status: format!("{}.0.0", code / 100),
            text: "x".into(),
            host: String::new(),
            addr: String::new(),
            source_ip: String::new(),
        }
    }

    #[test]
    fn schedule_and_expiry() {
        let d = delivery();
        let d = d.schedule();
        let mut r = Recipient::new("a@b".into());
        assert_eq!(
            apply(&mut r, Outcome::of_reply(reply(451)), &d, 1000, 1000),
            Status::Deferred
        );
        assert_eq!((r.attempts, r.next_attempt), (1, 1060));
        assert_eq!(
            apply(&mut r, Outcome::of_reply(reply(421)), &d, 1000, 1100),
            Status::Deferred
        );
        assert_eq!(r.next_attempt, 1400);
        assert_eq!(
            apply(&mut r, Outcome::of_reply(reply(421)), &d, 1000, 1500),
            Status::Deferred
        );
        assert_eq!(r.next_attempt, 1800, "last interval repeats");
        assert_eq!(
            apply(&mut r, Outcome::of_reply(reply(421)), &d, 1000, 4600),
            Status::Bounced
        );
        assert_eq!(r.last_reply.as_ref().unwrap().status, "4.4.7");
        let mut s = Recipient::new("a@b".into());
        assert_eq!(
            apply(&mut s, Outcome::of_reply(reply(550)), &d, 1000, 1000),
            Status::Bounced
        );
        assert_eq!(
            apply(&mut s, Outcome::of_reply(reply(250)), &d, 1000, 1000),
            Status::Sent
        );
    }

    #[test]
    fn a_hold_is_not_an_attempt_and_retry_elsewhere_goes_at_once() {
        let d = delivery();
        let d = d.schedule();
        let mut r = Recipient::new("a@b".into());
        let held = Outcome {
            reply: reply(451),
            status: Status::Held { until: 5000 },
        };
        // Even past max_age: held mail waits, it never expires for our own lack of capacity.
        assert_eq!(
            apply(&mut r, held, &d, 1000, 4700),
            Status::Held { until: 5000 }
        );
        assert_eq!((r.attempts, r.next_attempt, r.held), (0, 5000, true));
        let elsewhere = Outcome {
            reply: reply(451),
            status: Status::RetryElsewhere,
        };
        assert_eq!(
            apply(&mut r, elsewhere, &d, 1000, 1200),
            Status::RetryElsewhere
        );
        assert_eq!((r.attempts, r.next_attempt, r.held), (1, 1201, false));
        assert_eq!(r.state, RcptState::Pending);
    }
}
