//! The author fields, `From:` and `Sender:`, read at the end of DATA before any DKIM key is chosen
//! (issue 25): a receiver shows the `From:` its own parser finds, so poolrelay signs only a
//! `From:` that every parser reads the same way.
//!
//! Rules:
//! - Exactly one `From:` field, holding a valid `mailbox-list` (RFC 5322 §3.6.2, strict syntax in
//!   `mailbox`): else `550 5.6.0` saying what is wrong (two `From:` fields, `a@b@c`, a comment or
//!   quoted string not closed, an empty or group `From:`, bytes that are not UTF-8, …).
//! - At most one `Sender:`, holding exactly one valid mailbox: else `550 5.6.0`.
//! - A `From:` with several mailboxes needs a `Sender:` (RFC 5322 §3.6.2): else `550 5.6.0`.
//! - Every `From:` mailbox and the `Sender:` mailbox must be allowed for the login
//!   (`inbound::sender_login`): else `550 5.7.1`.
//! - No `From:` at all: `[signing] missing_from = "refuse"` (the default) gives `550 5.6.0`;
//!   `"accept-unsigned"` accepts the message and never signs it.
//! - DKIM signs for the domain of the first `From:` mailbox.

use mail_parser::{Header, HeaderName};
use serde::Deserialize;

use super::mailbox::{self, Mailbox};
use crate::reply::Reply;

/// `[signing] missing_from`: what to do with a message that has no `From:` field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissingFrom {
    #[default]
    Refuse,
    AcceptUnsigned,
}

/// The author fields of a message whose header section follows the rules above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authors {
    /// No `From:` field (the caller applies `missing_from`).
    Missing,
    Present {
        /// One or more mailboxes (several only with `sender`).
        from: Vec<Mailbox>,
        sender: Option<Mailbox>,
    },
}

impl Authors {
    /// Reads the `From:` and `Sender:` fields of a header section parsed by mail-parser
    /// (`message` holds the bytes its offsets point into).
    pub fn read(message: &[u8], headers: &[Header<'_>]) -> Result<Authors, Reply> {
        let raw = |h: &Header<'_>| {
            message
                .get(h.offset_start as usize..h.offset_end as usize)
                .unwrap_or_default()
        };
        let froms: Vec<&Header<'_>> = headers
            .iter()
            .filter(|h| matches!(h.name, HeaderName::From))
            .collect();
        let senders: Vec<&Header<'_>> = headers
            .iter()
            .filter(|h| matches!(h.name, HeaderName::Sender))
            .collect();
        let Some(first) = froms.first() else {
            return Ok(Authors::Missing);
        };
        if froms.len() > 1 {
            return Err(malformed(format!(
                "Message has {} From: headers; RFC 5322 allows exactly one",
                froms.len()
            )));
        }
        let from = mailbox::mailbox_list(raw(first))
            .map_err(|why| malformed(format!("Malformed From: header: it {why}")))?;
        if senders.len() > 1 {
            return Err(malformed(format!(
                "Message has {} Sender: headers; RFC 5322 allows at most one",
                senders.len()
            )));
        }
        let sender = senders
            .first()
            .map(|h| mailbox::mailbox(raw(h)))
            .transpose()
            .map_err(|why| malformed(format!("Malformed Sender: header: it {why}")))?;
        if from.len() > 1 && sender.is_none() {
            return Err(malformed(format!(
                "From: header names {} mailboxes; add a Sender: header naming the one that sends (RFC 5322 section 3.6.2)",
                from.len()
            )));
        }
        Ok(Authors::Present { from, sender })
    }

    /// `550 5.7.1` unless `allowed` accepts every `From:` mailbox and the `Sender:`.
    pub fn check_owned(&self, allowed: &dyn Fn(&str) -> bool) -> Result<(), Reply> {
        let Authors::Present { from, sender } = self else {
            return Ok(());
        };
        if !from.iter().all(|m| allowed(&m.address())) {
            return Err(Reply::new(
                550,
                "5.7.1",
                "From: address not owned by this login",
            ));
        }
        match sender {
            Some(s) if !allowed(&s.address()) => Err(Reply::new(
                550,
                "5.7.1",
                "Sender: address not owned by this login",
            )),
            _ => Ok(()),
        }
    }

