//! RFC 5965 Appendix B's examples, a headers-only variant and things that are not reports.

use super::*;

/// The opening both Appendix B examples share: the reporter's headers, the human-readable
/// part and the first lines of the feedback report.
macro_rules! b_head {
    () => {
        "From: <abusedesk@example.com>\r\n\
Date: Thu, 8 Mar 2005 17:40:36 EDT\r\n\
Subject: FW: Earn money\r\n\
To: <abuse@example.net>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\x20    boundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information\r\n\
about this format please see http://www.mipassoc.org/arf/.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n"
    };
}

const B1: &str = concat!(
    b_head!(),
    "\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
Received: from mailserver.example.net\r\n\
\x20       (mailserver.example.net [192.0.2.1])\r\n\
\x20       by example.com with ESMTP id M63d4137594e46;\r\n\
\x20       Thu, 08 Mar 2005 14:00:00 -0400\r\n\
From: <somespammer@example.net>\r\n\
To: <Undisclosed Recipients>\r\n\
Subject: Earn money\r\n\
MIME-Version: 1.0\r\n\
Content-type: text/plain\r\n\
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net\r\n\
Date: Thu, 02 Sep 2004 12:31:03 -0500\r\n\
\r\n\
Spam Spam Spam\r\n\
Spam Spam Spam\r\n\
--part1_13d.2e68ed54_boundary--\r\n"
);

const B2_HEAD: &str = concat!(
    b_head!(),
    "Original-Mail-From: <somespammer@example.net>\r\n\
Original-Rcpt-To: <user@example.com>\r\n\
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\n\
Reporting-MTA: dns; mail.example.com\r\n\
Source-IP: 192.0.2.1\r\n\
Authentication-Results: mail.example.com;\r\n\
\x20              spf=fail smtp.mail=somespammer@example.com\r\n\
Reported-Domain: example.net\r\n\
Reported-Uri: http://example.net/earn_money.html\r\n\
Reported-Uri: mailto:user@example.com\r\n\
Removal-Recipient: user@example.com\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n"
);

const B2_ORIGINAL: &str = "From: <somespammer@example.net>\r\n\
Received: from mailserver.example.net (mailserver.example.net\r\n\
\x20       [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;\r\n\
\x20       Thu, 08 Mar 2005 14:00:00 -0400\r\n\
To: <Undisclosed Recipients>\r\n\
Subject: Earn money\r\n\
MIME-Version: 1.0\r\n\
Content-type: text/plain\r\n\
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>\r\n\
Date: Thu, 02 Sep 2004 12:31:03 -0500\r\n\
\r\n";

fn b2(content_type: &str, body: &str) -> String {
    format!(
        "{B2_HEAD}Content-Type: {content_type}\r\nContent-Disposition: inline\r\n\r\n\
            {B2_ORIGINAL}{body}--part1_13d.2e68ed54_boundary--\r\n"
    )
}

fn report(raw: &str) -> Report {
    match parse(raw.as_bytes()) {
        Parsed::Report(r) => *r,
        Parsed::NotAReport(why) => panic!("not a report: {why}"),
    }
}

#[test]
fn rfc5965_b1_simple_report() {
    let r = report(B1);
    assert_eq!(r.shape, Shape::Arf);
    assert_eq!(r.feedback_type, "abuse");
    assert_eq!(r.reporter, "SomeGenerator/1.0");
    assert_eq!(r.source_ip, None);
    assert_eq!(
        r.original.received_ips,
        vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(r.original.from_domain.as_deref(), Some("example.net"));
    assert!(r.original.traces.is_empty());
}

#[test]
fn rfc5965_b2_complete_report() {
    let r = report(&b2("message/rfc822", "Spam Spam Spam\r\n"));
    assert_eq!(r.shape, Shape::Arf);
    assert_eq!(r.feedback_type, "abuse");
    assert_eq!(r.reporter, "mail.example.com");
    assert_eq!(r.source_ip, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(r.rcpt_to, vec!["user@example.com".to_string()]);
    assert_eq!(
        r.original.message_id.as_deref(),
        Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net")
    );
}

#[test]
fn report_with_only_the_originals_headers() {
    let r = report(&b2("text/rfc822-headers", ""));
    assert_eq!(r.shape, Shape::ArfHeaders);
    assert_eq!(r.original.from_domain.as_deref(), Some("example.net"));
    assert_eq!(
        r.original.received_ips,
        vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn legacy_jmrp_with_microsofts_recipient_header() {
    let raw = "From: staff@hotmail.com\r\nTo: fbl@relay.test\r\nSubject: complaint\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
           --b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\
           --b\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n\
           X-HmXmrOriginalRecipient: <Someone@hotmail.com>\r\n\
           Received: from out1.relay.test ([127.0.0.10]) by mx.hotmail.test\r\n\
           From: a@shop.test\r\nTo: someone@hotmail.com\r\nSubject: hi\r\n\r\nbody\r\n--b--\r\n";
    let r = report(raw);
    assert_eq!(r.shape, Shape::Jmrp);
    assert_eq!(r.feedback_type, "abuse");
    assert_eq!(r.reporter, "hotmail.com");
    assert_eq!(r.original.recipient.as_deref(), Some("someone@hotmail.com"));
    assert_eq!(
        r.original.received_ips,
        vec!["127.0.0.10".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn not_reports_are_said_so_never_a_panic() {
    let plain = "From: a@b.test\r\nTo: fbl@relay.test\r\nSubject: hello\r\n\r\nunsubscribe me\r\n";
    assert!(matches!(parse(plain.as_bytes()), Parsed::NotAReport(_)));
    // A forwarded message without Microsoft's header or our trace: not a report.
    let fwd = "From: a@b.test\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
        Content-Type: message/rfc822\r\n\r\nFrom: c@d.test\r\nSubject: s\r\n\r\nhi\r\n--x--\r\n";
    assert!(matches!(parse(fwd.as_bytes()), Parsed::NotAReport(_)));
    // A feedback-report part without Feedback-Type.
    let empty = B1.replace("Feedback-Type: abuse\r\n", "");
    assert!(matches!(parse(empty.as_bytes()), Parsed::NotAReport(_)));
    for junk in [&b""[..], b"\r\n\r\n", b"\xff\xfe\x00garbage", b"--x--\r\n"] {
        assert!(matches!(parse(junk), Parsed::NotAReport(_)));
    }
}
