//! `poolrelay login …` and `poolrelay sender-domain …`: list accounts, release a throttled or
//! suspended one, through the running relay's admin API. A release names who did it: `--by`,
//! else the OS user running the command.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::reputation::accounts::Kind;
use crate::text::Escaped;

#[derive(clap::Args, Debug)]
pub struct AccountArgs {
    /// Config file (TOML), read for `admin.listen`.
    #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: AccountCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AccountCommand {
    /// Every account: standing, counts and rates over the window, why it is held.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lets a throttled or suspended account send again; its window starts afresh.
    Release {
        name: String,
        /// Who releases it, for the log and the history (default: the OS user).
        #[arg(long)]
        by: Option<String>,
    },
}

/// The OS user running the command.
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

/// `poolrelay login …` (`kind` login) or `poolrelay sender-domain …`.
pub fn run(args: AccountArgs, kind: Kind) -> ExitCode {
    let (command, list_path, release_path, field, list_key) = match kind {
        Kind::Login => (
            "login",
            "/api/logins",
            "/api/logins/release",
            "login",
            "logins",
        ),
        Kind::Domain => (
            "sender-domain",
            "/api/sender-domains",
            "/api/sender-domains/release",
            "domain",
            "sender_domains",
        ),
    };
    let config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    let (method, path, body) = match &args.command {
        AccountCommand::List { .. } => ("GET", list_path, None),
        AccountCommand::Release { name, by } => {
            let by = by.clone().unwrap_or_else(os_user);
            ("POST", release_path, Some(json!({ field: name, "by": by })))
        }
    };
    let (code, text) = match super::client::request(&config, method, path, body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay {command}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if code != 200 {
        let msg = v["error"].as_str().unwrap_or(text.as_str());
        eprintln!("poolrelay {command}: {} (HTTP {code})", Escaped(msg));
        return ExitCode::FAILURE;
    }
    match args.command {
        AccountCommand::List { json: true } => println!("{}", crate::text::json(&text)),
        AccountCommand::List { json: false } => {
            let items = v[list_key].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("no accounts yet");
            }
            for a in &items {
                println!("{}", line(a));
            }
        }
        AccountCommand::Release { name, .. } => println!(
            "{} {}: released, now {}",
            field,
            Escaped(&name),
            Escaped(v["standing"].as_str().unwrap_or("?"))
        ),
    }
    ExitCode::SUCCESS
}

/// `alice  suspended  delivered 20 bounced 0 blocked 0 complaints 3 (15 %)  why`.
fn line(a: &Value) -> String {
    let c = &a["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let rate = a["complaint_rate"]
        .as_f64()
        .map(|r| format!(" ({})", crate::reputation::accounts::percent(r)))
        .unwrap_or_default();
    format!(
        "{:<24} {:<9}  delivered {} bounced {} blocked {} complaints {}{}{}",
        Escaped(a["name"].as_str().unwrap_or("?")),
        Escaped(a["standing"].as_str().unwrap_or("?")),
        n("delivered"),
        n("bounced") + n("bad_recipients"),
        n("blocked"),
        n("complained"),
        rate,
        a["why"]
            .as_str()
            .map(|w| format!("  {}", Escaped(w)))
            .unwrap_or_default()
    )
}
