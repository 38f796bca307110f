//! Reading a whole bounce message the way an operator does by hand: the RFC 3464
//! `message/delivery-status` part when there is one, else the free text that older MTAs (qmail,
//! Exim, Sendmail, Exchange, webmail providers) write: failed recipients, their status codes and
//! diagnostic texts.

use std::sync::LazyLock;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use regex::Regex;
use serde::Serialize;

use crate::outcome::classify::{Classification, Classifier, Stage, is_status, parse_reply, stage};

/// What kind of report the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// RFC 3464 delivery status notification.
    Dsn,
    /// A bounce in prose.
    FreeText,
    /// An ARF feedback report (RFC 5965): a complaint, not a delivery failure.
    Feedback,
    /// A vacation / auto-reply (RFC 3834): not a failure.
    AutoReply,
    /// A delivery notification (e.g. Amazon SES `Delivery`): not a failure.
    Delivered,
    /// An Amazon SES JSON bounce notification.
    SesNotification,
}

/// One recipient the bounce reports on.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub recipient: String,
    /// DSN `Action` (`failed`, `delayed`, `delivered`, …); `failed` for free-text bounces.
    pub action: String,
    pub status: String,
    pub code: u16,
    pub diagnostic: String,
    pub remote_mta: Option<String>,
    /// The SMTP stage the reply came at, as the bounce's prose names it.
    pub stage: Stage,
    /// The text the classifier read (the diagnostic, or the prose about this recipient).
    #[serde(skip)]
    pub words: String,
    pub classification: Classification,
}

impl Report {
    /// `failed` and `delayed` are failures; `delivered`, `relayed`, `expanded` are not.
    pub fn is_failure(&self) -> bool {
        matches!(self.action.as_str(), "failed" | "delayed")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Bounce {
    pub kind: Kind,
    pub reports: Vec<Report>,
}

static BOUNCE_FROM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"mailer-daemon|postmaster|post_master|mail delivery|mmdf|root@|daemon@|bounce")
        .expect("from regex")
});
static BOUNCE_SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"fail|undeliver|undelivered|returned|delivery|not delivered|bounce|error|rejected|delayed|warning|could not|unable|problem|notification|non.?remis|ndr")
        .expect("subject regex")
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
        .expect("email regex")
});
/// An SMTP reply code where one is expected: start of a line or after `<<<`, `:`, `;`, `(`, `#`.
static CODE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)(?:^|<<<|[:;(#'\x22=\[]|\s)\s*([245][0-5][0-9])(?:[ -]|$)")
        .expect("code regex")
});
static STATUS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b([245]\.\d{1,3}\.\d{1,3})\b").expect("status regex"));
/// Where the returned original message starts in a prose bounce.
static ORIGINAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?mi)^[\s>-]*(-+ ?(original message|this is a copy|below this line|the header of the original message|message headers? follow|original message follows|start of returned message|returned mail follows|undelivered message follows)|--- below this line is a copy|------ this is a copy of the message|original message headers?:?\s*$|\s*received: (from |\(|by )|return-path: <)")
        .expect("original regex")
});

