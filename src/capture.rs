//! `poolrelay capture`: a local SMTP destination that writes each message it receives to a
//! `.eml` file and prints one line per message. It lets a new operator see a delivered,
//! DKIM-signed message (and the source IP it came from) on a machine with no internet, by
//! routing a test domain to it (README "A first message"). Not a mail server: it accepts every
//! recipient but `bounce@…` (refused with 550 5.1.1, to show a bounce and its DSN), offers no
//! TLS and no AUTH, and should listen on loopback only.
//!
//! The SMTP parsing is the inbound stage's own: `smtp_proto::Request` for commands,
//! `inbound::address` for MAIL/RCPT paths, `inbound::data::DataReader` for DATA (strict CRLF,
//! dot-unstuffing), so the capture sees exactly the bytes a strict receiver would.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smtp_proto::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::inbound::address::{parse_path, split_command};
use crate::inbound::data::DataReader;
use crate::reply::Reply;
use crate::text::{Escaped, escape};

/// Largest message kept (bigger gets 552 5.3.4), and largest header section.
const MAX_MESSAGE: u64 = 50 * 1024 * 1024;
const MAX_HEADER: u64 = 1024 * 1024;
/// A command line longer than this ends the session (RFC 5321 allows 512 bytes).
const MAX_LINE: usize = 4096;
const MAX_RECIPIENTS: usize = 1000;
/// Idle sessions end after this, so a stuck client does not hold a task forever.
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// Address to listen on (keep it on loopback: every recipient is accepted).
    #[arg(long, default_value = "127.0.0.1:2526")]
    pub listen: SocketAddr,
    /// Directory for the captured messages (created if missing).
    #[arg(long, default_value = "captured")]
    pub dir: PathBuf,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "capture.localhost")]
    pub hostname: String,
}

/// Runs the capture server until interrupted (Ctrl-C / SIGTERM end it with exit 0).
pub fn run(args: CaptureArgs) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&args.dir) {
        eprintln!(
            "poolrelay capture: cannot create {}: {e}",
            args.dir.display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poolrelay capture: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("poolrelay capture: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        // Printed once bound, so a script (or a test) can wait for this line.
        println!(
            "capturing on {}, writing to {}",
            args.listen,
            args.dir.display()
        );
        let shared = Arc::new(Shared {
            dir: args.dir,
            hostname: args.hostname,
            seq: AtomicU64::new(0),
        });
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("poolrelay capture: cannot watch SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            if let Err(e) = session(stream, peer, &shared).await {
                                eprintln!("poolrelay capture: session from {peer}: {e}");
                            }
                        });
                    }
                    Err(e) => eprintln!("poolrelay capture: accept: {e}"),
                },
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                _ = term.recv() => return ExitCode::SUCCESS,
            }
        }
    })
}

struct Shared {
    dir: PathBuf,
    hostname: String,
    seq: AtomicU64,
}

struct Tx {
    from: String,
    to: Vec<String>,
}

