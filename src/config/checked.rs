//! One check for every config path: `check-config`, `serve` at start and every reload (SIGHUP,
//! `poolrelay reload`) take a config only through [`Checked::load`], so a config one of them
//! refuses, all refuse: a reload never applies what the next restart would refuse. Rules:
//! - the file parses and every key is valid and in range (`Config::parse`, `ranges`);
//! - what start loads loads: DKIM keys, the users file, TLS certificate and key, reply rules,
//!   DNSBL zones, `[doctor] domains`, `delivery.ca_file`, the system DNS configuration when
//!   `[dns] nameservers` is empty;
//! - what start needs from the system is there: the hard open-file limit covers
//!   `max_sessions` + `delivery.concurrency` + a margin; an existing admin token file is a
//!   readable regular file holding a token; `data_dir` is a directory (or does not exist yet);
//! - nothing changes: no file is created, no limit raised (start does that afterwards);
//! - every error is reported, each once, at the line of its key (a file it names, like the
//!   users file, is named with its own line).

use std::path::Path;

use super::{Config, ConfigError, ranges::key_line};

/// Descriptors beyond sessions and delivery connections: listeners, spool and state files,
/// admin API, DNS, the log.
pub const FD_MARGIN: u64 = 256;

/// A config that passed every check start makes.
#[derive(Debug, Clone)]
pub struct Checked(Config);

impl Checked {
    /// Reads `path` and runs every check (module doc), without side effects.
    pub fn load(path: &Path) -> Result<Checked, Vec<ConfigError>> {
        let text = super::read_text(path)?;
        let config = Config::parse(path, &text)?;
        let errors = environment(&config, path, &text);
        if errors.is_empty() {
            Ok(Checked(config))
        } else {
            Err(errors)
        }
    }

    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl std::ops::Deref for Checked {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

/// Descriptors `config` needs open at once.
pub fn open_files_needed(config: &Config) -> u64 {
    (config.limits.max_sessions as u64)
        .saturating_add(config.delivery.concurrency as u64)
        .saturating_add(FD_MARGIN)
}

/// Why the open-file limit cannot serve the config, or could not be raised for it.
#[derive(Debug, thiserror::Error)]
pub enum OpenFileError {
    #[error("cannot read the open file limit: {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "open file limit too low: limits.max_sessions ({max_sessions}) + delivery.concurrency ({concurrency}) + {margin} \
         need {need} descriptors, the hard limit is {hard}; raise it (systemd: LimitNOFILE={need}; \
         shell: ulimit -n {need}) or lower max_sessions",
        margin = FD_MARGIN
    )]
    TooLow {
        max_sessions: usize,
        concurrency: usize,
        need: u64,
        hard: u64,
    },
    #[error("cannot raise the open file limit to {need}: {source}")]
    Raise {
        need: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Why the open-file limit cannot serve `config` (start raises the soft limit up to the hard one).
pub fn open_file_problem(config: &Config) -> Option<String> {
    let need = open_files_needed(config);
    let hard = match open_file_limits() {
        Ok((_, hard)) => hard,
        Err(e) => return Some(OpenFileError::Read(e).to_string()),
    };
    (hard < need).then(|| {
        OpenFileError::TooLow {
            max_sessions: config.limits.max_sessions,
            concurrency: config.delivery.concurrency,
            need,
            hard,
        }
        .to_string()
    })
}

/// RLIMIT_NOFILE: (soft, hard).
pub fn open_file_limits() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The checks beyond the file itself (module doc).
fn environment(config: &Config, path: &Path, text: &str) -> Vec<ConfigError> {
    let mut errors = system(config, path, text);
    errors.extend(loaded(config, path).into_iter().map(|mut e| {
        // `section.key: …` about this file: the key's line.
        if e.line.is_none() && e.file == path {
            let name = e.message.split(':').next().unwrap_or("");
            e.line = match name.rsplit_once('.') {
                Some((section, key)) => key_line(text, section, key),
                None => header_line(text, name),
            };
        }
        e
    }));
    errors
}

/// The line of the `[section]` header.
fn header_line(text: &str, section: &str) -> Option<usize> {
    let header = format!("[{section}]");
    text.lines()
        .position(|l| l.split('#').next().unwrap_or("").trim() == header)
        .map(|i| i + 1)
}

/// What start needs from the system: descriptors, token file, data_dir, CA file, DNS conf.
fn system(config: &Config, path: &Path, text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut at = |line: Option<usize>, message: String| {
        errors.push(ConfigError {
            file: path.to_owned(),
            line,
            message,
        })
    };
    if let Some(p) = open_file_problem(config) {
        at(key_line(text, "limits", "max_sessions"), p);
    }
    if let Some(admin) = &config.admin {
        let token = admin.token_path(&config.data_dir);
        if let Err(e) = crate::admin::token::check(&token) {
            let line = key_line(text, "admin", "token_file")
                .filter(|_| admin.token_file.is_some())
                .or_else(|| super::find_key_line(text, "admin"));
            at(line, format!("admin.token_file: {e}"));
        }
    }
    if config.data_dir.exists() && !config.data_dir.is_dir() {
        at(
            super::find_key_line(text, "data_dir"),
            format!("data_dir: {} is not a directory", config.data_dir.display()),
        );
    }
    if let Some(ca) = &config.delivery.ca_file
        && let Err(e) = trust_anchors(ca)
    {
        at(
            key_line(text, "delivery", "ca_file"),
            format!("delivery.ca_file: {e}"),
        );
    }
    if let Some(anchor) = &config.delivery.dane.trust_anchor
        && let Err(e) = crate::delivery::policy::dane::lookup::load_trust_anchor(anchor)
    {
        at(
            key_line(text, "delivery.dane", "trust_anchor"),
            e.to_string(),
        );
    }
    if config.dns.nameservers.is_empty()
        && let Err(e) = hickory_resolver::system_conf::read_system_conf()
    {
        at(None, format!("dns: system DNS configuration: {e}"));
    }
    errors
}

/// What start loads: keys, users, certificate, reply rules, DNSBL zones, doctor domains. Their
/// messages name the file (and line) at fault when it is another file.
fn loaded(config: &Config, path: &Path) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for result in [
        crate::signing::Signer::new(&config.dkim, &config.signing).map(|_| ()),
        crate::reputation::check_config(path, &config.reputation),
        crate::doctor::check_config(path, &config.doctor),
    ] {
        errors.extend(result.err().unwrap_or_default());
    }
    let mut at = |key: &str, message: String| {
        errors.push(ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("{key}: {message}"),
        })
    };
    if let Some(feedback) = &config.feedback {
        for (key, message) in feedback.problems() {
            at(key, message);
        }
    }
    if let Some(users) = &config.access.users_file
        && let Err(e) = crate::inbound::users::Users::load(users)
    {
        at("access.users_file", e.to_string());
    }
    if let Some(tls) = &config.tls
        && let Err(e) = crate::tls::server_config(&tls.certificate, &tls.private_key)
    {
        at("tls", e.to_string());
    }
    errors
}

