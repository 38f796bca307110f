//! `poolrelay classify`: explains a reply or a whole bounce the way an operator reads one by hand.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::outcome::classify::{
    Classification, Classifier, Explanation, Signal, Stage, parse_reply,
};
use crate::reputation::bounce;
use crate::text::{Escaped, json as safe_json};

#[derive(clap::Args, Debug)]
pub struct ClassifyArgs {
    /// The SMTP reply, e.g. "550 5.7.1 … block list (S3150)"; read from stdin when absent.
    pub reply: Option<String>,
    /// Read whole bounce messages (RFC 3464 DSN or free text) instead of a reply.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub message: Vec<PathBuf>,
    /// Config file whose `[reputation]` rules are used in front of the built-in ones.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// JSON output (one object per reply or message, one per line).
    #[arg(long)]
    pub json: bool,
    /// Show which signals decided: status code meaning, SMTP stage, the rule and what it matched,
    /// every step of the decision.
    #[arg(long)]
    pub explain: bool,
    /// The SMTP stage the reply came at (connect, helo, mail, rcpt, data); default: read from
    /// the text when it names one.
    #[arg(long, value_parser = parse_stage)]
    pub stage: Option<Stage>,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    Stage::parse(s).ok_or_else(|| format!("unknown stage {s:?} (connect, helo, mail, rcpt, data)"))
}

pub fn run(args: ClassifyArgs) -> ExitCode {
    let classifier = match &args.config {
        None => Classifier::builtin(),
        Some(path) => match crate::config::Config::load(path) {
            Ok(c) => match c.reputation.classifier() {
                Ok(cl) => cl,
                Err(e) => {
                    eprintln!("poolrelay classify: {e}");
                    return ExitCode::from(2);
                }
            },
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return ExitCode::from(2);
            }
        },
    };
    if !args.message.is_empty() {
        let mut status = ExitCode::SUCCESS;
        for path in &args.message {
            match std::fs::read(path) {
                Ok(raw) => print_bounce(
                    path,
                    &bounce::parse(&raw, &classifier),
                    args.json,
                    args.explain.then_some(&classifier),
                ),
                Err(e) => {
                    eprintln!("poolrelay classify: {}: {e}", path.display());
                    status = ExitCode::FAILURE;
                }
            }
        }
        return status;
    }
    let reply = match args.reply {
        Some(r) => r,
        None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("poolrelay classify: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            s
        }
    };
    if reply.trim().is_empty() {
        eprintln!("poolrelay classify: no reply given (argument or stdin)");
        return ExitCode::from(2);
    }
    let p = parse_reply(&reply);
    let stage = args.stage.unwrap_or_default();
    let (c, e) = classifier.explain(stage, p.code, &p.status, &p.text);
    if args.json {
        let mut v = class_json(&c, p.code, &p.status);
        v["code"] = json!(p.code);
        v["status"] = json!(p.status);
        v["text"] = json!(p.text);
        if args.explain {
            v["explain"] = json!(e);
        }
        println!("{}", safe_json(&v.to_string()));
    } else {
        let code = if p.code == 0 {
            "-".to_string()
        } else {
            p.code.to_string()
        };
        println!(
            "reply:     {code} {} {}",
            Escaped(or_dash(&p.status)),
            Escaped(&p.text)
        );
        print_class(&c, p.code, &p.status, "");
        if args.explain {
            print_explanation(&c, &e, "");
        }
    }
    ExitCode::SUCCESS
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn class_json(c: &Classification, code: u16, status: &str) -> serde_json::Value {
    let signal = c.signal(code, status);
    json!({
        "class": c.class.as_str(),
        "scope": c.scope.as_str(),
        "blames": c.scope.blame(),
        "blames_ip": signal == Signal::Block || c.scope == crate::outcome::classify::Scope::Ip,
        "signal": signal,
        "provider": c.provider,
        "rule": c.rule,
    })
}

