use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use poolrelay::config::{Checked, Config, LogFormat};
use poolrelay::text::Escaped;

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
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Read a password on stdin and print an argon2id hash for the users file.
    HashPassword,
    /// Explain an SMTP reply or a bounce message: class, whom it blames, the rule that matched.
    Classify(poolrelay::reputation::cli::ClassifyArgs),
    /// Hand one complaint report (ARF, on stdin) to the running relay; `--list` the recent
    /// traced complaints.
    Feedback(poolrelay::feedback::cli::FeedbackArgs),
    /// Suppressed recipients (bad-recipient hard bounces) of a running relay.
    Suppression(poolrelay::reputation::cli::SuppressionArgs),
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
        command: Option<poolrelay::admin::queue_cli::QueueCommand>,
    },
    /// Check what receivers check (PTR, FCrDNS, HELO, DNSBL, SPF, DKIM, DMARC, MX, postmaster@)
    /// before they refuse: a table per IP and domain, each failure with its fix. Exit 0 when
    /// nothing fails, 1 on a failure, 2 on a usage error.
    Doctor(poolrelay::doctor::cli::DoctorArgs),
    /// Hot reload of a running relay (as SIGHUP does), through its admin API: the new config is
    /// checked in full first; on error the relay keeps the running one and this prints each
    /// error (file:line) and exits 2.
    Reload {
        /// The config to load (default: the one in use); read here too for `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml")]
        config: PathBuf,
    },
    /// Source IP pool of a running relay, through its admin API (`[admin] listen`).
    Pool {
        /// Config file (TOML), read for `admin.listen`.
        #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        command: PoolCommand,
    },
}

#[derive(Subcommand)]
enum PoolCommand {
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
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Classify(args) => poolrelay::reputation::cli::run(args),
        Command::Suppression(args) => poolrelay::reputation::cli::suppression(args),
        Command::Feedback(args) => poolrelay::feedback::cli::run(args),
        Command::Doctor(args) => poolrelay::doctor::cli::run(args),
        Command::Pool { config, command } => pool_command(&config, command),
        Command::Reload { config } => poolrelay::reload::command(&config),
        Command::Queue {
            config,
            count,
            json,
            summary,
            command,
        } => {
            if summary || command.is_some() {
                match load_or_report(&config) {
                    Ok(c) => poolrelay::admin::queue_cli::run(&c, command, json),
                    Err(code) => code,
                }
            } else {
                queue_command(&config, count, json)
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
        } => dkim_keygen(&domain, &selector, algorithm, out),
        Command::CheckConfig { file } => match load_checked(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                ExitCode::from(2)
            }
        },
        Command::HashPassword => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            let password = input.strip_suffix('\n').unwrap_or(&input);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                eprintln!("empty password");
                return ExitCode::FAILURE;
            }
            match poolrelay::inbound::users::hash_password(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Every check start makes (`config::Checked`), so check-config, start and reload agree.
fn load_checked(path: &std::path::Path) -> Result<Checked, Vec<poolrelay::config::ConfigError>> {
    Checked::load(path)
}

fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: poolrelay::signing::keygen::Algorithm,
    out: Option<PathBuf>,
) -> ExitCode {
    match poolrelay::signing::keygen::run(domain, selector, algorithm, out.as_deref()) {
        Ok((path, record)) => {
            eprintln!(
                "wrote private key to {} (mode 0600); publish this record, then add to the config:\n\
                 [[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\n",
                path.display(),
                path.display()
            );
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poolrelay dkim keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config, or its errors printed (file:line) and exit code 2.
fn load_or_report(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })
}

fn queue_command(config: &std::path::Path, count: bool, json: bool) -> ExitCode {
    let config = match load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if count {
        // From file names and log headers: no envelope is read (a million in seconds).
        return match poolrelay::spool::count_queued(&config.data_dir) {
            Ok(n) => {
                println!("{n}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "poolrelay queue: cannot read the spool under {}: {e}",
                    config.data_dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    let queued = match poolrelay::spool::inspect_envelopes(&config.data_dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!(
                "poolrelay queue: cannot read the spool under {}: {e}",
                config.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if json {
        let text = serde_json::to_string_pretty(&queued).unwrap_or_default();
        println!("{}", poolrelay::text::json(&text));
    } else {
        for env in &queued {
            let sender = if env.sender.is_empty() {
                "<>"
            } else {
                &env.sender
            };
            let rcpts: Vec<String> = env
                .recipients
                .iter()
                .map(|r| {
                    let address = Escaped(&r.address);
                    format!("{address} ({:?}, {} attempts)", r.state, r.attempts)
                })
                .collect();
            println!(
                "{}  {:>8}  {}  {}  {}",
                env.id,
                env.size,
                env.received_at,
                Escaped(sender),
                rcpts.join(", ")
            );
        }
        println!("-- {} messages", queued.len());
    }
    ExitCode::SUCCESS
}

fn pool_command(config: &std::path::Path, command: PoolCommand) -> ExitCode {
    use poolrelay::admin::client;
    let config = match load_or_report(config) {
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
        PoolCommand::Status { json: true } => println!("{}", poolrelay::text::json(&text)),
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

fn serve(path: PathBuf) -> ExitCode {
    let config = match load_checked(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);
    poolrelay::tls::install_crypto_provider();
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
    match runtime.block_on(poolrelay::server::run(config, path)) {
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
        .with_writer(move || poolrelay::text::LogWriter::new(std::io::stderr(), ansi))
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
