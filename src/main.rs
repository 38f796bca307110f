//! The `poolrelay` command line: the clap definitions and the dispatch to `poolrelay::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use poolrelay::cli;
use poolrelay::reputation::accounts::Kind;

/// poolrelay: SMTP smarthost relay with a pool of source IPs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Config file (TOML).
        #[arg(long, short, default_value = "config/poolrelay.toml")]
        config: PathBuf,
    },
    /// Check a config file; prints each error with file, line and key.
    CheckConfig {
        /// Config file (TOML); default config/poolrelay.toml.
        #[arg(long, short, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// The same as --config (the older positional form).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Read a password on stdin and print an argon2id hash for the users file.
    HashPassword,
    /// Explain an SMTP reply or a bounce message: class, whom it blames, the rule that matched.
    Classify(cli::classify::ClassifyArgs),
    /// Hand one complaint report (ARF, on stdin) to the running relay; `--list` the recent
    /// traced complaints.
    Feedback(cli::feedback::FeedbackArgs),
    /// Suppressed recipients (bad-recipient hard bounces) of a running relay.
    Suppression(cli::suppression::SuppressionArgs),
    /// A local SMTP destination for trying routes: one .eml file per message received.
    ///
    /// Writes each message to DIR with the envelope and the sending peer's address on top, and
    /// prints one line per message. Every recipient is accepted but bounce@… (550 5.1.1, to see
    /// a bounce and its DSN). No TLS, no AUTH: keep it on loopback.
    Capture(poolrelay::capture::CaptureArgs),
    /// Submit one test message to a relay listener that trusts this address (no TLS, no AUTH).
    Send(poolrelay::send::SendArgs),
    /// Authenticated logins of a running relay: counts, rates, standing; release a throttled or
    /// suspended one.
    Login(cli::accounts::AccountArgs),
    /// Sender domains of a running relay, as `login` does for logins.
    SenderDomain(cli::accounts::AccountArgs),
    /// DKIM key management.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// The queue. Without a subcommand: the queue under `data_dir` (spool log and files), read
    /// without changing anything, one line per message. `--summary` and the subcommands ask
    /// the running relay through its admin API (`[admin] listen`).
    Queue {
        /// Config file (TOML), read for `data_dir` and `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
        config: PathBuf,
        /// Print only the number of queued messages.
        #[arg(long)]
        count: bool,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        /// Counts by state, destination domain and provider, from the running relay.
        #[arg(long, conflicts_with = "count")]
        summary: bool,
        #[command(subcommand)]
        command: Option<cli::queue::QueueCommand>,
    },
    /// Check what receivers check (PTR, FCrDNS, HELO, DNSBL, SPF, DKIM, DMARC, MX, postmaster@)
    /// before they refuse: a table per IP and domain, each failure with its fix. Exit 0 when
    /// nothing fails, 1 on a failure, 2 on a usage error.
    Doctor(cli::doctor::DoctorArgs),
    /// Hot reload of a running relay (as SIGHUP does), through its admin API: the new config is
    /// checked in full first; on error the relay keeps the running one and this prints each
    /// error (file:line) and exits 2.
    Reload {
        /// The config to load (default: the one in use); read here too for `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml")]
        config: PathBuf,
    },
    /// Provider feeds (SNDS, Postmaster Tools) of a running relay: `status`, or `poll` now.
    Feeds(cli::feeds::FeedsArgs),
    /// TLS reports (RFC 8460) of a running relay, through its admin API (`[admin] listen`).
    TlsReport {
        /// Config file (TOML), read for `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: TlsReportCommand,
    },
    /// Source IP pool of a running relay, through its admin API (`[admin] listen`).
    Pool {
        /// Config file (TOML), read for `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: cli::pool::PoolCommand,
    },
}

#[derive(Subcommand)]
enum TlsReportCommand {
    /// Send the reports collected so far now (the current period up to now included), instead
    /// of at the period's end; one line per report and URI, exit 1 if one failed.
    Send,
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a signing key (PKCS#8 PEM, mode 0600) and print the DNS TXT record to publish.
    Keygen {
        /// Signing domain (d=), e.g. example.com.
        #[arg(long)]
        domain: String,
        /// Selector (s=), e.g. s2026.
        #[arg(long)]
        selector: String,
        /// ed25519, rsa2048 or rsa4096. RSA is what every receiver verifies; Ed25519 is best
        /// published next to an RSA key.
        #[arg(long, default_value = "rsa2048")]
        algorithm: poolrelay::signing::keygen::Algorithm,
        /// Key file; default config/dkim/DOMAIN.SELECTOR.pem. Never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Serve { config } => cli::serve::run(config),
        Command::Classify(args) => cli::classify::run(args),
        Command::Suppression(args) => cli::suppression::run(args),
        Command::Login(args) => cli::accounts::run(args, Kind::Login),
        Command::SenderDomain(args) => cli::accounts::run(args, Kind::Domain),
        Command::Feedback(args) => cli::feedback::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Capture(args) => poolrelay::capture::run(args),
        Command::Send(args) => poolrelay::send::run(args),
        Command::Pool { config, command } => cli::pool::run(&config, command),
        Command::Feeds(args) => cli::feeds::run(args),
        Command::Reload { config } => cli::reload::command(&config),
        Command::TlsReport {
            config,
            command: TlsReportCommand::Send,
        } => match cli::load_or_report(&config) {
            Ok(c) => cli::tls_reports::command(&c),
            Err(code) => code,
        },
        Command::Queue {
            config,
            count,
            json,
            summary,
            command,
        } => {
            if summary || command.is_some() {
                match cli::load_or_report(&config) {
                    Ok(c) => cli::queue::run(&c, command, json),
                    Err(code) => code,
                }
            } else {
                cli::queue::local(&config, count, json)
            }
        }
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    algorithm,
                    out,
                },
        } => cli::dkim::keygen(&domain, &selector, algorithm, out),
        Command::CheckConfig { config, file } => {
            let file = config
                .or(file)
                .unwrap_or_else(|| PathBuf::from("config/poolrelay.toml"));
            cli::check_config::run(&file)
        }
        Command::HashPassword => cli::password::hash(),
    }
}
