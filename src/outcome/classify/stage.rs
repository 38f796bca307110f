//! The SMTP stage a reply came at. Rules: a refusal at the greeting or HELO is about the sending
//! host; at MAIL FROM about the sender (its address when the text names it, else the host); at
//! RCPT TO about the recipient; after DATA about the message. Live replies carry their stage;
//! in a bounce it is read from the prose MTAs write around the reply (Postfix "in reply to RCPT
//! TO command", Exim "after MAIL FROM", Sendmail's `>>>` transcript, qmail "does not like
//! recipient").

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    #[default]
    Unknown,
    /// The greeting (or the connection itself).
    Connect,
    Helo,
    Mail,
    Rcpt,
    /// The DATA command or the end of the message.
    Data,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Unknown,
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Unknown => "unknown",
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

static MARKER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(?:in reply to|after|>>>|while sending|sending|during|response to)\s+(?:the\s+)?",
        r"(?:pipelined\s+)?(?P<cmd>rcpt\s+to|mail\s+from|end\s+of\s+data|data|dot|",
        r"helo|ehlo|lhlo|starttls|initial\s+connection|(?:initial\s+)?greeting|connect(?:ion)?|\.\s*$)",
        r"|(?P<rcpt>does\s+not\s+like\s+recipient)",
        r"|(?P<mail>sender\s+was\s+rejected|does\s+not\s+like\s+sender)",
        r"|(?P<data>failed\s+after\s+i\s+sent\s+the\s+message|failed\s+on\s+data\s+command)",
        r"|(?P<connect>refused\s+to\s+talk\s+to\s+me|greeting\s+failed|establish\s+an\s+smtp\s+connection)",
        r"|(?P<helo>my\s+name\s+was\s+rejected)",
    ))
    .expect("stage regex")
});

static TRANSCRIPT_REPLY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<<<\s*[45][0-9][0-9]").expect("transcript regex"));

/// The stage named in a bounce's prose; `Unknown` when it names none. In a Sendmail-style
/// transcript the last command before the first failure reply counts.
pub fn detect(text: &str) -> Stage {
    let limit = TRANSCRIPT_REPLY.find(text).map(|m| m.start());
    let mut found = Stage::Unknown;
    for c in MARKER.captures_iter(text) {
        let start = c.get(0).map_or(0, |m| m.start());
        if limit.is_some_and(|l| start > l) {
            break;
        }
        let st = if c.name("rcpt").is_some() {
            Stage::Rcpt
        } else if c.name("mail").is_some() {
            Stage::Mail
        } else if c.name("data").is_some() {
            Stage::Data
        } else if c.name("connect").is_some() {
            Stage::Connect
        } else if c.name("helo").is_some() {
            Stage::Helo
        } else {
            let cmd = c
                .name("cmd")
                .map_or("", |m| m.as_str())
                .to_ascii_lowercase();
            match cmd.split_whitespace().next().unwrap_or("") {
                "rcpt" => Stage::Rcpt,
                "mail" => Stage::Mail,
                "helo" | "ehlo" | "lhlo" | "starttls" => Stage::Helo,
                "initial" | "greeting" | "connect" | "connection" => Stage::Connect,
                _ => Stage::Data,
            }
        };
        found = st;
        // Without a transcript the first marker is the one about the reply.
        if limit.is_none() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_from_the_prose_of_common_mtas() {
        let cases = [
            (
                "host mx.example[192.0.2.1] said: 550 5.1.1 <a@b>: User unknown (in reply to RCPT TO command)",
                Stage::Rcpt,
            ),
            ("(in reply to end of DATA command)", Stage::Data),
            ("(in reply to MAIL FROM command)", Stage::Mail),
            (
                "SMTP error from remote mail server after MAIL FROM:<s@example.com> SIZE=1234:",
                Stage::Mail,
            ),
            (
                "SMTP error from remote mail server after pipelined RCPT TO:<a@b>:",
                Stage::Rcpt,
            ),
            (
                "SMTP error from remote mail server after initial connection:",
                Stage::Connect,
            ),
            (
                "SMTP error from remote mail server after end of data:",
                Stage::Data,
            ),
            (
                "host mx.example[192.0.2.1] refused to talk to me: 554 go away",
                Stage::Connect,
            ),
            (
                "Connected to 192.0.2.1 but sender was rejected.",
                Stage::Mail,
            ),
            ("192.0.2.1 does not like recipient.", Stage::Rcpt),
            ("192.0.2.1 failed after I sent the message.", Stage::Data),
            (
                ">>> MAIL From:<s@example.com>\n<<< 250 ok\n>>> RCPT To:<a@b>\n<<< 550 5.7.1 no\n>>> DATA",
                Stage::Rcpt,
            ),
            (
                ">>> MAIL From:<s@example.com>\n<<< 553 5.1.8 sender rejected\n>>> RCPT To:<a@b>",
                Stage::Mail,
            ),
            ("550 5.1.1 user unknown", Stage::Unknown),
        ];
        for (text, stage) in cases {
            assert_eq!(detect(text), stage, "{text}");
        }
        assert_eq!(Stage::parse("RCPT"), Some(Stage::Rcpt));
        assert_eq!(Stage::parse("bogus"), None);
    }
}
