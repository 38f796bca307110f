//! `poolrelay serve`: checks the config as `check-config` does, sets up the log and the runtime,
//! and runs the relay (`server::run`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Checked, LogFormat};

/// Runs the relay until SIGTERM/SIGINT; exit 2 when the config is refused.
pub fn run(path: PathBuf) -> ExitCode {
    let config = match Checked::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);
    crate::tls::install_crypto_provider();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("POOLRELAY_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The log is stderr: once is enough.
            tracing::error!("poolrelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POOLRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Text from outside in a field never adds a line or a control (see `text`).
        .with_writer(move || crate::text::LogWriter::new(std::io::stderr(), ansi))
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
