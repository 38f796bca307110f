//! `poolrelay suppression list|remove`: the suppressed recipients of a running relay, through
//! its admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::text::{Escaped, json as safe_json};

#[derive(clap::Args, Debug)]
pub struct SuppressionArgs {
    /// Config file (TOML), read for `admin.listen`.
    #[arg(long, short, default_value = "config/poolrelay.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: SuppressionCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SuppressionCommand {
    /// Every suppressed address with its scope, the bounce or complaint that caused it and when
    /// it ends.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lets mail to ADDRESS be tried again (from every sender, or only SENDER_DOMAIN's).
    Remove {
        address: String,
        #[arg(long)]
        sender_domain: Option<String>,
    },
}

/// `poolrelay suppression …`, through the running relay's admin API.
pub fn run(args: SuppressionArgs) -> ExitCode {
    let config = match super::client::load_config(&args.config, "suppression") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (method, path, body) = match &args.command {
        SuppressionCommand::List { .. } => ("GET", "/api/suppressions", None),
        SuppressionCommand::Remove {
            address,
            sender_domain,
        } => (
            "POST",
            "/api/suppressions/remove",
            Some(json!({ "address": address, "sender_domain": sender_domain })),
        ),
    };
    let (code, text) = match super::client::request(&config, method, path, body.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay suppression: {e}");
            return ExitCode::FAILURE;
        }
    };
    if code != 200 {
        eprintln!("poolrelay suppression: HTTP {code}: {}", Escaped(&text));
        return ExitCode::FAILURE;
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match args.command {
        SuppressionCommand::List { json: true } => println!("{}", safe_json(&v.to_string())),
        SuppressionCommand::List { json: false } => {
            let items = v["suppressions"].as_array().cloned().unwrap_or_default();
            print!("{}", format_suppressions(&items, crate::spool::now_unix()));
        }
        SuppressionCommand::Remove { address, .. } => {
            if v["removed"] == true {
                println!("{}: suppression removed", Escaped(&address));
            } else {
                println!("{}: was not suppressed", Escaped(&address));
            }
        }
    }
    ExitCode::SUCCESS
}

/// `suppression list`: a header row, one line per address, times as UTC dates with how far.
fn format_suppressions(items: &[serde_json::Value], now: u64) -> String {
    use crate::text::{escape, relative, table, utc};
    if items.is_empty() {
        return "no suppressed recipients\n".into();
    }
    let at = |v: &serde_json::Value| {
        let t = v.as_u64().unwrap_or(0);
        format!("{} ({})", utc(t), relative(t, now))
    };
    let mut rows = vec![
        ["ADDRESS", "SCOPE", "SINCE", "UNTIL", "REASON"]
            .map(String::from)
            .to_vec(),
    ];
    for i in items {
        rows.push(vec![
            escape(i["address"].as_str().unwrap_or("")).into_owned(),
            // A complainer is suppressed for one sender domain; a bad recipient for all mail.
            match i["sender_domain"].as_str() {
                Some(d) => format!("mail from {}", escape(d)),
                None => "all mail".to_string(),
            },
            at(&i["since"]),
            at(&i["until"]),
            escape(i["reason"].as_str().unwrap_or("")).into_owned(),
        ]);
    }
    let mut out = table(&rows);
    out.push_str(&format!(
        "-- {}\n",
        crate::text::count(items.len() as u64, "suppressed recipient")
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn suppressions_are_a_table_with_dates() {
        let now = 1_796_652_192;
        let items = vec![
            serde_json::json!({"address": "gone@b.test", "reason": "550 5.1.1 no such user",
            "since": now - 7200, "until": now + 29 * 86_400}),
        ];
        let t = super::format_suppressions(&items, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ADDRESS      SCOPE     SINCE"), "{t}");
        assert!(
            lines[1].contains(
                "2026-12-07 12:03:12 UTC (2h ago)  2027-01-05 14:03:12 UTC (in 29d)  550 5.1.1"
            ),
            "{t}"
        );
        assert_eq!(lines[2], "-- 1 suppressed recipient");
    }
}
