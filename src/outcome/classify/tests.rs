//! Tests per decision step of the classifier, and one sample per built-in rule.

use super::*;

fn c(line: &str) -> Classification {
    Classifier::builtin().classify_line(line).1
}

/// Every sample reply named in the issue, and one per class at least.
#[test]
fn default_rules_classify_the_replies_operators_see() {
    let cases: &[(&str, Class, Scope, Option<&str>)] = &[
        (
            "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]",
            Class::Block,
            Scope::Ip,
            Some("microsoft"),
        ),
        (
            "550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]",
            Class::Block,
            Scope::Ip,
            Some("orange"),
        ),
        (
            "550 5.7.1 Policy reason",
            Class::Policy,
            Scope::Sender,
            None,
        ),
        (
            "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726",
            Class::Content,
            Scope::Content,
            Some("qq"),
        ),
        (
            "421-4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of\n421-4.7.28 unsolicited mail originating from your IP address. To protect our\n421-4.7.28 users from spam, mail sent from your IP address has been temporarily\n421 4.7.28 rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError",
            Class::Reputation,
            Scope::Ip,
            Some("gmail"),
        ),
        (
            "550-5.7.1 [203.0.113.5] Our system has detected that this message is\n550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n550-5.7.1 this message has been blocked. Please visit\n550 5.7.1 https://support.google.com/mail/?p=UnsolicitedMessageError",
            Class::Content,
            Scope::Content,
            Some("gmail"),
        ),
        (
            "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
            Class::Reputation,
            Scope::Ip,
            Some("yahoo"),
        ),
        (
            "554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.5",
            Class::Block,
            Scope::Ip,
            None,
        ),
        (
            "554 Service unavailable; Client host [203.0.113.5] blocked using Barracuda Reputation, see http://www.barracudanetworks.com/reputation/?r=1&ip=203.0.113.5",
            Class::Block,
            Scope::Ip,
            None,
        ),
        (
            "550 5.1.1 user unknown",
            Class::BadRecipient,
            Scope::Recipient,
            None,
        ),
        (
            "552 5.2.2 mailbox full",
            Class::MailboxFull,
            Scope::Recipient,
            None,
        ),
        (
            "421 4.7.0 Too many connections from your IP, slow down",
            Class::RateLimit,
            Scope::Ip,
            None,
        ),
        (
            "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
            Class::Policy,
            Scope::Sender,
            None,
        ),
        (
            "451 4.4.3 DNS lookup for example.org failed",
            Class::Dns,
            Scope::Recipient,
            None,
        ),
        (
            "530 5.7.0 Must issue a STARTTLS command first",
            Class::Tls,
            Scope::Recipient,
            None,
        ),
        (
            "451 4.3.0 Temporary local problem, try again later",
            Class::Transient,
            Scope::Recipient,
            None,
        ),
        (
            "554 5.3.0 Something odd",
            Class::Other,
            Scope::Recipient,
            None,
        ),
    ];
    for (line, class, scope, provider) in cases {
        let got = c(line);
        assert_eq!(
            (got.class, got.scope, got.provider.as_deref()),
            (*class, *scope, *provider),
            "{line}: rule {}",
            got.rule
        );
    }
}

