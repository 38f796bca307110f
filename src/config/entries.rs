//! Checks of each entry of an array of tables: `[[listen]]`, `[[route]]`, `[[pool]]`,
//! `[[pool.ip]]`, `[[pool_rule]]`, `[[provider]]`, `[[access.sender_login]]` (ranges of their
//! numbers, and `[[warmup.schedule]]`, are in `ranges`). Rules:
//! - an error points at its own entry: the line setting the key in that entry, else the
//!   entry's `[[…]]` header, else (an inline array) the first line naming the key;
//! - one error per fault: what `ranges` checks is not checked here again.

use std::path::Path;

use super::{Config, ConfigError, ListenAuth, ListenTls, ranges};

/// Collects errors located in the `n`th entry of a section.
struct At<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl At<'_> {
    /// An error on `key` (`""`: the entry as a whole) of the `n`th `[[section]]`.
    fn err(&mut self, section: &str, n: usize, key: &str, message: String) {
        let line = ranges::entry_line(self.text, section, n, key)
            .or_else(|| ranges::key_line(self.text, section, key));
        let label = if key.is_empty() {
            section.rsplit('.').next().unwrap_or(section)
        } else {
            key
        };
        self.errors.push(ConfigError {
            file: self.path.to_owned(),
            line,
            message: format!("{label}: {message}"),
        });
    }
}

pub(super) fn check(c: &Config, path: &Path, text: &str) -> Vec<ConfigError> {
    let mut at = At {
        path,
        text,
        errors: Vec::new(),
    };
    for (n, l) in c.listen.iter().enumerate() {
        if l.tls == ListenTls::Implicit && c.tls.is_none() {
            let m = format!(
                "listener {} uses implicit TLS but [tls] is missing",
                l.address
            );
            at.err("listen", n, "tls", m);
        }
        if l.auth != ListenAuth::None && c.access.users_file.is_none() {
            let m = format!(
                "listener {} offers AUTH but access.users_file is not set",
                l.address
            );
            at.err("listen", n, "auth", m);
        }
    }
    for (n, s) in c.access.sender_login.iter().enumerate() {
        if let Some(p) = s.problem() {
            at.err("access.sender_login", n, "", p);
        }
    }
    for (n, r) in c.route.iter().enumerate() {
        if r.target().is_none() {
            let m = format!("route host {:?} is not host:port", r.host);
            at.err("route", n, "host", m);
        }
    }
    pools(c, &mut at);
    for (n, r) in c.pool_rule.iter().enumerate() {
        if !c.pool.iter().any(|p| p.name == r.pool) {
            let m = format!("rule names unknown pool {:?}", r.pool);
            at.err("pool_rule", n, "pool", m);
        }
        if r.user.is_none() && r.sender_domain.is_none() && r.sender.is_none() {
            let m = format!(
                "rule for pool {:?} needs user, sender_domain or sender",
                r.pool
            );
            at.err("pool_rule", n, "", m);
        }
    }
    for (n, p) in c.provider.iter().enumerate() {
        if p.name.trim().is_empty() {
            at.err("provider", n, "name", "provider needs a name".into());
        }
    }
    at.errors
}

/// `[[pool]]` and its `[[pool.ip]]` entries, counted over the whole file as their headers are.
fn pools(c: &Config, at: &mut At<'_>) {
    let mut seen = std::collections::HashSet::new();
    let mut k = 0;
    for (n, p) in c.pool.iter().enumerate() {
        if !seen.insert(p.name.as_str()) {
            at.err(
                "pool",
                n,
                "name",
                format!("pool {:?} is defined twice", p.name),
            );
        }
        if p.ip.is_empty() {
            at.err(
                "pool",
                n,
                "",
                format!("pool {:?} has no [[pool.ip]]", p.name),
            );
        }
        for ip in &p.ip {
            if let Some(w) = &ip.warmup
                && w != "standard"
                && !c.warmup.schedule.iter().any(|s| &s.name == w)
            {
                let m = format!("IP {} uses unknown warm-up schedule {w:?}", ip.address);
                at.err("pool.ip", k, "warmup", m);
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const MIN: &str = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";

    fn errors(extra: &str) -> Vec<String> {
        match super::Config::parse(Path::new("t.toml"), &format!("{MIN}{extra}")) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    const POOL: &str = "[[pool]]\nname = \"p\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"a.test\"\nwarmup = \"standard\"\nweight = 1\n";

    /// Each case: extra config after MIN (5 lines), the one error's line and its start.
    #[test]
    fn an_error_in_a_later_entry_points_at_that_entry() {
        let second_ip = format!(
            "{POOL}[[pool.ip]]\naddress = \"127.0.0.11\"\nhelo = \"b.test\"\nwarmup = \"nope\"\nweight = 0\n"
        );
        let e = errors(&second_ip);
        assert_eq!(
            e,
            [
                "t.toml:16: warmup: IP 127.0.0.11 uses unknown warm-up schedule \"nope\"",
                "t.toml:17: pool.ip.weight: 0 is out of range (1 to 1000000)",
            ]
        );
        for (extra, want) in [
            (
                "[[listen]]\naddress = \"127.0.0.1:2526\"\ntls = \"implicit\"\nauth = \"none\"\n",
                "t.toml:8: tls: listener 127.0.0.1:2526",
            ),
            (
                "[[route]]\ndomain = \"a.test\"\nhost = \"127.0.0.1:1\"\n[[route]]\ndomain = \"b.test\"\nhost = \"nope\"\n",
                "t.toml:11: host: route host",
            ),
            (
                &format!(
                    "{POOL}[[pool]]\nname = \"p\"\n[[pool.ip]]\naddress = \"127.0.0.12\"\nhelo = \"c.test\"\n"
                ),
                "t.toml:14: name: pool \"p\" is defined twice",
            ),
            (
                &format!(
                    "{POOL}[[pool_rule]]\nsender_domain = \"a.test\"\npool = \"p\"\n[[pool_rule]]\nsender_domain = \"b.test\"\npool = \"q\"\n"
                ),
                "t.toml:18: pool: rule names unknown pool \"q\"",
            ),
            (
                "[[provider]]\nname = \"a\"\nmx_suffixes = [\"a.test\"]\n[[provider]]\nname = \"b\"\nmx_suffixes = [\"b.test\"]\nmax_connections = 1000000\n",
                "t.toml:12: provider.max_connections: 1000000 is out of range",
            ),
            (
                "[[access.sender_login]]\nuser = \"a\"\nsenders = [\"a.test\"]\n[[access.sender_login]]\nuser = \"b\"\nsenders = []\n",
                "t.toml:9: sender_login: senders needs",
            ),
            (
                "[[warmup.schedule]]\nname = \"a\"\ndaily = [1]\n[[warmup.schedule]]\nname = \"b\"\ndaily = []\n",
                "t.toml:11: warmup.schedule.daily: schedule \"b\": has no days",
            ),
            (
                "[[warmup.schedule]]\nname = \"a\"\ndaily = [1]\n[[warmup.schedule]]\nname = \"b\"\ndaily = [2000000000]\n",
                "t.toml:11: warmup.schedule.daily: 2000000000 is out of range",
            ),
        ] {
            let e = errors(extra);
            assert_eq!(e.len(), 1, "{extra}: {e:?}");
            assert!(e[0].starts_with(want), "{extra}: {e:?}");
        }
    }
}
