//! `[[pool_rule]]`: which pool a message uses, by authenticated user, sender domain or sender
//! address pattern. First matching rule wins; no match → the default pool.

use super::settings::PoolRule;

pub use crate::util::glob::glob;

/// True when every condition the rule sets matches.
pub fn matches(rule: &PoolRule, user: Option<&str>, sender: &str) -> bool {
    if let Some(u) = &rule.user
        && !user.is_some_and(|user| glob(u, user))
    {
        return false;
    }
    if let Some(d) = &rule.sender_domain {
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if domain.is_empty() || !glob(d, domain.trim_end_matches('.')) {
            return false;
        }
    }
    if let Some(s) = &rule.sender
        && !glob(s, sender)
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(user: Option<&str>, domain: Option<&str>, sender: Option<&str>) -> PoolRule {
        PoolRule {
            pool: "p".into(),
            user: user.map(Into::into),
            sender_domain: domain.map(Into::into),
            sender: sender.map(Into::into),
        }
    }

    #[test]
    fn rule_conditions() {
        assert!(matches(
            &rule(Some("bulk"), None, None),
            Some("bulk"),
            "x@y"
        ));
        assert!(!matches(&rule(Some("bulk"), None, None), None, "x@y"));
        assert!(matches(
            &rule(None, Some("news.test"), None),
            None,
            "a@News.test"
        ));
        assert!(!matches(&rule(None, Some("news.test"), None), None, ""));
        assert!(!matches(
            &rule(Some("bulk"), Some("news.test"), None),
            Some("bulk"),
            "a@other.test"
        ));
        assert!(matches(
            &rule(None, None, Some("*-bounces@*")),
            None,
            "l-bounces@x.test"
        ));
    }
}
