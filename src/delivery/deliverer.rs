//! One attempt of one message: due recipients are routed and grouped per destination, each
//! destination gets one transaction (`destination`), and every recipient's typed outcome is
//! recorded (`outcome::apply`), bounced with a DSN, held, or finished.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::client::{Timeouts, local_reply};
use super::connections::Connections;
use super::destination::TlsUsed;
use super::policy::{DomainPolicy, Policies};
use super::settings::Settings;
use super::tls;
use crate::outcome::{self, DsnKind, Outcome, Status};
use crate::pool::Pools;
use crate::reputation::rates::Tracker;
use crate::routing::{Destination, Router, domain_of};
use crate::spool::{Envelope, RcptState, Spool, now_unix};

/// The recipients of one destination transaction: where, under which policy, who.
type Group = (Destination, DomainPolicy, Vec<usize>);

/// What an attempt left of a message.
pub enum Attempted {
    /// Every recipient final; removed from the spool.
    Finished,
    /// Recipients pending, and what the envelope file holds of this attempt.
    Pending(Box<Envelope>, Written),
}

/// How an attempt was recorded in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The envelope file holds it.
    Saved,
    /// Only the next attempt time (`Spool::defer_in_place`): the file's attempt counts are one
    /// behind for every pending recipient.
    InPlace,
    /// Nothing was attempted.
    Unchanged,
}

/// What of a recipient is worth a rewrite of the envelope when it changes.
#[derive(PartialEq, Eq)]
struct Durable {
    state: RcptState,
    held: bool,
    /// The last reply's code, status and host (a repeated deferral keeps them).
    reply: Option<(u16, String, String)>,
}

impl Durable {
    fn of(r: &crate::spool::Recipient) -> Durable {
        Durable {
            state: r.state,
            held: r.held,
            reply: r
                .last_reply
                .as_ref()
                .map(|r| (r.code, r.status.clone(), r.host.clone())),
        }
    }
}

pub struct Deliverer {
    pub(super) settings: Settings,
    pub(super) spool: Arc<Spool>,
    /// Routes and resolver: replaced on reload; an attempt keeps the one it started with.
    router: arc_swap::ArcSwap<Router>,
    pub pools: Arc<Pools>,
    /// Classifies every remote reply; quarantines on block replies and bad rates.
    pub(super) reputation: Arc<Tracker>,
    /// Messages held because no pool IP could take them: woken when an IP comes back.
    held: Mutex<HashSet<String>>,
    pub(super) tls: tls::Connectors,
    /// Which TLS each destination domain and MX host needs; TLS-RPT plugs its sink here.
    pub policies: Arc<Policies>,
    pub(super) timeouts: Timeouts,
    pub(super) global: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Sessions kept open after a transaction, per source IP and destination, for reuse.
    pub(super) connections: Connections,
    /// Signs the DSNs the relay writes (key for the hostname's domain).
    pub(super) signer: arc_swap::ArcSwap<crate::signing::Signer>,
    /// Keeps a record of each recipient a receiver took, for tracing complaints.
    feedback: Option<Arc<crate::feedback::Feedback>>,
}

/// What delivery works with, built before it by the caller.
pub struct Stages {
    pub spool: Arc<Spool>,
    pub pools: Arc<Pools>,
    pub reputation: Arc<Tracker>,
    /// Where policies and caches persist (`None` in some tests).
    pub state: Option<Arc<crate::state::State>>,
    /// Keeps a record of each recipient a receiver took, for tracing complaints.
    pub feedback: Option<Arc<crate::feedback::Feedback>>,
    /// The farm's MTA-STS policy cache (`None` without `[cluster]`).
    pub farm: Option<Arc<dyn crate::delivery::policy::mta_sts::PolicyFarm>>,
}