/// One real-world-shaped sample per default rule: each rule is reachable (no rule or step
/// before it swallows its sample) and says what it should.
#[test]
fn every_default_rule_matches_its_sample() {
    let samples: &[(&str, &str)] = &[
        (
            "microsoft-blocklist",
            "550 5.7.1 Unfortunately, messages from [203.0.113.5] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
        ),
        (
            "microsoft-dbeb-no-such-recipient",
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]",
        ),
        (
            "microsoft-banned-ip",
            "550 5.7.606 Access denied, banned sending IP [203.0.113.5]. To request removal from this list please visit https://sender.office.com/",
        ),
        ("microsoft-banned-ip-status", "550 5.7.607 go away"),
        (
            "microsoft-ip-reputation",
            "451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP reputation. (S775)",
        ),
        (
            "microsoft-server-busy",
            "421 4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77719)",
        ),
        (
            "gmail-unsolicited-rate",
            "421-4.7.28 [203.0.113.5] Our system has detected an unusual rate of\n421 4.7.28 unsolicited mail originating from your IP address.",
        ),
        (
            "gmail-unsolicited-message",
            "550-5.7.1 [203.0.113.5] Our system has detected that this message is\n550 5.7.1 likely unsolicited mail.",
        ),
        (
            "yahoo-tss",
            "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints",
        ),
        (
            "yahoo-ip-blocked",
            "553 5.7.1 [BL21] Connections will not be accepted from 203.0.113.5",
        ),
        (
            "comcast-ip-blocked",
            "554 resimta-po-01v.sys.comcast.net comcast 203.0.113.5 found on one or more RBLs. BL000001",
        ),
        (
            "comcast-rate",
            "421 4.7.0 comcast 203.0.113.5 too fast RL000001",
        ),
        (
            "orange-ip-blocked",
            "550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]",
        ),
        (
            "orange-spam-content",
            "550 5.7.1 Service refuse. Veuillez essayer plus tard. service refused, please try later. OFR004_104 [104]",
        ),
        (
            "orange-laposte-service-refused",
            "421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]",
        ),
        (
            "qq-content",
            "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726",
        ),
        (
            "qq-frequency",
            "550 Ip frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000722",
        ),
        (
            "apple-icloud-policy",
            "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
        ),
        ("cox-ip-blocked", "554 5.7.1 203.0.113.5 rejected. AUP#CXBL"),
        ("cox-no-ptr", "554 5.7.1 rejected. AUP#CXDNS"),
        ("cox-rate", "421 4.7.1 too fast. AUP#CXMXRT"),
        (
            "proofpoint-cloudmark-ip",
            "554 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.5",
        ),
        (
            "dnsbl-blocked-using",
            "554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org",
        ),
        (
            "ptr-rdns",
            "450 4.7.1 Client host rejected: cannot find your hostname, [203.0.113.5]",
        ),
        ("relaying", "554 5.7.1 <a@example.org>: Relay access denied"),
        (
            "auth-dmarc-spf-dkim",
            "550 5.7.1 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
        ),
        (
            "sender-rejected",
            "553 5.7.1 <s@example.com>: Sender address rejected: not owned by user",
        ),
        (
            "ip-on-blocklist",
            "554 5.7.1 Your IP address 203.0.113.5 has been blacklisted by our administrators",
        ),
        (
            "no-service-for-host",
            "554 mx.example.org ESMTP not accepting connections",
        ),
        (
            "reputation",
            "550 5.7.1 Mail from 203.0.113.5 refused due to poor sender reputation",
        ),
        (
            "rate-limit",
            "421 Too many concurrent SMTP connections from this IP address; please try again later",
        ),
        ("mailbox-full", "550 Requested mailbox is full"),
        (
            "content-size",
            "552 Message size exceeds fixed maximum message size",
        ),
        (
            "mailbox-disabled",
            "550 5.7.1 This account has been suspended",
        ),
        ("bad-recipient", "550 5.7.1 <a@example.org>: user unknown"),
        (
            "virus",
            "554 5.7.0 Virus found in message: Eicar-Test-Signature",
        ),
        (
            "spam-message",
            "554 5.7.1 Message rejected as spam by content filter",
        ),
        ("spam-content", "550 No spam here"),
        (
            "content-format",
            "550 5.7.1 Messages with multiple addresses in From: header are not accepted",
        ),
        ("syntax", "501 Syntax error in parameters"),
        ("tls", "530 5.7.0 Must issue a STARTTLS command first"),
        ("dns", "451 DNS lookup for example.org failed"),
        ("policy-violation", "550 5.7.1 Policy reason"),
        (
            "expired",
            "Message expired: unable to deliver in 840 minutes",
        ),
        ("network", "421 Connection timed out"),
        ("system", "451 Temporary local problem, try again later"),
        (
            "refused-early",
            "554 SMTP error after initial connection: 554 access denied",
        ),
        (
            "recipient-rejected",
            "554 5.7.1 <a@example.org>: Recipient address rejected: no",
        ),
        ("policy", "550 5.7.1 Denied"),
        ("transient-words", "450 Please come back later"),
    ];
    let cl = Classifier::builtin();
    for (rule, line) in samples {
        assert_eq!(cl.classify_line(line).1.rule, *rule, "{line}");
    }
    for spec in parse_rules(DEFAULT_RULES).unwrap() {
        assert!(
            samples.iter().any(|(r, _)| *r == spec.name),
            "rule {} has no sample",
            spec.name
        );
    }
}