fn print_class(c: &Classification, code: u16, status: &str, indent: &str) {
    println!("{indent}class:     {}", c.class);
    println!(
        "{indent}provider:  {}",
        c.provider
            .as_deref()
            .unwrap_or("any (not provider-specific)")
    );
    println!(
        "{indent}blames:    {} (scope {})",
        c.scope.blame(),
        c.scope.as_str()
    );
    let signal = c.signal(code, status);
    println!(
        "{indent}signal:    {signal} ({})",
        match signal {
            Signal::Block => "quarantines the sending IP for this provider",
            Signal::Throttle => "slows the sending IP's pace for this provider",
            Signal::None => "nothing about the sending IP",
        }
    );
    println!("{indent}rule:      {}", c.rule);
}

/// The signals behind a classification, for an operator writing an override rule.
fn print_explanation(c: &Classification, e: &Explanation, indent: &str) {
    println!(
        "{indent}status:    {}",
        match &e.status_meaning {
            Some(m) => format!("{} ({m})", e.status),
            None if e.status.is_empty() => "none".to_string(),
            None => e.status.clone(),
        }
    );
    println!(
        "{indent}stage:     {} ({})",
        e.stage.as_str(),
        match e.stage_source {
            "caller" => "given",
            "text" => "read from the text",
            _ => "not known",
        }
    );
    match &e.matched {
        Some(m) => println!(
            "{indent}decided:   {} {}, matching \"{}\"",
            e.decided_by,
            c.rule,
            Escaped(m)
        ),
        None => println!("{indent}decided:   {} ({})", e.decided_by, c.rule),
    }
    println!("{indent}steps:");
    for s in &e.steps {
        println!("{indent}  {}", Escaped(s));
    }
    println!(
        "{indent}override:  [[reputation.rule]] with `name`, `class` and regexes on `code`, `status`, `text` (and `stage`) goes before all of these"
    );
}

fn print_bounce(
    path: &std::path::Path,
    b: &bounce::Bounce,
    as_json: bool,
    explain: Option<&Classifier>,
) {
    let explanation =
        |r: &bounce::Report| explain.map(|cl| cl.explain(r.stage, r.code, &r.status, &r.words).1);
    if as_json {
        let reports: Vec<_> = b
            .reports
            .iter()
            .map(|r| {
                let mut v = class_json(&r.classification, r.code, &r.status);
                v["recipient"] = json!(r.recipient);
                v["action"] = json!(r.action);
                v["failure"] = json!(r.is_failure());
                v["status"] = json!(r.status);
                v["code"] = json!(r.code);
                v["diagnostic"] = json!(r.diagnostic);
                v["remote_mta"] = json!(r.remote_mta);
                v["stage"] = json!(r.stage);
                if let Some(e) = explanation(r) {
                    v["explain"] = json!(e);
                }
                v
            })
            .collect();
        let v = json!({ "file": path.display().to_string(), "kind": b.kind, "reports": reports });
        println!("{}", safe_json(&v.to_string()));
        return;
    }
    let kind = match b.kind {
        bounce::Kind::Dsn => "delivery status notification (RFC 3464)",
        bounce::Kind::FreeText => "free-text bounce",
        bounce::Kind::Feedback => "feedback (abuse) report, not a delivery failure",
        bounce::Kind::AutoReply => "auto-reply, not a delivery failure",
        bounce::Kind::Delivered => "delivery notification, not a failure",
        bounce::Kind::SesNotification => "Amazon SES bounce notification (JSON)",
    };
    println!("{}: {kind}", path.display());
    if b.reports.is_empty()
        && matches!(
            b.kind,
            bounce::Kind::Dsn | bounce::Kind::FreeText | bounce::Kind::SesNotification
        )
    {
        println!("  no failed recipient found");
    }
    for r in &b.reports {
        println!("  recipient: {}", Escaped(or_dash(&r.recipient)));
        println!("  action:    {}", r.action);
        let code = if r.code == 0 {
            "-".to_string()
        } else {
            r.code.to_string()
        };
        println!("  status:    {code} {}", Escaped(or_dash(&r.status)));
        if let Some(m) = &r.remote_mta {
            println!("  remote:    {}", Escaped(m));
        }
        println!("  diagnostic: {}", Escaped(&r.diagnostic));
        print_class(&r.classification, r.code, &r.status, "  ");
        if let Some(e) = explanation(r) {
            print_explanation(&r.classification, &e, "  ");
        }
        println!();
    }
}
