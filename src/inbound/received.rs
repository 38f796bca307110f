//! The `Received:` header poolrelay puts first in every message (RFC 5321 §4.4, RFC 3848 "with"
//! keywords, RFC 6531 UTF8SMTP variants). One `;` only: the date follows it.
//!
//! Client-chosen text (EHLO name, AUTH user, recipient) never breaks its structure: only printable
//! ASCII other than `()\;<>"` is kept, plus non-ASCII UTF-8 when the message is SMTPUTF8 (never
//! controls, C1 or bidi/format characters, see `crate::text`); anything else in the EHLO name or
//! user becomes `_`, and a recipient with such characters (e.g. a quoted local part with `;`) is
//! left out (`for` is optional).

pub struct ReceivedInfo<'a> {
    pub helo: &'a str,
    pub ip: std::net::IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub smtputf8: bool,
    /// (protocol version, cipher suite)
    pub tls: Option<(&'a str, &'a str)>,
    pub authenticated: bool,
    /// Only when `access.received_auth_user` is set.
    pub show_user: Option<&'a str>,
    pub id: &'a str,
    /// Only when the message has exactly one recipient.
    pub rcpt: Option<&'a str>,
    pub now: u64,
}

/// A character client-chosen text may keep in the header.
fn allowed(c: char, utf8: bool) -> bool {
    if c.is_ascii() {
        c.is_ascii_graphic() && !"()\\;<>\"".contains(c)
    } else {
        utf8 && !crate::text::is_unsafe(c)
    }
}

/// Keeps client-chosen text from breaking the header's structure.
fn clean(s: &str, utf8: bool) -> String {
    s.chars()
        .map(|c| if allowed(c, utf8) { c } else { '_' })
        .collect()
}

pub fn header(r: &ReceivedInfo<'_>) -> String {
    let mut with = String::from(match (r.smtputf8, r.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    });
    if r.tls.is_some() && (r.esmtp || r.smtputf8) {
        with.push('S');
    }
    if r.authenticated && (r.esmtp || r.smtputf8) {
        with.push('A');
    }
    let utf8 = r.smtputf8;
    let mut h = format!("Received: from {} ([{}])\r\n", clean(r.helo, utf8), r.ip);
    if let Some((version, cipher)) = r.tls {
        h.push_str(&format!("\t(using {version} with cipher {cipher})\r\n"));
    }
    if let Some(user) = r.show_user {
        h.push_str(&format!("\t(authenticated as {})\r\n", clean(user, utf8)));
    }
    h.push_str(&format!(
        "\tby {} (poolrelay) with {with} id {}",
        r.hostname, r.id
    ));
    if let Some(rcpt) = r.rcpt.filter(|a| a.chars().all(|c| allowed(c, utf8))) {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(r.now)));
    h
}

/// `Mon, 23 Nov 2026 17:29:01 +0000` from Unix seconds (UTC), as `outcome::dsn` writes its dates.
pub fn rfc5322_date(unix: u64) -> String {
    mail_parser::DateTime::from_timestamp(unix as i64).to_rfc822()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_455_000),
            "Mon, 23 Nov 2026 17:30:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    /// The hand-written formatter mail-parser replaced, kept as the oracle for byte identity.
    fn civil_date(unix: u64) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let days = (unix / 86400) as i64;
        let secs = unix % 86400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{}, {} {} {} {:02}:{:02}:{:02} +0000",
            DAYS[(days.rem_euclid(7)) as usize],
            d,
            MONTHS[(m - 1) as usize],
            y,
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    #[test]
    fn mail_parser_dates_are_byte_identical() {
        let mut stamps = vec![
            0,
            1,
            86_399,
            86_400,
            951_782_400,
            951_868_799,
            1_795_455_000,
            4_107_542_399,
            4_102_444_800,
            253_402_300_799,
        ];
        // Every day from 1970 to 2200 at a moving second of the day.
        stamps.extend((0..84_000u64).map(|d| d * 86_400 + (d * 7_919) % 86_400));
        for t in stamps {
            assert_eq!(rfc5322_date(t), civil_date(t), "{t}");
        }
    }

    #[test]
    fn header_shape() {
        let h = header(&ReceivedInfo {
            helo: "client(x).test",
            ip: "127.0.0.1".parse().unwrap(),
            hostname: "relay.test",
            esmtp: true,
            smtputf8: false,
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384")),
            authenticated: true,
            show_user: Some("alice"),
            id: "ABC",
            rcpt: Some("u@example.com"),
            now: 0,
        });
        assert!(
            h.starts_with("Received: from client_x_.test ([127.0.0.1])\r\n"),
            "{h}"
        );
        assert!(h.contains("with ESMTPSA id ABC"), "{h}");
        assert!(h.contains("(authenticated as alice)"), "{h}");
        assert!(
            h.contains("for <u@example.com>;\r\n\tThu, 1 Jan 1970"),
            "{h}"
        );
        assert_eq!(h.matches(';').count(), 1);
        assert!(h.ends_with("\r\n"));
    }

    fn hostile(smtputf8: bool, rcpt: &str) -> String {
        header(&ReceivedInfo {
            helo: "a(b)c;\u{85}\u{9b}\u{202e}\u{2066}x\"\x1bü",
            ip: "127.0.0.1".parse().unwrap(),
            hostname: "relay.test",
            esmtp: true,
            smtputf8,
            tls: None,
            authenticated: true,
            show_user: Some("u)(;\u{200f}"),
            id: "ABC",
            rcpt: Some(rcpt),
            now: 0,
        })
    }

    #[test]
    fn hostile_text_cannot_break_the_structure() {
        let h = hostile(false, "\"a;b\"@example.com");
        assert!(h.is_ascii(), "{h}");
        assert!(h.starts_with("Received: from a_b_c_____x___ ("), "{h}");
        assert!(h.contains("(authenticated as u____)"), "{h}");
        assert!(!h.contains("for <"), "{h}");
        assert_eq!(h.matches(';').count(), 1, "{h}");
        assert_eq!(h.matches('(').count(), h.matches(')').count(), "{h}");
        // SMTPUTF8: UTF-8 letters stay, controls and bidi characters still go.
        let h = hostile(true, "jörg@exämple.com");
        assert!(h.contains("x__ü ("), "{h}");
        assert!(h.contains("for <jörg@exämple.com>;"), "{h}");
        assert!(
            !h.chars()
                .any(|c| crate::text::is_unsafe(c) && c != '\r' && c != '\n' && c != '\t')
        );
        assert!(!hostile(false, "jörg@exämple.com").contains("for <"));
    }
}
