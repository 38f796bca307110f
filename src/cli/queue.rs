//! `poolrelay queue show|retry|hold|release|delete` and `queue --summary`: requests to the
//! running relay's `/api/queue` (the scheduler owns the queue; the CLI never edits the spool);
//! plain `queue` reads the spool itself (`local`).

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client;
use crate::config::Config;
use crate::spool::Envelope;
use crate::text::{Escaped, count, escape, relative, table, utc};

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

/// `queue` without `--summary` or a subcommand: the spool under `data_dir`, read without
/// changing anything (`--count`: the number only).
pub fn local(config: &Path, count: bool, json: bool) -> ExitCode {
    let config = match super::load_or_report(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if count {
        // From file names and log headers: no envelope is read (a million in seconds).
        return match crate::spool::count_queued(&config.data_dir) {
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
    let queued = match crate::spool::inspect_envelopes(&config.data_dir) {
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
        println!("{}", crate::text::json(&text));
    } else {
        let now = crate::spool::now_unix();
        print!("{}", format_listing(&queued, now));
    }
    ExitCode::SUCCESS
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
    let now = crate::spool::now_unix();
    match command {
        None => print!("{}", format_summary(&value, now)),
        Some(QueueCommand::Show { .. }) => print!("{}", format_show(&value, now)),
        Some(_) => {
            let action = Escaped(value["action"].as_str().unwrap_or("?"));
            // `--all` and `--domain` answer with counts, one message with its id.
            if let (Some(done), Some(skipped)) = (value["done"].as_u64(), value["skipped"].as_u64())
            {
                println!("{action}: {}", count(done, "message"));
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
            println!(
                "{action}: {} {done_ids}",
                count(done.len() as u64, "message")
            );
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

/// The offline `poolrelay queue`: a header row, one line per message (received as a UTC
/// date, each recipient with its state, attempts and next attempt), then the count.
pub fn format_listing(queued: &[Envelope], now: u64) -> String {
    let mut rows = vec![
        ["ID", "SIZE", "RECEIVED", "SENDER", "RECIPIENTS"]
            .map(String::from)
            .to_vec(),
    ];
    let mut recipients = 0u64;
    for env in queued {
        let sender = if env.sender.is_empty() {
            "<>"
        } else {
            &env.sender
        };
        let rcpts: Vec<String> = env
            .recipients
            .iter()
            .map(|r| {
                let next = match r.state {
                    crate::spool::RcptState::Pending if r.next_attempt > now => {
                        format!(", next {}", relative(r.next_attempt, now))
                    }
                    _ => String::new(),
                };
                format!(
                    "{} ({}, {}{next})",
                    Escaped(&r.address),
                    r.state.as_str(),
                    count(r.attempts, "attempt")
                )
            })
            .collect();
        recipients += env.recipients.len() as u64;
        rows.push(vec![
            escape(&env.id).into_owned(),
            env.size.to_string(),
            utc(env.received_at),
            escape(sender).into_owned(),
            rcpts.join(", "),
        ]);
    }
    let mut out = if queued.is_empty() {
        String::new()
    } else {
        table(&rows)
    };
    out.push_str(&format!(
        "-- {}, {}\n",
        count(queued.len() as u64, "message"),
        count(recipients, "recipient")
    ));
    out
}

/// `queue --summary`: totals, then a table per grouping (largest first).
fn format_summary(v: &Value, now: u64) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "{}, {} pending, {} bytes",
        count(n("messages"), "message"),
        count(n("recipients"), "recipient"),
        n("bytes")
    );
    if let Some(oldest) = v["oldest"].as_u64() {
        out.push_str(&format!(", oldest received {}", relative(oldest, now)));
    }
    out.push('\n');
    for (title, key, unit) in [
        ("STATE", "by_state", "MESSAGES"),
        ("DOMAIN", "by_domain", "MESSAGES"),
        ("PROVIDER", "by_provider", "RECIPIENTS"),
    ] {
        let Some(map) = v[key].as_object().filter(|m| !m.is_empty()) else {
            continue;
        };
        let mut counts: Vec<(&String, u64)> = map
            .iter()
            .map(|(k, n)| (k, n.as_u64().unwrap_or(0)))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut rows = vec![vec![title.to_string(), unit.to_string()]];
        rows.extend(
            counts
                .into_iter()
                .map(|(k, n)| vec![escape(k).into_owned(), n.to_string()]),
        );
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

/// A time field of the API (unix seconds) as `2026-12-07 14:03:12 UTC (3h ago)`.
fn when(v: &Value, now: u64) -> String {
    match v.as_u64() {
        Some(t) if t > 0 => format!("{} ({})", utc(t), relative(t, now)),
        _ => "-".into(),
    }
}

/// `queue show`: the message's fields, then a table of its recipients.
fn format_show(v: &Value, now: u64) -> String {
    let e = &v["envelope"];
    let sender = e["sender"].as_str().unwrap_or("");
    let state = v["state"].as_str().unwrap_or("?");
    let next = match (state, v["due"].as_u64()) {
        ("on-hold", _) => "none while on hold (release it)".to_string(),
        ("delivering", _) => "being delivered now".to_string(),
        (_, Some(t)) if t <= now => "now".to_string(),
        (_, due) => when(&due.into(), now),
    };
    let mut out = format!(
        "id:            {}\nstate:         {}\nsize:          {} bytes\nsender:        <{}>\n\
         received:      {}\nnext attempt:  {next}\n\n",
        Escaped(e["id"].as_str().unwrap_or("?")),
        Escaped(state),
        e["size"],
        Escaped(sender),
        when(&e["received_at"], now),
    );
    let mut rows = vec![
        ["RECIPIENT", "STATE", "ATTEMPTS", "LAST REPLY"]
            .map(String::from)
            .to_vec(),
    ];
    for r in e["recipients"].as_array().into_iter().flatten() {
        let reply = &r["last_reply"];
        let last = if reply.is_null() {
            "-".to_string()
        } else {
            format!(
                "{} {} {}",
                reply["code"],
                Escaped(reply["status"].as_str().unwrap_or("")),
                Escaped(reply["text"].as_str().unwrap_or(""))
            )
        };
        rows.push(vec![
            escape(r["address"].as_str().unwrap_or("?")).into_owned(),
            escape(r["state"].as_str().unwrap_or("?")).into_owned(),
            r["attempts"].as_u64().unwrap_or(0).to_string(),
            last,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_has_dates_a_header_and_one_word_per_state() {
        let now = 1_796_652_192;
        let v = json!({"state": "queued", "due": now + 240, "envelope": {
            "id": "Q1", "size": 120, "sender": "a@x.test", "received_at": now - 3 * 3600,
            "recipients": [{"address": "b@y.test", "state": "pending", "attempts": 1,
              "last_reply": {"code": 451, "status": "4.3.0", "text": "try later"}}]}});
        let t = format_show(&v, now);
        assert!(
            t.contains("received:      2026-12-07 11:03:12 UTC (3h ago)"),
            "{t}"
        );
        assert!(
            t.contains("next attempt:  2026-12-07 14:07:12 UTC (in 4m)"),
            "{t}"
        );
        assert!(
            t.contains("RECIPIENT  STATE    ATTEMPTS  LAST REPLY\n"),
            "{t}"
        );
        assert!(
            t.contains("b@y.test   pending  1         451 4.3.0 try later\n"),
            "{t}"
        );
    }

    #[test]
    fn summary_counts_with_plurals_and_headers() {
        let v = json!({"messages": 1, "recipients": 2, "bytes": 10, "oldest": 100,
            "by_state": {"on-hold": 1}, "by_domain": {}, "by_provider": {"alpha": 2}});
        let t = format_summary(&v, 100 + 7200);
        assert!(
            t.starts_with("1 message, 2 recipients pending, 10 bytes, oldest received 2h ago\n"),
            "{t}"
        );
        assert!(t.contains("STATE    MESSAGES\non-hold  1\n"), "{t}");
        assert!(t.contains("PROVIDER  RECIPIENTS\nalpha     2\n"), "{t}");
    }
}
