//! inbound stage: the SMTP server. One file per concern:
//! `session` (connection, command loop, EHLO, STARTTLS), `auth` (AUTH, SASL, lockout),
//! `envelope` (MAIL FROM, RCPT TO), `message` (DATA, BDAT, signing, commit),
//! `users` (users file, password hashes), `access` (trusted networks), `address` (strict path
//! and parameter parsing), `data` (streaming DATA reader), `limits` (per-user daily cap),
//! `received` (the Received header), `sender_login` (which senders each login may use).
//!
//! smtp-proto parses the command verbs and their simple arguments; MAIL and RCPT arguments, DATA
//! and line framing are ours because they must be stricter than it is (see `address`, `data`).

pub mod access;
pub mod address;
pub mod auth;
pub mod data;
mod envelope;
pub mod limits;
mod message;
pub mod received;
pub mod sender_login;
mod session;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Listen, ListenTls};
use crate::signing::Signer;
use crate::spool::Spool;
use crate::state::State;

/// What every session shares.
pub(crate) struct Inbound {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    pub state: Arc<State>,
    pub signer: Arc<Signer>,
    pub users: Option<Arc<users::Users>>,
    pub tls: Option<TlsAcceptor>,
    pub guard: auth::AuthGuard,
    pub cap: limits::DailyCap,
}

/// Binds every listener (an error naming the address if one cannot be bound) and spawns their
/// accept loops.
pub async fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    state: Arc<State>,
    signer: Arc<Signer>,
) -> Result<(), String> {
    let users = match &config.access.users_file {
        Some(path) => {
            let u = users::Users::load(path)?;
            tracing::info!(users = u.len(), file = %path.display(), "users file loaded");
            if config.access.sender_login.is_empty() {
                tracing::warn!(
                    "no [[access.sender_login]]: every login may send as any address (and get DKIM signatures for every configured domain)"
                );
            }
            Some(Arc::new(u))
        }
        None => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(
            &files.certificate,
            &files.private_key,
        )?)),
        None => None,
    };
    for l in &config.listen {
        if l.tls == ListenTls::Implicit && tls.is_none() {
            return Err(format!(
                "listener {}: implicit TLS needs [tls] certificate and key",
                l.address
            ));
        }
        if l.tls == ListenTls::Starttls && tls.is_none() {
            tracing::warn!(address = %l.address, "tls = \"starttls\" but no [tls]: STARTTLS and AUTH are not offered");
        }
    }
    let mut bound = Vec::new();
    for l in &config.listen {
        let sock = TcpListener::bind(l.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
        bound.push((l.clone(), sock));
    }
    let ctx = Arc::new(Inbound {
        guard: auth::AuthGuard::new(
            config.access.auth_max_failures,
            config.access.auth_lockout.0,
        ),
        cap: limits::DailyCap::new(config.limits.per_user_daily),
        config: config.clone(),
        spool,
        state,
        signer,
        users,
        tls,
    });
    let sessions = Arc::new(Semaphore::new(config.limits.max_sessions.max(1)));
    for (l, sock) in bound {
        tracing::info!(address = %l.address, tls = ?l.tls, auth = ?l.auth, "listening");
        tokio::spawn(accept_loop(ctx.clone(), l, sock, sessions.clone()));
    }
    Ok(())
}

async fn accept_loop(
    ctx: Arc<Inbound>,
    listen: Listen,
    sock: TcpListener,
    sessions: Arc<Semaphore>,
) {
    loop {
        match sock.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let permit = sessions.clone().try_acquire_owned();
                let (ctx, listen) = (ctx.clone(), listen.clone());
                tokio::spawn(async move {
                    match permit {
                        Ok(_permit) => {
                            let _open = crate::metrics::session();
                            session::run(ctx, listen, stream, peer).await
                        }
                        Err(_) => session::refuse_busy(ctx, listen, stream, peer).await,
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(address = %listen.address, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
