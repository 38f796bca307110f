//! `poolrelay feedback < report.eml`: hands one report to the running relay (`POST
//! /api/feedback`), for a Postfix `pipe` transport or a mailbox export; `--list` prints the
//! recent traced complaints. Exit codes follow sysexits, as a pipe transport reads them:
//! 0 handled (also "not a report"), 75 try again later (relay unreachable, store failure),
//! 77 refused (forged trace reference), 65 unreadable input, 2 config problem.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::text::Escaped;

#[derive(clap::Args, Debug)]
pub struct FeedbackArgs {
    /// Config file (TOML), read for `admin.listen` and `[feedback] max_size`.
    #[arg(long, short, default_value = "config/poolrelay.toml")]
    pub config: PathBuf,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
    /// Print the recent traced complaints instead of reading a report.
    #[arg(long)]
    pub list: bool,
}

const EX_DATAERR: u8 = 65;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;

pub fn run(args: FeedbackArgs) -> ExitCode {
    let config = match super::client::load_config(&args.config, "feedback") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.list {
        return list(&config, args.json);
    }
    let max = config.feedback.clone().unwrap_or_default().max_size.0;
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().take(max + 1).read_to_end(&mut raw) {
        eprintln!("poolrelay feedback: cannot read the report: {e}");
        return ExitCode::from(EX_DATAERR);
    }
    if raw.len() as u64 > max {
        eprintln!("poolrelay feedback: report larger than [feedback] max_size ({max} bytes)");
        return ExitCode::from(EX_DATAERR);
    }
    let body = json!({ "report_base64": base64::engine::general_purpose::STANDARD.encode(&raw) });
    let (code, text) = match super::client::request(&config, "POST", "/api/feedback", Some(&body)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay feedback: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if args.json {
        println!("{}", crate::text::json(&v.to_string()));
    } else {
        println!("{}", summary(&v));
    }
    match code {
        200 => ExitCode::SUCCESS,
        422 => {
            eprintln!(
                "poolrelay feedback: refused: {}",
                Escaped(v["reason"].as_str().unwrap_or(""))
            );
            ExitCode::from(EX_NOPERM)
        }
        400 | 413 => {
            eprintln!("poolrelay feedback: HTTP {code}: {}", Escaped(&text));
            ExitCode::from(EX_DATAERR)
        }
        _ => {
            eprintln!("poolrelay feedback: HTTP {code}: {}", Escaped(&text));
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

/// `complaint queue_id=… login=… source_ip=… provider=… evidence=…`, or the result and reason.
fn summary(v: &Value) -> String {
    let result = v["result"].as_str().unwrap_or("error");
    let c = &v["complaint"];
    if c.is_object() {
        let field = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        format!(
            "{result} queue_id={} login={} source_ip={} provider={} sender_domain={} evidence={}",
            field("queue_id"),
            field("login"),
            field("source_ip"),
            field("provider"),
            field("sender_domain"),
            field("evidence"),
        )
    } else {
        format!("{result}: {}", v["reason"].as_str().unwrap_or(""))
    }
    .chars()
    .map(|ch| if ch.is_control() { '?' } else { ch })
    .collect()
}

fn list(config: &crate::config::Config, as_json: bool) -> ExitCode {
    let (code, text) = match super::client::request(config, "GET", "/api/complaints", None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay feedback: {e}");
            return ExitCode::FAILURE;
        }
    };
    if code != 200 {
        eprintln!("poolrelay feedback: HTTP {code}: {}", Escaped(&text));
        return ExitCode::FAILURE;
    }
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    if as_json {
        println!("{}", crate::text::json(&v.to_string()));
        return ExitCode::SUCCESS;
    }
    let items = v["complaints"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no complaints");
    }
    for c in items {
        println!(
            "{}",
            summary(&json!({ "result": c["feedback_type"], "complaint": c }))
        );
    }
    ExitCode::SUCCESS
}
