//! One reply type for everything that reaches a client or a log: SMTP code, enhanced status code
//! and text, so "which reply do we send here?" is answered once.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. "5.7.1"; empty for replies that carry none (220, 354).
    pub status: String,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: status.to_string(),
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Wire form: one line per text line, `code-` on all but the last, CRLF-terminated.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .collect();
        let mut out = String::with_capacity(self.text.len() + 16 * lines.len());
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if !self.status.is_empty() {
                out.push_str(&self.status);
                out.push(' ');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

impl std::error::Error for Reply {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_single_and_multi_line() {
        assert_eq!(Reply::new(250, "2.0.0", "Ok").to_wire(), "250 2.0.0 Ok\r\n");
        assert_eq!(
            Reply::new(550, "5.7.1", "a\nb").to_wire(),
            "550-5.7.1 a\r\n550 5.7.1 b\r\n"
        );
        assert_eq!(Reply::new(354, "", "go").to_wire(), "354 go\r\n");
    }
}
