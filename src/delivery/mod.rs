//! Delivery: takes every queued message to its destinations. `queue` schedules messages by next
//! attempt time; this module runs one attempt of one message (route, group per destination, one
//! transaction per destination, record every recipient's outcome); `client` is the SMTP session.

pub mod client;
pub mod queue;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::config::{Config, TlsPolicy};
use crate::outcome::{self, DsnKind, Status};
use crate::pool::{Lease, Pools, Source};
use crate::routing::{Destination, Router, domain_of};
use crate::spool::{Envelope, RcptState, RemoteReply, Spool, now_unix};
use crate::state::State;
use client::{OpenError, Session, Timeouts, local_reply};

pub async fn start(
    config: Arc<Config>,
    spool: Arc<Spool>,
    _state: Arc<State>,
    pools: Arc<Pools>,
    committed: mpsc::UnboundedReceiver<Envelope>,
    recovered: Vec<Envelope>,
) -> Result<(), String> {
    let d = Arc::new(Deliverer::new(config, spool, pools)?);
    tokio::spawn(queue::run(d.clone(), committed, recovered));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            d.reap_idle();
        }
    });
    Ok(())
}

pub struct Deliverer {
    config: Arc<Config>,
    spool: Arc<Spool>,
    router: Router,
    pub pools: Arc<Pools>,
    /// Classifies every remote reply; quarantines on block replies and bad rates.
    reputation: crate::reputation::rates::Tracker,
    /// Messages held because no pool IP could take them: woken when an IP comes back.
    held: Mutex<HashSet<String>>,
    tls: tls::Connectors,
    timeouts: Timeouts,
    global: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Sessions kept open after a transaction, by destination and pool, for reuse.
    idle: Mutex<HashMap<String, Vec<(Session, Instant)>>>,
}

/// What a destination attempt gave each of its recipients, and the TLS used.
/// An idle connection reused within this is not checked with RSET first (servers keep idle
/// sessions for tens of seconds at least; a closed one is noticed before anything is sent).
const REUSE_WITHOUT_RSET: Duration = Duration::from_secs(2);

struct Attempt {
    replies: Vec<RemoteReply>,
    tls: String,
    /// No pool IP could take it: not an attempt; look again at this unix time.
    hold: Option<u64>,
}

impl Deliverer {
    pub fn new(
        config: Arc<Config>,
        spool: Arc<Spool>,
        pools: Arc<Pools>,
    ) -> Result<Deliverer, String> {
        Ok(Deliverer {
            router: Router::new(&config)?,
            reputation: crate::reputation::rates::Tracker::new(&config, pools.clone())?,
            pools,
            held: Mutex::new(HashSet::new()),
            tls: tls::connectors(&config.delivery)?,
            timeouts: Timeouts {
                connect: config.delivery.connect_timeout.0,
                command: config.delivery.command_timeout.0,
            },
            global: Arc::new(Semaphore::new(config.delivery.concurrency.max(1))),
            per_destination: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            config,
            spool,
        })
    }

