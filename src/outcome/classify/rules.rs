//! The rules as data: `[[rule]]` tables as written (`RuleSpec`), read from TOML and compiled to
//! the regexes `Classifier` runs.

use std::path::PathBuf;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::{Class, Classification, Scope, Stage, Tier};

/// Why the rules did not compile: a rules file unread or not TOML, or a rule that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    FileSyntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("built-in rules: {0}")]
    BuiltinSyntax(#[source] toml::de::Error),
    #[error("rule {rule:?}: needs at least one of code, status, text, stage")]
    NoMatcher { rule: String },
    /// `what`: the field (`code`, `status`, `text`).
    #[error("rule {rule:?}: bad {what} regex: {source}")]
    BadRegex {
        rule: String,
        what: &'static str,
        #[source]
        source: regex::Error,
    },
    #[error("rule {rule:?}: unknown stage {stage:?} (connect, helo, mail, rcpt, data, unknown)")]
    UnknownStage { rule: String, stage: String },
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
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) class: Class,
    pub(super) scope: Scope,
    pub(super) provider: Option<String>,
    pub(super) code: Option<Regex>,
    pub(super) status: Option<Regex>,
    pub(super) text: Option<Regex>,
    /// Bit per `Stage` (0: any stage).
    pub(super) stages: u8,
    pub(super) tier: Tier,
    /// Built-in: the text regex is lower-case and runs on the lower-cased text (a case-sensitive
    /// automaton is about twice as fast as a case-insensitive one).
    pub(super) lower: bool,
}

impl Rule {
    /// `texts`: the text as given and lower-cased.
    pub(super) fn matches(
        &self,
        code: &str,
        status: &str,
        texts: (&str, &str),
        stage: Stage,
    ) -> bool {
        (self.stages == 0 || self.stages & stage_bit(stage) != 0)
            && self.code.as_ref().is_none_or(|re| re.is_match(code))
            && self.status.as_ref().is_none_or(|re| re.is_match(status))
            && self
                .text
                .as_ref()
                .is_none_or(|re| re.is_match(if self.lower { texts.1 } else { texts.0 }))
    }

    pub(super) fn classification(&self) -> Classification {
        Classification {
            class: self.class,
            scope: self.scope,
            provider: self.provider.clone(),
            rule: self.name.clone(),
        }
    }
}

pub(super) fn stage_bit(s: Stage) -> u8 {
    1 << (s as u8)
}

pub fn parse_rules(text: &str) -> Result<Vec<RuleSpec>, toml::de::Error> {
    let f: RulesFile = toml::from_str(text)?;
    Ok(f.rule)
}

/// `builtin`: the text regex is lower-cased and matched case-sensitively against the lower-cased
/// text (the built-in patterns use no upper-case escapes such as `\S`; a test checks).
pub(super) fn compile(s: &RuleSpec, builtin: bool) -> Result<Rule, RuleError> {
    if s.code.is_none() && s.status.is_none() && s.text.is_none() && s.stage.is_none() {
        return Err(RuleError::NoMatcher {
            rule: s.name.clone(),
        });
    }
    let re = |what: &'static str, p: &Option<String>| -> Result<Option<Regex>, RuleError> {
        p.as_deref()
            .map(|p| {
                let lower = builtin && what == "text";
                RegexBuilder::new(&if lower {
                    p.to_ascii_lowercase()
                } else {
                    p.to_string()
                })
                .case_insensitive(!lower)
                .build()
                .map_err(|source| RuleError::BadRegex {
                    rule: s.name.clone(),
                    what,
                    source,
                })
            })
            .transpose()
    };
    let mut stages = 0u8;
    for name in s.stage.iter().flatten() {
        let st = Stage::parse(name).ok_or_else(|| RuleError::UnknownStage {
            rule: s.name.clone(),
            stage: name.clone(),
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
        lower: builtin,
    })
}
