//! Reply classification: what a remote reply says about the IP, the recipient, the content or the
//! sender.
//!
//! The decision, first step that speaks wins (`poolrelay classify --explain` shows each step):
//! 1. operator rules (config `[[reputation.rule]]`, then `rules_file`), in order;
//! 2. provider rules: a provider's own codes and wordings (`tier = "provider"`);
//! 3. the RFC 3463 enhanced status code when its detail has one meaning (`status`: 5.2.2 full
//!    mailbox, 5.7.25 no PTR, 5.7.26 DMARC, 4.4.7 expired…);
//! 4. specific text rules: phrases that name a cause ("user unknown", "blocked using",
//!    "sender address rejected"), some only at a given SMTP stage;
//! 5. a status detail MTAs also misuse (5.1.1, 5.2.1…);
//! 6. fallback text rules: generic words ("denied", "policy", "try again");
//! 7. the SMTP stage (`stage`): greeting/HELO → the host, MAIL → sender or host, RCPT → the
//!    recipient, DATA → the content;
//! 8. the status code's subject alone (X.7 → policy, X.6 → content, …), then the reply code.
//!
//! Rules are data (`config/bounce-rules.toml`, built in). The class is not the disposition: a
//! `5xx` `block` bounces nobody by itself, it blames the IP.

use std::fmt;
use std::path::Path;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

mod reply;
pub mod stage;
pub mod status;

pub use reply::{ParsedReply, is_status, parse_reply};
pub use stage::Stage;

/// The shipped rules, also built into the binary.
pub const DEFAULT_RULES: &str = include_str!("../../../config/bounce-rules.toml");

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

/// Where a built-in rule sits in the decision (operator rules always come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A provider's own code or wording: before anything else.
    Provider,
    /// A phrase that names a cause: after a definite status code.
    #[default]
    Specific,
    /// A generic word: only when the status code says nothing specific.
    Fallback,
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
    /// The SMTP stages the rule applies at (`connect`, `helo`, `mail`, `rcpt`, `data`,
    /// `unknown`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Vec<String>>,
    /// Built-in rules only: where the rule sits in the decision (default `specific`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
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
    /// Bit per `Stage` (0: any stage).
    stages: u8,
    tier: Tier,
}

impl Rule {
    fn matches(&self, code: &str, status: &str, text: &str, stage: Stage) -> bool {
        (self.stages == 0 || self.stages & stage_bit(stage) != 0)
            && self.code.as_ref().is_none_or(|re| re.is_match(code))
            && self.status.as_ref().is_none_or(|re| re.is_match(status))
            && self.text.as_ref().is_none_or(|re| re.is_match(text))
    }

    fn classification(&self) -> Classification {
        Classification {
            class: self.class,
            scope: self.scope,
            provider: self.provider.clone(),
            rule: self.name.clone(),
        }
    }
}

fn stage_bit(s: Stage) -> u8 {
    1 << (s as u8)
}

/// The result: class, whom it blames, and the rule that said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub class: Class,
    pub scope: Scope,
    pub provider: Option<String>,
    /// The rule's name, or for a structural decision `status:5.2.2`, `stage:mail`,
    /// `status-subject:5.7`, `code:4xx`.
    pub rule: String,
}

/// Which signals the decision saw and which one decided (`poolrelay classify --explain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub code: u16,
    pub status: String,
    /// The registry meaning of the status and how far it is trusted.
    pub status_meaning: Option<String>,
    pub stage: Stage,
    /// Whether the stage was given by the caller or read from the text.
    pub stage_source: &'static str,
    /// The step that decided (`operator rule`, `provider rule`, `status`, `specific rule`,
    /// `likely status`, `fallback rule`, `stage`, `status subject`, `reply code`).
    pub decided_by: &'static str,
    /// For a rule: what its text regex matched.
    pub matched: Option<String>,
    /// Every step in order, with what it found.
    pub steps: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
    /// Rules before this index are the operator's.
    operator: usize,
}

