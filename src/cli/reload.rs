//! `poolrelay reload`: asks the running relay for a hot reload through its admin API (the relay
//! side is `crate::reload`).

use std::path::Path;

use crate::config::Config;

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
    let (code, text) = match super::client::request(&admin, "POST", "/api/reload", Some(&body)) {
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