/// Why delivery could not start: its TLS connectors, resolver or DANE (each error's own words).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] super::tls::ConnectorError),
    #[error(transparent)]
    Resolver(#[from] crate::routing::ResolverError),
    #[error(transparent)]
    Dane(#[from] crate::delivery::policy::dane::DaneError),
}

impl Deliverer {
    pub fn new(
        settings: Settings,
        signer: Arc<crate::signing::Signer>,
        with: Stages,
    ) -> Result<Deliverer, StartError> {
        let Stages {
            spool,
            pools,
            reputation,
            state,
            feedback,
            farm,
        } = with;
        let tls = tls::connectors(&settings.delivery)?;
        Ok(Deliverer {
            signer: arc_swap::ArcSwap::new(signer),
            router: arc_swap::ArcSwap::from_pointee(settings.router()?),
            reputation,
            pools,
            held: Mutex::new(HashSet::new()),
            policies: Arc::new(
                Policies::new(
                    &settings.delivery,
                    &settings.dns,
                    tls.required.clone(),
                    state,
                )?
                .sharing(farm),
            ),
            tls,
            timeouts: Timeouts {
                connect: settings.delivery.connect_timeout.0,
                command: settings.delivery.command_timeout.0,
            },
            global: Arc::new(Semaphore::new(settings.delivery.concurrency.max(1))),
            per_destination: Mutex::new(HashMap::new()),
            connections: Connections::new(settings.delivery.idle_timeout.0),
            settings,
            spool,
            feedback,
        })
    }

    /// Reload: new routes and DNS servers for the next attempts, new keys for the next DSNs.
    pub fn reload(
        &self,
        settings: &Settings,
        signer: Arc<crate::signing::Signer>,
    ) -> Result<(), crate::routing::ResolverError> {
        self.signer.store(signer);
        self.router.store(Arc::new(settings.router()?));
        Ok(())
    }

    /// Graceful stop: waits up to `grace` for the transactions in flight, and lets no new one
    /// start (they queue behind this for every permit). `false` when the grace ran out.
    pub async fn quiesce(&self, grace: std::time::Duration) -> bool {
        let all = self.settings.delivery.concurrency.max(1) as u32;
        match tokio::time::timeout(grace, self.global.clone().acquire_many_owned(all)).await {
            Ok(Ok(permits)) => {
                // Never given back: nothing new starts before exit.
                permits.forget();
                true
            }
            _ => false,
        }
    }

    pub(super) fn destination_limit(&self, key: &str) -> Arc<Semaphore> {
        let mut map = self.per_destination.lock().expect("lock");
        map.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.settings.delivery.concurrency_per_destination.max(1),
                ))
            })
            .clone()
    }

    pub(super) fn reap_idle(&self) {
        // Limits nobody holds or waits on (only the map has the Arc): drop them, so the map
        // does not grow with every destination ever seen. Clones happen under this lock.
        self.per_destination
            .lock()
            .expect("lock")
            .retain(|_, s| Arc::strong_count(s) > 1);
        self.connections.reap();
    }

    /// One attempt for every due recipient of `env`: what is left of the message.
    pub async fn deliver_message(self: &Arc<Self>, mut env: Envelope) -> Attempted {
        let now = now_unix();
        let due: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| {
                let r = &env.recipients[i];
                r.state == RcptState::Pending && r.next_attempt <= now
            })
            .collect();
        let mut written = Written::Unchanged;
        if !due.is_empty() {
            written = self.attempt(&mut env, due).await;
        }
        if self.maybe_delay_warning(&mut env).await {
            written = Written::Saved;
        }
        if env.recipients.iter().any(|r| r.state == RcptState::Pending) {
            return Attempted::Pending(Box::new(env), written);
        }
        match self.finish(env).await {
            None => Attempted::Finished,
            Some(env) => Attempted::Pending(Box::new(env), written),
        }
    }

    /// Runs the attempt and records its outcomes: saved as they come in whenever a
    /// recipient's state changes (delivered, bounced, held, a new kind of reply); an attempt
    /// that only deferred every pending recipient as before is recorded in place
    /// (`Spool::defer_in_place`), not with a rewrite of the envelope.
    async fn attempt(self: &Arc<Self>, env: &mut Envelope, due: Vec<usize>) -> Written {
        let before: Vec<Durable> = env.recipients.iter().map(Durable::of).collect();
        let every_pending_due = env
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
            .count()
            == due.len();
        let mut saved = false;
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut suppressed = Vec::new();
        let sender_domains = env.sender_domains();
        let sender_domains: Vec<&str> = sender_domains.iter().map(String::as_str).collect();
        for i in due {
            // An address that hard-bounced as unknown, or complained about this sender, fails
            // at once, saying why.
            if let Some(reply) = self
                .reputation
                .suppressed(&env.recipients[i].address, &sender_domains)
            {
                self.record(env, i, Outcome::of_reply(reply), &TlsUsed::none());
                suppressed.push(i);
                continue;
            }
            by_domain
                .entry(domain_of(&env.recipients[i].address))
                .or_default()
                .push(i);
        }
        let (groups, mut routing_failed) = self.route_all(env, by_domain).await;
        routing_failed.extend(suppressed);
        if !routing_failed.is_empty() {
            self.bounce(env, &routing_failed).await;
            self.save(env).await;
            saved = true;
        }
        let snapshot = Arc::new(env.clone());
        // One destination (most messages): delivered in this task; several go in parallel.
        let mut inline = None;
        let mut tasks = tokio::task::JoinSet::new();
        if groups.len() == 1 {
            for (_, (dest, policy, idxs)) in groups {
                let attempt = self.deliver_to(&dest, &policy, &snapshot, &idxs).await;
                inline = Some((idxs, attempt));
            }
        } else {
            for (_, (dest, policy, idxs)) in groups {
                let me = self.clone();
                let snapshot = snapshot.clone();
                tasks.spawn(async move {
                    let attempt = me.deliver_to(&dest, &policy, &snapshot, &idxs).await;
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
            for (&i, outcome) in idxs.iter().zip(attempt.outcomes) {
                self.record(env, i, outcome, &attempt.tls);
            }
            if idxs.iter().any(|&i| env.recipients[i].held) {
                self.held.lock().expect("lock").insert(env.id.clone());
            }
            self.bounce(env, &idxs).await;
            if env.recipients.iter().all(|r| r.state == RcptState::Sent) {
                // Every recipient delivered: the caller removes the message next, so this save
                // would be rewritten and deleted at once. A crash in between redelivers
                // (at-least-once), it never loses anything.
                continue;
            }
            let changed = idxs
                .iter()
                .any(|&i| Durable::of(&env.recipients[i]) != before[i]);
            if changed || saved {
                // Persist before moving on: a crash now must not lose this destination's
                // outcome. (After one save, every group is saved: the file's attempt counts
                // stay those of one whole attempt.)
                self.save(env).await;
                saved = true;
            }
        }
        self.written(env, saved, every_pending_due).await
    }

    /// Routes every domain and looks up its TLS policy, grouping recipients per transaction;
    /// those whose domain cannot be routed get the reply recorded and are returned apart.
    async fn route_all(
        &self,
        env: &mut Envelope,
        by_domain: BTreeMap<String, Vec<usize>>,
    ) -> (HashMap<String, Group>, Vec<usize>) {
        let router = self.router.load_full();
        let mut failed = Vec::new();
        let mut routed = Vec::new();
        for (domain, idxs) in by_domain {
            match router.resolve(&domain).await {
                Ok(dest) => routed.push((domain, dest, idxs)),
                Err(reply) => {
                    let reply = local_reply(reply.code, &reply.status, reply.text);
                    for i in idxs {
                        self.record(env, i, Outcome::of_reply(reply.clone()), &TlsUsed::none());
                        failed.push(i);
                    }
                }
            }
        }
        // Every domain's policy at once: one slow policy fetch costs the others no more.
        let policies =
            futures_util::future::join_all(routed.iter().map(|(domain, dest, _)| {
                self.policies.for_domain(domain, dest, router.resolver())
            }))
            .await;
        let mut groups: HashMap<String, Group> = HashMap::new();
        for ((_, dest, idxs), policy) in routed.into_iter().zip(policies) {
            // A domain with a policy of its own goes in a transaction of its own.
            let key = match policy.own_group() {
                Some(domain) => format!("{}|{domain}", dest.key),
                None => dest.key.clone(),
            };
            groups
                .entry(key)
                .or_insert_with(|| (dest, policy, Vec::new()))
                .2
                .extend(idxs);
        }
        (groups, failed)
    }

    /// How an attempt ends up in the spool: saved already, nothing to write (the removal that
    /// follows records it), in place (a plain deferral of every pending recipient), or saved
    /// now.
    async fn written(&self, env: &Envelope, saved: bool, every_pending_due: bool) -> Written {
        if saved {
            return Written::Saved;
        }
        if !env.recipients.iter().any(|r| r.state == RcptState::Pending) {
            // Every recipient delivered: the removal that follows records it.
            return Written::Unchanged;
        }
        // Held recipients are not attempts: their counts must not move with the others'.
        let none_held = !env
            .recipients
            .iter()
            .any(|r| r.state == RcptState::Pending && r.held);
        match crate::delivery::queue::due_of(env) {
            Some(next) if every_pending_due && none_held => {
                match self.spool.defer_in_place(&env.id, next).await {
                    Ok(true) => return Written::InPlace,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(queue_id = %env.id, error = %e, "deferral not recorded in place, saving");
                    }
                }
            }
            _ => {}
        }
        self.save(env).await;
        Written::Saved
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
        if let Err(e) = outcome::send_dsn(
            &self.settings.hostname,
            &self.spool,
            &self.signer.load_full(),
            env,
            &rcpts,
            DsnKind::Failure,
        )
        .await
        {
            tracing::error!(queue_id = %env.id, error = %e, "cannot queue DSN, will bounce again");
            let retry = now_unix() + 60;
            for i in bounced {
                env.recipients[i].state = RcptState::Pending;
                env.recipients[i].next_attempt = retry;
            }
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

    /// Applies one outcome to one recipient and logs it.
    fn record(&self, env: &mut Envelope, i: usize, outcome: Outcome, used: &TlsUsed) {
        let tls = used.tls.as_str();
        let now = now_unix();
        let received_at = env.received_at;
        let rcpt = &mut env.recipients[i];
        let was_held = rcpt.held;
        let status = outcome::apply(
            rcpt,
            outcome,
            &self.settings.delivery.schedule(),
            received_at,
            now,
        );
        let r = rcpt.last_reply.as_ref().expect("apply sets last_reply");
        if let Status::Held { until } = status {
            // Held is not an attempt: one line when it starts, debug while it lasts.
            if was_held {
                tracing::debug!(queue_id = %env.id, recipient = %rcpt.address, reason = %r.text, next_attempt = until, "delivery still held");
            } else {
                tracing::info!(queue_id = %env.id, recipient = %rcpt.address, reason = %r.text, next_attempt = until, status = "held", "delivery held");
            }
            return;
        }
        if matches!(status, Status::Sent)
            && let Some(feedback) = &self.feedback
        {
            // Before the log event: a complaint traced once the event is out finds the record.
            feedback.delivered(crate::feedback::service::Sent {
                queue_id: &env.id,
                user: env.user.as_deref(),
                sender: &env.sender,
                prepend: &env.prepend,
                recipient: &rcpt.address,
                source_ip: &r.source_ip,
                mx_host: &r.host,
            });
        }
        let line = format!("{} {} {}", r.code, r.status, r.text);
        if !r.addr.is_empty() {
            crate::metrics::outbound(tls != "none");
        }
        if let Some(policy) = used.policy {
            let result = match used.failure {
                Some(f) => f.as_str(),
                None if tls != "none" => "tls",
                None => "plaintext",
            };
            crate::metrics::tls_delivery(policy.as_str(), result);
        }
        let tls_policy = used.policy.map_or("none", |p| p.as_str());
        let tls_failure = used.failure.map_or("", |f| f.as_str());
        let delay = now.saturating_sub(received_at);
        // Display (unquoted) for single-token fields; the reply text stays quoted.
        macro_rules! attempt_event {
            ($level:ident) => {
                tracing::$level!(
                    queue_id = %env.id, recipient = %rcpt.address, source_ip = %r.source_ip,
                    mx = %r.host, addr = %r.addr, tls = %tls, tls_policy = %tls_policy, tls_failure = %tls_failure,
                    reply = ?line,
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

    /// True when it saved the envelope.
    async fn maybe_delay_warning(&self, env: &mut Envelope) -> bool {
        let Some(after) = self.settings.delivery.delay_warning else {
            return false;
        };
        if env.delay_warned || now_unix() < env.received_at + after.0.as_secs() {
            return false;
        }
        let pending: Vec<_> = env
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending && r.attempts > 0)
            .collect();
        if pending.is_empty() {
            return false;
        }
        let signer = self.signer.load_full();
        let dsn = outcome::send_dsn(
            &self.settings.hostname,
            &self.spool,
            &signer,
            env,
            &pending,
            DsnKind::Delay,
        );
        match dsn.await {
            Ok(_) => {
                env.delay_warned = true;
                self.save(env).await;
                true
            }
            Err(e) => {
                tracing::error!(queue_id = %env.id, error = %e, "cannot queue delay DSN");
                false
            }
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
