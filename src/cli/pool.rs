//! `poolrelay pool status|drain|undrain|reinstate`: the source IP pool of a running relay,
//! through its admin API (`[admin] listen`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::client;
use crate::text::Escaped;

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Every IP: state, hold reason, warm-up day, used/cap per provider, outcome counts.
    Status {
        /// Print the raw JSON of GET /api/pool.
        #[arg(long)]
        json: bool,
    },
    /// Take an IP out of rotation (in-flight deliveries finish; held mail waits, never bounces).
    Drain {
        ip: String,
        /// Only for this provider (default: all providers).
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End the operator's drain of an IP; held mail flows again at once (quarantines stay).
    Undrain {
        ip: String,
        #[arg(long)]
        provider: Option<String>,
    },
    /// End every reputation quarantine of an IP at once, without probation (an override: the
    /// DNSBL monitor quarantines it again at its next check if it is still listed).
    Reinstate {
        ip: String,
        #[arg(long)]
        provider: Option<String>,
    },
}

/// Sends the command to `[admin] listen` and prints the answer.
pub fn run(config: &Path, command: PoolCommand) -> ExitCode {
    let config = match super::load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if config.admin.is_none() {
        eprintln!("poolrelay pool: the config has no [admin] listen address");
        return ExitCode::from(2);
    }
    let (method, path, body) = match &command {
        PoolCommand::Status { .. } => ("GET", "/api/pool".to_string(), None),
        PoolCommand::Drain {
            ip,
            provider,
            reason,
        } => (
            "POST",
            "/api/pool/drain".to_string(),
            Some(serde_json::json!({ "ip": ip, "provider": provider, "reason": reason })),
        ),
        PoolCommand::Undrain { ip, provider } => (
            "POST",
            "/api/pool/undrain".to_string(),
            Some(serde_json::json!({ "ip": ip, "provider": provider })),
        ),
        PoolCommand::Reinstate { ip, provider } => (
            "POST",
            "/api/pool/reinstate".to_string(),
            Some(serde_json::json!({ "ip": ip, "provider": provider })),
        ),
    };
    let (code, text) = match client::request(&config, method, &path, body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay pool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if code != 200 {
        let msg = value["error"].as_str().unwrap_or(text.as_str());
        eprintln!("poolrelay pool: {} (HTTP {code})", Escaped(msg));
        return ExitCode::FAILURE;
    }
    match command {
        PoolCommand::Status { json: true } => println!("{}", crate::text::json(&text)),
        PoolCommand::Status { json: false } => print!("{}", client::format_status(&value)),
        _ => println!(
            "{} {} (scope {}){}",
            Escaped(value["ip"].as_str().unwrap_or("?")),
            Escaped(value["state"].as_str().unwrap_or("?")),
            Escaped(value["scope"].as_str().unwrap_or("all")),
            if value["changed"] == false {
                ", no change"
            } else {
                ""
            }
        ),
    }
    ExitCode::SUCCESS
}