/// One step of the decision: `Some` when it decides.
type Decided = Option<(Classification, &'static str, Option<String>)>;

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
        let operator = specs.len();
        specs.extend(parse_rules(DEFAULT_RULES).map_err(|e| format!("built-in rules: {e}"))?);
        let rules = specs.iter().map(compile).collect::<Result<_, _>>()?;
        Ok(Classifier { rules, operator })
    }

    /// Classifies a reply whose SMTP stage is not known (read from the text when it names one).
    pub fn classify(&self, code: u16, status: &str, text: &str) -> Classification {
        self.classify_at(Stage::Unknown, code, status, text)
    }

    /// Classifies a reply received at `stage` (`Stage::Unknown`: read from the text).
    pub fn classify_at(&self, stage: Stage, code: u16, status: &str, text: &str) -> Classification {
        self.decide(stage, code, status, text, None)
    }

    /// `classify_at` and the signals behind its answer.
    pub fn explain(
        &self,
        stage: Stage,
        code: u16,
        status: &str,
        text: &str,
    ) -> (Classification, Explanation) {
        let mut e = Explanation::default();
        let c = self.decide(stage, code, status, text, Some(&mut e));
        (c, e)
    }

    /// The decision (module doc); `trace` collects the steps for `explain`.
    fn decide(
        &self,
        stage: Stage,
        code: u16,
        status: &str,
        text: &str,
        mut trace: Option<&mut Explanation>,
    ) -> Classification {
        let code_s = if code == 0 {
            String::new()
        } else {
            code.to_string()
        };
        let status = status.trim();
        let status = if is_status(status) { status } else { "" };
        let text = reply::normalise_text(text);
        let (stage, stage_source) = match stage {
            Stage::Unknown => (stage::detect(&text), "text"),
            s => (s, "caller"),
        };
        let meaning = status::meaning(status);
        if let Some(t) = trace.as_deref_mut() {
            t.code = code;
            t.status = status.to_string();
            t.status_meaning =
                meaning.map(|m| format!("{} → {} ({})", m.what, m.class, m.strength.as_str()));
            t.stage = stage;
            t.stage_source = if stage == Stage::Unknown {
                "none"
            } else {
                stage_source
            };
        }
        let note = |trace: &mut Option<&mut Explanation>, s: String| {
            if let Some(t) = trace.as_deref_mut() {
                t.steps.push(s);
            }
        };
        let rules = |range: std::ops::Range<usize>, tier: Option<Tier>, step: &'static str| {
            self.rules[range]
                .iter()
                .filter(|r| tier.is_none_or(|t| r.tier == t))
                .find(|r| r.matches(&code_s, status, &text, stage))
                .map(|r| {
                    let matched = r
                        .text
                        .as_ref()
                        .and_then(|re| re.find(&text))
                        .map(|m| m.as_str().to_string());
                    (r.classification(), step, matched)
                })
        };
        let structural = |class: Class, scope: Option<Scope>, rule: String| Classification {
            class,
            scope: scope.unwrap_or(class.default_scope()),
            provider: None,
            rule,
        };
        let status_step = |min: Strength, step: &'static str| -> Decided {
            let m = meaning.filter(|m| m.strength == min)?;
            Some((
                structural(m.class, m.scope, format!("status:{status}")),
                step,
                None,
            ))
        };
        use status::Strength;
        let n = self.rules.len();
        let steps: [(&str, &dyn Fn() -> Decided); 9] = [
            ("operator rules", &|| {
                rules(0..self.operator, None, "operator rule")
            }),
            ("provider rules", &|| {
                rules(self.operator..n, Some(Tier::Provider), "provider rule")
            }),
            ("definite status", &|| {
                status_step(Strength::Definite, "status")
            }),
            ("specific rules", &|| {
                rules(self.operator..n, Some(Tier::Specific), "specific rule")
            }),
            ("likely status", &|| {
                status_step(Strength::Likely, "likely status")
            }),
            ("fallback rules", &|| {
                rules(self.operator..n, Some(Tier::Fallback), "fallback rule")
            }),
            ("stage", &|| {
                stage_default(stage, code, status, &text).map(|(class, scope)| {
                    (
                        structural(class, scope, format!("stage:{}", stage.as_str())),
                        "stage",
                        None,
                    )
                })
            }),
            ("status subject", &|| {
                let m = meaning?;
                let subject = status.rsplit_once('.').map_or(status, |(a, _)| a);
                Some((
                    structural(m.class, m.scope, format!("status-subject:{subject}")),
                    "status subject",
                    None,
                ))
            }),
            ("reply code", &|| {
                let class = match code {
                    400..=499 => Class::Transient,
                    _ => Class::Other,
                };
                let rule = if code == 0 {
                    "none".to_string()
                } else {
                    format!("code:{}xx", code / 100)
                };
                Some((structural(class, None, rule), "reply code", None))
            }),
        ];
        for (i, (name, step)) in steps.into_iter().enumerate() {
            match step() {
                Some((mut c, decided_by, matched)) => {
                    note(&mut trace, format!("{name}: {} → {}", c.rule, c.class));
                    // The operator's word is final; otherwise the stage vetoes what cannot be.
                    if i > 0
                        && let Some((class, scope, why)) = stage_veto(stage, c.class)
                    {
                        note(
                            &mut trace,
                            format!("stage {}: {why} → {class}", stage.as_str()),
                        );
                        c.class = class;
                        c.scope = scope;
                    }
                    if let Some(t) = trace.as_deref_mut() {
                        t.decided_by = decided_by;
                        t.matched = matched;
                    }
                    return c;
                }
                None => note(&mut trace, format!("{name}: no match")),
            }
        }
        unreachable!("the reply-code step always decides")
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