pub fn parse(raw: &[u8], classifier: &Classifier) -> Bounce {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Bounce {
            kind: Kind::FreeText,
            reports: free_text(&String::from_utf8_lossy(raw), &[], true, classifier),
        };
    };
    let mut dsn_fields: Option<String> = None;
    let mut feedback = false;
    let mut text = String::new();
    for part in &msg.parts {
        let (ctype, sub) = part
            .content_type()
            .map(|c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or("").to_ascii_lowercase(),
                )
            })
            .unwrap_or_default();
        match (ctype.as_str(), sub.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                dsn_fields
                    .get_or_insert_with(String::new)
                    .push_str(&String::from_utf8_lossy(part.contents()).replace("\r\n", "\n"));
                dsn_fields.as_mut().expect("set").push_str("\n\n");
            }
            ("message", "feedback-report") => feedback = true,
            _ => {}
        }
        if let PartType::Text(t) = &part.body
            && text.len() < 64 * 1024
        {
            text.push_str(t);
            text.push('\n');
        } else if let PartType::Html(h) = &part.body
            && text.is_empty()
        {
            text.push_str(&strip_html(h));
            text.push('\n');
        }
    }
    if feedback {
        return Bounce {
            kind: Kind::Feedback,
            reports: Vec::new(),
        };
    }
    if let Some(b) = ses_notification(&text, classifier) {
        return b;
    }
    let own: Vec<String> = ["from", "to", "reply-to", "sender"]
        .iter()
        .filter_map(|h| msg.header_raw(*h))
        .flat_map(|v| EMAIL.find_iter(v).map(|m| m.as_str().to_ascii_lowercase()))
        .collect::<Vec<_>>();
    // A broken MIME structure (wrong boundary) hides the report part: look for its fields.
    let raw_text;
    if dsn_fields.is_none() {
        raw_text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        dsn_fields = raw_dsn(&raw_text);
        if dsn_fields.is_some() && text.trim().is_empty() {
            text = raw_text.clone();
        }
    }
    if let Some(fields) = dsn_fields {
        let reports = dsn(&fields, &text, classifier);
        if !reports.is_empty() {
            return Bounce {
                kind: Kind::Dsn,
                reports,
            };
        }
    }
    // Bounces carry `Auto-Submitted: auto-replied` too (Exim): only a reply that does not come
    // from a mailer daemon and does not say "failure" is a vacation message.
    let from = msg.header_raw("from").unwrap_or("").to_ascii_lowercase();
    let subject = msg.subject().unwrap_or("").to_ascii_lowercase();
    let bounce_like = BOUNCE_FROM.is_match(&from) || BOUNCE_SUBJECT.is_match(&subject);
    let auto = !bounce_like
        && (msg
            .header_raw("auto-submitted")
            .is_some_and(|v| v.to_ascii_lowercase().contains("auto-replied"))
            || msg.header_raw("x-autoreply").is_some()
            || subject.contains("out of office")
            || subject.contains("auto"));
    if auto {
        return Bounce {
            kind: Kind::AutoReply,
            reports: Vec::new(),
        };
    }
    let body = if text.trim().is_empty() {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        text
    };
    Bounce {
        kind: Kind::FreeText,
        reports: free_text(&body, &own, bounce_like, classifier),
    }
}

