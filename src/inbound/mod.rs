//! inbound stage: the SMTP server. One file per concern:
//! `session` (connection, command loop, EHLO, STARTTLS), `auth` (AUTH, SASL, lockout),
//! `envelope` (MAIL FROM, RCPT TO), `message` (DATA, BDAT, signing, commit),
//! `users` (users file, password hashes), `access` (trusted networks), `address` (strict path
//! and parameter parsing), `data` (streaming DATA reader), `limits` (per-user daily cap),
//! `received` (the Received header), `anvil` (per-client and per-network counters), `admission`
//! (session slots, their reserve, shedding unauthenticated sessions), `sender_login` (which
//! senders each login may use), `settings` (its part of the config file). The `From:` and
//! `Sender:` rules are signing's (`signing::author`).
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
mod feedback;
pub mod limits;
mod listeners;
mod message;
pub mod received;
pub mod sender_login;
mod session;
pub mod settings;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::signing::Signer;
use crate::spool::Spool;
use crate::state::State;

pub use listeners::{ListenError, Listeners, Stop};
pub use settings::{Listen, ListenAuth, ListenTls, Settings};

/// What every session shares: a snapshot of the settings taken when the session starts (a reload
/// swaps in a new one for the next sessions; see `listeners`).
pub(crate) struct Inbound {
    pub settings: Settings,
    pub spool: Arc<Spool>,
    pub state: Arc<State>,
    pub signer: Arc<Signer>,
    pub users: Option<Arc<users::Users>>,
    pub tls: Option<TlsAcceptor>,
    pub guard: Arc<auth::AuthGuard>,
    pub cap: limits::DailyCap,
    /// Graceful stop: sessions end between transactions, and every one at the grace's end.
    pub stop: tokio::sync::watch::Receiver<Stop>,
    pub anvil: Arc<anvil::Anvil>,
    pub slots: Arc<admission::Slots>,
    /// The farm's Redis (`[cluster]`): the daily cap counts across relays.
    pub cluster: Option<Arc<dyn crate::pool::Counters>>,
    /// Standing per login and sender domain: MAIL FROM refuses throttled and suspended ones.
    pub accounts: Arc<crate::reputation::accounts::Accounts>,
    /// Takes complaint reports and stamps the trace headers (`feedback`).
    pub feedback: Arc<crate::feedback::Feedback>,
}

/// Loads the users file and TLS material of a checked config into what sessions share. `prev`
/// is the running snapshot on reload: its AUTH lockouts carry over while their settings stay.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    settings: Settings,
    spool: Arc<Spool>,
    state: Arc<State>,
    signer: Arc<Signer>,
    stop: tokio::sync::watch::Receiver<Stop>,
    prev: Option<&Inbound>,
    cluster: Option<Arc<dyn crate::pool::Counters>>,
    accounts: Arc<crate::reputation::accounts::Accounts>,
    feedback: Arc<crate::feedback::Feedback>,
) -> Result<Inbound, ListenError> {
    let users = match &settings.access.users_file {
        Some(path) => {
            let u = users::Users::load(path)?;
            tracing::info!(users = u.len(), file = %path.display(), "users file loaded");
            sender_login::warn_logins_without_senders(u.names(), &settings.access.sender_login);
            Some(Arc::new(u))
        }
        None => None,
    };
    let tls = match &settings.tls {
        Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(
            &files.certificate,
            &files.private_key,
        )?)),
        None => None,
    };
    for l in &settings.listen {
        if l.tls == ListenTls::Implicit && tls.is_none() {
            return Err(ListenError::ImplicitTlsWithoutCert { address: l.address });
        }
        if l.tls == ListenTls::Starttls && tls.is_none() {
            tracing::warn!(address = %l.address, "tls = \"starttls\" but no [tls]: STARTTLS and AUTH are not offered");
        }
    }
    let access = &settings.access;
    let guard = match prev {
        Some(p)
            if p.settings.access.auth_max_failures == access.auth_max_failures
                && p.settings.access.auth_lockout == access.auth_lockout =>
        {
            p.guard.clone()
        }
        _ => Arc::new(auth::AuthGuard::new(
            access.auth_max_failures,
            access.auth_lockout.0,
        )),
    };
    // Per-client counters and the session slots carry over while their settings stay: a reload
    // must not forget who holds what.
    let limits = &settings.limits;
    let anvil = match prev {
        Some(p)
            if p.settings.limits.client_sessions == limits.client_sessions
                && p.settings.limits.client_connection_rate == limits.client_connection_rate
                && p.settings.limits.client_message_rate == limits.client_message_rate
                && p.settings.limits.network_sessions == limits.network_sessions
                && p.settings.limits.network_prefix_v4 == limits.network_prefix_v4
                && p.settings.limits.network_prefix_v6 == limits.network_prefix_v6 =>
        {
            p.anvil.clone()
        }
        _ => anvil::Anvil::new(limits.into()),
    };
    let slots = match prev {
        Some(p)
            if p.settings.limits.max_sessions == limits.max_sessions
                && p.settings.limits.reserved() == limits.reserved()
                && p.settings.limits.preauth_timeout == limits.preauth_timeout =>
        {
            p.slots.clone()
        }
        _ => admission::Slots::new(
            limits.max_sessions,
            limits.reserved(),
            limits.preauth_timeout.0,
        ),
    };
    Ok(Inbound {
        guard,
        cap: limits::DailyCap::new(settings.limits.per_user_daily, cluster.clone()),
        cluster,
        accounts,
        anvil,
        slots,
        settings,
        spool,
        state,
        signer,
        users,
        tls,
        stop,
        feedback,
    })
}