/// (class, rule, deciding step) for `reply` at `stage`.
fn step(stage: Stage, reply: &str) -> (Class, String, &'static str) {
    let p = parse_reply(reply);
    let (c, e) = Classifier::builtin().explain(stage, p.code, &p.status, &p.text);
    (c.class, c.rule, e.decided_by)
}

#[test]
fn a_definite_status_decides_before_text_rules() {
    assert_eq!(
        step(Stage::Unknown, "552 5.2.2 <a@example.org> denied"),
        (Class::MailboxFull, "status:5.2.2".into(), "status")
    );
    // 5.7.25 (no PTR) blames the host.
    let c = Classifier::builtin().classify(550, "5.7.25", "go away");
    assert_eq!((c.class, c.scope), (Class::Block, Scope::Ip));
    assert_eq!(
        step(Stage::Unknown, "421 4.7.28 rejected").0,
        Class::Reputation
    );
    // A provider's own code still wins over the status.
    assert_eq!(
        step(Stage::Unknown, "550 5.2.2 Mail rejected. ofr_506").1,
        "orange-ip-blocked"
    );
}

#[test]
fn a_likely_status_yields_to_specific_text_but_beats_generic_words() {
    // 5.1.1 sent for a block-list refusal: the text names the cause.
    assert_eq!(
        step(
            Stage::Unknown,
            "550 5.1.1 Client host [203.0.113.5] blocked using bl.example"
        ),
        (Class::Block, "dnsbl-blocked-using".into(), "specific rule")
    );
    // 5.1.1 with only a generic word: the status decides.
    assert_eq!(
        step(Stage::Unknown, "550 5.1.1 denied"),
        (Class::BadRecipient, "status:5.1.1".into(), "likely status")
    );
    // A suspended mailbox is the recipient's, not a policy refusal.
    assert_eq!(
        step(Stage::Unknown, "550 5.2.1 mailbox suspended by policy").0,
        Class::BadRecipient
    );
}

#[test]
fn the_stage_decides_what_status_and_text_leave_open() {
    // "Access denied" at the greeting or MAIL FROM: the host is refused.
    assert_eq!(
        step(Stage::Connect, "550 5.7.1 Access denied"),
        (Class::Block, "refused-early".into(), "fallback rule")
    );
    assert_eq!(step(Stage::Mail, "550 5.7.1 Access denied").0, Class::Block);
    // The same reply at RCPT TO is a policy refusal, not the IP's fault.
    assert_eq!(
        step(Stage::Rcpt, "550 5.7.1 Access denied").0,
        Class::Policy
    );
    // Nothing but the stage.
    assert_eq!(
        step(Stage::Rcpt, "550 nope"),
        (Class::BadRecipient, "stage:rcpt".into(), "stage")
    );
    assert_eq!(step(Stage::Data, "550 nope").0, Class::Content);
    assert_eq!(step(Stage::Connect, "554 nope").0, Class::Block);
    assert_eq!(
        step(Stage::Mail, "553 <s@example.com> sender nope").0,
        Class::Policy
    );
    assert_eq!(step(Stage::Mail, "553 nope").0, Class::Block);
    // The MTA's own prose around the reply does not make it about the sender.
    let c = Classifier::builtin().classify(
        550,
        "",
        "SMTP error after MAIL FROM:<s@example.com> SIZE=1: 550 nope",
    );
    assert_eq!((c.class, c.rule.as_str()), (Class::Block, "stage:mail"));
    // A 4xx at RCPT says nothing by its stage.
    assert_eq!(step(Stage::Rcpt, "450 nope").0, Class::Transient);
    // Read from the text when not given.
    assert_eq!(
        step(
            Stage::Unknown,
            "550 Rejected (in reply to MAIL FROM command)"
        )
        .0,
        Class::Block
    );
}

