//! inbound stage: the SMTP server. One file per concern:
//! `session` (connection, command loop, EHLO, STARTTLS), `auth` (AUTH, SASL, lockout),
//! `envelope` (MAIL FROM, RCPT TO), `message` (DATA, BDAT, signing, commit),
//! `users` (users file, password hashes), `access` (trusted networks), `address` (strict path
//! and parameter parsing), `data` (streaming DATA reader), `limits` (per-user daily cap),
//! `received` (the Received header), `anvil` (per-client counters), `admission` (session slots
//! and their reserve).
//!
//! smtp-proto parses the command verbs and their simple arguments; MAIL and RCPT arguments, DATA
//! and line framing are ours because they must be stricter than it is (see `address`, `data`).

pub mod access;
pub mod address;
pub mod admission;
pub mod anvil;
pub mod auth;
pub mod data;
mod envelope;
pub mod limits;
mod message;
pub mod received;
mod session;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
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
    pub anvil: Arc<anvil::Anvil>,
    pub slots: Arc<admission::Slots>,
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
        anvil: anvil::Anvil::new((&config.limits).into()),
        slots: admission::Slots::new(config.limits.max_sessions, config.limits.reserved()),
        config: config.clone(),
        spool,
        state,
        signer,
        users,
        tls,
    });
    for (l, sock) in bound {
        tracing::info!(address = %l.address, tls = ?l.tls, auth = ?l.auth, "listening");
        tokio::spawn(accept_loop(ctx.clone(), l, sock));
    }
    Ok(())
}

async fn accept_loop(ctx: Arc<Inbound>, listen: Listen, sock: TcpListener) {
    let auth_offered = listen.auth != crate::config::ListenAuth::None && ctx.users.is_some();
    let mut failures: u32 = 0;
    loop {
        match sock.accept().await {
            Ok((stream, peer)) => {
                failures = 0;
                let _ = stream.set_nodelay(true);
                let ip = access::normalise(peer.ip());
                let trusted = access::is_trusted(&ctx.config.access.networks, ip);
                let (ctx, listen) = (ctx.clone(), listen.clone());
                tokio::spawn(async move {
                    let ticket = if trusted {
                        None
                    } else {
                        match ctx.anvil.connect(ip, std::time::Instant::now()) {
                            Ok(t) => Some(t),
                            Err((why, log)) => {
                                if let Some(unlogged) = log {
                                    tracing::warn!(client = %ip, limit = why.as_str(), unlogged, "per-client limit reached, connection refused");
                                }
                                let reply = why.reply(&ctx.config.hostname, ip);
                                crate::metrics::refused("connect", reply.code);
                                return session::refuse_connection(ctx, listen, stream, reply)
                                    .await;
                            }
                        }
                    };
                    match ctx.slots.admit(trusted, auth_offered) {
                        Some((_slot, admitted)) => {
                            let _open = crate::metrics::session();
                            session::run(ctx, listen, stream, peer, admitted).await;
                            drop(ticket);
                        }
                        None => {
                            if ctx.slots.log_busy() {
                                tracing::warn!(client = %ip, in_use = ctx.slots.in_use(), "session limit reached, connection refused (logged once a second)");
                            }
                            let reply = session::busy_reply(&ctx.config.hostname);
                            crate::metrics::refused("connect", reply.code);
                            session::refuse_connection(ctx, listen, stream, reply).await
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors (EMFILE) and the like: back off instead of spinning,
                // longer while it lasts; log the first failure of a run and every 100th.
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::warn!(address = %listen.address, error = %e, failures, "accept failed");
                }
                let pause = 100u64.saturating_mul(u64::from(failures.min(10)));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}
