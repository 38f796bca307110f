//! A strict reader of RFC 5322 §3.4 `mailbox-list` and `mailbox` (the values of `From:` and
//! `Sender:`), with RFC 6532 UTF-8 in atoms, quoted strings, comments and domain literals.
//!
//! Hand-written: mail-parser (the crate that reads headers here) never fails: it returns a best
//! guess for an unclosed comment or quoted string, for `a@b@c`, for an unquoted `@` in a display
//! name, and mail clients guess differently. Here those are errors, each with a short reason.
//! Not accepted: groups, the obs- forms (route addresses, CFWS inside a dot-atom, an empty list
//! element), except `.` in a display name (obs-phrase: `John Q. Public <jqp@example.com>`).

/// One `addr-spec`, comments and folding removed, as written otherwise (a quoted local part keeps
/// its quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    /// `local@domain`, the form `sender_login` patterns match.
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Why a value is not a mailbox list; reads after "From: header ".
pub type Problem = &'static str;

/// A `mailbox-list`: one or more mailboxes separated by commas. `value` is the field's raw value
/// (after the colon, folding included, maybe ending in CRLF).
pub fn mailbox_list(value: &[u8]) -> Result<Vec<Mailbox>, Problem> {
    let mut p = Reader::new(value)?;
    p.cfws()?;
    if p.at_end() {
        return Err("is empty");
    }
    let mut list = vec![p.mailbox()?];
    loop {
        p.cfws()?;
        match p.peek() {
            None => return Ok(list),
            Some(b',') => {
                p.i += 1;
                list.push(p.mailbox()?);
            }
            Some(c) => return Err(p.unexpected(c)),
        }
    }
}