    fn destination_limit(&self, key: &str) -> Arc<Semaphore> {
        let mut map = self.per_destination.lock().expect("lock");
        map.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.config.delivery.concurrency_per_destination.max(1),
                ))
            })
            .clone()
    }

    /// An idle session for `key`, and how long it sat idle.
    fn take_idle(&self, key: &str) -> Option<(Session, Duration)> {
        let mut map = self.idle.lock().expect("lock");
        let list = map.get_mut(key)?;
        let ttl = self.config.delivery.idle_timeout.0;
        while let Some((s, since)) = list.pop() {
            let idle = since.elapsed();
            if idle < ttl {
                return Some((s, idle));
            }
            tokio::spawn(s.quit());
        }
        None
    }

    /// Keeps the session for reuse; hands it back when reuse is off.
    fn put_idle(&self, key: String, session: Session) -> Option<Session> {
        if self.config.delivery.idle_timeout.0.is_zero() {
            return Some(session);
        }
        self.idle
            .lock()
            .expect("lock")
            .entry(key)
            .or_default()
            .push((session, Instant::now()));
        None
    }

    fn reap_idle(&self) {
        // Limits nobody holds or waits on (only the map has the Arc): drop them, so the map
        // does not grow with every destination ever seen. Clones happen under this lock.
        self.per_destination
            .lock()
            .expect("lock")
            .retain(|_, s| Arc::strong_count(s) > 1);
        let ttl = self.config.delivery.idle_timeout.0;
        let mut expired = Vec::new();
        {
            let mut map = self.idle.lock().expect("lock");
            for list in map.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|(_, since)| since.elapsed() >= ttl);
                *list = keep;
                expired.extend(old.into_iter().map(|(s, _)| s));
            }
            map.retain(|_, l| !l.is_empty());
        }
        for s in expired {
            tokio::spawn(s.quit());
        }
    }

    /// One attempt for every due recipient of `env`. Returns the envelope while recipients are
    /// still pending; `None` once the message is finished and removed from the spool.
    pub async fn deliver_message(self: &Arc<Self>, mut env: Envelope) -> Option<Envelope> {
        let now = now_unix();
        let due: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| {
                let r = &env.recipients[i];
                r.state == RcptState::Pending && r.next_attempt <= now
            })
            .collect();
        if !due.is_empty() {
            self.attempt(&mut env, due).await;
        }
        self.maybe_delay_warning(&mut env).await;
        if env.recipients.iter().any(|r| r.state == RcptState::Pending) {
            return Some(env);
        }
        self.finish(env).await
    }

    async fn attempt(self: &Arc<Self>, env: &mut Envelope, due: Vec<usize>) {
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut suppressed = Vec::new();
        for i in due {
            // An address that hard-bounced as unknown before fails at once, saying why.
            if let Some(reply) = self.reputation.suppressed(&env.recipients[i].address) {
                self.record(env, i, reply, "none");
                suppressed.push(i);
                continue;
            }
            by_domain
                .entry(domain_of(&env.recipients[i].address))
                .or_default()
                .push(i);
        }
        let mut groups: HashMap<String, (Destination, Vec<usize>)> = HashMap::new();
        let mut routing_failed = suppressed;
        for (domain, idxs) in by_domain {
            match self.router.resolve(&domain).await {
                Ok(dest) => groups
                    .entry(dest.key.clone())
                    .or_insert_with(|| (dest, Vec::new()))
                    .1
                    .extend(idxs),
                Err(reply) => {
                    let reply = local_reply(reply.code, &reply.status, reply.text);
                    for i in idxs {
                        self.record(env, i, reply.clone(), "none");
                        routing_failed.push(i);
                    }
                }
            }
        }
        if !routing_failed.is_empty() {
            self.bounce(env, &routing_failed).await;
            self.save(env).await;
        }
        let snapshot = Arc::new(env.clone());
        // One destination (most messages): delivered in this task; several go in parallel.
        let mut inline = None;
        let mut tasks = tokio::task::JoinSet::new();
        if groups.len() == 1 {
            for (_, (dest, idxs)) in groups {
                let attempt = self.deliver_to(&dest, &snapshot, &idxs).await;
                inline = Some((idxs, attempt));
            }
        } else {
            for (_, (dest, idxs)) in groups {
                let me = self.clone();
                let snapshot = snapshot.clone();
                tasks.spawn(async move {
                    let attempt = me.deliver_to(&dest, &snapshot, &idxs).await;
                    (idxs, attempt)
                });
            }
        }
        loop {
            let (idxs, attempt) = match inline.take() {
                Some(done) => done,
                None => match tasks.join_next().await {
                    None => break,
                    Some(Ok(done)) => done,
                    Some(Err(_)) => {
                        tracing::error!(queue_id = %env.id, "delivery task failed");
                        continue;
                    }
                },
            };
            if let Some(retry_at) = attempt.hold {
                for (&i, reply) in idxs.iter().zip(attempt.replies) {
                    self.hold(env, i, reply, retry_at);
                }
                self.held.lock().expect("lock").insert(env.id.clone());
                self.save(env).await;
                continue;
            }
            for (&i, reply) in idxs.iter().zip(attempt.replies) {
                self.record(env, i, reply, &attempt.tls);
            }
            self.bounce(env, &idxs).await;
            if env.recipients.iter().all(|r| r.state == RcptState::Sent) {
                // Every recipient delivered: the caller removes the message next, so this save
                // would be rewritten and deleted at once. A crash in between redelivers
                // (at-least-once), it never loses anything.
                continue;
            }
            // Persist before moving on: a crash now must not lose this destination's outcome.
            self.save(env).await;
        }
    }

    /// Queues one failure DSN for those of `idxs` that just bounced, before their state is
    /// saved: a crash in between means a second DSN, never none. If the DSN cannot be stored
    /// they go back to pending, to bounce again on the next attempt.
    async fn bounce(&self, env: &mut Envelope, idxs: &[usize]) {
        let bounced: Vec<usize> = idxs
            .iter()
            .copied()
            .filter(|&i| env.recipients[i].state == RcptState::Bounced)
            .collect();
        if bounced.is_empty() {
            return;
        }
        let rcpts: Vec<_> = bounced.iter().map(|&i| &env.recipients[i]).collect();
        if let Err(e) =
            outcome::send_dsn(&self.config, &self.spool, env, &rcpts, DsnKind::Failure).await
        {
            tracing::error!(queue_id = %env.id, error = %e, "cannot queue DSN, will bounce again");
            let retry = now_unix() + 60;
            for i in bounced {
                env.recipients[i].state = RcptState::Pending;
                env.recipients[i].next_attempt = retry;
            }
        }
    }

    /// No pool IP can take this recipient now: it waits, without counting an attempt, so it
    /// never bounces or expires for that.
    fn hold(&self, env: &mut Envelope, i: usize, reply: RemoteReply, retry_at: u64) {
        let rcpt = &mut env.recipients[i];
        let first = !rcpt
            .last_reply
            .as_ref()
            .is_some_and(crate::pool::is_hold_reply);
        rcpt.next_attempt = retry_at;
        let text = reply.text.clone();
        rcpt.last_reply = Some(reply);
        if first {
            tracing::info!(queue_id = %env.id, recipient = %rcpt.address, reason = %text, next_attempt = retry_at, status = "held", "delivery held");
        } else {
            tracing::debug!(queue_id = %env.id, recipient = %rcpt.address, reason = %text, next_attempt = retry_at, "delivery still held");
        }
    }

    /// Remembers a held message (recovered from the spool) for the next wake-up.
    pub fn mark_held(&self, id: &str) {
        self.held.lock().expect("lock").insert(id.to_string());
    }

    /// Ids of held messages, emptied: the queue retries them now.
    pub fn take_held(&self) -> Vec<String> {
        self.held.lock().expect("lock").drain().collect()
    }

    /// Applies one reply to one recipient and logs the attempt.
    fn record(&self, env: &mut Envelope, i: usize, reply: RemoteReply, tls: &str) {
        let now = now_unix();
        let received_at = env.received_at;
        let rcpt = &mut env.recipients[i];
        let status = outcome::apply(rcpt, reply, &self.config.delivery, received_at, now);
        let r = rcpt.last_reply.as_ref().expect("apply sets last_reply");
        let line = format!("{} {} {}", r.code, r.status, r.text);
        let delay = now.saturating_sub(received_at);
        // Display (unquoted) for single-token fields; the reply text stays quoted.
        macro_rules! attempt_event {
            ($level:ident) => {
                tracing::$level!(
                    queue_id = %env.id, recipient = %rcpt.address, source_ip = %r.source_ip,
                    mx = %r.host, addr = %r.addr, tls = %tls, reply = ?line,
                    status = status.as_str(), delay, attempt = rcpt.attempts,
                    next_attempt = rcpt.next_attempt, "delivery attempt"
                )
            };
        }
        match status {
            Status::Sent => attempt_event!(info),
            _ => attempt_event!(warn),
        }
    }

    async fn save(&self, env: &Envelope) {
        if let Err(e) = self.spool.save_envelope(env).await {
            tracing::error!(queue_id = %env.id, error = %e, "cannot save envelope");
        }
    }

    /// Sends the message to one destination: a reused session, else MX by MX, address by
    /// address, pool IP by pool IP until a session opens.
    async fn deliver_to(&self, dest: &Destination, env: &Envelope, idxs: &[usize]) -> Attempt {
        let rcpts: Vec<&str> = idxs
            .iter()
            .map(|&i| env.recipients[i].address.as_str())
            .collect();
        let all = |r: RemoteReply, tls: &str| Attempt {
            replies: vec![r; idxs.len()],
            tls: tls.to_string(),
            hold: None,
        };
        let pool = self
            .pools
            .pool_for(env.pool.as_deref(), env.user.as_deref(), &env.sender)
            .map(str::to_string);
        // Destination first: a saturated destination must not sit on global permits.
        let _local = self.destination_limit(&dest.key).acquire_owned().await;
        let _global = self.global.clone().acquire_owned().await;
        let path = match self.spool.body(&env.id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot read the queued message");
                return all(
                    local_reply(451, "4.3.0", "cannot read the queued message"),
                    "none",
                );
            }
        };
        let idle_key = format!("{}|{}", dest.key, pool.as_deref().unwrap_or(""));

        while let Some((mut s, idle)) = self.take_idle(&idle_key) {
            // A reused connection passes the same checks as a new one (drain, caps).
            let provider = self.pools.provider_of(&s.host).to_string();
            let Some(lease) = self.pools.take(&s.source, &provider) else {
                tokio::spawn(s.quit());
                continue;
            };
            // One used a moment ago goes without the RSET round trip; if the server closed it
            // meanwhile, `send` finds out before anything is sent and it is dropped.
            if idle < REUSE_WITHOUT_RSET {
                s.unchecked = true;
            } else if !s.reset().await {
                lease.refund();
                continue;
            }
            tracing::debug!(queue_id = %env.id, mx = %s.host, source_ip = %s.source.label(), "reusing connection");
            match self
                .transact(s, env, &rcpts, &path, idle_key.clone(), &provider, lease)
                .await
            {
                Some(attempt) => return attempt,
                None => continue,
            }
        }

        let mut errors: Vec<RemoteReply> = Vec::new();
        let mut held: Option<crate::pool::Held> = None;
        'hosts: for host in &dest.hosts {
            if host.addrs.is_empty() {
                let mut r = host.error.clone().map_or_else(
                    || local_reply(451, "4.4.4", format!("no address for {}", host.name)),
                    |e| local_reply(e.code, &e.status, e.text),
                );
                r.host = host.name.clone();
                errors.push(r);
                continue;
            }
            let provider = self.pools.provider_of(&host.name).to_string();
            for ip in &host.addrs {
                let addr = SocketAddr::new(*ip, host.port);
                let sources = match self.pools.select(pool.as_deref(), &provider, ip.is_ipv6()) {
                    Ok(s) => s,
                    Err(h) => {
                        if held.as_ref().is_none_or(|o| h.retry_at < o.retry_at) {
                            held = Some(h);
                        }
                        continue;
                    }
                };
                if sources.is_empty() {
                    let mut r = local_reply(
                        451,
                        "4.4.4",
                        format!("no pool IP of the address family of {addr}"),
                    );
                    r.host = host.name.clone();
                    errors.push(r);
                    continue;
                }
                let mut connect_failures = 0;
                let mut taken = 0;
                for source in &sources {
                    // Another delivery may have used the last slot since `select`.
                    let Some(lease) = self.pools.take(source, &provider) else {
                        continue;
                    };
                    taken += 1;
                    let opened = match self.open(&host.name, addr, source, dest.tls).await {
                        Ok(s) => {
                            // A new session is never stale; `None` cannot come back here.
                            match self
                                .transact(s, env, &rcpts, &path, idle_key.clone(), &provider, lease)
                                .await
                            {
                                Some(attempt) => return attempt,
                                None => continue,
                            }
                        }
                        Err(e) => {
                            lease.refund();
                            e
                        }
                    };
                    let mut opened = opened;
                    if let (OpenError::Refused(r), Some(ip)) = (&mut opened, source.ip) {
                        self.pools.record_reply(ip, &provider, r);
                        // A blocked greeting quarantines the IP: the next MX gets another one.
                        let sender = env.user.as_deref().unwrap_or(&env.sender);
                        self.reputation.observe(ip, &provider, sender, "", r);
                    }
                    match opened {
                        OpenError::Bind(e) => {
                            tracing::warn!(queue_id = %env.id, source_ip = %source.label(), error = %e, "cannot bind source IP, trying the next one");
                            let mut r = local_reply(
                                451,
                                "4.4.0",
                                format!("cannot bind source IP {}: {e}", source.label()),
                            );
                            r.host = host.name.clone();
                            r.source_ip = source.label();
                            errors.push(r);
                        }
                        OpenError::Connect(r) => {
                            tracing::warn!(queue_id = %env.id, source_ip = %source.label(), mx = %host.name, %addr, reply = %r.text, "connection failed");
                            errors.push(r);
                            connect_failures += 1;
                            // The destination is likely down: one more source, then move on.
                            if connect_failures >= 2 {
                                break;
                            }
                        }
                        OpenError::Refused(r)
                        | OpenError::TlsRequired(r)
                        | OpenError::Handshake(r) => {
                            tracing::warn!(queue_id = %env.id, source_ip = %source.label(), mx = %host.name, %addr, reply = %format!("{} {} {}", r.code, r.status, r.text), "session refused, trying the next MX");
                            errors.push(r);
                            continue 'hosts;
                        }
                    }
                }
                if taken == 0 && held.is_none() {
                    // Every selected IP filled up meanwhile: wait for capacity, no failed attempt.
                    held = Some(crate::pool::Held {
                        text: format!(
                            "pool {}: no source IP has capacity for provider {provider} (all in use)",
                            pool.as_deref().unwrap_or("-")
                        ),
                        retry_at: crate::spool::now_unix() + 1,
                    });
                }
            }
        }
        // Our own capacity, not the destination, stopped it: hold, whatever else failed.
        if let Some(h) = held {
            return Attempt {
                replies: vec![
                    local_reply(crate::pool::HOLD_CODE, crate::pool::HOLD_STATUS, h.text);
                    idxs.len()
                ],
                tls: "none".into(),
                hold: Some(h.retry_at),
            };
        }
        // Any temporary error means another attempt may succeed: never bounce then.
        let reply = errors
            .iter()
            .rev()
            .find(|r| r.code < 500)
            .or(errors.last())
            .cloned()
            .unwrap_or_else(|| local_reply(451, "4.4.4", "no destination host"));
        all(reply, "none")
    }

    /// Opens a session; an opportunistic STARTTLS whose handshake fails is retried in plaintext.
    async fn open(
        &self,
        host: &str,
        addr: SocketAddr,
        source: &Source,
        policy: TlsPolicy,
    ) -> Result<Session, OpenError> {
        let connector = match policy {
            TlsPolicy::Required => self.tls.required.as_ref(),
            _ => Some(&self.tls.opportunistic),
        };
        match client::open(host, addr, source, policy, connector, &self.timeouts).await {
            Err(OpenError::Handshake(r)) => {
                tracing::warn!(mx = %host, %addr, source_ip = %source.label(), error = %r.text, "TLS handshake failed, delivering in plaintext");
                client::open(host, addr, source, TlsPolicy::None, None, &self.timeouts).await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn transact(
        &self,
        mut s: Session,
        env: &Envelope,
        rcpts: &[&str],
        path: &crate::spool::Body,
        idle_key: String,
        provider: &str,
        lease: Lease,
    ) -> Option<Attempt> {
        let mut result = s.send(env, rcpts, path).await;
        if result.stale {
            tracing::debug!(mx = %s.host, source_ip = %s.source.label(), "reused connection was closed, taking another");
            lease.refund();
            return None;
        }
        let tls = s.tls.clone();
        if let Some(ip) = s.source.ip {
            let sender = env.user.as_deref().unwrap_or(&env.sender);
            for (r, rcpt) in result.replies.iter_mut().zip(rcpts) {
                self.pools.record_reply(ip, provider, r);
                // Block replies become "retry from another IP" deferrals here.
                self.reputation.observe(ip, provider, sender, rcpt, r);
            }
        }
        let max = self.pools.max_per_connection(provider);
        let under_max = max == 0 || s.transactions < max;
        if !under_max && result.reusable {
            s.quit().await;
        } else if result.reusable
            && let Some(s) = self.put_idle(idle_key, s)
        {
            // QUIT while the concurrency permits are still held, so the limit covers the
            // whole connection.
            s.quit().await;
        }
        drop(lease);
        Some(Attempt {
            replies: result.replies,
            tls,
            hold: None,
        })
    }

    async fn maybe_delay_warning(&self, env: &mut Envelope) {
        let Some(after) = self.config.delivery.delay_warning else {
            return;
        };
        if env.delay_warned || now_unix() < env.received_at + after.0.as_secs() {
            return;
        }
        let pending: Vec<_> = env
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending && r.attempts > 0)
            .collect();
        if pending.is_empty() {
            return;
        }
        match outcome::send_dsn(&self.config, &self.spool, env, &pending, DsnKind::Delay).await {
            Ok(_) => {
                env.delay_warned = true;
                self.save(env).await;
            }
            Err(e) => tracing::error!(queue_id = %env.id, error = %e, "cannot queue delay DSN"),
        }
    }

    /// Every recipient is final (bounces were reported when they happened): remove the message.
    async fn finish(&self, env: Envelope) -> Option<Envelope> {
        match self.spool.remove(&env.id).await {
            Ok(()) => {
                tracing::info!(queue_id = %env.id, "message finished, removed from queue");
                None
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot remove finished message");
                Some(env)
            }
        }
    }
}
