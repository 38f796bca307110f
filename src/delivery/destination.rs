//! One destination transaction.
//!
//! Rules:
//! - MX by MX (in order), address by address: for each address the pool picks the source IP
//!   for this message (`Pools::pick`); then an idle session of that IP to this destination is
//!   reused, or a session is opened from that IP to the address.
//! - A source that cannot be bound is skipped for the rest of the message; one whose connection
//!   fails is skipped for that address (after two connect failures the address is given up:
//!   the destination is likely down). A refusal at greeting/EHLO or a TLS failure moves on to
//!   the next MX (a blocked greeting also feeds reputation, which may quarantine the IP).
//! - No eligible source anywhere → every recipient is `Held` until the earliest time capacity
//!   may return: our own capacity, not the destination, stopped it.
//! - Otherwise, when no transaction happened, the last temporary error is reported (never a
//!   bounce while another attempt may succeed), else the last error.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::client::{OpenError, Session, local_reply};
use super::deliverer::Deliverer;
use super::policy::{Applied, DomainPolicy, HostPolicy, Requirement, TlsFailure};
use crate::outcome::{Outcome, Status};
use crate::pool::{Held, Pick, Selection, Source};
use crate::routing::{Destination, Host};
use crate::spool::{Body, Envelope, RemoteReply};

/// An idle connection reused within this is not checked with RSET first (servers keep idle
/// sessions for tens of seconds at least; a closed one is noticed before anything is sent).
const REUSE_WITHOUT_RSET: Duration = Duration::from_secs(2);

/// What one destination attempt gave each of its recipients, and the TLS used.
pub(super) struct Attempt {
    pub outcomes: Vec<Outcome>,
    pub tls: TlsUsed,
}

/// The TLS of an attempt, for its log line and metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsUsed {
    /// "TLSv1_3/TLS13_AES_256_GCM_SHA384" or "none".
    pub tls: String,
    /// The policy of the host the attempt ended with; None when no host was tried.
    pub policy: Option<Applied>,
    /// Why no transaction happened, when TLS was the reason (last such failure).
    pub failure: Option<TlsFailure>,
}

impl TlsUsed {
    pub fn none() -> TlsUsed {
        TlsUsed {
            tls: "none".into(),
            policy: None,
            failure: None,
        }
    }
}

/// The message as one destination transaction sends it.
struct Message<'a> {
    env: &'a Envelope,
    rcpts: Vec<&'a str>,
    body: Body,
    pool: Option<String>,
    dest: &'a Destination,
}

/// What was learned on the way while no transaction happened.
#[derive(Default)]
struct Tried {
    errors: Vec<Outcome>,
    held: Option<Held>,
    unbindable: Vec<IpAddr>,
    /// The policy of the last host tried, and the last TLS failure.
    policy: Option<Applied>,
    tls_failure: Option<TlsFailure>,
}

impl Tried {
    fn error(&mut self, reply: RemoteReply) {
        self.errors.push(Outcome::of_reply(reply));
    }

    fn hold(&mut self, h: Held) {
        if self.held.as_ref().is_none_or(|o| h.retry_at < o.retry_at) {
            self.held = Some(h);
        }
    }

    /// The outcome for every recipient when no transaction happened.
    fn give_up(self, n: usize) -> Attempt {
        let outcome = if let Some(h) = self.held {
            Outcome {
                reply: local_reply(451, "4.7.0", h.text),
                status: Status::Held { until: h.retry_at },
            }
        } else {
            self.errors
                .iter()
                .rev()
                .find(|o| o.reply.code < 500)
                .or(self.errors.last())
                .cloned()
                .unwrap_or_else(|| {
                    Outcome::of_reply(local_reply(451, "4.4.4", "no destination host"))
                })
        };
        Attempt {
            outcomes: vec![outcome; n],
            tls: TlsUsed {
                tls: "none".into(),
                policy: self.policy,
                failure: self.tls_failure,
            },
        }
    }
}

/// Where to go after one address.
enum Next {
    Done(Attempt),
    /// On to the next address (of this MX, else the next MX).
    Address,
    /// On to the next MX.
    Host,
}

