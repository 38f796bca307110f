//! `poolrelay queue show|retry|hold|release|delete` and `queue --summary`: requests to the
//! running relay's `/api/queue` (the scheduler owns the queue; the CLI never edits the spool).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client;
use crate::config::Config;
use crate::text::{Escaped, escape};

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// One message: state, next attempt, envelope with every recipient's last reply.
    Show { id: String },
    /// Due now: the next attempt starts at once (not for messages on hold).
    Retry(Target),
    /// Keep messages from delivery until released (survives a restart).
    Hold(Target),
    /// Back into the queue, due now.
    Release(Target),
    /// Remove messages from the queue.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Send the sender a failure DSN for the pending recipients.
        #[arg(long)]
        dsn: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Queue id.
    id: Option<String>,
    /// Every queued message.
    #[arg(long)]
    all: bool,
    /// Messages with a pending recipient at this domain.
    #[arg(long)]
    domain: Option<String>,
}

impl Target {
    fn body(&self, dsn: bool) -> Value {
        let mut v = match (&self.id, &self.domain) {
            (Some(id), _) => json!({ "id": id }),
            (_, Some(d)) => json!({ "domain": d }),
            _ => json!({ "all": true }),
        };
        if dsn {
            v["dsn"] = json!(true);
        }
        v
    }
}

/// Runs one command (or the summary when `command` is None) against `[admin] listen`.
pub fn run(config: &Config, command: Option<QueueCommand>, json_out: bool) -> ExitCode {
    if config.admin.is_none() {
        eprintln!("poolrelay queue: the config has no [admin] listen address");
        return ExitCode::from(2);
    }
    let (method, path, body) = match &command {
        None => ("GET", "/api/queue".to_string(), None),
        Some(QueueCommand::Show { id }) => ("GET", format!("/api/queue/message/{id}"), None),
        Some(QueueCommand::Retry(t)) => ("POST", "/api/queue/retry".into(), Some(t.body(false))),
        Some(QueueCommand::Hold(t)) => ("POST", "/api/queue/hold".into(), Some(t.body(false))),
        Some(QueueCommand::Release(t)) => {
            ("POST", "/api/queue/release".into(), Some(t.body(false)))
        }
        Some(QueueCommand::Delete { target, dsn }) => {
            ("POST", "/api/queue/delete".into(), Some(target.body(*dsn)))
        }
    };
    let (code, text) = match client::request(config, method, &path, body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay queue: {e}");
            return ExitCode::FAILURE;
        }
    };
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if code != 200 {
        let msg = value["error"].as_str().unwrap_or(text.as_str());
        eprintln!("poolrelay queue: {} (HTTP {code})", Escaped(msg));
        return ExitCode::FAILURE;
    }
    if json_out {
        println!("{}", crate::text::json(&text));
        return ExitCode::SUCCESS;
    }
    match command {
        None => print!("{}", format_summary(&value)),
        Some(QueueCommand::Show { .. }) => print!("{}", format_show(&value)),
        Some(_) => {
            let action = Escaped(value["action"].as_str().unwrap_or("?"));
            // `--all` and `--domain` answer with counts, one message with its id.
            if let (Some(done), Some(skipped)) = (value["done"].as_u64(), value["skipped"].as_u64())
            {
                println!("{action}: {done} message(s)");
                if skipped > 0 {
                    println!("skipped (being delivered or not in a state for it): {skipped}");
                }
                return ExitCode::SUCCESS;
            }
            let list = |k: &str| {
                value[k]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let (done, skipped) = (list("done"), list("skipped"));
            let done_ids = escape(&done.join(" ")).into_owned();
            println!("{action}: {} message(s) {done_ids}", done.len());
            if !skipped.is_empty() {
                println!(
                    "skipped (being delivered or not in a state for it): {}",
                    Escaped(&skipped.join(" "))
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn format_summary(v: &Value) -> String {
    let mut out = format!(
        "{} messages, {} pending recipients, {} bytes\n",
        v["messages"], v["recipients"], v["bytes"]
    );
    for (title, key) in [
        ("state", "by_state"),
        ("domain", "by_domain"),
        ("provider", "by_provider"),
    ] {
        let Some(map) = v[key].as_object().filter(|m| !m.is_empty()) else {
            continue;
        };
        out.push_str(&format!("by {title}:\n"));
        let mut rows: Vec<(&String, u64)> = map
            .iter()
            .map(|(k, n)| (k, n.as_u64().unwrap_or(0)))
            .collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (k, n) in rows {
            out.push_str(&format!("  {n:>8}  {}\n", Escaped(k)));
        }
    }
    out
}

fn format_show(v: &Value) -> String {
    let e = &v["envelope"];
    let mut out = format!(
        "{}  {}  {} bytes  from <{}>  received {}  next attempt {}\n",
        Escaped(e["id"].as_str().unwrap_or("?")),
        Escaped(v["state"].as_str().unwrap_or("?")),
        e["size"],
        Escaped(e["sender"].as_str().unwrap_or("")),
        e["received_at"],
        v["due"],
    );
    for r in e["recipients"].as_array().into_iter().flatten() {
        let reply = &r["last_reply"];
        let last = if reply.is_null() {
            String::new()
        } else {
            format!(
                "  last: {} {} {}",
                reply["code"],
                Escaped(reply["status"].as_str().unwrap_or("")),
                Escaped(reply["text"].as_str().unwrap_or(""))
            )
        };
        out.push_str(&format!(
            "  {}  {}  {} attempts{last}\n",
            Escaped(r["address"].as_str().unwrap_or("?")),
            Escaped(r["state"].as_str().unwrap_or("?")),
            r["attempts"],
        ));
    }
    out
}