#[test]
fn the_stage_vetoes_classes_it_rules_out() {
    // No recipient has been named at MAIL FROM: "does not exist" is the sender's domain.
    let (class, _, _) = step(Stage::Mail, "553 5.1.0 neko.example.com does not exist");
    assert_eq!(class, Class::Policy);
    let c = Classifier::builtin().classify_at(Stage::Mail, 550, "5.1.1", "user unknown");
    assert_eq!((c.class, c.scope), (Class::Policy, Scope::Sender));
    // Spam verdict at the greeting: nothing was sent, the host is refused.
    assert_eq!(step(Stage::Connect, "554 spam").0, Class::Block);
    // Operator rules are not vetoed.
    let extra = vec![RuleSpec {
        name: "mine".into(),
        class: Class::BadRecipient,
        scope: None,
        provider: None,
        code: None,
        status: None,
        text: Some("zzz".into()),
        stage: None,
        tier: None,
    }];
    let cl = Classifier::from_sources(&extra, None).unwrap();
    assert_eq!(
        cl.classify_at(Stage::Mail, 550, "", "zzz").class,
        Class::BadRecipient
    );
}

#[test]
fn subject_and_code_are_the_last_resort() {
    assert_eq!(
        step(Stage::Unknown, "550 5.7.0 nope"),
        (Class::Policy, "status-subject:5.7".into(), "status subject")
    );
    assert_eq!(step(Stage::Unknown, "554 5.6.0 nope").0, Class::Content);
    assert_eq!(
        step(Stage::Unknown, "451 nope"),
        (Class::Transient, "code:4xx".into(), "reply code")
    );
    assert_eq!(
        step(Stage::Unknown, "554 5.3.0 Something odd"),
        (Class::Other, "status-subject:5.3".into(), "status subject")
    );
    assert_eq!(step(Stage::Unknown, "").0, Class::Other);
}

/// The weak spots named in issue 15, one reply of each kind.
#[test]
fn refusals_land_on_whom_they_blame() {
    let cases: &[(&str, Class)] = &[
        // The sending host: a listed IP, no reverse DNS.
        (
            "554 5.7.1 Your IP address 198.51.100.7 is listed on our block list",
            Class::Block,
        ),
        (
            "550 5.7.1 Access denied. IP name lookup failed [198.51.100.7]",
            Class::Block,
        ),
        (
            "450 4.7.1 Client host rejected: cannot find your reverse hostname, [198.51.100.7]",
            Class::Block,
        ),
        // The sender address, never the recipient.
        (
            "553 5.1.8 <s@example.com>: Sender address rejected: Domain not found",
            Class::Policy,
        ),
        (
            "550 5.7.1 Sorry, you are sending from an address that has been blacklisted",
            Class::Policy,
        ),
        // Unknown users.
        (
            "550 Requested action not taken: mailbox unavailable",
            Class::BadRecipient,
        ),
        (
            "554 delivery error: dd This user doesn't have a example.com account",
            Class::BadRecipient,
        ),
        // Policy and spam verdicts are the message's, never the IP's.
        (
            "550 5.7.1 Message rejected due to local policy violation",
            Class::Policy,
        ),
        (
            "554 5.7.1 Message blocked because it was classified as spam",
            Class::Content,
        ),
        ("550 5.7.1 Blacklisted URL in message", Class::Content),
        (
            "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
            Class::Policy,
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            Class::BadRecipient,
        ),
        (
            "550 5.7.1 <x>: Helo command rejected: Host not found",
            Class::Block,
        ),
        (
            "421 4.7.0 <unknown[203.0.113.5]>: Client host rejected: too many connections",
            Class::RateLimit,
        ),
        (
            "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
            Class::Block,
        ),
        // A suspended mailbox is the recipient's.
        (
            "550 5.2.1 The email account that you tried to reach is disabled",
            Class::BadRecipient,
        ),
    ];
    for (reply, class) in cases {
        let got = Classifier::builtin().classify_line(reply).1;
        assert_eq!(got.class, *class, "{reply}: rule {}", got.rule);
    }
}

#[test]
fn explain_names_the_signals() {
    let (_, e) = Classifier::builtin().explain(
        Stage::Unknown,
        550,
        "5.1.1",
        "<a@example.org>: user unknown (in reply to RCPT TO command)",
    );
    assert_eq!((e.stage, e.stage_source), (Stage::Rcpt, "text"));
    assert_eq!(e.decided_by, "specific rule");
    assert_eq!(e.matched.as_deref(), Some("user unknown"));
    assert!(
        e.status_meaning
            .as_deref()
            .unwrap()
            .contains("bad destination mailbox")
    );
    assert!(
        e.steps.len() >= 4 && e.steps[0].starts_with("operator rules"),
        "{:?}",
        e.steps
    );
}