impl Deliverer {
    /// Sends the message to one destination; see the rules at the top of this file.
    pub(super) async fn deliver_to(
        &self,
        dest: &Destination,
        policy: &DomainPolicy,
        env: &Envelope,
        idxs: &[usize],
    ) -> Attempt {
        // Destination first: a saturated destination must not sit on global permits.
        let _local = self.destination_limit(&dest.key).acquire_owned().await;
        let _global = self.global.clone().acquire_owned().await;
        let body = match self.spool.body(&env.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot read the queued message");
                let reply = local_reply(451, "4.3.0", "cannot read the queued message");
                return Attempt {
                    outcomes: vec![Outcome::of_reply(reply); idxs.len()],
                    tls: TlsUsed::none(),
                };
            }
        };
        let msg = Message {
            env,
            rcpts: idxs
                .iter()
                .map(|&i| env.recipients[i].address.as_str())
                .collect(),
            body,
            pool: self
                .pools
                .pool_for(env.pool.as_deref(), env.user.as_deref(), &env.sender),
            dest,
        };
        let mut tried = Tried::default();
        'hosts: for host in &dest.hosts {
            let hp = self.policies.for_host(policy, &host.name).await;
            tried.policy = Some(hp.applied);
            if let Requirement::Refuse(refusal) = &hp.requirement {
                tracing::warn!(queue_id = %env.id, mx = %host.name, tls_policy = %hp.applied.as_str(), tls_failure = %refusal.failure, reason = %refusal.reason, "MX host refused by TLS policy, not contacted");
                self.policies
                    .report(&hp, &host.name, None, None, Err(refusal.failure));
                let mut r = local_reply(451, "4.7.5", refusal.reason.clone());
                r.host = host.name.clone();
                tried.tls_failure = Some(refusal.failure);
                tried.error(r);
                continue;
            }
            if host.addrs.is_empty() {
                let mut r = host.error.clone().map_or_else(
                    || local_reply(451, "4.4.4", format!("no address for {}", host.name)),
                    |e| local_reply(e.code, &e.status, e.text),
                );
                r.host = host.name.clone();
                tried.error(r);
                continue;
            }
            for ip in &host.addrs {
                let addr = SocketAddr::new(*ip, host.port);
                match self.via_address(&msg, host, &hp, addr, &mut tried).await {
                    Next::Done(attempt) => return attempt,
                    Next::Address => {}
                    Next::Host => continue 'hosts,
                }
            }
        }
        tried.give_up(idxs.len())
    }

    /// Picks a source for the message and sends over a session of it to `addr` (reused or
    /// new), trying other sources while sessions cannot be opened.
    async fn via_address(
        &self,
        msg: &Message<'_>,
        host: &Host,
        policy: &HostPolicy,
        addr: SocketAddr,
        tried: &mut Tried,
    ) -> Next {
        let provider = self.pools.provider_of(&host.name);
        let mut failed = tried.unbindable.clone();
        let mut connect_failures = 0;
        loop {
            let pick = self
                .pools
                .pick_shared(msg.pool.as_deref(), &provider, addr.is_ipv6(), &failed)
                .await;
            let Pick { source, lease } = match pick {
                Selection::Picked(p) => p,
                Selection::Exhausted => return Next::Address,
                Selection::Held(h) => {
                    tried.hold(h);
                    return Next::Address;
                }
                Selection::NoFamily => {
                    let text = format!("no pool IP of the address family of {addr}");
                    let mut r = local_reply(451, "4.4.4", text);
                    r.host = host.name.clone();
                    tried.error(r);
                    return Next::Address;
                }
            };
            // The delivery attempt begins: its replies belong to any quarantine that ends later
            // (reputation's incidents).
            let sent_at_ms = crate::pool::warmup::Clock::now_ms();
            if let Some(attempt) = self.reuse(msg, host, policy, &source, sent_at_ms).await {
                return Next::Done(attempt);
            }
            let error = match self.open_as(&host.name, addr, &source, policy).await {
                Ok(s) => match self.transact(s, msg, policy.applied, sent_at_ms).await {
                    Some(attempt) => return Next::Done(attempt),
                    // A new session is never stale; should it be, the next source goes.
                    None => continue,
                },
                Err(e) => e,
            };
            lease.refund();
            let Some(ip) = source.ip else {
                // No pool: the OS's address is the only source.
                self.opening_failed(
                    msg, host, addr, &source, &provider, error, sent_at_ms, tried,
                );
                return Next::Address;
            };
            failed.push(ip);
            match self.opening_failed(
                msg, host, addr, &source, &provider, error, sent_at_ms, tried,
            ) {
                Failure::Source => tried.unbindable.push(ip),
                Failure::Connect => {
                    connect_failures += 1;
                    // The destination is likely down: one more source, then move on.
                    if connect_failures >= 2 {
                        return Next::Address;
                    }
                }
                Failure::Host => return Next::Host,
            }
        }
    }

    /// Sends over an idle session of `source` to this destination, if one is still open and
    /// its TLS satisfies `policy` (an opportunistic session never carries an enforced one).
    async fn reuse(
        &self,
        msg: &Message<'_>,
        host: &Host,
        policy: &HostPolicy,
        source: &Source,
        sent_at_ms: u64,
    ) -> Option<Attempt> {
        let fits = |s: &Session| policy.requirement.accepts(&host.name, &s.host, s.assurance);
        while let Some((mut s, idle)) = self.connections.take(source, &msg.dest.key, fits) {
            // One used a moment ago goes without the RSET round trip; if the server closed it
            // meanwhile, `send` finds out before anything is sent and it is dropped.
            if idle < REUSE_WITHOUT_RSET {
                s.unchecked = true;
            } else if !s.reset().await {
                continue;
            }
            tracing::debug!(queue_id = %msg.env.id, mx = %s.host, source_ip = %source.label(), "reusing connection");
            if let Some(attempt) = self.transact(s, msg, policy.applied, sent_at_ms).await {
                return Some(attempt);
            }
        }
        None
    }

    /// Records why a session could not be opened and says what to try next.
    #[allow(clippy::too_many_arguments)]
    fn opening_failed(
        &self,
        msg: &Message<'_>,
        host: &Host,
        addr: SocketAddr,
        source: &Source,
        provider: &str,
        error: OpenError,
        sent_at_ms: u64,
        tried: &mut Tried,
    ) -> Failure {
        let id = &msg.env.id;
        match error {
            OpenError::Bind(e) => {
                tracing::warn!(queue_id = %id, source_ip = %source.label(), error = %e, "cannot bind source IP, trying the next one");
                let text = format!("cannot bind source IP {}: {e}", source.label());
                let mut r = local_reply(451, "4.4.0", text);
                r.host = host.name.clone();
                r.source_ip = source.label();
                tried.error(r);
                Failure::Source
            }
            OpenError::Connect(r) => {
                tracing::warn!(queue_id = %id, source_ip = %source.label(), mx = %host.name, %addr, reply = %r.text, "connection failed");
                tried.error(r);
                Failure::Connect
            }
            OpenError::Refused(mut r) => {
                let mut status = Status::of_code(r.code);
                if let Some(ip) = source.ip {
                    self.pools.record_reply(ip, provider, &r);
                    // A blocked greeting quarantines the IP: the next MX gets another one.
                    let sender = msg.env.user.as_deref().unwrap_or(&msg.env.sender);
                    status = self
                        .reputation
                        .observe(ip, provider, sender, "", sent_at_ms, &mut r)
                        .status;
                }
                self.session_refused(id, host, addr, source, &r);
                tried.errors.push(Outcome { reply: r, status });
                Failure::Host
            }
            OpenError::TlsRequired(mut r, failure) | OpenError::Handshake(mut r, failure) => {
                // The reply (and any DSN) says which policy wanted the TLS it did not get.
                if let Some(p) = tried.policy {
                    r.text = format!("{} policy: {}", p.as_str(), r.text);
                }
                tracing::warn!(queue_id = %id, source_ip = %source.label(), mx = %host.name, %addr, tls_policy = %tried.policy.map_or("none", Applied::as_str), tls_failure = %failure, reply = %format!("{} {} {}", r.code, r.status, r.text), "TLS not had, trying the next MX");
                tried.tls_failure = Some(failure);
                tried.error(r);
                Failure::Host
            }
        }
    }

    fn session_refused(
        &self,
        id: &str,
        host: &Host,
        addr: SocketAddr,
        source: &Source,
        r: &RemoteReply,
    ) {
        tracing::warn!(queue_id = %id, source_ip = %source.label(), mx = %host.name, %addr, reply = %format!("{} {} {}", r.code, r.status, r.text), "session refused, trying the next MX");
    }

    /// One transaction on an open session; `None` when a reused session turned out closed
    /// before anything was sent (the caller takes another). The session is kept for reuse
    /// when it can carry more.
    async fn transact(
        &self,
        mut s: Session,
        msg: &Message<'_>,
        policy: Applied,
        sent_at_ms: u64,
    ) -> Option<Attempt> {
        let result = s.send(msg.env, &msg.rcpts, &msg.body).await;
        if result.stale {
            tracing::debug!(mx = %s.host, source_ip = %s.source.label(), "reused connection was closed, taking another");
            return None;
        }
        let provider = self.pools.provider_of(&s.host);
        let sender = msg.env.user.as_deref().unwrap_or(&msg.env.sender);
        let outcomes = result
            .replies
            .into_iter()
            .zip(&msg.rcpts)
            .map(|(mut reply, rcpt)| {
                let status = match s.source.ip {
                    Some(ip) => {
                        self.pools.record_reply(ip, &provider, &reply);
                        // Block replies become "retry from another IP" here.
                        self.reputation
                            .observe(ip, &provider, sender, rcpt, sent_at_ms, &mut reply)
                            .status
                    }
                    None => Status::of_code(reply.code),
                };
                Outcome { reply, status }
            })
            .collect();
        let tls = TlsUsed {
            tls: s.tls.clone(),
            policy: Some(policy),
            failure: None,
        };
        let max = self.pools.max_per_connection(&provider);
        let under_max = max == 0 || s.transactions < max;
        if !under_max && result.reusable {
            s.quit().await;
        } else if result.reusable
            && let Some(s) = self.connections.put(&msg.dest.key, s)
        {
            // QUIT while the concurrency permits are still held, so the limit covers the
            // whole connection.
            s.quit().await;
        }
        Some(Attempt { outcomes, tls })
    }
}

/// Why a session could not be opened, as far as the next step goes.
enum Failure {
    /// This source cannot send at all (bind failed): skip it for the message.
    Source,
    /// TCP connect failed: another source, or the next address.
    Connect,
    /// The server refused us, or TLS failed: the next MX.
    /// On to the next MX.
    Host,
}
