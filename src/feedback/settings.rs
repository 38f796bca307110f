//! `[feedback]`: where complaint reports arrive and what poolrelay stamps on outgoing mail.

use serde::Deserialize;

use crate::util::settings::{DurationStr, Size};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Recipients that take reports (`fbl@relay.example.net`): accepted from any client, never
    /// relayed.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Largest report accepted over SMTP (`552 5.3.4` above it).
    #[serde(default = "default_max_size")]
    pub max_size: Size,
    /// Reports one client IP may send per hour (`450 4.7.1` past it); 0 = no limit.
    #[serde(default = "default_per_client_hourly")]
    pub per_client_hourly: u32,
    /// Stamp the trace header (and `Feedback-ID`, when `feedback_id` is set) on every message.
    #[serde(default = "yes")]
    pub trace: bool,
    /// The identifiers of Google's `Feedback-ID: a:b:c:SenderId` header, in order (at most 3);
    /// empty = no `Feedback-ID` header.
    #[serde(default)]
    pub feedback_id: Vec<FeedbackIdField>,
    /// The last field of `Feedback-ID` (constant per sender); default: the hostname.
    pub sender_id: Option<String>,
    /// How long delivery records (which IP sent what to whom) are kept.
    #[serde(default = "default_keep_records")]
    pub keep_records: DurationStr,
    /// Upper bound on delivery records kept (the oldest go first).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Traced complaints `GET /api/complaints` lists (the most recent).
    #[serde(default = "default_recent")]
    pub recent: usize,
    /// Whom a complaining recipient stops getting mail from (`reputation::complaints`).
    #[serde(default)]
    pub suppress: ComplainerScope,
    /// How long a complainer stays suppressed.
    #[serde(default = "default_suppress_for")]
    pub suppress_for: DurationStr,
}

/// `suppress`: whom a complaining recipient is suppressed for (acted on by
/// `reputation::complaints`).
pub use crate::reputation::complaints::ComplainerScope;

/// One identifier of `Feedback-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedbackIdField {
    /// The authenticated login (in clear: recipients see it).
    Login,
    /// The `From:` domain (else MAIL FROM's).
    SenderDomain,
    /// The pool `[[pool_rule]]` picks for the message.
    Pool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            addresses: Vec::new(),
            max_size: default_max_size(),
            per_client_hourly: default_per_client_hourly(),
            trace: true,
            feedback_id: Vec::new(),
            sender_id: None,
            keep_records: default_keep_records(),
            max_records: default_max_records(),
            recent: default_recent(),
            suppress: ComplainerScope::default(),
            suppress_for: default_suppress_for(),
        }
    }
}

impl Settings {
    /// Whether `address` (an RCPT TO path) is a feedback address.
    pub fn is_address(&self, address: &str) -> bool {
        self.addresses
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case(address.trim()))
    }

    /// Problems `Checked` reports as `(key, message)` (it adds the file and the key's line).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for a in &self.addresses {
            let ok = a
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
            if !ok {
                out.push((
                    "feedback.addresses",
                    format!("{a:?} is not an address like fbl@relay.example.net"),
                ));
            }
        }
        if self.feedback_id.len() > 3 {
            out.push((
                "feedback.feedback_id",
                "at most 3 fields (Google's a:b:c:SenderId)".into(),
            ));
        }
        if let Some(s) = &self.sender_id
            && (s.is_empty() || s.contains(':') || s.contains(char::is_whitespace))
        {
            out.push((
                "feedback.sender_id",
                "one word without ':' or spaces".into(),
            ));
        }
        out
    }
}

fn yes() -> bool {
    true
}
fn default_max_size() -> Size {
    Size(2 << 20)
}
fn default_per_client_hourly() -> u32 {
    100
}
fn default_keep_records() -> DurationStr {
    DurationStr(std::time::Duration::from_secs(30 * 86400))
}
fn default_max_records() -> usize {
    2_000_000
}
fn default_recent() -> usize {
    1000
}
fn default_suppress_for() -> DurationStr {
    DurationStr(crate::reputation::complaints::DEFAULT_SUPPRESS_FOR)
}

#[cfg(test)]
mod tests {
    use crate::config::checked::test_support::load_errors as errors;

    #[test]
    fn bad_feedback_settings_are_named_at_their_line() {
        let dir = crate::util::test_dir::tempdir("fbcfg").join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("c.toml").display().to_string();
        assert!(errors(&dir, "[feedback]\naddresses = [\"fbl@relay.test\"]\n").is_empty());
        let e = errors(
            &dir,
            "[feedback]\naddresses = [\"fbl@relay.test\", \"nobody\"]\nsender_id = \"a b\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{c}:7: feedback.addresses:")),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(&format!("{c}:8: feedback.sender_id:")),
            "{e:?}"
        );
        let e = errors(&dir, "[feedback]\nfeedback_id = [\"login\", \"ip\"]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(&format!("{c}:7:")), "{e:?}");
        let e = errors(&dir, "[feedback]\nadresses = []\n");
        assert!(e[0].contains("adresses"), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
