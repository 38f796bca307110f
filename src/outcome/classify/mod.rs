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
//! `5xx` `block` bounces nobody by itself, it blames the IP; `Classification::signal` says what
//! the reply means for the sending IP (block, throttle, nothing).

use std::fmt;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};

mod reply;
mod rules;
pub mod stage;
pub mod status;

pub use reply::{ParsedReply, is_status, parse_reply};
use rules::{Rule, compile};
pub use rules::{RuleError, RuleSpec, parse_rules};
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

/// What a reply tells about the sending IP × provider (beyond the recipient's fate).
///
/// Rules, by structure (the reply code and the class the rules gave), not by new text lists:
/// - a temporary reply (4xx) of class `reputation` or `rate-limit` is throttling: slow down
///   (Gmail 421 4.7.28, Microsoft 451 4.7.650, Yahoo 421 [TSS04], Orange OFR_999, Comcast RL…,
///   QQ frequency limits: the providers' rules in `config/bounce-rules.toml` give the class);
/// - class `block` at any code, and `reputation` at 5xx, is a block: the IP is unwelcome;
/// - anything else (successes included) says nothing about the IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Block,
    Throttle,
    None,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Block => "block",
            Signal::Throttle => "throttle",
            Signal::None => "none",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Classification {
    /// The signal of a reply with this classification and reply `code` (0: none given, then
    /// the enhanced `status`'s first digit says temporary or permanent).
    pub fn signal(&self, code: u16, status: &str) -> Signal {
        let class = match code {
            0 => status.trim().chars().next().and_then(|c| c.to_digit(10)),
            c => Some(u32::from(c / 100)),
        };
        match (class, self.class) {
            (Some(2 | 3), _) => Signal::None,
            (_, Class::Block) => Signal::Block,
            (Some(4), Class::Reputation | Class::RateLimit) => Signal::Throttle,
            (Some(5), Class::Reputation) => Signal::Block,
            _ => Signal::None,
        }
    }
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
    ) -> Result<Classifier, RuleError> {
        let mut specs: Vec<RuleSpec> = extra.to_vec();
        if let Some(path) = rules_file {
            let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            specs.extend(parse_rules(&text).map_err(|source| RuleError::FileSyntax {
                path: path.to_path_buf(),
                source,
            })?);
        }
        let operator = specs.len();
        specs.extend(parse_rules(DEFAULT_RULES).map_err(RuleError::BuiltinSyntax)?);
        let rules = specs
            .iter()
            .enumerate()
            .map(|(i, s)| compile(s, i >= operator))
            .collect::<Result<_, _>>()?;
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
        // ASCII only: byte offsets stay those of `text` (the built-in patterns are ASCII).
        let lower = text.to_ascii_lowercase();
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
        let explaining = trace.is_some();
        let rules = |range: std::ops::Range<usize>, tier: Option<Tier>, step: &'static str| {
            self.rules[range]
                .iter()
                .filter(|r| tier.is_none_or(|t| r.tier == t))
                .find(|r| r.matches(&code_s, status, (&text, &lower), stage))
                .map(|r| {
                    // A second search, only for `explain` (the hot path needs no position).
                    let matched = r
                        .text
                        .as_ref()
                        .filter(|_| explaining)
                        .and_then(|re| re.find(if r.lower { &lower } else { &text }))
                        .and_then(|m| text.get(m.range()))
                        .map(str::to_string);
                    (r.classification(), step, matched)
                })
        };
        let structural = |class: Class, scope: Option<Scope>, rule: String| Classification {
            class,
            scope: scope.unwrap_or(class.default_scope()),
            provider: None,
            rule,
        };
        let status_step = |strength: Strength, step: &'static str| -> Decided {
            let m = meaning.filter(|m| m.strength == strength)?;
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
                stage_default(stage, code, status, &lower).map(|(class, scope)| {
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

/// What the stage alone says about a permanent refusal whose status and text (lower-cased)
/// named no cause (a 4xx says nothing by its stage: a busy greeting is not a block).
fn stage_default(
    stage: Stage,
    code: u16,
    status: &str,
    text: &str,
) -> Option<(Class, Option<Scope>)> {
    let permanent = code >= 500 || (code == 0 && status.starts_with('5'));
    match stage {
        // Refused before any address was sent: the receiver does not want this host.
        Stage::Connect | Stage::Helo if permanent => Some((Class::Block, None)),
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

/// The reply talks about the envelope sender (address, domain), not the connecting host. Not
/// "from" or "@": the MTAs' stage prose ("after MAIL FROM:<s@example.com>") has them.
static SENDER_WORDS: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
    Regex::new(r"sender|return.path|envelope|originator|\bdomain\b|\baddress\b")
        .expect("sender regex")
});

#[cfg(test)]
mod tests;
