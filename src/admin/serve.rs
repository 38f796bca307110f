//! The admin listener: hyper's HTTP/1 server driven by hand for what `axum::serve` lacks — a
//! request-header timeout (slowloris; idle keep-alive connections end with it too), a cap on
//! connections served at once (more get 503 and are closed), a lifetime cap per connection, and
//! TLS with the relay's certificate; and the middleware that puts `guard.rs` before every route.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use axum::http::StatusCode;
use axum::response::Response;

use super::guard;
use super::settings::MAX_CONNECTION_TIME;

pub(super) struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Accepts forever; each connection runs in its own task holding one of the cap's permits.
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "admin: too many connections, refused");
            if tls.is_none() {
                let _ = stream.try_write(
                    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}",
                );
            }
            continue;
        };
        let (app, tls, header_timeout) = (app.clone(), tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let served = tokio::time::timeout(
                MAX_CONNECTION_TIME,
                connection(stream, peer, app, tls, header_timeout),
            );
            if served.await.is_err() {
                tracing::debug!(%peer, "admin: connection cut at its time limit");
            }
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
) {
    match tls {
        None => http1(stream, peer, app, header_timeout).await,
        // The handshake gets the header timeout too: a silent client must not hold a slot.
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(s)) => http1(s, peer, app, header_timeout).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin: TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "admin: TLS handshake timed out"),
        },
    }
}

async fn http1<S>(io: S, peer: SocketAddr, app: Router, header_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "admin: connection ended");
    }
}

/// Runs `guard::check` before the handler; a refusal is a JSON error (401 with
/// `WWW-Authenticate: Bearer`), logged with the peer and path (never the token).
pub(super) async fn guarded(
    axum::extract::State(policy): axum::extract::State<Arc<guard::Policy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let head = guard::RequestHead {
        method: req.method(),
        path: req.uri().path(),
        headers: req.headers(),
        peer_is_loopback: peer.is_some_and(|p| p.ip().is_loopback()),
    };
    match guard::check(&head, &policy) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            let peer = peer.map(|p| p.to_string()).unwrap_or_default();
            tracing::info!(%peer, method = %req.method(), path = req.uri().path(), ?refusal, "admin request refused");
            let code = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut response = super::error(code, refusal.message());
            if code == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"poolrelay admin\""),
                );
            }
            response
        }
    }
}