#[test]
fn every_class_has_a_default_rule() {
    let specs = parse_rules(DEFAULT_RULES).unwrap();
    for class in Class::ALL {
        assert!(specs.iter().any(|s| s.class == class), "{class}");
    }
}

#[test]
fn operator_rules_come_first_and_bad_regex_is_an_error() {
    let extra = vec![RuleSpec {
        name: "mine".into(),
        class: Class::Block,
        scope: None,
        provider: Some("example".into()),
        code: Some("^550$".into()),
        status: None,
        text: Some("user unknown".into()),
        stage: None,
        tier: None,
    }];
    let cl = Classifier::from_sources(&extra, None).unwrap();
    let got = cl.classify_line("550 5.1.1 user unknown").1;
    assert_eq!((got.class, got.rule.as_str()), (Class::Block, "mine"));
    let mut bad = extra.clone();
    bad[0].text = Some("(".into());
    let e = Classifier::from_sources(&bad, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mine") && e.contains("text regex"), "{e}");
}

/// Whatever a remote server or a bounce sends: an answer, never a panic.
#[test]
fn junk_gets_an_answer() {
    let cl = Classifier::builtin();
    let long = "x".repeat(100_000);
    let junk = [
        "",
        " ",
        "5",
        "550-",
        "550 5.",
        "550 5.7.99999999999",
        "\u{0}\u{1}550",
        "ümlaut 550 ü5.1.1ü",
        ">>> <<< 550",
        "in reply to",
        long.as_str(),
    ];
    for j in junk {
        let _ = cl.classify_line(j);
        for stage in Stage::ALL {
            let _ = cl.explain(stage, 550, j, j);
            let _ = cl.classify_at(stage, 0, "9.9.9", j);
        }
    }
}

/// Built-in text regexes are lower-cased before compiling: an upper-case escape (`\S`, `\D`,
/// `\W`, `\B`, `\P`) would change meaning.
#[test]
fn builtin_patterns_survive_lower_casing() {
    for spec in parse_rules(DEFAULT_RULES).unwrap() {
        let t = spec.text.unwrap_or_default();
        // ASCII, so ASCII lower-casing of text and pattern is all the case folding needed.
        assert!(t.is_ascii(), "rule {}: non-ASCII pattern", spec.name);
        let b = t.as_bytes();
        for i in 1..b.len() {
            assert!(
                !(b[i - 1] == b'\\' && b[i].is_ascii_uppercase()),
                "rule {}: upper-case escape in {t}",
                spec.name
            );
        }
    }
}

/// Throttling replies slow the IP; blocks and 5xx reputation replies take it out (issue 24).
#[test]
fn signals_of_the_providers_replies() {
    let cases: &[(&str, Signal)] = &[
        (
            "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. https://support.google.com/mail/?p=UnsolicitedRateLimitError",
            Signal::Throttle,
        ),
        (
            "451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP reputation.",
            Signal::Throttle,
        ),
        (
            "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints",
            Signal::Throttle,
        ),
        (
            "421 mwinf5c10 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]",
            Signal::Throttle,
        ),
        (
            "421 4.7.0 RL000001 Too many sessions opened",
            Signal::Throttle,
        ),
        ("451 Ip frequency limited", Signal::Throttle),
        (
            "550 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org",
            Signal::Block,
        ),
        (
            "550 5.7.606 Access denied, banned sending IP [203.0.113.5]",
            Signal::Block,
        ),
        (
            "550 5.7.1 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
            Signal::Block,
        ),
        ("550 5.1.1 user unknown", Signal::None),
        ("451 4.3.0 try again later", Signal::None),
        ("250 2.0.0 ok", Signal::None),
    ];
    for (line, want) in cases {
        let (p, got) = Classifier::builtin().classify_line(line);
        assert_eq!(
            got.signal(p.code, &p.status),
            *want,
            "{line}: {} ({})",
            got.class,
            got.rule
        );
    }
    // No reply code (a DSN's status only): the status's class decides.
    let c = Classifier::builtin().classify(0, "4.7.28", "unusual rate of unsolicited mail");
    assert_eq!(c.signal(0, "4.7.28"), Signal::Throttle);
    assert_eq!(c.signal(0, "5.7.1"), Signal::Block);
}
