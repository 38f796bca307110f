//! `poolrelay feeds status|poll`, through the running relay's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use crate::text::Escaped;

#[derive(clap::Args, Debug)]
pub struct FeedsArgs {
    /// Config file (TOML), read for `admin.listen`.
    #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
    pub config: PathBuf,
    /// Print the raw JSON of the API.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: FeedsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FeedsCommand {
    /// Each feed's last poll: time, ok or the error, rows read, verdicts; domains' spam rates.
    Status,
    /// Poll every feed now and print the new status.
    Poll,
}

/// `poolrelay feeds …`: exit 0 when every feed's last poll was ok, 1 otherwise, 2 on a usage
/// or config error.
pub fn run(args: FeedsArgs) -> ExitCode {
    let config = match super::client::load_config(&args.config, "feeds") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (method, path) = match args.command {
        FeedsCommand::Status => ("GET", "/api/feeds"),
        FeedsCommand::Poll => ("POST", "/api/feeds/poll"),
    };
    let (code, text) = match super::client::request(&config, method, path, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay feeds: {e}");
            return ExitCode::FAILURE;
        }
    };
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if code != 200 {
        let msg = value["error"].as_str().unwrap_or(text.as_str());
        eprintln!("poolrelay feeds: {} (HTTP {code})", Escaped(msg));
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", crate::text::json(&text));
    } else {
        print!("{}", format(&value));
    }
    let failed = value["feeds"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["result"] != "ok"));
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The status as lines for people (remote text escaped for the terminal).
fn format(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = |v: &Value| Escaped(v.as_str().unwrap_or("")).to_string();
    for f in v["feeds"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{}: {} at {} ({} rows)",
            s(&f["feed"]),
            s(&f["result"]),
            f["last_fetch"].as_u64().unwrap_or(0),
            f["rows"].as_u64().unwrap_or(0)
        );
        if !f["error"].is_null() {
            let _ = writeln!(out, "  error: {}", s(&f["error"]));
        }
        for n in f["notes"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  note: {}", s(n));
        }
        for a in f["actions"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} {} {} → {}: {}",
                s(&a["ip"]),
                s(&a["provider"]),
                s(&a["verdict"]),
                s(&a["result"]),
                s(&a["evidence"])
            );
            if !a["error"].is_null() {
                let _ = writeln!(out, "    error: {}", s(&a["error"]));
            }
        }
    }
    for d in v["domains"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "domain {}: {} ({})",
            s(&d["domain"]),
            s(&d["level"]),
            s(&d["evidence"])
        );
    }
    if v["configured"] == false {
        out.push_str("no feed is configured ([feeds.snds], [feeds.postmaster])\n");
    }
    out
}
