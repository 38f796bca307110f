//! Reply classification: what a remote reply says about the IP, the recipient, the content or the
//! sender. Rules are data (`config/bounce-rules.toml`, built in; operators add their own in front),
//! each a set of regexes on the reply code, the enhanced status code and the text; first match wins.
//! The class is not the disposition: a `5xx` `block` bounces nobody by itself, it blames the IP.

use std::fmt;
use std::path::Path;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// The shipped rules, also built into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../config/bounce-rules.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// The IP (or its range) is on a block list.
    Block,
    /// The IP's reputation (complaints, volume, "unsolicited mail from your IP").
    Reputation,
    RateLimit,
    /// Sender / authentication / relaying / PTR policy.
    Policy,
    Content,
    BadRecipient,
    MailboxFull,
    Dns,
    Tls,
    Transient,
    Other,
}

impl Class {
    pub const ALL: [Class; 11] = [
        Class::Block,
        Class::Reputation,
        Class::RateLimit,
        Class::Policy,
        Class::Content,
        Class::BadRecipient,
        Class::MailboxFull,
        Class::Dns,
        Class::Tls,
        Class::Transient,
        Class::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Block => "block",
            Class::Reputation => "reputation",
            Class::RateLimit => "rate-limit",
            Class::Policy => "policy",
            Class::Content => "content",
            Class::BadRecipient => "bad-recipient",
            Class::MailboxFull => "mailbox-full",
            Class::Dns => "dns",
            Class::Tls => "tls",
            Class::Transient => "transient",
            Class::Other => "other",
        }
    }

    /// Who a reply of this class is about, unless the rule says otherwise.
    pub fn default_scope(self) -> Scope {
        match self {
            Class::Block | Class::Reputation | Class::RateLimit => Scope::Ip,
            Class::Policy => Scope::Sender,
            Class::Content => Scope::Content,
            _ => Scope::Recipient,
        }
    }

    /// Replies that say the sending IP is unwelcome: they count against the IP, not the recipient.
    pub fn blames_ip(self) -> bool {
        matches!(self, Class::Block | Class::Reputation)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom the reply blames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Ip,
    Recipient,
    Content,
    Sender,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Recipient => "recipient",
            Scope::Content => "content",
            Scope::Sender => "sender",
        }
    }

    pub fn blame(self) -> &'static str {
        match self {
            Scope::Ip => "the sending IP",
            Scope::Recipient => "the recipient (address or destination)",
            Scope::Content => "the message content",
            Scope::Sender => "the sender (envelope, domain or authentication)",
        }
    }
}

/// One rule as written in TOML (`[[rule]]` in a rules file, `[[reputation.rule]]` in the config).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub class: Class,
    pub scope: Option<Scope>,
    /// The provider this reply comes from, when the text identifies it (e.g. `microsoft`).
    pub provider: Option<String>,
    /// Regex on the three-digit reply code, e.g. `^5`.
    pub code: Option<String>,
    /// Regex on the enhanced status code, e.g. `^5\.7\.`.
    pub status: Option<String>,
    /// Regex on the text, case-insensitive.
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    class: Class,
    scope: Scope,
    provider: Option<String>,
    code: Option<Regex>,
    status: Option<Regex>,
    text: Option<Regex>,
}

/// The result: class, whom it blames, and the rule that said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub class: Class,
    pub scope: Scope,
    pub provider: Option<String>,
    pub rule: String,
}

/// A reply split into its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParsedReply {
    /// 0 when the text carries none.
    pub code: u16,
    pub status: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
}

impl Classifier {
    /// The built-in rules only (compiled once per process).
    pub fn builtin() -> Classifier {
        static BUILTIN: std::sync::LazyLock<Classifier> = std::sync::LazyLock::new(|| {
            Classifier::from_sources(&[], None).expect("built-in rules compile")
        });
        BUILTIN.clone()
    }

    /// Operator rules first (config `[[reputation.rule]]`, then `rules_file`), built-in last.
    pub fn from_sources(
        extra: &[RuleSpec],
        rules_file: Option<&Path>,
    ) -> Result<Classifier, String> {
        let mut specs: Vec<RuleSpec> = extra.to_vec();
        if let Some(path) = rules_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("rules file {}: {e}", path.display()))?;
            specs.extend(parse_rules(&text).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        specs.extend(parse_rules(DEFAULT_RULES).map_err(|e| format!("built-in rules: {e}"))?);
        let rules = specs.iter().map(compile).collect::<Result<_, _>>()?;
        Ok(Classifier { rules })
    }

