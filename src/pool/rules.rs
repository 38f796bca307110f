//! `[[pool_rule]]`: which pool a message uses, by authenticated user, sender domain or sender
//! address pattern. First matching rule wins; no match → the default pool.

use crate::config::PoolRule;

/// Case-insensitive glob with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

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
    fn globs() {
        assert!(glob("*.example.com", "a.b.Example.COM"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("news-*@example.com", "news-42@example.com"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
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
