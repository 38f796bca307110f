//! Delivery status notifications (RFC 3464): a `multipart/report; report-type=delivery-status`
//! with a human-readable part, the machine-readable `message/delivery-status` part and the
//! original message's headers as `text/rfc822-headers`.
//!
//! Only the headers come back, at most `HEAD_LIMIT` of them cut at a field boundary, whatever
//! `RET=` asked: `RET=FULL` is treated as `RET=HDRS`. The DSN goes to an envelope sender anyone
//! can forge, so returning whole bodies would make the relay a reflector of other people's mail.
//!
//! Built by hand rather than with mail-builder: every part must stay 7bit/8bit (message/* parts
//! may not be base64- or QP-encoded, RFC 2046 §5.2), and the layout is fixed and small.

use std::fmt::Write as _;

use memchr::memmem;

use crate::spool::{Envelope, Recipient, RemoteReply};

/// The most of the original message a DSN returns: its header section up to 64 KiB.
pub const HEAD_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Permanent failure, or retries given up (max_age).
    Failure,
    /// Still being retried (delay warning).
    Delay,
}

/// Builds the whole DSN message (headers and body, CRLF line endings), addressed to
/// `env.sender`. The caller must not call this for the null sender or for a DSN.
///
/// The result is 8-bit only when `message_head` is (SMTPUTF8 headers); check with
/// `is_ascii()` when choosing BODY=8BITMIME.
pub fn build_dsn(
    hostname: &str,
    env: &Envelope,
    message_head: &[u8],
    recipients: &[&Recipient],
    kind: DsnKind,
) -> Vec<u8> {
    let now = crate::spool::now_unix();
    build_dsn_at(hostname, env, message_head, recipients, kind, now)
}

