//! Hot reload (SIGHUP, `POST /api/reload`). Rules:
//! - The new file is read and checked in full first, by `config::Checked` as `check-config` and
//!   start check it (DKIM keys, users file, TLS material, open-file limit, token file…); any
//!   error and the running config stays, every error (`file:line: …`) is logged at ERROR and
//!   returned, whether SIGHUP or `poolrelay reload` asked (the CLI reaches the relay even when
//!   the file is not TOML, so the relay logs that refusal too).
//! - Then it applies without dropping a session or a queued message: listeners, users,
//!   networks, limits, TLS certificate and DKIM keys for the next sessions; routes, DNS servers,
//!   providers, pools, weights and warm-up schedules for the next picks; reply classification
//!   and rate thresholds for the next replies; `[accounts]` limits for the next verdicts.
//!   Counters, warm-up days, holds and account standings are kept.
//! - What only a restart applies (`RESTART_KEYS`) is logged and returned as a list.
//! - One reload at a time: requests queue on a channel served by the server loop.

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::admin::{Applied, Refused, Request, Trigger};
use crate::config::checked::{self, OpenFileError};
use crate::config::{Checked, Config};
use crate::delivery::Deliverer;
use crate::inbound::Listeners;
use crate::pool::Pools;
use crate::reputation::rates::Tracker;

/// Settings a reload does not apply: (name, its part of the config).
const RESTART_KEYS: &[&str] = &[
    "data_dir",
    "admin",
    "log",
    "delivery (except port and tls)",
    "reputation.dnsbl, check_interval",
    "doctor",
    "shutdown_grace",
    "cluster",
    "feeds",
    "tls_reports",
];

fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let delivery_rest = |c: &Config| {
        let mut d = c.delivery.clone();
        d.port = 0;
        d.tls = crate::config::TlsPolicy::None;
        dbg(&d)
    };
    let dnsbl = |c: &Config| {
        dbg(&(
            &c.reputation.dnsbl,
            &c.reputation.check_interval,
            &c.reputation.clean_checks,
            &c.reputation.spamhaus_dqs_key,
        ))
    };
    // The URL in full: its Debug form hides the password.
    let cluster = |c: &Config| {
        c.cluster
            .as_ref()
            .map(|s| format!("{s:?} {}", s.redis.secret()))
    };
    // The SNDS key in full: its Debug form hides it.
    let feeds = |c: &Config| {
        c.feeds.as_ref().map(|f| {
            let key = f.snds.as_ref().map(|s| s.key.as_str()).unwrap_or("");
            format!("{f:?} {key}")
        })
    };
    let changed = [
        old.data_dir != new.data_dir,
        dbg(&old.admin) != dbg(&new.admin),
        dbg(&old.log) != dbg(&new.log),
        delivery_rest(old) != delivery_rest(new),
        dnsbl(old) != dnsbl(new),
        dbg(&old.doctor) != dbg(&new.doctor),
        old.shutdown_grace != new.shutdown_grace,
        cluster(old) != cluster(new),
        feeds(old) != feeds(new),
        dbg(&old.tls_reports) != dbg(&new.tls_reports),
    ];
    RESTART_KEYS
        .iter()
        .zip(changed)
        .filter(|(_, c)| *c)
        .map(|(k, _)| k.to_string())
        .collect()
}

/// The running stages a reload reaches.
pub struct Reloader {
    pub path: PathBuf,
    pub current: Arc<Config>,
    pub listeners: Arc<Listeners>,
    pub pools: Arc<Pools>,
    pub deliverer: Arc<Deliverer>,
    pub reputation: Arc<Tracker>,
}

