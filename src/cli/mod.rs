//! The commands: each subcommand's arguments, what it reads (the config file, stdin) and what
//! it prints. Nothing below imports `cli`; the commands that ask a running relay go through
//! its admin API (`client`).

pub mod accounts;
pub mod check_config;
pub mod classify;
pub mod client;
pub mod dkim;
pub mod doctor;
pub mod feedback;
pub mod feeds;
pub mod password;
pub mod pool;
pub mod queue;
pub mod reload;
pub mod serve;
pub mod suppression;
pub mod tls_reports;

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// The config, or its errors printed (file:line) and exit code 2.
pub fn load_or_report(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}
