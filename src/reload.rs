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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Checked, Config};
use crate::delivery::Deliverer;
use crate::inbound::Listeners;
use crate::pool::Pools;
use crate::reputation::rates::Tracker;

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub config: PathBuf,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// A refused reload: every error, `file:line: message`.
pub type Refused = Vec<String>;

/// One reload request: an optional other config file, and where the answer goes.
pub struct Request {
    pub config: Option<PathBuf>,
    pub reply: oneshot::Sender<Result<Applied, Refused>>,
}

/// Asks the server loop for a reload (the admin API holds one).
#[derive(Clone)]
pub struct Trigger(pub mpsc::Sender<Request>);

impl Trigger {
    pub async fn reload(&self, config: Option<PathBuf>) -> Result<Applied, Refused> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Request { config, reply })
            .await
            .map_err(|_| vec!["the relay is stopping".to_string()])?;
        answer
            .await
            .unwrap_or_else(|_| Err(vec!["the relay is stopping".to_string()]))
    }
}

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
        let signer = crate::signing::Signer::from_config(&new)
            .map_err(|errs| self.refuse(errs.iter().map(|e| e.to_string())))?;
        let signer = Arc::new(signer);
        // A larger max_sessions needs its descriptors now, as it would at start.
        crate::server::raise_open_file_limit(&new).map_err(|e| self.refuse([e]))?;
        // Listeners first: binding a new address is what can fail, and then nothing changed.
        self.listeners
            .reload(new.clone(), signer.clone())
            .await
            .map_err(|e| self.refuse([format!("{}: {e}", path.display())]))?;
        if let Err(e) = self.deliverer.reload(&new, signer) {
            tracing::error!(error = %e, "reload: routes not replaced (the rest applied)");
        }
        if let Err(e) = self.reputation.reload(&new.reputation) {
            tracing::error!(error = %e, "reload: reply rules not replaced (the rest applied)");
        }
        let complainers = new.feedback.clone().unwrap_or_default();
        self.reputation
            .set_complainers(complainers.suppress, complainers.suppress_for.0);
        self.pools.reload(&new);
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

/// `poolrelay reload --config FILE`: asks the relay at the file's `admin.listen` to load FILE.
/// Exit 0 when applied, 2 when the config is refused (each error printed), 1 when the relay
/// cannot be reached.
pub fn command(path: &Path) -> std::process::ExitCode {
    use std::process::ExitCode;
    let Some(admin) = admin_config(path) else {
        // Not even the admin address is readable: the relay would refuse it the same way.
        if let Err(errors) = Config::load(path) {
            for e in errors {
                eprintln!("{e}");
            }
        } else {
            eprintln!("poolrelay reload: the config has no [admin] listen address");
        }
        return ExitCode::from(2);
    };
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let body = serde_json::json!({ "config": file });
    let (code, text) =
        match crate::admin::client::request(&admin, "POST", "/api/reload", Some(&body)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("poolrelay reload: {e}");
                return ExitCode::FAILURE;
            }
        };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match code {
        200 => {
            println!("reloaded {}", file.display());
            for s in value["restart_needed"].as_array().into_iter().flatten() {
                println!(
                    "changed, applies at the next restart: {}",
                    s.as_str().unwrap_or("?")
                );
            }
            ExitCode::SUCCESS
        }
        422 => {
            for e in value["errors"].as_array().into_iter().flatten() {
                eprintln!("{}", e.as_str().unwrap_or("?"));
            }
            eprintln!("poolrelay reload: refused; the relay keeps its running config");
            ExitCode::from(2)
        }
        _ => {
            let msg = value["error"].as_str().unwrap_or(text.as_str());
            eprintln!("poolrelay reload: {msg} (HTTP {code})");
            ExitCode::FAILURE
        }
    }
}

/// The part of a config file that reaching the admin API needs (listen, TLS, token file), even
/// when the file has errors elsewhere, so a refused reload still reaches the relay, which logs why.
fn admin_config(path: &Path) -> Option<Config> {
    if let Ok(c) = Config::load(path) {
        return c.admin.is_some().then_some(c);
    }
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text)
        .or_else(|_| toml::from_str(&reach_lines(&text)))
        .ok()?;
    let mut reach = toml::Table::new();
    for key in ["hostname", "data_dir", "admin", "tls"] {
        if let Some(value) = table.get(key) {
            reach.insert(key.to_owned(), value.clone());
        }
    }
    // Only the admin address matters here; the relay checks the real file.
    reach
        .entry("hostname")
        .or_insert_with(|| "reload.invalid".into());
    let text = format!(
        "{}\n[[listen]]\naddress = \"127.0.0.1:0\"\ntls = \"none\"\nauth = \"none\"\n",
        toml::to_string(&reach).ok()?
    );
    Config::parse(path, &text)
        .ok()
        .filter(|c| c.admin.is_some())
}

/// The lines of `data_dir`, `[admin]` and `[tls]` of a file that is not TOML as a whole:
/// enough to reach the relay when the error is elsewhere.
fn reach_lines(text: &str) -> String {
    // The table a line is in; None before the first header.
    let mut table: Option<String> = None;
    let mut out = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            table = Some(l.replace(' ', ""));
        }
        let keep = match table.as_deref() {
            None => l.starts_with("data_dir") && toml::from_str::<toml::Table>(l).is_ok(),
            Some(t) => t == "[admin]" || t == "[tls]",
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dir =
            std::env::temp_dir().join(format!("poolrelay-reload-unit-{}", std::process::id()));
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