/// Binds every listener (an error naming the address if one cannot be bound) and spawns their
/// accept loops; the handle reloads and stops them.
pub async fn start(
    settings: Settings,
    spool: Arc<Spool>,
    state: Arc<State>,
    signer: Arc<Signer>,
    cluster: Option<Arc<dyn crate::pool::Counters>>,
    accounts: Arc<crate::reputation::accounts::Accounts>,
    feedback: Arc<crate::feedback::Feedback>,
) -> Result<Listeners, ListenError> {
    Listeners::start(settings, spool, state, signer, cluster, accounts, feedback).await
}

async fn accept_loop(
    live: Arc<ArcSwap<Inbound>>,
    listen: Listen,
    sock: TcpListener,
    sessions: Arc<Semaphore>,
) {
    let mut failures: u32 = 0;
    loop {
        match sock.accept().await {
            Ok((stream, peer)) => {
                failures = 0;
                let _ = stream.set_nodelay(true);
                // The config as it is now: a reload applies from the next session on.
                let ctx = live.load_full();
                let listen = ctx
                    .settings
                    .listen
                    .iter()
                    .find(|l| l.address == listen.address)
                    .unwrap_or(&listen)
                    .clone();
                let trusted =
                    access::is_trusted(&ctx.settings.access.networks, access::normalise(peer.ip()));
                tokio::spawn(admit(ctx, listen, stream, peer, sessions.clone(), trusted));
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

/// How long a newcomer waits for the relay-wide permit of a session shed for it.
const SHED_WAIT: Duration = Duration::from_secs(5);

/// Per-client limits, then a session slot (`anvil`, `admission`); runs the session or refuses.
async fn admit(
    ctx: Arc<Inbound>,
    listen: Listen,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    sessions: Arc<Semaphore>,
    trusted: bool,
) {
    let ip = access::normalise(peer.ip());
    let ticket = if trusted {
        None
    } else {
        match ctx.anvil.connect(ip, std::time::Instant::now()) {
            Ok(t) => Some(t),
            Err((why, log)) => {
                if let Some(unlogged) = log {
                    tracing::warn!(client = %ip, limit = why.as_str(), unlogged, "per-client limit reached, connection refused");
                }
                let reply = why.reply(&ctx.settings.hostname, ip);
                crate::metrics::refused("connect", reply.code);
                return session::refuse_connection(ctx, listen, stream, reply).await;
            }
        }
    };
    // AUTH needs TLS: without a certificate no client here can ever log in.
    let auth_offered = listen.auth != ListenAuth::None && ctx.users.is_some() && ctx.tls.is_some();
    let network = ctx.anvil.network(ip);
    let now = std::time::Instant::now();
    let admitted = ctx
        .slots
        .admit(network, trusted, auth_offered, now, &ctx.anvil);
    // The relay-wide bound (resized on reload, awaited by a graceful stop). A shed session
    // gives its permit back once it has closed: wait for it (the semaphore is first come,
    // first served, so no later connection takes it).
    let permit = match &admitted {
        None => None,
        Some((_, shed)) => match sessions.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if *shed => tokio::time::timeout(SHED_WAIT, sessions.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        },
    };
    if let Some((_, true)) = &admitted
        && let Some(shed) = ctx.slots.log_shed()
    {
        tracing::info!(client = %ip, shed, preauth = ctx.slots.preauth(), "unauthenticated sessions shed to make room (logged once a second)");
    }
    match (admitted, permit) {
        (Some((slot, _)), Some(_permit)) => {
            let _open = crate::metrics::session();
            let place = admission::Place { slot, ticket };
            session::run(ctx, listen, stream, peer, place).await;
        }
        _ => {
            if ctx.slots.log_busy() {
                tracing::warn!(client = %ip, in_use = ctx.slots.in_use(), "session limit reached, connection refused (logged once a second)");
            }
            let reply = session::busy_reply(&ctx.settings.hostname);
            crate::metrics::refused("connect", reply.code);
            session::refuse_connection(ctx, listen, stream, reply).await
        }
    }
}
