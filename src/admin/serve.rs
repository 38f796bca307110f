//! The admin listener: hyper's HTTP/1 server driven by hand for what `axum::serve` lacks — a
//! request-header timeout (slowloris; idle keep-alive connections end with it too), caps on
//! connections served at once, in total and per client, that never lock the operator out
//! (rules in `slots.rs`: past a cap the oldest idle connection of the client holding the most
//! is closed; 503 only when every slot serves a request), a lifetime cap per connection, and TLS
//! with the relay's certificate; and the middleware that puts `guard.rs` before every route.
//! Refusals (the guard's, 4xx from the routes, 503 at the caps) are logged through `tally.rs`:
//! at most one line per client per minute, a bounded number per minute in all. Per-connection
//! events are at trace level, so even `debug` stays bounded under a flood.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use axum::http::StatusCode;
use axum::response::Response;

use super::guard;
use super::settings::MAX_CONNECTION_TIME;
use super::slots::{Full, Shed, Slots, Ticket};
use super::tally::{self, Tally};

pub(super) struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

/// The refusal tally the listener and the middleware share.
pub(super) type SharedTally = Arc<Mutex<Tally>>;

/// What the middleware needs besides the request.
pub(super) struct Guarded {
    pub policy: guard::Policy,
    pub tally: SharedTally,
}

/// The address the connection reached, for the `Host` rule.
#[derive(Debug, Clone, Copy)]
struct LocalIp(IpAddr);

/// Counts one refusal and logs the line it makes due, if any.
fn note(tally: &SharedTally, client: IpAddr, what: String) {
    let line =
        tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused(client, what, Instant::now());
    if let Some(l) = line {
        l.log();
    }
}

/// Writes the counts that became due while no refusal came (rule 2 of `tally.rs`).
pub(super) async fn flush_loop(tally: SharedTally) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let lines = tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush(Instant::now());
        for l in lines {
            l.log();
        }
    }
}

/// Accepts forever; each connection runs in its own task holding a slot (`slots.rs`).
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    tally: SharedTally,
) {
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_client);
    let listen_ip = listener
        .local_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut failures = Failures::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                failures.note(&e);
                // Out of descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ticket = match slots.admit(peer.ip(), Instant::now()) {
            Ok((ticket, shed)) => {
                if let Shed::Other(client) = shed {
                    let what = format!(
                        "idle connection closed for another client (max_connections {})",
                        limits.max_connections
                    );
                    note(&tally, client, what);
                }
                ticket
            }
            Err(full) => {
                if tls.is_none() {
                    let _ = stream.try_write(
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}",
                    );
                }
                let what = match full {
                    Full::Client => "503 connection refused: every connection of this client busy",
                    Full::All => "503 connection refused: every connection busy",
                };
                note(&tally, peer.ip(), what.into());
                continue;
            }
        };
        let local = stream.local_addr().map(|a| a.ip()).unwrap_or(listen_ip);
        let ticket = Arc::new(ticket);
        let (app, tls, header_timeout) = (app.clone(), tls.clone(), limits.header_timeout);
        let tally = tally.clone();
        tokio::spawn(async move {
            let shed = ticket.shed.clone();
            let conn = Conn {
                peer,
                local,
                app,
                header_timeout,
                ticket,
                tally,
            };
            let served = tokio::time::timeout(MAX_CONNECTION_TIME, connection(stream, conn, tls));
            tokio::select! {
                r = served => if r.is_err() {
                    tracing::trace!(%peer, "admin: connection cut at its time limit");
                },
                // Closed for another client (`slots.rs`): dropping the future closes it.
                _ = shed.notified() => tracing::trace!(%peer, "admin: idle connection closed"),
            }
        });
    }
}

/// Accept failures (out of descriptors under a flood): one warning a minute with the count.
#[derive(Default)]
struct Failures {
    count: u64,
    logged: Option<Instant>,
}

impl Failures {
    fn note(&mut self, e: &std::io::Error) {
        self.count += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(error = %e, failures = self.count, "admin: accept failed");
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// One admitted connection's context.
struct Conn {
    peer: SocketAddr,
    local: IpAddr,
    app: Router,
    header_timeout: Duration,
    ticket: Arc<Ticket>,
    tally: SharedTally,
}

async fn connection(stream: TcpStream, conn: Conn, tls: Option<tokio_rustls::TlsAcceptor>) {
    let peer = conn.peer;
    match tls {
        None => http1(stream, conn).await,
        // The handshake gets the header timeout too: a silent client must not hold a slot.
        Some(acceptor) => {
            match tokio::time::timeout(conn.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => http1(s, conn).await,
                Ok(Err(e)) => tracing::trace!(%peer, error = %e, "admin: TLS handshake failed"),
                Err(_) => tracing::trace!(%peer, "admin: TLS handshake timed out"),
            }
        }
    }
}

async fn http1<S>(io: S, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        local,
        app,
        header_timeout,
        ticket,
        tally,
    } = conn;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(LocalIp(local));
        let (app, ticket) = (app.clone(), ticket.clone());
        async move {
            // Busy while handled: a busy connection is never closed for another (`slots.rs`).
            if !ticket.begin() {
                return Ok(super::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "connection closed for another client",
                ));
            }
            let response = app.oneshot(req).await;
            ticket.end(Instant::now());
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::trace!(%peer, error = %e, "admin: connection ended");
        // hyper answered these itself (400, 431): counted like the rest. (A header timeout is
        // also how idle keep-alive connections end: not a refusal.)
        if e.is_parse() || e.is_parse_too_large() {
            note(&tally, peer.ip(), format!("malformed request: {e}"));
        }
    }
}

/// Runs `guard::check` before the handler; a refusal is a JSON error (401 with
/// `WWW-Authenticate: Bearer`). Refusals and 4xx answers are counted in the tally (never the
/// token; the client's fields cut and escaped).
pub(super) async fn guarded(
    axum::extract::State(shared): axum::extract::State<Arc<Guarded>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let local = req.extensions().get::<LocalIp>().map(|l| l.0);
    let client = peer.map(|p| p.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let head = guard::RequestHead {
        method: req.method(),
        version: req.version(),
        authority: req.uri().authority().map(|a| a.as_str()),
        path: req.uri().path(),
        headers: req.headers(),
        peer_is_loopback: peer.is_some_and(|p| p.ip().is_loopback()),
        // Without the connection's address only names can match.
        local: local.unwrap_or(IpAddr::from([0, 0, 0, 0])),
    };
    let verdict = guard::check(&head, &shared.policy);
    let what = tally::describe(
        req.method().as_str(),
        req.uri().path(),
        req.headers()
            .get(axum::http::header::HOST)
            .map(|h| h.as_bytes()),
    );
    match verdict {
        Ok(()) => {
            let response = next.run(req).await;
            // A 404/405/413 from the routes counts too.
            let status = response.status();
            if status.is_client_error() {
                note(&shared.tally, client, format!("{} {what}", status.as_u16()));
            }
            response
        }
        Err(refusal) => {
            note(
                &shared.tally,
                client,
                format!("{} {what}", refusal.status()),
            );
            let code = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = super::error(code, refusal.message());
            if code == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"poolrelay admin\""),
                );
            }
            if matches!(
                refusal,
                guard::Refusal::BadHost | guard::Refusal::ForeignHost
            ) {
                // A misdirected connection is not reused for another name.
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            response
        }
    }
}
