//! Load tools for bench/run.sh:
//!   loadgen idle ADDR N HOLD_SECS        N sessions that say EHLO and then sit idle
//!   loadgen big ADDR MB                  one message of MB megabytes, streamed
//!   loadgen latency ADDR RATE SECS SIZE  open-loop: RATE new sessions per second, one message of
//!                                        SIZE bytes each; prints p50/p90/p99/max of the time
//!                                        from the final dot to the 250 and from connect to 250

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

async fn reply(r: &mut Reader) -> std::io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply {line:?}")));
        }
    }
}

async fn cmd(r: &mut Reader, w: &mut OwnedWriteHalf, line: &str) -> std::io::Result<u16> {
    w.write_all(line.as_bytes()).await?;
    reply(r).await
}

async fn open(addr: SocketAddr) -> std::io::Result<(Reader, OwnedWriteHalf)> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut w = w;
    let code = reply(&mut r).await?;
    if code != 220 {
        return Err(std::io::Error::other(format!("greeting {code}")));
    }
    let code = cmd(&mut r, &mut w, "EHLO loadgen.bench.test\r\n").await?;
    if code != 250 {
        return Err(std::io::Error::other(format!("EHLO {code}")));
    }
    Ok((r, w))
}

fn body(id: usize, size: usize) -> Vec<u8> {
    let mut b = format!(
        "From: <bench@bench.test>\r\nTo: <rcpt@dest.test>\r\nSubject: latency {id}\r\nMessage-ID: <lat{id}@bench.test>\r\n\r\n"
    )
    .into_bytes();
    let line = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// One message; returns (dot→reply, connect→reply).
async fn one(addr: SocketAddr, id: usize, size: usize) -> std::io::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let (mut r, mut w) = open(addr).await?;
    for (line, want) in [
        ("MAIL FROM:<bench@bench.test>\r\n".to_string(), 250),
        ("RCPT TO:<rcpt@dest.test>\r\n".to_string(), 250),
        ("DATA\r\n".to_string(), 354),
    ] {
        let code = cmd(&mut r, &mut w, &line).await?;
        if code != want {
            return Err(std::io::Error::other(format!("{line:?} -> {code}")));
        }
    }
    let data = body(id, size);
    w.write_all(&data[..data.len() - 3]).await?;
    let t1 = Instant::now();
    w.write_all(b".\r\n").await?;
    let code = reply(&mut r).await?;
    let (d1, d0) = (t1.elapsed(), t0.elapsed());
    if code != 250 {
        return Err(std::io::Error::other(format!("end of data -> {code}")));
    }
    let _ = cmd(&mut r, &mut w, "QUIT\r\n").await;
    Ok((d1, d0))
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen idle ADDR N HOLD_SECS | big ADDR MB | latency ADDR RATE SECS SIZE";
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let num = |i: usize| -> usize { args.get(i).and_then(|a| a.parse().ok()).expect(usage) };
    match args.get(1).map(String::as_str) {
        Some("idle") => {
            let (n, hold) = (num(3), num(4));
            let mut conns = Vec::with_capacity(n);
            let mut failed = 0;
            for _ in 0..n {
                match open(addr).await {
                    Ok(c) => conns.push(c),
                    Err(_) => failed += 1,
                }
            }
            println!("idle: {} sessions open ({failed} failed)", conns.len());
            tokio::time::sleep(Duration::from_secs(hold as u64)).await;
            // Still connected at the end? Every session must still answer.
            let mut alive = 0;
            for (r, w) in conns.iter_mut() {
                if cmd(r, w, "NOOP\r\n").await.is_ok_and(|c| c == 250) {
                    alive += 1;
                }
            }
            println!("idle: {alive} sessions still answering after {hold} s");
        }
        Some("big") => {
            let mb = num(3);
            let t = Instant::now();
            match one(addr, 0, mb << 20).await {
                Ok(_) => println!(
                    "big: {mb} MB accepted in {:.2} s",
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    println!("big: failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("latency") => {
            let (rate, secs, size) = (num(3), num(4), num(5));
            let total = rate * secs;
            let errors = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::with_capacity(total);
            let start = tokio::time::Instant::now();
            for i in 0..total {
                // Open loop: start times are fixed by the rate, not by the relay's replies.
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(at).await;
                let errors = errors.clone();
                tasks.push(tokio::spawn(async move {
                    match one(addr, i, size).await {
                        Ok(d) => Some(d),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    }
                }));
            }
            let mut dot = Vec::new();
            let mut whole = Vec::new();
            for t in tasks {
                if let Ok(Some((a, b))) = t.await {
                    dot.push(a);
                    whole.push(b);
                }
            }
            let achieved = total as f64 / start.elapsed().as_secs_f64();
            println!(
                "latency: {} sent at {rate}/s ({achieved:.0}/s achieved), {} errors; \
                 dot->250 ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; \
                 connect->250 ms p50 {:.2} p99 {:.2}",
                total,
                errors.load(Ordering::Relaxed),
                pct(&mut dot, 0.5),
                pct(&mut dot, 0.9),
                pct(&mut dot, 0.99),
                pct(&mut dot, 1.0),
                pct(&mut whole, 0.5),
                pct(&mut whole, 0.99),
            );
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
