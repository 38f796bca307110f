//! The MTA-STS policy file (RFC 8461 §3.2) and its `mx` patterns (§4.1).
//!
//! Rules:
//! - Lines `key: value`, ended by CRLF or LF; whitespace around the value ignored; unknown keys
//!   ignored; for a repeated key other than `mx` the first one counts.
//! - `version: STSv1`, `mode` (`enforce`, `testing`, `none`) and `max_age` (seconds, at most
//!   31557600 = one year, §3.2) are required; at least one `mx` unless the mode is `none`.
//! - An `mx` pattern is a host name, or `*.` + a name matching exactly one more leftmost label;
//!   compared case-insensitively, without a trailing dot.

use serde::{Deserialize, Serialize};

/// RFC 8461 §3.2: the most `max_age` may say.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// What is wrong with a policy file (TLS-RPT `sts-policy-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("line without a colon: {0:?}")]
    NoColon(String),
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    #[error("bad max_age {0:?}")]
    BadMaxAge(String),
    #[error("bad mx pattern {0:?}")]
    BadMx(String),
    #[error("unknown version {0:?}")]
    UnknownVersion(String),
    #[error("no version")]
    NoVersion,
    #[error("no mode")]
    NoMode,
    #[error("no max_age")]
    NoMaxAge,
    #[error("no mx")]
    NoMx,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// Lowercased, without trailing dots.
    pub mx: Vec<String>,
    /// Seconds.
    pub max_age: u64,
    /// The file's non-empty lines, as TLS-RPT's `policy-string`.
    pub lines: Vec<String>,
}

impl Policy {
    /// Parses a policy file; Err says what is wrong (TLS-RPT `sts-policy-invalid`).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        let mut lines = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            lines.push(line.to_string());
            let Some((key, value)) = line.split_once(':') else {
                return Err(PolicyError::NoColon(line.to_string()));
            };
            let value = value.trim();
            match key.trim() {
                "version" if version.is_none() => version = Some(value.to_string()),
                "mode" if mode.is_none() => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(PolicyError::UnknownMode(other.to_string())),
                    })
                }
                "max_age" if max_age.is_none() => {
                    let ok = !value.is_empty()
                        && value.len() <= 10
                        && value.bytes().all(|b| b.is_ascii_digit());
                    let n: u64 = value
                        .parse()
                        .ok()
                        .filter(|_| ok)
                        .ok_or_else(|| PolicyError::BadMaxAge(value.to_string()))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => mx.push(pattern(value)?),
                _ => {}
            }
        }
        match version.as_deref() {
            Some("STSv1") => {}
            Some(v) => return Err(PolicyError::UnknownVersion(v.to_string())),
            None => return Err(PolicyError::NoVersion),
        }
        let mode = mode.ok_or(PolicyError::NoMode)?;
        let max_age = max_age.ok_or(PolicyError::NoMaxAge)?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx);
        }
        Ok(Policy {
            mode,
            mx,
            max_age,
            lines,
        })
    }

    /// Whether `host` matches one of the `mx` patterns.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| matches(p, &host))
    }
}

fn pattern(value: &str) -> Result<String, PolicyError> {
    let p = value.trim_end_matches('.').to_ascii_lowercase();
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(p)
    } else {
        Err(PolicyError::BadMx(value.to_string()))
    }
}

/// `*.example.com` matches `mx.example.com`, not `example.com` nor `a.mx.example.com`.
fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_parses() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(p.lines.len(), 6);
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.Example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("a.mx1.example.net"));
        assert!(!p.allows("other.example.com"));
    }

    #[test]
    fn bad_policies_say_why() {
        let bad = [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "no version"),
            (
                "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "version",
            ),
            ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                "max_age",
            ),
            ("version: STSv1\nmode: enforce\nmx: a\n", "no max_age"),
            ("<html>not a policy</html>", "colon"),
            (
                "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                "mx pattern",
            ),
        ];
        for (text, why) in bad {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn max_age_capped_and_none_needs_no_mx() {
        let p = Policy::parse("version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
    }
}