async fn session(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> std::io::Result<()> {
    let peer_ip = normalize(peer.ip());
    let greeting = format!("220 {} ESMTP poolrelay capture\r\n", shared.hostname);
    stream.write_all(greeting.as_bytes()).await?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut helo: Option<String> = None;
    let mut tx: Option<Tx> = None;
    // Some(reader, message) while reading DATA.
    let mut data: Option<(DataReader, Vec<u8>)> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => {
                let r = Reply::new(421, "4.4.2", "Idle too long");
                stream.write_all(r.to_wire().as_bytes()).await?;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut out = String::new();
        let mut close = false;
        loop {
            if let Some((reader, message)) = data.as_mut() {
                let Some(used) = reader.feed(&buf, message) else {
                    buf.clear();
                    break;
                };
                buf.drain(..used);
                let (reader, message) = data.take().expect("in DATA");
                let t = tx.take().expect("DATA needs a transaction");
                let reply = if reader.refused() {
                    Reply::new(550, "5.6.0", "Bare CR, bare LF or NUL in message refused")
                } else if reader.too_big() || reader.header.too_long() {
                    Reply::new(552, "5.3.4", "Message too big for the capture")
                } else {
                    let helo = helo.as_deref().unwrap_or("");
                    match store(shared, peer_ip, helo, &t, &message) {
                        Ok(name) => Reply::new(250, "2.0.0", format!("Ok: captured as {name}")),
                        Err(e) => {
                            eprintln!("poolrelay capture: cannot write a message: {e}");
                            Reply::new(451, "4.3.0", "Cannot store the message")
                        }
                    }
                };
                out.push_str(&reply.to_wire());
                continue;
            }
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                if buf.len() > MAX_LINE {
                    out.push_str(&Reply::new(500, "5.5.2", "Line too long").to_wire());
                    close = true;
                }
                break;
            };
            let mut line: Vec<u8> = buf.drain(..=end).collect();
            line.truncate(line.len() - 1);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            match command(&line, &mut helo, &mut tx) {
                Step::Reply(r) => out.push_str(&r.to_wire()),
                Step::Data => {
                    // smtp-proto's Reply form always carries an enhanced code: 354 is written here.
                    out.push_str("354 End data with <CR><LF>.<CR><LF>\r\n");
                    data = Some((DataReader::new(MAX_MESSAGE, MAX_HEADER), Vec::new()));
                }
                Step::Quit => {
                    out.push_str(&Reply::new(221, "2.0.0", "Bye").to_wire());
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(out.as_bytes()).await?;
        }
        if close {
            return Ok(());
        }
    }
}

enum Step {
    Reply(Reply),
    Data,
    Quit,
}

fn command(line: &[u8], helo: &mut Option<String>, tx: &mut Option<Tx>) -> Step {
    let ok = || Step::Reply(Reply::new(250, "2.0.0", "Ok"));
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    let (mail, rcpt) = (
        verb.eq_ignore_ascii_case(b"MAIL"),
        verb.eq_ignore_ascii_case(b"RCPT"),
    );
    if mail || rcpt {
        let Ok(rest) = std::str::from_utf8(line.get(verb_end + 1..).unwrap_or_default()) else {
            return Step::Reply(Reply::new(501, "5.6.7", "Invalid UTF-8 in command"));
        };
        let keyword = if mail { "FROM" } else { "TO" };
        let Some((path, _params)) = split_command(rest, keyword) else {
            return Step::Reply(Reply::new(
                501,
                "5.5.4",
                format!("Syntax: {keyword}:<path>"),
            ));
        };
        let address = match parse_path(path, true) {
            Ok(a) => a,
            Err(_) => return Step::Reply(Reply::new(501, "5.1.3", "Bad address syntax")),
        };
        if helo.is_none() {
            return Step::Reply(Reply::new(503, "5.5.1", "Send EHLO/HELO first"));
        }
        if mail {
            if tx.is_some() {
                return Step::Reply(Reply::new(503, "5.5.1", "Nested MAIL command"));
            }
            *tx = Some(Tx {
                from: address,
                to: Vec::new(),
            });
            return ok();
        }
        return match tx.as_mut() {
            None => Step::Reply(Reply::new(503, "5.5.1", "Need MAIL first")),
            Some(_) if address.is_empty() => {
                Step::Reply(Reply::new(501, "5.1.3", "Empty recipient"))
            }
            Some(t) if t.to.len() >= MAX_RECIPIENTS => {
                Step::Reply(Reply::new(452, "4.5.3", "Too many recipients"))
            }
            // A way to see a bounce and its DSN without the internet (README "A first message").
            Some(_) if address.to_ascii_lowercase().starts_with("bounce@") => {
                Step::Reply(Reply::new(
                    550,
                    "5.1.1",
                    "No such user here (the capture refuses bounce@)",
                ))
            }
            Some(t) => {
                t.to.push(address);
                ok()
            }
        };
    }
    let mut with_crlf = line.to_vec();
    with_crlf.extend_from_slice(b"\r\n");
    let req = match Request::parse(&mut with_crlf.iter()) {
        Ok(r) => r.into_owned(),
        Err(smtp_proto::Error::UnknownCommand) => {
            return Step::Reply(Reply::new(500, "5.5.1", "Unknown command"));
        }
        Err(_) => return Step::Reply(Reply::new(501, "5.5.4", "Syntax error")),
    };
    match req {
        Request::Ehlo { host } | Request::Helo { host } => {
            let esmtp = verb.eq_ignore_ascii_case(b"EHLO");
            *helo = Some(host);
            *tx = None;
            let text = if esmtp {
                // No STARTTLS, AUTH or CHUNKING: the relay delivers in plain text with DATA.
                format!(
                    "capture\nPIPELINING\nSIZE {MAX_MESSAGE}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES"
                )
            } else {
                "capture".to_string()
            };
            Step::Reply(Reply::new(250, "", text))
        }
        Request::Data => match tx.as_ref() {
            None => Step::Reply(Reply::new(503, "5.5.1", "Need MAIL first")),
            Some(t) if t.to.is_empty() => {
                Step::Reply(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => Step::Data,
        },
        Request::Rset => {
            *tx = None;
            ok()
        }
        Request::Noop { .. } => ok(),
        Request::Quit => Step::Quit,
        _ => Step::Reply(Reply::new(502, "5.5.1", "Command not implemented")),
    }
}

/// An IPv4-mapped IPv6 peer shown as the IPv4 address it is.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Writes the message with the envelope as `X-Captured-*` lines on top (prepended headers do not
/// break a DKIM signature), through a temporary name and a rename so a reader of the directory
/// never sees half a file; prints the summary line. Returns the file name.
fn store(
    shared: &Shared,
    peer: IpAddr,
    helo: &str,
    tx: &Tx,
    message: &[u8],
) -> std::io::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}-{}-{seq}.eml", now.as_millis(), std::process::id());
    let from = if tx.from.is_empty() {
        "<>".to_string()
    } else {
        format!("<{}>", tx.from)
    };
    let to: Vec<String> = tx.to.iter().map(|t| format!("<{t}>")).collect();
    // Escaped: an EHLO name or address never adds a header line of its own.
    let mut head = format!(
        "X-Captured-Peer: {peer}\r\nX-Captured-Helo: {}\r\nX-Captured-Mail-From: {}\r\nX-Captured-Rcpt-To: {}\r\n",
        escape(helo),
        escape(&from),
        escape(&to.join(", "))
    );
    head.reserve(message.len());
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(message);
    let tmp = shared.dir.join(format!(".{name}.tmp"));
    let path = shared.dir.join(&name);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &path)?;
    println!(
        "{}  peer={peer} helo={} from={} to={} size={} dkim={}",
        path.display(),
        Escaped(helo),
        Escaped(&from),
        Escaped(&to.join(",")),
        message.len(),
        dkim_summary(message)
    );
    Ok(name)
}

/// `d=example.com/s=s2026` for each DKIM-Signature header (comma-separated), or `none`. Only
/// says a signature is there: verifying it needs the public key in DNS.
pub fn dkim_summary(message: &[u8]) -> String {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let text = String::from_utf8_lossy(&message[..header_end]);
    // Unfold: a line starting with white space continues the header before it.
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_string());
        }
    }
    let found: Vec<String> = fields
        .iter()
        .filter_map(|f| {
            let (name, value) = f.split_once(':')?;
            if !name.trim().eq_ignore_ascii_case("DKIM-Signature") {
                return None;
            }
            let tag = |t: &str| {
                value.split(';').find_map(|part| {
                    let (k, v) = part.split_once('=')?;
                    (k.trim() == t).then(|| v.split_whitespace().collect::<String>())
                })
            };
            Some(format!(
                "d={}/s={}",
                escape(&tag("d").unwrap_or_default()),
                escape(&tag("s").unwrap_or_default())
            ))
        })
        .collect();
    if found.is_empty() {
        "none".to_string()
    } else {
        found.join(",")
    }
}