    pub fn classify(&self, code: u16, status: &str, text: &str) -> Classification {
        let code_s = if code == 0 {
            String::new()
        } else {
            code.to_string()
        };
        let status = status.trim();
        let text = normalise_text(text);
        for r in &self.rules {
            let ok = r.code.as_ref().is_none_or(|re| re.is_match(&code_s))
                && r.status.as_ref().is_none_or(|re| re.is_match(status))
                && r.text.as_ref().is_none_or(|re| re.is_match(&text));
            if ok {
                return Classification {
                    class: r.class,
                    scope: r.scope,
                    provider: r.provider.clone(),
                    rule: r.name.clone(),
                };
            }
        }
        // Only reached when the rules lack a catch-all.
        let class = match code {
            400..=499 => Class::Transient,
            _ => Class::Other,
        };
        Classification {
            class,
            scope: class.default_scope(),
            provider: None,
            rule: "none".into(),
        }
    }

    /// Classifies a reply given as one string (`550 5.1.1 user unknown`, multi-line allowed).
    pub fn classify_line(&self, reply: &str) -> (ParsedReply, Classification) {
        let p = parse_reply(reply);
        let c = self.classify(p.code, &p.status, &p.text);
        (p, c)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>, String> {
    let f: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(f.rule)
}

fn compile(s: &RuleSpec) -> Result<Rule, String> {
    if s.code.is_none() && s.status.is_none() && s.text.is_none() {
        return Err(format!(
            "rule {:?}: needs at least one of code, status, text",
            s.name
        ));
    }
    let re = |what: &str, p: &Option<String>| -> Result<Option<Regex>, String> {
        p.as_deref()
            .map(|p| {
                RegexBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("rule {:?}: bad {what} regex: {e}", s.name))
            })
            .transpose()
    };
    Ok(Rule {
        name: s.name.clone(),
        class: s.class,
        scope: s.scope.unwrap_or(s.class.default_scope()),
        provider: s.provider.clone(),
        code: re("code", &s.code)?,
        status: re("status", &s.status)?,
        text: re("text", &s.text)?,
    })
}

/// One line of text: continuation prefixes (`550-5.7.1 `) removed, whitespace collapsed.
fn normalise_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = strip_reply_prefix(line.trim());
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(line);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `550-5.7.1 text` / `550 text` → `text` (only when the line starts with a reply code).
fn strip_reply_prefix(line: &str) -> &str {
    let b = line.as_bytes();
    if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-') {
        let rest = &line[4..];
        match split_status(rest) {
            Some((_, after)) => after,
            None => rest,
        }
    } else {
        line
    }
}

/// `5.7.1 rest` → (`5.7.1`, `rest`).
fn split_status(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    let tok = s[..end].trim_end_matches([':', ',', ';']);
    is_status(tok).then(|| (tok, s[end..].trim_start()))
}

/// `X.Y.Z` with X in 2/4/5, Y up to 3 digits, Z up to 3 digits.
pub fn is_status(tok: &str) -> bool {
    let parts: Vec<&str> = tok.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits `421-4.7.28 text…` (possibly several lines, possibly a `smtp;` DSN prefix) into code,
/// enhanced status and text.
pub fn parse_reply(reply: &str) -> ParsedReply {
    let mut s = reply.trim();
    // DSN Diagnostic-Code form: `smtp; 550 ...`
    if let Some((kind, rest)) = s.split_once(';')
        && !kind.is_empty()
        && kind.len() < 20
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        s = rest.trim();
    }
    let b = s.as_bytes();
    let mut out = ParsedReply::default();
    let mut rest = s;
    if b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && matches!(b[0], b'2'..=b'5')
        && (b.len() == 3 || matches!(b[3], b' ' | b'-' | b'\r' | b'\n'))
    {
        out.code = s[..3].parse().unwrap_or(0);
        rest = s.get(4..).unwrap_or("");
    }
    if let Some((st, after)) = split_status(rest) {
        out.status = st.to_string();
        rest = after;
    }
    out.text = normalise_text(rest);
    if out.status.is_empty() {
        // A status later in the text (`550 Requested action not taken: 5.1.1 …`).
        if let Some(st) = out
            .text
            .split_whitespace()
            .map(|t| t.trim_matches(|c: char| !c.is_ascii_digit()))
            .find(|t| {
                is_status(t) && (out.code == 0 || t.as_bytes()[0] == b'0' + (out.code / 100) as u8)
            })
        {
            out.status = st.to_string();
        }
    }
    out
}

