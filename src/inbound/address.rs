//! MAIL FROM / RCPT TO arguments: a strict RFC 5321 path parser plus ESMTP parameters.
//!
//! Policy (see docs/accepting.md, "Addresses"): poolrelay routes only on the domain after the single `@`, and
//! refuses everything downstream servers might read as a routing trick: `%` and `!` in local parts,
//! a quoted local part holding `@`, several `@`, IP-literal domains, empty or trailing-dot labels.
//! A source route (`<@a,@b:u@c>`) is syntactically checked and then dropped, as RFC 5321 §C allows.

use crate::reply::Reply;

/// RFC 5321 §4.5.3.1 limits.
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// Not a valid mailbox (or a refused routing trick).
    Syntax(&'static str),
    /// Non-ASCII without SMTPUTF8 on MAIL FROM.
    NeedsUtf8,
}

/// Parses the inside of `<...>`. Returns the mailbox (source route removed); `""` is the null path,
/// which only MAIL FROM may use (the caller checks).
pub fn parse_path(inner: &str, utf8: bool) -> Result<String, AddrError> {
    if !utf8 && !inner.is_ascii() {
        return Err(AddrError::NeedsUtf8);
    }
    if inner.is_empty() {
        return Ok(String::new());
    }
    if inner.len() > MAX_PATH {
        return Err(AddrError::Syntax("path too long"));
    }
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            // A-d-l ":" Mailbox; every route domain must itself be valid.
            let colon = inner
                .find(':')
                .ok_or(AddrError::Syntax("bad source route"))?;
            for hop in inner[..colon].split(',') {
                let d = hop
                    .strip_prefix('@')
                    .ok_or(AddrError::Syntax("bad source route"))?;
                check_domain(d)?;
            }
            &inner[colon + 1..]
        }
        None => inner,
    };
    let (local, domain) = split_mailbox(mailbox)?;
    check_domain(domain)?;
    Ok(format!("{local}@{domain}"))
}

/// Splits `local@domain`, validating the local part.
fn split_mailbox(s: &str) -> Result<(&str, &str), AddrError> {
    let local_end = if s.starts_with('"') {
        let bytes = s.as_bytes();
        let mut i = 1;
        loop {
            match bytes.get(i) {
                None => return Err(AddrError::Syntax("unterminated quoted local part")),
                Some(b'"') => break,
                Some(b'\\') => {
                    match bytes.get(i + 1) {
                        Some(c) if (32..=126).contains(c) => {}
                        _ => return Err(AddrError::Syntax("bad quoted pair")),
                    }
                    if bytes[i + 1] == b'@' {
                        return Err(AddrError::Syntax("quoted local part holds @"));
                    }
                    i += 2;
                    continue;
                }
                Some(b'@') => return Err(AddrError::Syntax("quoted local part holds @")),
                Some(&c) if c >= 0x80 || (32..=126).contains(&c) => {}
                Some(_) => return Err(AddrError::Syntax("control character in address")),
            }
            i += 1;
        }
        let end = i + 1;
        if end == 2 {
            return Err(AddrError::Syntax("empty local part"));
        }
        end
    } else {
        let end = s.find('@').ok_or(AddrError::Syntax("missing @"))?;
        let local = &s[..end];
        if local.is_empty() {
            return Err(AddrError::Syntax("empty local part"));
        }
        for atom in local.split('.') {
            if atom.is_empty() {
                return Err(AddrError::Syntax("empty atom in local part"));
            }
            for c in atom.bytes() {
                match c {
                    b'%' => return Err(AddrError::Syntax("% in local part")),
                    b'!' => return Err(AddrError::Syntax("! in local part")),
                    _ if is_atext(c) => {}
                    _ => return Err(AddrError::Syntax("bad character in local part")),
                }
            }
        }
        end
    };
    if local_end > MAX_LOCAL {
        return Err(AddrError::Syntax("local part too long"));
    }
    let rest = &s[local_end..];
    let domain = rest
        .strip_prefix('@')
        .ok_or(AddrError::Syntax("missing @"))?;
    Ok((&s[..local_end], domain))
}

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

fn check_domain(d: &str) -> Result<(), AddrError> {
    if d.is_empty() {
        return Err(AddrError::Syntax("empty domain"));
    }
    if d.starts_with('[') {
        return Err(AddrError::Syntax("address literals are not accepted"));
    }
    if d.len() > MAX_DOMAIN {
        return Err(AddrError::Syntax("domain too long"));
    }
    // RFC 3696 §2: a top-level label is never all digits; `u@10.1.2.3` is an address literal
    // in disguise, which resolvers and routing may take as an address.
    if d.rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(AddrError::Syntax("numeric top-level domain"));
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(AddrError::Syntax("empty label in domain"));
        }
        if label.len() > 63 {
            return Err(AddrError::Syntax("label too long"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddrError::Syntax("label starts or ends with -"));
        }
        // Non-ASCII bytes are U-labels (only reachable after SMTPUTF8).
        if !label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
        {
            return Err(AddrError::Syntax("bad character in domain"));
        }
    }
    Ok(())
}

/// Splits `FROM:<path> params` (after the verb) into the path's inside and the parameter text.
/// `keyword` is `FROM` or `TO`. A space after the colon is tolerated (many clients send it).
pub fn split_command<'a>(args: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = args.get(..keyword.len() + 1)?;
    if !head.eq_ignore_ascii_case(&format!("{keyword}:")) {
        return None;
    }
    let rest = args[keyword.len() + 1..].trim_start_matches(' ');
    let rest = rest.strip_prefix('<')?;
    // Find the closing '>' outside a quoted string.
    let bytes = rest.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => break,
            _ => {}
        }
        i += 1;
    }
    if i >= bytes.len() {
        return None;
    }
    let params = &rest[i + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    Some((&rest[..i], params.trim_matches(' ')))
}

