//! Destination providers: MX host suffix → provider name, with per-provider throttles. The
//! default table is `config/providers.toml`, built in; `[[provider]]` in the config extends it.

use std::time::Duration;

use serde::Deserialize;

use super::settings::Provider;

const BUILT_IN: &str = include_str!("../../config/providers.toml");

/// Name of the provider for MX hosts no entry matches.
pub const OTHER: &str = "other";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    provider: Vec<Provider>,
}

pub struct Providers {
    list: Vec<Provider>,
    /// (suffix, index into `list`), longest suffix first.
    suffixes: Vec<(String, usize)>,
    default_backoff: Duration,
}

impl Providers {
    /// The built-in table extended by `configured`; `default_backoff` is `[throttle] backoff`.
    pub fn new(configured: &[Provider], default_backoff: Duration) -> Providers {
        let file: File = toml::from_str(BUILT_IN).expect("built-in config/providers.toml parses");
        let mut list = file.provider;
        for p in configured {
            match list.iter_mut().find(|q| q.name == p.name) {
                Some(q) => *q = p.clone(),
                None => list.push(p.clone()),
            }
        }
        if !list.iter().any(|p| p.name == OTHER) {
            list.push(Provider {
                name: OTHER.into(),
                mx_suffixes: Vec::new(),
                max_connections: 0,
                max_per_hour: 0,
                farm_max_per_hour: 0,
                max_per_connection: 0,
                backoff: None,
            });
        }
        let mut suffixes: Vec<(String, usize)> = list
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.mx_suffixes
                    .iter()
                    .map(move |s| (normalise(s).to_string(), i))
            })
            .filter(|(s, _)| !s.is_empty())
            .collect();
        // Longest first; on equal length the operator's (later in `list`) entry wins.
        suffixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.1.cmp(&a.1)));
        Providers {
            list,
            suffixes,
            default_backoff,
        }
    }

    /// The provider of an MX host: the entry with the longest suffix matching at a label
    /// boundary (`aspmx.l.google.com` matches `google.com`, `notgoogle.com` does not).
    pub fn of(&self, mx_host: &str) -> &str {
        let host = normalise(mx_host).to_ascii_lowercase();
        for (suffix, i) in &self.suffixes {
            if host == *suffix
                || (host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
            {
                return &self.list[*i].name;
            }
        }
        OTHER
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.list.iter().find(|p| p.name == name)
    }

    pub fn backoff(&self, name: &str) -> Duration {
        self.get(name)
            .and_then(|p| p.backoff)
            .map(|d| d.0)
            .unwrap_or(self.default_backoff)
    }
}

fn normalise(s: &str) -> &str {
    s.trim().trim_start_matches('.').trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn providers(extra: &str) -> Providers {
        let text = format!(
            "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n{extra}"
        );
        let c = crate::config::Config::parse(Path::new("t.toml"), &text).unwrap();
        Providers::new(&c.provider, c.throttle.backoff.0)
    }

    #[test]
    fn suffix_matching_at_label_boundaries() {
        let p = providers("");
        assert_eq!(p.of("gmail-smtp-in.l.google.com."), "gmail");
        assert_eq!(p.of("ALT1.ASPMX.L.GOOGLE.COM"), "gmail");
        assert_eq!(p.of("example-com.mail.protection.outlook.com"), "microsoft");
        assert_eq!(p.of("mta7.am0.yahoodns.net"), "yahoo");
        assert_eq!(p.of("smtp-in.orange.fr"), "orange");
        assert_eq!(p.of("mx1.free.fr"), "free");
        assert_eq!(p.of("mx-ha03.web.de"), "gmx");
        assert_eq!(p.of("notgoogle.com"), "other");
        assert_eq!(p.of("mx.example.org"), "other");
    }

    #[test]
    fn operators_extend_and_replace() {
        let p = providers(
            "[[provider]]\nname = \"testmail\"\nmx_suffixes = [\"mx.test\"]\nmax_per_hour = 7\n[[provider]]\nname = \"gmail\"\nmx_suffixes = [\"gmail.test\"]\nbackoff = \"1m\"\n",
        );
        assert_eq!(p.of("a.mx.test"), "testmail");
        assert_eq!(p.get("testmail").unwrap().max_per_hour, 7);
        assert_eq!(p.of("x.gmail.test"), "gmail");
        assert_eq!(p.of("aspmx.l.google.com"), "other", "replaced entry");
        assert_eq!(p.backoff("gmail"), Duration::from_secs(60));
        assert_eq!(p.backoff("testmail"), Duration::from_secs(600));
    }
}
