//! `poolrelay send`: submit one short test message to a relay listener, so the README's first
//! message needs no other SMTP client. Plain SMTP only (no STARTTLS, no AUTH): it is meant for
//! a listener that trusts the sending address (`[access] networks`, e.g. 127.0.0.0/8 on 2525);
//! use swaks or a real MTA for anything else.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use mail_send::SmtpClient;

use crate::text::Escaped;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The relay listener to submit to (it must let this address relay without AUTH).
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub server: SocketAddr,
    /// Envelope sender and From: address.
    #[arg(long, default_value = "demo@example.com")]
    pub from: String,
    /// Recipient (envelope and To:); repeat for more.
    #[arg(long, required = true)]
    pub to: Vec<String>,
    #[arg(long, default_value = "poolrelay first message")]
    pub subject: String,
    /// Name given in EHLO.
    #[arg(long, default_value = "localhost")]
    pub helo: String,
}

/// Sends the message; prints the relay's final reply (with its queue id). Exit 0 when the relay
/// accepted it, 1 otherwise (the reply that refused it is printed).
pub fn run(args: SendArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay send: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(submit(&args)) {
        Ok(reply) => {
            println!("{}", Escaped(&reply));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poolrelay send: {}", Escaped(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// The message text: the headers a receiver expects (Date, Message-ID) and a short body.
pub fn message(from: &str, to: &[String], subject: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let date = mail_parser::DateTime::from_timestamp(now.as_secs() as i64).to_rfc822();
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{}.{}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello from poolrelay send.\r\n\
         If this arrived with a DKIM-Signature header, the relay signed and delivered it.\r\n",
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        now.as_nanos(),
        std::process::id(),
    )
}

/// Why the message was not accepted; `step` names the SMTP step (`greeting`, `EHLO`…).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("bad address {0:?}")]
    BadAddress(String),
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: SocketAddr,
        #[source]
        source: mail_send::Error,
    },
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: mail_send::Error,
    },
    /// The relay's reply (`wire`) was not the one wanted.
    #[error("{step}: {reply}")]
    Refused { step: String, reply: String },
    #[error("sending the message: {0}")]
    Message(#[source] std::io::Error),
}

async fn submit(args: &SendArgs) -> Result<String, SendError> {
    for a in std::iter::once(&args.from).chain(&args.to) {
        // One line per header and command: no CR, LF or angle brackets inside an address.
        if a.chars().any(|c| c.is_control() || c == '<' || c == '>') {
            return Err(SendError::BadAddress(a.clone()));
        }
    }
    let timeout = Duration::from_secs(60);
    let mut client = SmtpClient::connect(args.server, timeout)
        .await
        .map_err(|source| SendError::Connect {
            server: args.server,
            source,
        })?;
    let step = |what: &str, r: mail_send::Result<smtp_proto::Response<String>>, want: u16| {
        let r = r.map_err(|source| SendError::Step {
            step: what.to_string(),
            source,
        })?;
        if r.code != want {
            return Err(SendError::Refused {
                step: what.to_string(),
                reply: wire(&r),
            });
        }
        Ok(r)
    };
    step("greeting", client.read().await, 220)?;
    step(
        "EHLO",
        client.cmd(format!("EHLO {}\r\n", args.helo)).await,
        250,
    )?;
    step(
        "MAIL FROM",
        client.cmd(format!("MAIL FROM:<{}>\r\n", args.from)).await,
        250,
    )?;
    for to in &args.to {
        step(
            &format!("RCPT TO <{to}>"),
            client.cmd(format!("RCPT TO:<{to}>\r\n")).await,
            250,
        )?;
    }
    step("DATA", client.cmd(b"DATA\r\n").await, 354)?;
    let text = message(&args.from, &args.to, &args.subject);
    client
        .write_message(text.as_bytes())
        .await
        .map_err(SendError::Message)?;
    let r = step("end of data", client.read().await, 250)?;
    let _ = client.cmd(b"QUIT\r\n").await;
    Ok(wire(&r))
}

/// `250 2.0.0 text` as the server wrote it (multi-line text joined by spaces).
fn wire(r: &smtp_proto::Response<String>) -> String {
    let esc = if r.esc[0] > 0 {
        format!("{}.{}.{} ", r.esc[0], r.esc[1], r.esc[2])
    } else {
        String::new()
    };
    format!("{} {esc}{}", r.code, r.message.replace('\n', " "))
}