/// The captured `.eml` files in `dir`, oldest first (names start with the capture time).
pub fn captured_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkim_summary_reads_folded_tags() {
        let m = b"DKIM-Signature: v=1; a=rsa-sha256;\r\n d=example.com; s=s2026;\r\n\tb=abc\r\nFrom: a@example.com\r\n\r\nbody DKIM-Signature: d=x\r\n";
        assert_eq!(dkim_summary(m), "d=example.com/s=s2026");
        assert_eq!(dkim_summary(b"From: a@b\r\n\r\nhi\r\n"), "none");
    }

    #[test]
    fn commands_follow_the_smtp_order() {
        let (mut helo, mut tx) = (None, None);
        let code = |s: Step| match s {
            Step::Reply(r) => r.code,
            Step::Data => 354,
            Step::Quit => 221,
        };
        assert_eq!(
            code(command(b"MAIL FROM:<a@b.test>", &mut helo, &mut tx)),
            503
        );
        assert_eq!(code(command(b"EHLO relay.test", &mut helo, &mut tx)), 250);
        assert_eq!(code(command(b"DATA", &mut helo, &mut tx)), 503);
        assert_eq!(code(command(b"MAIL FROM:<>", &mut helo, &mut tx)), 250);
        assert_eq!(code(command(b"DATA", &mut helo, &mut tx)), 554);
        assert_eq!(
            code(command(b"RCPT TO:<x@y.test>", &mut helo, &mut tx)),
            250
        );
        assert_eq!(code(command(b"RCPT TO:<bad", &mut helo, &mut tx)), 501);
        assert_eq!(
            code(command(b"RCPT TO:<Bounce@y.test>", &mut helo, &mut tx)),
            550
        );
        assert_eq!(code(command(b"DATA", &mut helo, &mut tx)), 354);
        assert_eq!(code(command(b"QUIT", &mut helo, &mut tx)), 221);
    }
}