impl Reloader {
    /// Reads, checks and applies `path` (default: the file in use). On error nothing changes.
    pub async fn reload(&mut self, path: Option<PathBuf>) -> Result<Applied, Refused> {
        let path = path.unwrap_or_else(|| self.path.clone());
        tracing::info!(config = %path.display(), "reload: reading the config");
        let checked = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Checked::load(&path)).await
        };
        let new = match checked {
            Ok(Ok(c)) => Arc::new(c.into_inner()),
            Ok(Err(errors)) => return Err(self.refuse(errors.iter().map(|e| e.to_string()))),
            Err(e) => return Err(self.refuse([format!("{}: {e}", path.display())])),
        };
        let signer = crate::signing::Signer::new(&new.dkim, &new.signing)
            .map_err(|errs| self.refuse(errs.iter().map(|e| e.to_string())))?;
        let signer = Arc::new(signer);
        // A larger max_sessions needs its descriptors now, as it would at start.
        raise_open_file_limit(&new).map_err(|e| self.refuse([e.to_string()]))?;
        // Listeners first: binding a new address is what can fail, and then nothing changed.
        self.listeners
            .reload(new.inbound_settings(), signer.clone())
            .await
            .map_err(|e| self.refuse([format!("{}: {e}", path.display())]))?;
        if let Err(e) = self.deliverer.reload(&new.delivery_settings(), signer) {
            tracing::error!(error = %e, "reload: routes not replaced (the rest applied)");
        }
        if let Err(e) = self.reputation.reload(&new.reputation) {
            tracing::error!(error = %e, "reload: reply rules not replaced (the rest applied)");
        }
        let complainers = new.feedback.clone().unwrap_or_default();
        self.reputation
            .set_complainers(complainers.suppress, complainers.suppress_for.0);
        self.pools.reload(&new.pool_settings());
        self.reputation.accounts().reload(new.accounts.clone());
        let restart_needed = restart_needed(&self.current, &new);
        if !restart_needed.is_empty() {
            tracing::warn!(settings = %restart_needed.join("; "), "reload: these changes take effect at the next restart");
        }
        self.current = new;
        self.path = path.clone();
        tracing::info!(config = %path.display(), "reload: config applied");
        Ok(Applied {
            config: path,
            restart_needed,
        })
    }

    fn refuse(&self, errors: impl IntoIterator<Item = String>) -> Refused {
        let errors: Vec<String> = errors.into_iter().collect();
        for e in &errors {
            tracing::error!(error = %e, "reload refused, the running config stays");
        }
        errors
    }
}

/// Raises the soft RLIMIT_NOFILE to what `max_sessions` and delivery need (never lowers it);
/// `Checked` made sure the hard limit allows it. Start and every reload call it.
pub(crate) fn raise_open_file_limit(config: &Config) -> Result<(), OpenFileError> {
    let need = checked::open_files_needed(config);
    let (soft, hard) = checked::open_file_limits().map_err(OpenFileError::Read)?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(OpenFileError::TooLow {
            max_sessions: config.limits.max_sessions,
            concurrency: config.delivery.concurrency,
            need,
            hard,
        });
    }
    let lim = libc::rlimit {
        rlim_cur: need,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(OpenFileError::Raise {
            need,
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(from = soft, to = need, "open file limit raised");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(extra: &str) -> Config {
        let text = format!(
            "hostname = \"r.test\"\n{extra}\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n"
        );
        Config::parse(Path::new("t.toml"), &text).expect("parses")
    }

    #[test]
    fn restart_needed_names_only_what_a_reload_cannot_apply() {
        let old = parse("");
        assert!(restart_needed(&old, &parse("")).is_empty());
        assert_eq!(
            restart_needed(&old, &parse("data_dir = \"other\"")),
            ["data_dir"]
        );
        assert_eq!(
            restart_needed(&old, &parse("shutdown_grace = \"5s\"")),
            ["shutdown_grace"]
        );
        let redis = parse("[cluster]\nredis = \"redis://:a@h:1\"");
        assert_eq!(restart_needed(&old, &redis), ["cluster"]);
        let reports = parse("[tls_reports]\ncontact = \"mailto:a@b.test\"");
        assert_eq!(restart_needed(&old, &reports), ["tls_reports"]);
        let password = parse("[cluster]\nredis = \"redis://:b@h:1\"");
        assert_eq!(restart_needed(&redis, &password), ["cluster"]);
        // Applied by the reload: no restart.
        let mut new = parse("");
        new.delivery.port = 2526;
        new.limits.max_sessions = 10;
        assert!(restart_needed(&old, &new).is_empty());
        new.delivery.concurrency = 1;
        assert_eq!(
            restart_needed(&old, &new),
            ["delivery (except port and tls)"]
        );
        // A new SNDS key (hidden in the Debug form) is still a change.
        let a = parse("[feeds.snds]\nkey = \"a\"");
        assert_eq!(
            restart_needed(&a, &parse("[feeds.snds]\nkey = \"b\"")),
            ["feeds"]
        );
        assert!(!format!("{:?}", a.feeds).contains("key: \"a\""));
    }

    #[test]
    fn checked_load_loads_the_users_file() {
        let dir = crate::util::test_dir::tempdir("reload-unit").join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        std::fs::write(&users, "alice:not-a-hash\n").unwrap();
        let config = dir.join("c.toml");
        std::fs::write(
            &config,
            format!(
                "hostname = \"r.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n[access]\nusers_file = \"{}\"\n",
                users.display()
            ),
        )
        .unwrap();
        let errors = Checked::load(&config).unwrap_err();
        let text = errors[0].to_string();
        assert!(text.contains("users:1:"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
