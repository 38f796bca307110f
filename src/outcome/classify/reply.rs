//! Splitting a reply into its parts: the three-digit code, the RFC 3463 enhanced status code and
//! the text (continuation prefixes removed, whitespace collapsed).

use serde::Serialize;

/// A reply split into its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParsedReply {
    /// 0 when the text carries none.
    pub code: u16,
    pub status: String,
    pub text: String,
}

/// One line of text: continuation prefixes (`550-5.7.1 `) removed, whitespace collapsed.
pub(crate) fn normalise_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        for word in strip_reply_prefix(line.trim()).split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out
}

/// `550-5.7.1 text` / `550 text` → `text` (only when the line starts with a reply code).
fn strip_reply_prefix(line: &str) -> &str {
    let b = line.as_bytes();
    if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-') {
        let rest = &line[4..];
        match split_status(rest) {
            Some((_, after)) => after,
            None => rest,
        }
    } else {
        line
    }
}

/// `5.7.1 rest` → (`5.7.1`, `rest`).
fn split_status(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    let tok = s[..end].trim_end_matches([':', ',', ';']);
    is_status(tok).then(|| (tok, s[end..].trim_start()))
}

/// `X.Y.Z` with X in 2/4/5, Y up to 3 digits, Z up to 3 digits.
pub fn is_status(tok: &str) -> bool {
    let mut parts = tok.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(parts.next(), Some("2" | "4" | "5"))
        && ok(parts.next())
        && ok(parts.next())
        && parts.next().is_none()
}

/// Splits `421-4.7.28 text…` (possibly several lines, possibly a `smtp;` DSN prefix) into code,
/// enhanced status and text.
pub fn parse_reply(reply: &str) -> ParsedReply {
    let mut s = reply.trim();
    // DSN Diagnostic-Code form: `smtp; 550 ...`
    if let Some((kind, rest)) = s.split_once(';')
        && !kind.is_empty()
        && kind.len() < 20
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        s = rest.trim();
    }
    let b = s.as_bytes();
    let mut out = ParsedReply::default();
    let mut rest = s;
    if b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && matches!(b[0], b'2'..=b'5')
        && (b.len() == 3 || matches!(b[3], b' ' | b'-' | b'\r' | b'\n'))
    {
        out.code = s[..3].parse().unwrap_or(0);
        rest = s.get(4..).unwrap_or("");
    }
    if let Some((st, after)) = split_status(rest) {
        out.status = st.to_string();
        rest = after;
    }
    out.text = normalise_text(rest);
    if out.status.is_empty() {
        // A status later in the text (`550 Requested action not taken: 5.1.1 …`).
        if let Some(st) = out
            .text
            .split_whitespace()
            .map(|t| t.trim_matches(|c: char| !c.is_ascii_digit()))
            .find(|t| {
                is_status(t) && (out.code == 0 || t.as_bytes()[0] == b'0' + (out.code / 100) as u8)
            })
        {
            out.status = st.to_string();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reply_forms() {
        let p = parse_reply("smtp; 550-5.7.1 a\r\n550 5.7.1 b");
        assert_eq!(
            (p.code, p.status.as_str(), p.text.as_str()),
            (550, "5.7.1", "a b")
        );
        let p = parse_reply("550 Requested action not taken: mailbox unavailable (5.1.1)");
        assert_eq!((p.code, p.status.as_str()), (550, "5.1.1"));
        let p = parse_reply("user unknown");
        assert_eq!(
            (p.code, p.status.as_str(), p.text.as_str()),
            (0, "", "user unknown")
        );
        // Garbage is text, never a panic.
        for junk in [
            "",
            "5",
            "55",
            "550",
            "5.5",
            "550-",
            ";",
            "x;550 5.",
            "\u{fffd}550 5.1.1",
        ] {
            let _ = parse_reply(junk);
        }
        assert!(
            is_status("5.7.606")
                && !is_status("5.7")
                && !is_status("5.7.1.1")
                && !is_status("3.1.1")
        );
    }
}
