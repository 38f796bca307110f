//! Reading a complaint report: what the receiver says, and what the original it encloses says.
//!
//! Rules (structure first, patterns last):
//! - An ARF report (RFC 5965: a `message/feedback-report` part with `Feedback-Type`, usually in
//!   a `multipart/report; report-type=feedback-report`) is read by mail-auth's `report::arf`;
//!   the original is its `message/rfc822` part or its `text/rfc822-headers` part (RFC 6522).
//!   Yahoo's CFL and most loops send this; Microsoft's JMRP sends it with a machine part that
//!   may say little beyond `Feedback-Type` (the facts are in the original).
//! - Microsoft's older JMRP shape (no ARF part: a `multipart/*` whose attached `message/rfc822`
//!   carries `X-HmXmrOriginalRecipient`, or any attached original carrying poolrelay's trace
//!   header) is read as an `abuse` report.
//! - Anything else is not a report (`NotAReport`), never an error.
//! - From the original: every poolrelay trace header (topmost first), `Message-ID`, the
//!   recipient (`X-HmXmrOriginalRecipient`, else `To:` when it is one plain address), the `From:`
//!   domain and the IP literals of each `Received:` (the receiver's names our IP).

use std::net::IpAddr;

use mail_auth::report::{Feedback, FeedbackType};
use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::trace::TRACE_HEADER;

/// Which shape the report had (for the log and `GET /api/complaints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// RFC 5965 with the whole original.
    Arf,
    /// RFC 5965 with only the original's header section.
    ArfHeaders,
    /// RFC 5965 without an original.
    ArfBare,
    /// Microsoft's pre-ARF JMRP: an attached original, no machine part.
    Jmrp,
}

/// A report read from a message.
#[derive(Debug, Clone)]
pub struct Report {
    pub shape: Shape,
    /// `Feedback-Type`, lower case.
    pub feedback_type: String,
    /// `Reporting-MTA`, else `User-Agent`, else the report's `From:` domain.
    pub reporter: String,
    /// The report's `Source-IP`.
    pub source_ip: Option<IpAddr>,
    /// `Original-Rcpt-To` values.
    pub rcpt_to: Vec<String>,
    pub original: Original,
}

/// What the enclosed original (whole or headers only) says; empty when there is none.
#[derive(Debug, Clone, Default)]
pub struct Original {
    /// Raw values of every trace header, topmost first.
    pub traces: Vec<String>,
    pub message_id: Option<String>,
    pub recipient: Option<String>,
    pub from_domain: Option<String>,
    /// IP literals of the `Received:` fields, topmost field first.
    pub received_ips: Vec<IpAddr>,
}

/// What a message turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    Report(Box<Report>),
    /// Why it is not a report (for the log).
    NotAReport(&'static str),
}

/// Reads `raw` (a whole message as received).
pub fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::new().parse(raw) else {
        return Parsed::NotAReport("not a MIME message");
    };
    let report_from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase());
    if let Ok(f) = Feedback::parse_rfc5322(raw) {
        let (shape, original) = match (f.message(), f.headers()) {
            (Some(m), _) => (Shape::Arf, read_original(m.as_bytes())),
            (None, Some(h)) => (Shape::ArfHeaders, read_original(h.as_bytes())),
            (None, None) => (Shape::ArfBare, Original::default()),
        };
        let reporter = f
            .reporting_mta()
            .map(|m| m.rsplit(';').next().unwrap_or(m).trim().to_string())
            .or_else(|| f.user_agent().map(|u| u.trim().to_string()))
            .or(report_from)
            .unwrap_or_default();
        return Parsed::Report(Box::new(Report {
            shape,
            feedback_type: feedback_type(f.feedback_type()).into(),
            reporter,
            source_ip: f.source_ip(),
            rcpt_to: f
                .original_rcpt_to()
                .map(|r| vec![bare_address(r)])
                .unwrap_or_default(),
            original,
        }));
    }
    // Pre-ARF JMRP: an attached original that names its recipient Microsoft's way, or that
    // carries our trace header.
    for part in message.parts.iter().skip(1) {
        let PartType::Message(inner) = &part.body else {
            continue;
        };
        if !part.is_content_type("message", "rfc822") {
            continue;
        }
        let bytes = inner.raw_message();
        let original = read_original(bytes);
        let microsoft = inner.header_raw("X-HmXmrOriginalRecipient").is_some();
        if microsoft || !original.traces.is_empty() {
            return Parsed::Report(Box::new(Report {
                shape: Shape::Jmrp,
                feedback_type: "abuse".into(),
                reporter: report_from.unwrap_or_default(),
                source_ip: None,
                rcpt_to: Vec::new(),
                original,
            }));
        }
    }
    if message
        .content_type()
        .is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart"))
        && message
            .content_type()
            .and_then(|c| c.attribute("report-type"))
            .is_some_and(|t| t.eq_ignore_ascii_case("feedback-report"))
    {
        return Parsed::NotAReport("feedback-report container without a Feedback-Type");
    }
    Parsed::NotAReport("no message/feedback-report part and no attached original")
}

fn feedback_type(t: FeedbackType) -> &'static str {
    match t {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Other => "other",
        FeedbackType::Virus => "virus",
    }
}

/// Reads the header section of an original (a whole message or headers only).
pub fn read_original(bytes: &[u8]) -> Original {
    let mut out = Original::default();
    let Some(m) = MessageParser::new().parse_headers(bytes) else {
        return out;
    };
    let raw = m.raw_message();
    for h in m.headers() {
        let value = raw
            .get(h.offset_start as usize..h.offset_end as usize)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let name = h.name.as_str();
        if name.eq_ignore_ascii_case(TRACE_HEADER) {
            out.traces.push(value);
        } else if name.eq_ignore_ascii_case("Received") {
            out.received_ips.extend(ip_literals(&value));
        } else if name.eq_ignore_ascii_case("X-HmXmrOriginalRecipient") {
            out.recipient = Some(bare_address(&value));
        }
    }
    out.message_id = m.message_id().map(str::to_string);
    if out.recipient.is_none() {
        out.recipient = m
            .to()
            .filter(|a| a.iter().count() == 1)
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .filter(|a| a.contains('@'))
            .map(str::to_ascii_lowercase);
    }
    out.from_domain = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
    out
}

/// `<a@b>` or `rfc822; a@b` → `a@b`, lower case.
fn bare_address(v: &str) -> String {
    let v = v.rsplit(';').next().unwrap_or(v);
    v.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase()
}

/// The IP addresses written as literals in a `Received:` field: `[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`, `(host [192.0.2.1])`, `(192.0.2.1)`.
fn ip_literals(value: &str) -> Vec<IpAddr> {
    value
        .split(|c: char| {
            matches!(
                c,
                '[' | ']' | '(' | ')' | ' ' | '\t' | '\r' | '\n' | ';' | ','
            )
        })
        .filter_map(|w| {
            let w = w
                .strip_prefix("IPv6:")
                .or_else(|| w.strip_prefix("ipv6:"))
                .unwrap_or(w);
            w.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests;