/// A class the stage rules out: before RCPT TO no recipient has been named, before DATA no
/// content sent, so a refusal there is about the host (greeting, HELO) or the sender (MAIL).
fn stage_veto(stage: Stage, class: Class) -> Option<(Class, Scope, &'static str)> {
    match (stage, class) {
        (
            Stage::Connect | Stage::Helo,
            Class::BadRecipient | Class::MailboxFull | Class::Content,
        ) => Some((
            Class::Block,
            Scope::Ip,
            "no recipient or message sent yet: the host",
        )),
        (Stage::Mail, Class::BadRecipient | Class::MailboxFull) => Some((
            Class::Policy,
            Scope::Sender,
            "no recipient named yet: the sender's address",
        )),
        _ => None,
    }
}

/// What the stage alone says about a refusal (5xx, or 4xx at the greeting) whose status and
/// text named no cause.
fn stage_default(
    stage: Stage,
    code: u16,
    status: &str,
    text: &str,
) -> Option<(Class, Option<Scope>)> {
    let permanent = code >= 500 || (code == 0 && status.starts_with('5'));
    match stage {
        // Refused before any address was sent: the receiver does not want this host.
        Stage::Connect | Stage::Helo if code >= 400 || permanent => Some((Class::Block, None)),
        // At MAIL FROM: the sender when the reply names it, else the host.
        Stage::Mail if permanent => {
            if SENDER_WORDS.is_match(text) {
                Some((Class::Policy, Some(Scope::Sender)))
            } else {
                Some((Class::Block, None))
            }
        }
        Stage::Rcpt if permanent => Some((Class::BadRecipient, None)),
        Stage::Data if permanent => Some((Class::Content, None)),
        _ => None,
    }
}

/// The reply talks about the envelope sender (address, domain), not the connecting host.
static SENDER_WORDS: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"(?i)sender|from|return.path|envelope|originator|\bdomain\b|@")
        .expect("sender regex")
});

pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>, String> {
    let f: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(f.rule)
}

fn compile(s: &RuleSpec) -> Result<Rule, String> {
    if s.code.is_none() && s.status.is_none() && s.text.is_none() && s.stage.is_none() {
        return Err(format!(
            "rule {:?}: needs at least one of code, status, text, stage",
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
    let mut stages = 0u8;
    for name in s.stage.iter().flatten() {
        let st = Stage::parse(name).ok_or_else(|| {
            format!(
                "rule {:?}: unknown stage {name:?} (connect, helo, mail, rcpt, data, unknown)",
                s.name
            )
        })?;
        stages |= stage_bit(st);
    }
    Ok(Rule {
        name: s.name.clone(),
        class: s.class,
        scope: s.scope.unwrap_or(s.class.default_scope()),
        provider: s.provider.clone(),
        code: re("code", &s.code)?,
        status: re("status", &s.status)?,
        text: re("text", &s.text)?,
        stages,
        tier: s.tier.unwrap_or(if s.provider.is_some() {
            Tier::Provider
        } else {
            Tier::Specific
        }),
    })
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
            step(Stage::Mail, "553 <s@example.com> nope").0,
            Class::Policy
        );
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
        let e = Classifier::from_sources(&bad, None).unwrap_err();
        assert!(e.contains("mine") && e.contains("text regex"), "{e}");
    }
}