/// Exactly one `mailbox`.
pub fn mailbox(value: &[u8]) -> Result<Mailbox, Problem> {
    let mut list = mailbox_list(value)?;
    if list.len() != 1 {
        return Err("holds more than one mailbox");
    }
    Ok(list.remove(0))
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

fn is_atext(c: u8) -> bool {
    // Bytes >= 0x80 are parts of UTF-8 characters (checked valid up front): RFC 6532 atext.
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

impl<'a> Reader<'a> {
    fn new(value: &'a [u8]) -> Result<Reader<'a>, Problem> {
        let b = value.strip_suffix(b"\r\n").unwrap_or(value);
        if std::str::from_utf8(b).is_err() {
            return Err("holds bytes that are not UTF-8");
        }
        if b.iter()
            .any(|&c| (c < 0x20 && !b"\t\r\n".contains(&c)) || c == 0x7f)
        {
            return Err("holds a control character");
        }
        Ok(Reader { b, i: 0 })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn unexpected(&self, c: u8) -> Problem {
        match c {
            b'@' => "holds an address with more than one '@'",
            b'<' => "has an unquoted display name that is not a phrase (quote it)",
            b':' | b';' => "is a group, not a mailbox list",
            b'>' => "has a '>' without '<'",
            b')' => "has a ')' without '('",
            c if c < 0x20 || c == 0x7f => "holds a control character",
            _ => "holds a character that cannot appear there",
        }
    }

    /// FWS: spaces and tabs, and CRLF followed by one (folding). Anything else ends it.
    fn fws(&mut self) -> Result<(), Problem> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.i += 1,
                Some(b'\r') if self.b.get(self.i + 1) == Some(&b'\n') => {
                    match self.b.get(self.i + 2) {
                        Some(b' ' | b'\t') => self.i += 3,
                        _ => return Err("holds a line break that is not folding"),
                    }
                }
                Some(b'\r' | b'\n') => return Err("holds a bare CR or LF"),
                _ => return Ok(()),
            }
        }
    }

    /// CFWS: folding white space and (nested) comments.
    fn cfws(&mut self) -> Result<(), Problem> {
        loop {
            self.fws()?;
            if self.peek() != Some(b'(') {
                return Ok(());
            }
            self.comment()?;
        }
    }

    fn comment(&mut self) -> Result<(), Problem> {
        let mut depth = 0usize;
        loop {
            let Some(c) = self.peek() else {
                return Err("has a comment that is not closed");
            };
            match c {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                b'\\' => self.quoted_pair()?,
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.fws()?;
                    continue;
                }
                c if c < 0x20 || c == 0x7f => return Err("holds a control character"),
                _ => {}
            }
            self.i += 1;
        }
    }

    /// `\` and the next character (VCHAR or WSP); leaves `i` on that character.
    fn quoted_pair(&mut self) -> Result<(), Problem> {
        self.i += 1;
        match self.peek() {
            Some(c) if c == b' ' || c == b'\t' || (0x21..0x7f).contains(&c) || c >= 0x80 => Ok(()),
            _ => Err("has a backslash that quotes nothing"),
        }
    }

    /// A quoted string, returned as written (quotes included).
    fn quoted_string(&mut self) -> Result<String, Problem> {
        let start = self.i;
        self.i += 1;
        loop {
            let Some(c) = self.peek() else {
                return Err("has a quoted string that is not closed");
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned());
                }
                b'\\' => self.quoted_pair()?,
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.fws()?;
                    continue;
                }
                c if c < 0x20 || c == 0x7f => return Err("holds a control character"),
                _ => {}
            }
            self.i += 1;
        }
    }

    fn atom(&mut self) -> Option<&'a str> {
        let start = self.i;
        while self.peek().is_some_and(is_atext) {
            self.i += 1;
        }
        // Valid UTF-8 (checked in `new`), cut at ASCII bytes only.
        (self.i > start).then(|| std::str::from_utf8(&self.b[start..self.i]).unwrap_or(""))
    }

    /// dot-atom-text: atoms joined by single dots, no CFWS inside.
    fn dot_atom(&mut self, what: Problem) -> Result<String, Problem> {
        let mut out = String::from(self.atom().ok_or(what)?);
        while self.peek() == Some(b'.') {
            self.i += 1;
            out.push('.');
            out.push_str(self.atom().ok_or("has an empty part between dots")?);
        }
        Ok(out)
    }

    fn domain_literal(&mut self) -> Result<String, Problem> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek() {
                None => return Err("has a domain literal that is not closed"),
                Some(b']') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&self.b[start..self.i]).into_owned());
                }
                Some(b'[' | b'\\') => return Err("has a malformed domain literal"),
                Some(b' ' | b'\t' | b'\r' | b'\n') => return Err("has a malformed domain literal"),
                Some(c) if c < 0x20 || c == 0x7f => return Err("holds a control character"),
                Some(_) => self.i += 1,
            }
        }
    }

    fn addr_spec(&mut self) -> Result<Mailbox, Problem> {
        self.cfws()?;
        let local = match self.peek() {
            Some(b'"') => self.quoted_string()?,
            _ => self.dot_atom("has a mailbox without an address")?,
        };
        self.cfws()?;
        if self.peek() != Some(b'@') {
            return Err("has an address without '@domain'");
        }
        self.i += 1;
        self.cfws()?;
        let domain = match self.peek() {
            Some(b'[') => self.domain_literal()?,
            _ => self.dot_atom("has an address without a domain")?,
        };
        self.cfws()?;
        Ok(Mailbox { local, domain })
    }

    /// name-addr or addr-spec: a phrase followed by `<` is a display name, else it is re-read
    /// as an addr-spec.
    fn mailbox(&mut self) -> Result<Mailbox, Problem> {
        self.cfws()?;
        let start = self.i;
        let mut words = 0;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.quoted_string()?;
                    words += 1;
                }
                Some(b'.') if words > 0 => self.i += 1,
                Some(c) if is_atext(c) => {
                    self.atom();
                    words += 1;
                }
                _ => break,
            }
            self.cfws()?;
        }
        if self.peek() == Some(b'<') {
            self.i += 1;
            let addr = self.addr_spec()?;
            if self.peek() != Some(b'>') {
                return Err(match self.peek() {
                    None => "has a '<' without '>'",
                    Some(c) => self.unexpected(c),
                });
            }
            self.i += 1;
            self.cfws()?;
            return Ok(addr);
        }
        if words > 0 && self.peek() == Some(b':') {
            return Err("is a group, not a mailbox list");
        }
        self.i = start;
        self.addr_spec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(v: &str) -> Result<Vec<String>, Problem> {
        mailbox_list(v.as_bytes()).map(|l| l.iter().map(Mailbox::address).collect())
    }

    #[test]
    fn valid_mailbox_lists() {
        for (value, want) in [
            (" a@example.com\r\n", vec!["a@example.com"]),
            (
                " \"Alice, Sales\" <alice@example.com>",
                vec!["alice@example.com"],
            ),
            (" John Q. Public <jqp@example.com>", vec!["jqp@example.com"]),
            (
                " \"x@evil.test\" (comment @evil.test) <a@exact.test>",
                vec!["a@exact.test"],
            ),
            (
                " =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n <a@exact.test>",
                vec!["a@exact.test"],
            ),
            (
                " (c (nested \\) x)) a.b+c@example.com (trailing)",
                vec!["a.b+c@example.com"],
            ),
            (
                " \"quoted local\"@example.com",
                vec!["\"quoted local\"@example.com"],
            ),
            (" a@[192.0.2.1]", vec!["a@[192.0.2.1]"]),
            (" Jörg <jörg@bücher.test>", vec!["jörg@bücher.test"]),
            (
                " a@example.com,\r\n\tB <b@example.org>",
                vec!["a@example.com", "b@example.org"],
            ),
        ] {
            assert_eq!(
                addresses(value),
                Ok(want.iter().map(|s| s.to_string()).collect()),
                "{value:?}"
            );
        }
        assert!(mailbox(b" A <a@example.com>").is_ok());
        assert_eq!(
            mailbox(b" a@example.com, b@example.com"),
            Err("holds more than one mailbox")
        );
    }

    #[test]
    fn malformed_values_say_why() {
        for (value, why) in [
            (" ceo@victim.example@example.com", "more than one '@'"),
            (
                " (Mallory <ceo@victim.example> a@example.com",
                "comment that is not closed",
            ),
            (
                " \"Mallory <a@example.com>",
                "quoted string that is not closed",
            ),
            (" ceo@victim.example <a@example.com>", "display name"),
            ("", "is empty"),
            ("  \r\n", "is empty"),
            (" (only a comment)", "is empty"),
            (" undisclosed-recipients:;", "group"),
            (" Team: a@example.com, b@example.com;", "group"),
            (" <>", "without an address"),
            (" a", "without '@domain'"),
            (" a@", "without a domain"),
            (" a..b@example.com", "empty part"),
            (" a@example.com.", "empty part"),
            (" a@example.com,", "without an address"),
            (" <a@example.com", "'<' without '>'"),
            (" a@example.com>", "'>' without '<'"),
            (" a@[1.2.3.4", "domain literal"),
            (" a\x01b@example.com", "control character"),
            (" A <a@example.com>\r\nB <b@example.com>", "not folding"),
        ] {
            let e = addresses(value).unwrap_err();
            assert!(e.contains(why), "{value:?}: {e}");
        }
        let e = mailbox_list(b" \xff\xfe@example.com").unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    /// Why this is not left to mail-parser: it never fails, it guesses (and the old check took
    /// its guess: a login bound to example.com got these signed).
    #[test]
    fn mail_parser_guesses_where_this_refuses() {
        for (value, guess) in [
            (
                " ceo@victim.example@example.com",
                Some("ceo@victim.example@example.com"),
            ),
            (
                " a@example.com (Mallory <ceo@victim.example>",
                Some("a@example.com"),
            ),
            (" ceo@victim.example <a@example.com>", Some("a@example.com")),
            (" \"Mallory <a@example.com>", None),
        ] {
            let message = format!("From:{value}\r\nSubject: x\r\n\r\n");
            let parsed = mail_parser::MessageParser::new()
                .parse_headers(message.as_bytes())
                .unwrap();
            let guessed = parsed
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address());
            assert_eq!(guessed, guess, "{value:?}");
            assert!(mailbox_list(value.as_bytes()).is_err(), "{value:?}");
        }
    }

    /// Client bytes: no input panics, and whatever passes is re-read the same.
    #[test]
    fn random_values_never_panic() {
        use rand::{Rng, SeedableRng};
        let alphabet: &[&[u8]] = &[
            b"a",
            b"@",
            b".",
            b",",
            b"<",
            b">",
            b"(",
            b")",
            b"\"",
            b"\\",
            b" ",
            b"\r\n ",
            b"\r\n",
            b":",
            b";",
            b"[",
            b"]",
            b"\xc3\xbc",
            b"\xff",
            b"\x01",
            b"=?",
            b"\t",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let value: Vec<u8> = (0..len)
                .flat_map(|_| alphabet[rng.gen_range(0..alphabet.len())].iter().copied())
                .collect();
            if let Ok(list) = mailbox_list(&value) {
                let again: Vec<String> = list.iter().map(Mailbox::address).collect();
                let joined = again.join(", ");
                let reread = mailbox_list(joined.as_bytes());
                assert_eq!(reread, Ok(list), "{:?}", String::from_utf8_lossy(&value));
            }
        }
    }
}