    /// The domain DKIM signs for: the first `From:` mailbox's, as written.
    pub fn signing_domain(&self) -> Option<&str> {
        match self {
            Authors::Present { from, .. } => from.first().map(|m| m.domain.as_str()),
            Authors::Missing => None,
        }
    }
}

/// `missing_from = "refuse"`.
pub fn missing() -> Reply {
    malformed("Message has no From: header; RFC 5322 requires one".into())
}

fn malformed(text: String) -> Reply {
    Reply::new(550, "5.6.0", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(headers: &str) -> Result<Authors, Reply> {
        let message = format!("{headers}\r\nbody\r\n");
        let parsed = mail_parser::MessageParser::new()
            .parse_headers(message.as_bytes())
            .unwrap();
        Authors::read(message.as_bytes(), parsed.headers())
    }

    fn refused(headers: &str) -> Reply {
        match read(headers) {
            Err(r) => r,
            Ok(a) => panic!("{headers:?} was read as {a:?}"),
        }
    }

    #[test]
    fn one_from_one_mailbox() {
        let a = read("From: Alice <alice@example.com>\r\nSubject: x\r\n").unwrap();
        assert_eq!(a.signing_domain(), Some("example.com"));
        assert!(a.check_owned(&|x| x == "alice@example.com").is_ok());
        let r = a.check_owned(&|_| false).unwrap_err();
        assert_eq!((r.code, r.status.as_str()), (550, "5.7.1"));
        assert_eq!(read("Subject: x\r\n").unwrap(), Authors::Missing);
        assert_eq!(missing().code, 550);
    }

    #[test]
    fn malformed_author_fields_are_refused_with_the_reason() {
        for (headers, why) in [
            (
                "From: ceo@victim.example@example.com\r\n",
                "more than one '@'",
            ),
            (
                "From: (Mallory <ceo@victim.example> a@example.com\r\n",
                "comment that is not closed",
            ),
            (
                "From: \"Mallory <a@example.com>\r\n",
                "quoted string that is not closed",
            ),
            ("From:\r\n", "it is empty"),
            ("From: undisclosed-recipients:;\r\n", "group"),
            (
                "From: a@example.com\r\nFrom: b@example.com\r\n",
                "2 From: headers",
            ),
            (
                "FROM: a@example.com\r\nfrom: b@example.com\r\n",
                "2 From: headers",
            ),
            ("From: \u{fffd}\u{fffd}\r\n", "without '@domain'"),
            ("From: a@example.com, b@example.com\r\n", "add a Sender:"),
            (
                "From: a@example.com, b@example.com\r\nSender: a@example.com, b@example.com\r\n",
                "Malformed Sender: header: it holds more than one mailbox",
            ),
            (
                "From: a@example.com\r\nSender: a@example.com\r\nSender: b@example.com\r\n",
                "2 Sender: headers",
            ),
            ("From: a@example.com\r\nSender: <>\r\n", "Malformed Sender:"),
        ] {
            let r = refused(headers);
            assert_eq!((r.code, r.status.as_str()), (550, "5.6.0"), "{headers:?}");
            assert!(r.text.contains(why), "{headers:?}: {r}");
        }
        let message = b"From: \xff\xfe\r\n\r\n";
        let parsed = mail_parser::MessageParser::new()
            .parse_headers(message)
            .unwrap();
        let r = Authors::read(message, parsed.headers()).unwrap_err();
        assert!(r.text.contains("not UTF-8"), "{r}");
    }

    #[test]
    fn several_authors_with_a_sender_are_all_checked() {
        let a =
            read("From: a@example.com, B <b@example.com>\r\nSender: s@example.com\r\n").unwrap();
        assert!(a.check_owned(&|x| x.ends_with("@example.com")).is_ok());
        // The Sender is checked like From.
        let r = a.check_owned(&|x| x != "s@example.com").unwrap_err();
        assert!(r.text.starts_with("Sender:"), "{r}");
        // And so is every author.
        let r = a.check_owned(&|x| x != "b@example.com").unwrap_err();
        assert!(r.text.starts_with("From:"), "{r}");
    }
}