fn build_dsn_at(
    hostname: &str,
    env: &Envelope,
    message_head: &[u8],
    recipients: &[&Recipient],
    kind: DsnKind,
    now: u64,
) -> Vec<u8> {
    let hostname = clean(hostname);
    let head = header_block(message_head);
    let boundary = boundary_for(&head);
    let date = rfc822_date(now);

    let (subject, action) = match kind {
        DsnKind::Failure => ("Undelivered Mail Returned to Sender", "failed"),
        DsnKind::Delay => ("Delayed Mail (still being retried)", "delayed"),
    };

    // Part 1: for people.
    let mut out = String::with_capacity(2048 + head.len());
    let _ = write!(
        out,
        "This is the mail system at host {hostname}.\r\n\
         \r\n"
    );
    match kind {
        DsnKind::Failure => out.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. It's attached below.\r\n",
        ),
        DsnKind::Delay => out.push_str(
            "Your message could not be delivered yet to one or more recipients.\r\n\
             It is still in the queue and delivery will be retried;\r\n\
             you do not need to send it again.\r\n",
        ),
    }
    let _ = write!(out, "\r\nQueue ID: {}\r\n\r\n", clean(&env.id));
    for r in recipients {
        let _ = write!(out, "<{}>: ", clean(&r.address));
        match &r.last_reply {
            Some(reply) if !reply.host.is_empty() => {
                let _ = write!(
                    out,
                    "host {} said: {}",
                    clean(&reply.host),
                    reply_line(reply)
                );
            }
            Some(reply) => out.push_str(&reply_line(reply)),
            None => out.push_str(match kind {
                DsnKind::Failure => "delivery time expired",
                DsnKind::Delay => "no answer yet from the destination",
            }),
        }
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let human = std::mem::take(&mut out);

    // Part 2: for programs.
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n"
    );
    if let Some(envid) = env.envid.as_deref().filter(|e| !e.is_empty()) {
        let _ = write!(out, "Original-Envelope-Id: {}\r\n", clean(envid));
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc822_date(env.received_at));
    for r in recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = r.orcpt.as_deref().filter(|o| !o.is_empty()) {
            let _ = write!(out, "Original-Recipient: {}\r\n", address_field(orcpt));
        }
        let _ = write!(
            out,
            "Final-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
            clean(&r.address),
            status_of(r.last_reply.as_ref(), kind),
        );
        if let Some(reply) = &r.last_reply {
            if !reply.host.is_empty() {
                let _ = write!(out, "Remote-MTA: dns; {}\r\n", clean(&reply.host));
            }
            out.push_str(&fold(&format!(
                "Diagnostic-Code: smtp; {}",
                reply_line(reply)
            )));
        }
        let _ = write!(out, "Last-Attempt-Date: {date}\r\n");
    }
    out.push_str("\r\n");

    // Part 3: the original headers, byte for byte.
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Description: Undelivered Message Headers\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Transfer-Encoding: {}\r\n\
         \r\n",
        if head.is_ascii() { "7bit" } else { "8bit" }
    );

    let eight_bit = !(human.is_ascii() && out.is_ascii() && head.is_ascii());
    let mut top = String::with_capacity(1024);
    let _ = write!(
        top,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{rand:016x}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         Content-Transfer-Encoding: {cte}\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {human_cte}\r\n\
         \r\n",
        to = clean(&env.sender),
        id = clean(&env.id),
        rand = rand::random::<u64>(),
        cte = if eight_bit { "8bit" } else { "7bit" },
        human_cte = if human.is_ascii() { "7bit" } else { "8bit" },
    );
    let mut bytes = Vec::with_capacity(top.len() + human.len() + out.len() + head.len() + 64);
    bytes.extend_from_slice(top.as_bytes());
    bytes.extend_from_slice(human.as_bytes());
    bytes.extend_from_slice(out.as_bytes());
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The header section of `message_head` (up to, not including, the blank line), CRLF-terminated.
fn header_block(message_head: &[u8]) -> Vec<u8> {
    let end = memmem::find(message_head, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message_head.len());
    let mut head = message_head[..end].to_vec();
    if !head.is_empty() && !head.ends_with(b"\r\n") {
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// Where the last complete header field of `head` (cut at `HEAD_LIMIT`) ends: after a CRLF not
/// followed by a continuation line.
pub(super) fn last_field_end(head: &[u8]) -> usize {
    let mut end = head.len();
    while let Some(p) = memmem::rfind(&head[..end], b"\r\n") {
        let cut = p + 2;
        if cut == head.len() || !matches!(head[cut], b' ' | b'\t') {
            return cut;
        }
        end = p;
    }
    0
}

/// A random boundary that does not occur in the enclosed headers.
fn boundary_for(head: &[u8]) -> String {
    loop {
        let b = format!(
            "=_poolrelay_{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        if memmem::find(head, b.as_bytes()).is_none() {
            return b;
        }
    }
}

/// One line of text for a header: control and bidi/format characters (CR, LF, ESC, U+202E …,
/// see `crate::text`) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if crate::text::is_unsafe(c) { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `code status text` on one line (multi-line replies joined with spaces).
fn reply_line(reply: &RemoteReply) -> String {
    let text = reply
        .text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = reply.code.to_string();
    if !reply.status.is_empty() {
        s.push(' ');
        s.push_str(&clean(&reply.status));
    }
    if !text.is_empty() {
        s.push(' ');
        s.push_str(&clean(&text));
    }
    s
}

/// The DSN `Status:` value: the remote enhanced code when well-formed, else one derived from the
/// reply code (RFC 3463 class only), else "delivery time expired" / "other".
fn status_of(reply: Option<&RemoteReply>, kind: DsnKind) -> String {
    match reply {
        Some(r) if is_enhanced_status(&r.status) => r.status.clone(),
        Some(r) if (500..600).contains(&r.code) => "5.0.0".into(),
        Some(_) => "4.0.0".into(),
        None => match kind {
            DsnKind::Failure => "4.4.7".into(),
            DsnKind::Delay => "4.0.0".into(),
        },
    }
}

fn is_enhanced_status(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// ORCPT arrives as `addr-type;xtext` (RFC 3461 §4.2); the DSN carries it decoded. A bare
/// address is taken as rfc822.
fn address_field(orcpt: &str) -> String {
    match orcpt.split_once(';') {
        Some((kind, addr)) => format!("{}; {}", clean(kind), clean(&xtext_decode(addr))),
        None => format!("rfc822; {}", clean(orcpt)),
    }
}

/// `+XX` hex escapes back to bytes; anything malformed is kept as written.
fn xtext_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Folds one field at spaces so no line exceeds 78 characters where possible; CRLF-terminated.
fn fold(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 8);
    let mut line_len = 0;
    for (i, word) in field.split(' ').enumerate() {
        if i > 0 {
            if line_len + 1 + word.len() > 78 && line_len > 0 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        out.push_str(word);
        line_len += word.len();
    }
    out.push_str("\r\n");
    out
}

fn rfc822_date(unix: u64) -> String {
    mail_parser::DateTime::from_timestamp(unix as i64).to_rfc822()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::RcptState;
    use mail_parser::{MessageParser, MimeHeaders};

    fn envelope() -> Envelope {
        Envelope {
            id: "0001ABCDEF".into(),
            received_at: 1_700_000_000,
            sender: "alice@sender.test".into(),
            recipients: vec![],
            client: "127.0.0.1".into(),
            helo: "client.test".into(),
            user: None,
            size: 100,
            smtputf8: false,
            body_8bit: false,
            prepend: String::new(),
            ret: None,
            envid: Some("ENV-42".into()),
            is_dsn: false,
            pool: None,
            delay_warned: false,
            tls_request: Default::default(),
            from_domain: None,
        }
    }

    fn rcpt(addr: &str, reply: Option<RemoteReply>) -> Recipient {
        Recipient {
            address: addr.into(),
            orcpt: None,
            notify: None,
            state: RcptState::Bounced,
            attempts: 3,
            next_attempt: 0,
            last_reply: reply,
            held: false,
        }
    }

    fn reply(code: u16, status: &str, text: &str, host: &str) -> RemoteReply {
        RemoteReply {
            code,
            status: status.into(),
            text: text.into(),
            host: host.into(),
            addr: "127.0.0.20:2525".into(),
            source_ip: "127.0.0.10".into(),
        }
    }

    const HEAD: &[u8] = b"Received: from client.test\r\n\tby relay.test; Mon, 1 Jan 2024 00:00:00 +0000\r\nFrom: Alice <alice@sender.test>\r\nTo: bob@dest.test\r\nSubject: hello\r\nMessage-ID: <m1@sender.test>\r\n\r\nbody that must not appear\r\n";

    #[test]
    fn failure_dsn_has_rfc3464_structure_and_fields() {
        let mut r1 = rcpt(
            "bob@dest.test",
            Some(reply(550, "5.1.1", "No such user\nreally", "mx.dest.test")),
        );
        r1.orcpt = Some("rfc822;Bob+2Btag@Dest.test".into());
        let r2 = rcpt(
            "carol@dest.test",
            Some(reply(552, "", "full", "mx.dest.test")),
        );
        let r3 = rcpt("dave@other.test", None);
        let dsn = build_dsn(
            "relay.test",
            &envelope(),
            HEAD,
            &[&r1, &r2, &r3],
            DsnKind::Failure,
        );

        // CRLF everywhere, no bare LF.
        for (i, b) in dsn.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(dsn[i - 1], b'\r', "bare LF at {i}");
            }
        }
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(!text.contains("body that must not appear"));

        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        let from = msg.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.test"));
        assert_eq!(
            msg.to().unwrap().first().unwrap().address(),
            Some("alice@sender.test")
        );
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert!(msg.date().is_some());
        assert!(msg.message_id().unwrap().ends_with("@relay.test"));
        let ct = msg.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

        // Three parts below the root, in order.
        let parts: Vec<_> = msg.parts.iter().skip(1).collect();
        assert_eq!(parts.len(), 3, "{text}");
        let types: Vec<String> = parts
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let human = String::from_utf8_lossy(parts[0].contents());
        assert!(human.contains("could not"), "{human}");
        assert!(
            human
                .contains("<bob@dest.test>: host mx.dest.test said: 550 5.1.1 No such user really"),
            "{human}"
        );

        let status = String::from_utf8_lossy(parts[1].contents()).replace("\r\n ", " ");
        assert!(
            status.starts_with("Reporting-MTA: dns; relay.test\r\n"),
            "{status}"
        );
        assert!(
            status.contains("Original-Envelope-Id: ENV-42\r\n"),
            "{status}"
        );
        assert!(
            status.contains(&format!("Arrival-Date: {}\r\n", rfc822_date(1_700_000_000))),
            "{status}"
        );
        let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 4, "{status}");
        let bob = groups[1];
        assert!(
            bob.contains("Original-Recipient: rfc822; Bob+tag@Dest.test\r\n"),
            "{bob}"
        );
        assert!(
            bob.contains("Final-Recipient: rfc822; bob@dest.test\r\n"),
            "{bob}"
        );
        assert!(bob.contains("Action: failed\r\n"), "{bob}");
        assert!(bob.contains("Status: 5.1.1\r\n"), "{bob}");
        assert!(bob.contains("Remote-MTA: dns; mx.dest.test\r\n"), "{bob}");
        assert!(
            bob.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user really\r\n"),
            "{bob}"
        );
        assert!(bob.contains("Last-Attempt-Date: "), "{bob}");
        // Status derived from the code when the reply had no enhanced code.
        assert!(groups[2].contains("Status: 5.0.0\r\n"), "{}", groups[2]);
        // No reply at all: expired, no Remote-MTA nor Diagnostic-Code.
        assert!(groups[3].contains("Status: 4.4.7\r\n"), "{}", groups[3]);
        assert!(!groups[3].contains("Remote-MTA"), "{}", groups[3]);

        let headers = parts[2].contents();
        assert!(headers.starts_with(b"Received: from client.test\r\n"));
        assert!(headers.ends_with(b"Message-ID: <m1@sender.test>\r\n"));
    }

    #[test]
    fn delay_dsn_says_delayed() {
        let r = rcpt(
            "bob@dest.test",
            Some(reply(451, "4.7.1", "try later", "mx.dest.test")),
        );
        let mut env = envelope();
        env.envid = None;
        let dsn = build_dsn("relay.test", &env, HEAD, &[&r], DsnKind::Delay);
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
        let status = String::from_utf8_lossy(msg.parts[2].contents()).to_string();
        assert!(status.contains("Action: delayed\r\n"), "{status}");
        assert!(status.contains("Status: 4.7.1\r\n"), "{status}");
        assert!(!status.contains("Original-Envelope-Id"), "{status}");
        let human = String::from_utf8_lossy(msg.parts[1].contents()).to_string();
        assert!(human.contains("will be retried"), "{human}");
    }

    #[test]
    fn headers_only_input_and_hostile_values() {
        // A head without the blank line, a sender with CR/LF, a reply long enough to fold.
        let long = "x ".repeat(100);
        let r = rcpt(
            "bob@dest.test",
            Some(reply(550, "5.7.1", &long, "mx.dest.test")),
        );
        let mut env = envelope();
        env.sender = "evil@x.test\r\nBcc: victim@y.test".into();
        let dsn = build_dsn("relay.test", &env, b"Subject: s", &[&r], DsnKind::Failure);
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(!text.contains("\r\nBcc:"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 998));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.parts.len(), 4);
        assert_eq!(msg.parts[3].contents(), b"Subject: s\r\n");
        let status = String::from_utf8_lossy(msg.parts[2].contents()).to_string();
        assert!(status.lines().all(|l| l.len() <= 80), "{status}");
    }

    #[test]
    fn utf8_headers_make_an_8bit_dsn() {
        let r = rcpt("bob@dest.test", Some(reply(550, "5.1.1", "no", "mx")));
        let head = "Subject: grüße\r\n\r\n".as_bytes();
        let dsn = build_dsn("relay.test", &envelope(), head, &[&r], DsnKind::Failure);
        assert!(!dsn.is_ascii());
        let text = String::from_utf8(dsn).unwrap();
        assert!(
            text.contains("Content-Transfer-Encoding: 8bit\r\n\r\nThis is a MIME"),
            "{text}"
        );
    }

    #[test]
    fn a_cut_header_section_ends_at_a_whole_field() {
        let cut = b"Subject: a\r\nTo: b\r\n\tfolded\r\nX-Long: abcdef";
        assert_eq!(last_field_end(cut), 28);
        // Cut inside a folded field: the whole field goes.
        assert_eq!(last_field_end(b"Subject: a\r\nTo: b\r\n\tfold"), 12);
        assert_eq!(last_field_end(b"no line end at all"), 0);
    }

    #[test]
    fn status_validation() {
        assert!(is_enhanced_status("5.1.1"));
        assert!(is_enhanced_status("4.7.650"));
        assert!(!is_enhanced_status("5.1"));
        assert!(!is_enhanced_status("6.1.1"));
        assert!(!is_enhanced_status("5.x.1"));
    }
}