/// `KEYWORD[=value]` pairs, keyword upper-cased. Values: RFC 5321 esmtp-value.
pub fn parse_params(s: &str) -> Result<Vec<(String, Option<String>)>, Reply> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for p in s.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        let key_ok = k.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        let value_ok = v.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|c| (33..=126).contains(&c) && c != b'=')
        });
        if !key_ok || !value_ok {
            return Err(Reply::new(501, "5.5.4", "Syntax error in parameters"));
        }
        let k = k.to_ascii_uppercase();
        if out.iter().any(|(x, _)| *x == k) {
            return Err(Reply::new(501, "5.5.4", format!("Duplicate parameter {k}")));
        }
        out.push((k, v.map(str::to_string)));
    }
    Ok(out)
}

/// RFC 3461 xtext: printable ASCII except `+` and `=`, with `+XX` hex escapes.
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex =
                    |c: Option<&u8>| c.is_some_and(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'));
                if !hex(b.get(i + 1)) || !hex(b.get(i + 2)) {
                    return false;
                }
                i += 3;
            }
            c if (33..=126).contains(&c) && c != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_path(s, false).unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
    }
    fn bad(s: &str) {
        assert!(
            matches!(parse_path(s, true), Err(AddrError::Syntax(_))),
            "{s:?} should be refused, got {:?}",
            parse_path(s, true)
        );
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(ok("user@example.com"), "user@example.com");
        assert_eq!(
            ok("first.last+tag@sub.example.co.uk"),
            "first.last+tag@sub.example.co.uk"
        );
        assert_eq!(ok("\"john doe\"@example.com"), "\"john doe\"@example.com");
        assert_eq!(ok("\"a\\\"b\"@example.com"), "\"a\\\"b\"@example.com");
        assert_eq!(ok("x@localhost"), "x@localhost");
        assert_eq!(ok("x@123.example.com"), "x@123.example.com");
        assert_eq!(ok("x@1e100.net"), "x@1e100.net");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn source_routes_are_dropped() {
        assert_eq!(ok("@a.test,@b.test:u@c.test"), "u@c.test");
        assert_eq!(ok("@a.test:u@c.test"), "u@c.test");
        bad("@a.test,b.test:u@c.test");
        bad("@:u@c.test");
        bad("@a.test");
        bad("@a.test:u%d@c.test");
    }

    #[test]
    fn relay_tricks_are_refused() {
        for s in [
            "user%other.test@example.com",
            "other.test!user@example.com",
            "user@other.test@example.com",
            "\"user@other.test\"@example.com",
            "\"user\\@other.test\"@example.com",
            "user@example.com.",
            "user@[127.0.0.1]",
            "user@[IPv6:::1]",
            "user@.example.com",
            "user@example..com",
            ".user@example.com",
            "user.@example.com",
            "us..er@example.com",
            "user@",
            "@example.com",
            "userexample.com",
            "user@exa mple.com",
            "user@-example.com",
            "user@example-.com",
            "user@exa_mple.com",
            "us er@example.com",
            "user@example.com>",
            "\"\"@example.com",
            "\"unterminated@example.com",
            "\"ctl\u{1}\"@example.com",
            "user(comment)@example.com",
            "<user@example.com",
            // A dotted quad without brackets: resolvers and routing may take it as an address.
            "user@127.0.0.1",
            "user@10.1.2.3",
            "user@example.123",
        ] {
            bad(s);
        }
    }

    #[test]
    fn lengths() {
        let local = "a".repeat(65);
        bad(&format!("{local}@example.com"));
        let label = "a".repeat(64);
        bad(&format!("u@{label}.com"));
        ok(&format!("{}@example.com", "a".repeat(64)));
        bad(&format!("u@{}", ["abcdefghij"; 30].join(".")));
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(
            parse_path("jörg@exämple.de", false),
            Err(AddrError::NeedsUtf8)
        );
        assert_eq!(
            parse_path("jörg@exämple.de", true).unwrap(),
            "jörg@exämple.de"
        );
        assert_eq!(
            parse_path("用户@例子.广告", true).unwrap(),
            "用户@例子.广告"
        );
    }

    #[test]
    fn command_split() {
        assert_eq!(
            split_command("FROM:<a@b.c> SIZE=10", "FROM"),
            Some(("a@b.c", "SIZE=10"))
        );
        assert_eq!(split_command("from: <>", "FROM"), Some(("", "")));
        assert_eq!(
            split_command("TO:<\"x>y\"@b.c>", "TO"),
            Some(("\"x>y\"@b.c", ""))
        );
        assert_eq!(split_command("TO:a@b.c", "TO"), None);
        assert_eq!(split_command("TO:<a@b.c>x", "TO"), None);
        assert_eq!(split_command("FROM<a@b.c>", "FROM"), None);
        assert_eq!(split_command("TO:<a@b.c", "TO"), None);
    }

    #[test]
    fn params() {
        let p = parse_params("size=10 BODY=8BITMIME smtputf8").unwrap();
        assert_eq!(p[0], ("SIZE".into(), Some("10".into())));
        assert_eq!(p[2], ("SMTPUTF8".into(), None));
        assert!(parse_params("SIZE=1 SIZE=2").is_err());
        assert!(parse_params("SIZE=").is_err());
        assert!(parse_params("=x").is_err());
        assert!(is_xtext("abc+2Bdef"));
        assert!(!is_xtext("abc+2"));
        assert!(!is_xtext("a=b"));
    }
}