#[cfg(test)]
mod tests {
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

    /// One real-world-shaped sample per default rule: each rule is reachable (no rule before it
    /// swallows its sample) and says what it should.
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
                "gmail-4.7.28",
                "421 4.7.28 Please visit https://support.google.com/mail/answer/188131 for more information.",
            ),
            (
                "gmail-unsolicited-message",
                "550-5.7.1 [203.0.113.5] Our system has detected that this message is\n550 5.7.1 likely unsolicited mail.",
            ),
            (
                "gmail-ptr",
                "550 5.7.25 [203.0.113.5] The IP address sending this message does not have a PTR record setup",
            ),
            (
                "yahoo-tss",
                "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user complaints",
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
            (
                "ip-on-blocklist",
                "554 5.7.1 Your IP address 203.0.113.5 has been blacklisted by our administrators",
            ),
            (
                "reputation",
                "550 5.7.1 Mail from 203.0.113.5 refused due to poor sender reputation",
            ),
            (
                "rate-limit",
                "421 Too many concurrent SMTP connections from this IP address; please try again later",
            ),
            (
                "rate-limit-status",
                "421 4.7.0 Try again later, closing connection.",
            ),
            (
                "status-expired",
                "554 4.4.7 Message expired: unable to deliver in 840 minutes",
            ),
            ("status-media", "554 5.6.0 Media error"),
            ("status-mailbox-full-early", "552 5.2.2 mailbox full"),
            (
                "content-format",
                "550 5.7.1 Messages with multiple addresses in From: header are not accepted",
            ),
            (
                "auth-dmarc-spf-dkim",
                "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
            ),
            (
                "auth-status",
                "550 5.7.23 The message was rejected because of Sender Policy Framework violation",
            ),
            ("tls", "530 5.7.0 Must issue a STARTTLS command first"),
            ("tls-status", "454 4.7.10 Encryption too weak"),
            ("dns", "451 DNS lookup for example.org failed"),
            ("mailbox-full", "550 Requested mailbox is full"),
            ("bad-recipient", "550 5.1.1 <a@example.org>: user unknown"),
            (
                "content-size",
                "552 Message size exceeds fixed maximum message size",
            ),
            (
                "content",
                "554 5.7.1 Message rejected as spam by content filter",
            ),
            ("relaying", "554 5.7.1 <a@example.org>: Relay access denied"),
            (
                "sender-rejected",
                "553 5.7.1 <s@example.com>: Sender address rejected: not owned by user",
            ),
            ("policy", "550 5.7.1 Policy reason"),
            ("transient-network", "421 4.4.2 Connection timed out"),
            (
                "status-bad-recipient",
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
            ),
            ("status-dns", "550 5.1.2 Bad destination system address"),
            ("status-content", "550 5.2.3 Too long"),
            ("status-policy", "550 5.7.0 Not today"),
            ("status-transient", "450 4.3.2 Please come back"),
            ("code-transient", "450 Please come back"),
            ("catch-all", "554 5.3.0 Something odd"),
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
        }];
        let cl = Classifier::from_sources(&extra, None).unwrap();
        let got = cl.classify_line("550 5.1.1 user unknown").1;
        assert_eq!((got.class, got.rule.as_str()), (Class::Block, "mine"));
        let mut bad = extra.clone();
        bad[0].text = Some("(".into());
        let e = Classifier::from_sources(&bad, None).unwrap_err();
        assert!(e.contains("mine") && e.contains("text regex"), "{e}");
    }

    #[test]
    fn parse_reply_forms() {
        let p = parse_reply("smtp; 550-5.7.1 a\r\n550 5.7.1 b");
        assert_eq!(
            (p.code, p.status.as_str(), p.text.as_str()),
            (550, "5.7.1", "a b")
        );
        let p = parse_reply("550 Requested action not taken: mailbox unavailable (5.1.1)");
        assert_eq!((p.code, p.status.as_str()), (550, "5.1.1"));
        let p = parse_reply("user unknown");
        assert_eq!(
            (p.code, p.status.as_str(), p.text.as_str()),
            (0, "", "user unknown")
        );
    }
}
