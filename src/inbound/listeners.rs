//! The listeners, live. Rules:
//! - Every session takes the current snapshot (`Inbound`: config, users, TLS acceptor, DKIM
//!   signer) when it starts and keeps it to its end; a reload swaps in a new snapshot for the
//!   next sessions, so no session is dropped and none sees half of a change.
//! - A reload binds added listen addresses before it changes anything (a bind error refuses the
//!   whole reload), then closes removed ones: their sessions finish on their own.
//! - A stop closes every listener, ends idle sessions with `421 4.3.2` at their next command,
//!   lets transactions in progress finish within the grace, then ends what is left with 421.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::settings::{Listen, Settings};
use super::{Inbound, accept_loop, build};
use crate::signing::Signer;
use crate::spool::Spool;
use crate::state::State;

/// Where a graceful stop is; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Listeners closed: a session ends when it has no transaction in progress.
    Draining,
    /// The grace is over: every session ends at its next read.
    Closing,
}

pub struct Listeners {
    live: Arc<ArcSwap<Inbound>>,
    sessions: Arc<Semaphore>,
    max_sessions: Mutex<usize>,
    open: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
    stop: watch::Sender<Stop>,
}

/// Why the listeners could not start or reload: nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Users(#[from] super::users::UsersError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsFileError),
    #[error("listener {address}: implicit TLS needs [tls] certificate and key")]
    ImplicitTlsWithoutCert { address: SocketAddr },
}

/// Binds the addresses of `wanted` not in `open`; an error names the address.
async fn bind(
    wanted: &[Listen],
    open: &[SocketAddr],
) -> Result<Vec<(Listen, TcpListener)>, ListenError> {
    let mut bound = Vec::new();
    for l in wanted.iter().filter(|l| !open.contains(&l.address)) {
        let sock = TcpListener::bind(l.address)
            .await
            .map_err(|source| ListenError::Bind {
                address: l.address,
                source,
            })?;
        bound.push((l.clone(), sock));
    }
    Ok(bound)
}

impl Listeners {
    pub(super) async fn start(
        settings: Settings,
        spool: Arc<Spool>,
        state: Arc<State>,
        signer: Arc<Signer>,
        cluster: Option<Arc<dyn crate::pool::Counters>>,
        accounts: Arc<crate::reputation::accounts::Accounts>,
        feedback: Arc<crate::feedback::Feedback>,
    ) -> Result<Listeners, ListenError> {
        let (stop, stop_rx) = watch::channel(Stop::Running);
        let listen = settings.listen.clone();
        let max = settings.limits.max_sessions.max(1);
        let ctx = build(
            settings, spool, state, signer, stop_rx, None, cluster, accounts, feedback,
        )?;
        let bound = bind(&listen, &[]).await?;
        let listeners = Listeners {
            live: Arc::new(ArcSwap::from_pointee(ctx)),
            sessions: Arc::new(Semaphore::new(max)),
            max_sessions: Mutex::new(max),
            open: Mutex::default(),
            stop,
        };
        listeners.spawn(bound);
        Ok(listeners)
    }

    fn spawn(&self, bound: Vec<(Listen, TcpListener)>) {
        let mut open = self.open.lock().expect("listeners lock");
        for (l, sock) in bound {
            tracing::info!(address = %l.address, tls = ?l.tls, auth = ?l.auth, "listening");
            let task = tokio::spawn(accept_loop(
                self.live.clone(),
                l.clone(),
                sock,
                self.sessions.clone(),
            ));
            open.insert(l.address, task);
        }
    }

    /// Applies a checked config to the next sessions: users, networks, limits, TLS certificate,
    /// DKIM keys (`signer`), listeners. On error nothing has changed.
    pub async fn reload(&self, settings: Settings, signer: Arc<Signer>) -> Result<(), ListenError> {
        let old = self.live.load_full();
        let listen = settings.listen.clone();
        let max = settings.limits.max_sessions.max(1);
        let feedback = settings.feedback.clone();
        let ctx = build(
            settings,
            old.spool.clone(),
            old.state.clone(),
            signer,
            self.stop.subscribe(),
            Some(&old),
            old.cluster.clone(),
            old.accounts.clone(),
            old.feedback.clone(),
        )?;
        let open: Vec<SocketAddr> = self
            .open
            .lock()
            .expect("listeners lock")
            .keys()
            .copied()
            .collect();
        let bound = bind(&listen, &open).await?;
        // Nothing below can fail.
        ctx.feedback.reload(feedback);
        self.live.store(Arc::new(ctx));
        self.resize(max);
        self.open
            .lock()
            .expect("listeners lock")
            .retain(|address, task| {
                let keep = listen.iter().any(|l| l.address == *address);
                if !keep {
                    // The accept loop owns the socket: aborting it closes the socket, while
                    // the sessions it started are their own tasks and finish.
                    task.abort();
                    tracing::info!(%address, "listener closed (its sessions finish)");
                }
                keep
            });
        self.spawn(bound);
        Ok(())
    }

    fn resize(&self, new: usize) {
        let mut max = self.max_sessions.lock().expect("listeners lock");
        if new > *max {
            self.sessions.add_permits(new - *max);
        } else if new < *max {
            // Taken back as sessions end, never from one running.
            let (sessions, n) = (self.sessions.clone(), (*max - new) as u32);
            tokio::spawn(async move {
                if let Ok(p) = sessions.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
        *max = new;
    }

    /// Graceful stop: no new connection; sessions end between transactions; after `grace` the
    /// rest get `421 4.3.2`. Returns once every session has ended (or 10 s after the grace).
    pub async fn stop(&self, grace: Duration) {
        for (address, task) in self.open.lock().expect("listeners lock").drain() {
            task.abort();
            tracing::info!(%address, "listener closed (stopping)");
        }
        let _ = self.stop.send(Stop::Draining);
        let all = *self.max_sessions.lock().expect("listeners lock") as u32;
        let idle = || tokio::time::timeout(grace, self.sessions.clone().acquire_many_owned(all));
        if idle().await.is_ok() {
            return;
        }
        tracing::warn!(grace = %humantime::format_duration(grace), "stop: grace over, ending the sessions left with 421");
        let _ = self.stop.send(Stop::Closing);
        let last = tokio::time::timeout(
            Duration::from_secs(10),
            self.sessions.clone().acquire_many_owned(all),
        );
        if last.await.is_err() {
            tracing::warn!("stop: sessions still open after the grace, exiting anyway");
        }
    }
}