/// The certificates of a CA file, as delivery loads them.
fn trust_anchors(ca: &Path) -> Result<(), crate::delivery::tls::ConnectorError> {
    crate::delivery::tls::add_ca_file(&mut rustls::RootCertStore::empty(), ca)
}

/// For the tests of every settings section: a minimal config and the errors of loading it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::Checked;

    pub(crate) const MIN: &str = "hostname = \"r.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";

    /// What `Checked::load` says of `MIN` followed by `extra`, written to `dir/c.toml`.
    pub(crate) fn load_errors(dir: &Path, extra: &str) -> Vec<String> {
        let file = dir.join("c.toml");
        std::fs::write(&file, format!("{MIN}{extra}")).unwrap();
        match Checked::load(&file) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{MIN, load_errors as load};
    use super::*;

    #[test]
    fn a_dane_trust_anchor_is_read_at_load() {
        let dir = crate::util::test_dir::tempdir("anchor");
        let c = dir.join("c.toml").display().to_string();
        let anchor = dir.join("anchor");
        let section = format!(
            "[delivery.dane]\nenabled = true\ntrust_anchor = \"{}\"\n",
            anchor.display()
        );
        let e = load(&dir, &section);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{c}:8: delivery.dane.trust_anchor:")),
            "{e:?}"
        );
        std::fs::write(&anchor, "; keys\n\n").unwrap();
        let e = load(&dir, &section);
        assert!(e.len() == 1 && e[0].contains("no DNSKEY record"), "{e:?}");
        std::fs::write(&anchor, "test. DS 1 13 2 00\n").unwrap();
        let e = load(&dir, &section);
        assert!(
            e.len() == 1 && e[0].contains("anchor: line 1: only DNSKEY records"),
            "{e:?}"
        );
        // As `keymgr ZONE dnskey` prints it: no TTL, no class.
        std::fs::write(
            &anchor,
            "test. DNSKEY 257 3 13 8hVvSPH4VV75KdOAk9Tuk1/hQC4CZPU/8MBM9Zm0KbJ5/tIwJat26pNPtE7MHkb6SuxzLlZnsSjlQSZ+U3xIng==\n",
        )
        .unwrap();
        assert!(load(&dir, &section).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_start_refuses_is_refused_at_its_line_and_nothing_is_created() {
        let dir = crate::util::test_dir::tempdir("checked");
        let c = dir.join("c.toml").display().to_string();
        let admin =
            |token: &str| format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"{token}\"\n");
        for token in [dir.display().to_string(), "/dev/null".into()] {
            let e = load(&dir, &admin(&token));
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with(&format!("{c}:8: admin.token_file:")),
                "{e:?}"
            );
            assert!(e[0].contains("not a regular file"), "{e:?}");
        }
        // A missing token file is fine (start creates it); the check creates nothing.
        let missing = dir.join("sub/admin.token");
        assert!(load(&dir, &admin(&missing.display().to_string())).is_empty());
        assert!(!dir.join("sub").exists());
        // The users file: this file's line, and the users file's own.
        std::fs::write(dir.join("users"), "alice:not-a-hash\n").unwrap();
        let users = format!(
            "[access]\nusers_file = \"{}\"\n",
            dir.join("users").display()
        );
        let e = load(&dir, &users);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(&format!("{c}:7: access.users_file:")),
            "{e:?}"
        );
        assert!(e[0].contains("users:1:"), "{e:?}");
        // data_dir a file.
        let top = format!("data_dir = \"{}\"\n{MIN}", dir.join("users").display());
        std::fs::write(dir.join("c.toml"), top).unwrap();
        let e = Checked::load(&dir.join("c.toml")).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, Some(1), "{}", e[0]);
        assert!(e[0].message.contains("is not a directory"), "{}", e[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_open_file_limit_is_checked_without_raising_it() {
        let config = Config::parse(Path::new("t.toml"), MIN).unwrap();
        let before = open_file_limits().unwrap();
        let mut big = config.clone();
        big.limits.max_sessions = usize::MAX;
        let problem = open_file_problem(&big);
        assert!(
            before.1 == libc::RLIM_INFINITY
                || problem
                    .as_deref()
                    .is_some_and(|p| p.contains("LimitNOFILE=")),
            "{problem:?}"
        );
        assert_eq!(open_file_limits().unwrap(), before, "nothing raised");
    }
}