/// The per-recipient groups of a `message/delivery-status` body.
fn dsn(fields: &str, text: &str, classifier: &Classifier) -> Vec<Report> {
    let mut out = Vec::new();
    for block in fields.split("\n\n").skip(1) {
        let f = unfold(block);
        let get = |name: &str| {
            f.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let Some(rcpt) = get("Final-Recipient").or_else(|| get("Original-Recipient")) else {
            continue;
        };
        let recipient = rcpt
            .split_once(';')
            .map(|(_, a)| a)
            .unwrap_or(&rcpt)
            .trim()
            .trim_matches(['<', '>'])
            .to_string();
        let action = get("Action")
            .unwrap_or_else(|| "failed".into())
            .to_ascii_lowercase();
        let status = get("Status")
            .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default();
        let diag = get("Diagnostic-Code").unwrap_or_default();
        let remote_mta = get("Remote-MTA").map(|v| {
            v.split_once(';')
                .map(|(_, h)| h.trim().to_string())
                .unwrap_or(v)
        });
        let mut p = parse_reply(&diag);
        if p.code == 0
            && let Some(m) = CODE.captures(&diag)
        {
            p.code = m[1].parse().unwrap_or(0);
        }
        // A Diagnostic-Code without words: the prose part says more about this recipient.
        let mut words = p.text.clone();
        if words.chars().filter(|c| c.is_alphabetic()).count() < 8 {
            words.push(' ');
            words.push_str(&around(text, &recipient));
        }
        // The remote server's own code says more than the reporting MTA's summary (4.4.7 for
        // an expiry, 5.0.0), unless it is the generic X.0.0.
        let status = if !p.status.is_empty() && !p.status.ends_with(".0.0") {
            p.status.clone()
        } else if is_status(&status) {
            status
        } else {
            p.status.clone()
        };
        // The stage: from the diagnostic, else from the prose about this recipient (Postfix
        // writes "in reply to RCPT TO command" there, not in the report part).
        let stage = match stage::detect(&diag) {
            Stage::Unknown => stage::detect(&around(text, &recipient)),
            s => s,
        };
        let classification = classifier.classify_at(stage, p.code, &status, &words);
        out.push(Report {
            recipient,
            action,
            status,
            code: p.code,
            diagnostic: if diag.is_empty() { words.clone() } else { diag },
            remote_mta,
            stage,
            words,
            classification,
        });
    }
    out
}

/// Amazon SES notifications (JSON, possibly inside an SNS envelope's `Message` string).
fn ses_notification(text: &str, classifier: &Classifier) -> Option<Bounce> {
    if !text.contains("notificationType") {
        return None;
    }
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    // Mailers fold lines over 998 octets as `!` CRLF SP; raw newlines cannot be inside JSON.
    let json = text
        .get(start..=end)?
        .replace("!\r\n ", "")
        .replace("!\n ", "");
    let mut v: serde_json::Value = serde_json::from_str(&json).ok()?;
    if let Some(inner) = v.get("Message").and_then(|m| m.as_str()) {
        v = serde_json::from_str(inner).ok()?;
    }
    let kind = match v.get("notificationType")?.as_str()? {
        "Bounce" => Kind::SesNotification,
        "Complaint" => Kind::Feedback,
        "Delivery" => Kind::Delivered,
        _ => return None,
    };
    let reports = v["bounce"]["bouncedRecipients"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
                    let diag = field("diagnosticCode");
                    let p = parse_reply(&diag);
                    let status = match field("status") {
                        s if is_status(&s) => s,
                        _ => p.status.clone(),
                    };
                    let stage = stage::detect(&p.text);
                    let classification = classifier.classify_at(stage, p.code, &status, &p.text);
                    Report {
                        recipient: field("emailAddress"),
                        action: match field("action") {
                            a if a.is_empty() => "failed".into(),
                            a => a.to_ascii_lowercase(),
                        },
                        status,
                        code: p.code,
                        diagnostic: diag,
                        remote_mta: v["bounce"]["remoteMtaIp"].as_str().map(str::to_string),
                        stage,
                        words: p.text.clone(),
                        classification,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Bounce { kind, reports })
}

/// The `message/delivery-status` fields found in the raw text, for messages whose MIME structure
/// does not parse (the per-message group first, as `dsn` expects).
fn raw_dsn(raw: &str) -> Option<String> {
    let lower = raw.to_ascii_lowercase();
    let at = |name: &str| {
        lower
            .match_indices(name)
            .find(|(i, _)| *i == 0 || lower.as_bytes()[i - 1] == b'\n')
            .map(|(i, _)| i)
    };
    let first = at("final-recipient:").or_else(|| at("original-recipient:"))?;
    match at("reporting-mta:") {
        Some(r) if r < first => Some(raw[r..].to_string()),
        _ => Some(format!("\n\n{}", &raw[first..])),
    }
}

/// `Name: value` lines with continuations joined.
fn unfold(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The prose around a recipient's address: its line and the few after it.
fn around(text: &str, recipient: &str) -> String {
    let text = cut_original(text);
    let lower = text.to_ascii_lowercase();
    let start = lower
        .find(&recipient.to_ascii_lowercase())
        .map(|i| lower[..i].rfind('\n').map_or(0, |n| n + 1))
        .unwrap_or(0);
    text[start..].chars().take(800).collect()
}

fn cut_original(text: &str) -> &str {
    match ORIGINAL.find(text) {
        Some(m) if m.start() > 0 => &text[..m.start()],
        _ => text,
    }
}

/// A prose bounce: addresses in the report part (not the bounce's own From/To), each with the
/// text that follows it up to the next address.
fn free_text(
    text: &str,
    own: &[String],
    bounce_like: bool,
    classifier: &Classifier,
) -> Vec<Report> {
    let text = cut_original(text);
    let ignore = |a: &str| {
        let l = a.to_ascii_lowercase();
        own.contains(&l)
            || l.starts_with("mailer-daemon@")
            || l.starts_with("mail-daemon@")
            || l.contains("-request@")
    };
    let mut found: Vec<(usize, String, bool)> = Vec::new();
    for m in EMAIL.find_iter(text) {
        let a = m.as_str().trim_end_matches('.').to_string();
        if ignore(&a) || found.iter().any(|(_, f, _)| f.eq_ignore_ascii_case(&a)) {
            continue;
        }
        found.push((m.start(), a, strong_position(text, m.start())));
    }
    // Addresses where MTAs put failed recipients (line start, `RCPT TO:`, `<a>:`) win over the
    // ones quoted in prose or in the returned headers.
    if found.iter().any(|f| f.2) {
        found.retain(|f| f.2);
    }
    let found: Vec<(usize, String)> = found.into_iter().map(|(p, a, _)| (p, a)).collect();
    // Boilerplate above the first address ("could not be delivered…", "permanent error") says
    // nothing about the reason; the text after each address does.
    let mut out = Vec::new();
    for (i, (pos, addr)) in found.iter().enumerate() {
        let line_start = text[..*pos].rfind('\n').map_or(0, |n| n + 1);
        let end = found
            .get(i + 1)
            .map(|(p, _)| text[..*p].rfind('\n').map_or(*p, |n| n + 1).max(*pos))
            .unwrap_or(text.len());
        let mut block: String = text[line_start..end].chars().take(1500).collect();
        if !has_reason(&block) {
            // "The following addresses had permanent errors: a, b" then one reason for all.
            block.push(' ');
            block.push_str(
                &text[end.min(text.len())..]
                    .chars()
                    .take(1500)
                    .collect::<String>(),
            );
            if !has_reason(&block) {
                block = text.chars().take(3000).collect();
            }
        }
        out.push(report_from_text(addr, &block, classifier));
    }
    if out.is_empty() && (bounce_like || has_reason(text)) {
        out.push(report_from_text("", text, classifier));
    }
    out
}

/// Whether the address at `pos` sits where a failed recipient is written: first thing on its
/// line (after blanks, `<`, quotes), or right after `RCPT TO:` / `recipient:` / `to <`.
fn strong_position(text: &str, pos: usize) -> bool {
    let line_start = text[..pos].rfind('\n').map_or(0, |n| n + 1);
    let before = text[line_start..pos].to_ascii_lowercase();
    let b = before.trim_end_matches(['<', '"', '\'', ' ', '\t']);
    b.trim().is_empty()
        || b.ends_with("rcpt to:")
        || b.ends_with("recipient:")
        || b.ends_with("recipients:")
        || b.ends_with("to:")
        || b.ends_with("delivery to")
        || b.ends_with("message to")
        || b.ends_with("address:")
        || b.ends_with("errors:")
        || b.ends_with("failed:")
        || b.ends_with("user")
}

fn has_reason(block: &str) -> bool {
    CODE.is_match(block) || STATUS.is_match(block)
}

fn report_from_text(addr: &str, block: &str, classifier: &Classifier) -> Report {
    let code: u16 = CODE
        .captures(block)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or(0);
    let status = STATUS
        .captures_iter(block)
        .map(|c| c[1].to_string())
        .find(|s| is_status(s))
        .unwrap_or_default();
    let words: String = block.split_whitespace().collect::<Vec<_>>().join(" ");
    let stage = stage::detect(&words);
    let classification = classifier.classify_at(stage, code, &status, &words);
    Report {
        recipient: addr.to_string(),
        action: "failed".into(),
        status,
        code,
        diagnostic: words.chars().take(400).collect(),
        remote_mta: None,
        stage,
        words,
        classification,
    }
}

fn strip_html(h: &str) -> String {
    let mut out = String::with_capacity(h.len());
    let mut in_tag = false;
    for c in h.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::classify::Class;

    #[test]
    fn rfc3464_dsn() {
        let raw = b"From: MAILER-DAEMON@mx.example\r\nTo: s@example.com\r\nSubject: failure\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nI could not deliver.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <a@example.org>: Recipient address\r\n rejected: User unknown\r\n\r\nFinal-Recipient: rfc822; b@example.org\r\nAction: delayed\r\nStatus: 4.7.0\r\nDiagnostic-Code: smtp; 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred\r\n--b--\r\n";
        let b = parse(raw, &Classifier::builtin());
        assert_eq!(b.kind, Kind::Dsn);
        assert_eq!(b.reports.len(), 2);
        assert_eq!(b.reports[0].recipient, "a@example.org");
        assert_eq!(b.reports[0].code, 550);
        assert_eq!(b.reports[0].classification.class, Class::BadRecipient);
        assert_eq!(b.reports[1].action, "delayed");
        assert_eq!(b.reports[1].classification.class, Class::Reputation);
    }

    #[test]
    fn qmail_free_text() {
        let raw = b"From: MAILER-DAEMON@mx.example\r\nTo: s@example.com\r\nSubject: failure notice\r\n\r\nHi. This is the qmail-send program at mx.example.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n<x@example.net>:\r\n192.0.2.7 does not like recipient.\r\nRemote host said: 552 5.2.2 Mailbox full\r\nGiving up on 192.0.2.7.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\nReturn-Path: <s@example.com>\r\nTo: x@example.net\r\n";
        let b = parse(raw, &Classifier::builtin());
        assert_eq!(b.kind, Kind::FreeText);
        assert_eq!(b.reports.len(), 1, "{:?}", b.reports);
        assert_eq!(b.reports[0].recipient, "x@example.net");
        assert_eq!(
            (b.reports[0].code, b.reports[0].status.as_str()),
            (552, "5.2.2")
        );
        assert_eq!(b.reports[0].classification.class, Class::MailboxFull);
    }

    #[test]
    fn amazon_ses_json_notifications() {
        let bounce = b"From: no-reply@sns.amazonaws.com\r\nTo: s@example.com\r\nSubject: AWS Notification Message\r\n\r\n{\"notificationType\":\"Bounce\",\"bounce\":{\"bounceType\":\"Permanent\",\"bouncedRecipients\":[{\"emailAddress\":\"a@example.org\",\"action\":\"failed\",\"status\":\"5.1.1\",\"diagnosticCode\":\"smtp; 550 5.1.1 user!\r\n  unknown\"}]}}\r\n";
        let b = parse(bounce, &Classifier::builtin());
        assert_eq!(b.kind, Kind::SesNotification);
        assert_eq!(b.reports.len(), 1);
        assert_eq!(
            (b.reports[0].recipient.as_str(), b.reports[0].code),
            ("a@example.org", 550)
        );
        assert_eq!(b.reports[0].classification.class, Class::BadRecipient);
        let delivery = b"From: no-reply@sns.amazonaws.com\r\nSubject: AWS Notification Message\r\n\r\n{\"notificationType\":\"Delivery\",\"delivery\":{}}\r\n";
        let b = parse(delivery, &Classifier::builtin());
        assert_eq!((b.kind, b.reports.len()), (Kind::Delivered, 0));
    }
}
