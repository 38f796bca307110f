//! Wires the stages together for `poolrelay serve`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Checked, Config, ConfigError};
use crate::spool::Spool;
use crate::state::State;

/// Why the relay did not start: the stage that failed, in its own words.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    OpenFiles(#[from] crate::config::checked::OpenFileError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot open spool under {}: {source}", data_dir.display())]
    Spool {
        data_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool recovery failed: {0}")]
    SpoolRecovery(#[source] std::io::Error),
    /// Every DKIM key that did not load, one a line.
    #[error("{}", one_a_line(.0))]
    Signing(Vec<ConfigError>),
    #[error(transparent)]
    Pools(#[from] crate::pool::StoreError),
    #[error(transparent)]
    Rules(#[from] crate::outcome::classify::RuleError),
    #[error(transparent)]
    TlsReports(#[from] crate::tls_reports::send::ReportSendError),
    #[error(transparent)]
    Feedback(#[from] crate::feedback::OpenError),
    #[error(transparent)]
    Doctor(#[from] crate::doctor::DoctorError),
    #[error(transparent)]
    Admin(#[from] crate::admin::StartError),
    #[error(transparent)]
    Dnsbl(#[from] crate::reputation::dnsbl::DnsblError),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::StartError),
    #[error(transparent)]
    Listen(#[from] crate::inbound::ListenError),
}

fn one_a_line(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs the relay from `config` (read from `path`, which SIGHUP reads again) until SIGTERM/SIGINT.
pub async fn run(config: Checked, path: PathBuf) -> Result<(), StartError> {
    crate::reload::raise_open_file_limit(&config)?;
    let config = Arc::new(config.into_inner());
    // The state store's lock first: a second relay on this data_dir stops before the spool.
    let state = Arc::new(State::open(&config.data_dir)?);
    let (spool, committed) = Spool::open(&config.data_dir).map_err(|source| StartError::Spool {
        data_dir: config.data_dir.clone(),
        source,
    })?;
    spool.clean_tmp().map_err(StartError::SpoolRecovery)?;
    // The queue is indexed in the background (a million messages take a while to read);
    // new mail is accepted and delivered meanwhile.
    let (recovered_tx, recovered) = tokio::sync::mpsc::channel(8);
    {
        let spool = spool.clone();
        tokio::spawn(async move {
            let s = spool.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                s.recover_each(crate::delivery::queue::RECOVERY_BATCH, |batch| {
                    let _ = recovered_tx.blocking_send(batch);
                })
            })
            .await;
            match result {
                Ok(Ok(n)) => {
                    tracing::info!(
                        messages = n,
                        ms = started.elapsed().as_millis() as u64,
                        "spool recovered"
                    )
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "spool recovery failed; restart to retry")
                }
                Err(e) => tracing::error!(error = %e, "spool recovery crashed; restart to retry"),
            }
            // Not before: a move to files while the queue is listed could look like debris.
            spool.start_compaction();
        });
    }
    let signer = Arc::new(
        crate::signing::Signer::new(&config.dkim, &config.signing).map_err(StartError::Signing)?,
    );

    // The pools from the store first (a bad store stops the start before this node joins the
    // farm and advertises its IPs), then the farm, then the farm handed to the stages; its
    // outbox before the stages that send to it (its receiver goes to the sync task, which
    // applies the farm's changes to them).
    let pools = crate::pool::Pools::new(&config.pool_settings(), Some(state.clone()))?;
    let cluster = match &config.cluster {
        Some(settings) => Some(crate::cluster::Cluster::start(settings, pools.ips()).await),
        None => None,
    };
    let (outbox, changes) = match &config.cluster {
        Some(settings) => {
            let (outbox, rx) = crate::cluster::events::Outbox::new(&settings.node);
            (Some(Arc::new(outbox)), Some(rx))
        }
        None => (None, None),
    };
    let pools = Arc::new(
        pools
            .sharing_holds(outbox.clone().map(|o| o as Arc<dyn crate::pool::HoldSink>))
            .with_farm(cluster.clone()),
    );
    pools.watch_farm();
    {
        // Counters reach the store once a second (a crash loses at most that much).
        let pools = pools.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let p = pools.clone();
                let _ = tokio::task::spawn_blocking(move || p.flush()).await;
            }
        });
    }
    let suppressions = Arc::new(
        crate::reputation::suppress::Suppressions::open(&config.data_dir).sharing(
            (outbox.clone()).map(|o| o as Arc<dyn crate::reputation::suppress::SuppressionSink>),
        ),
    );
    suppressions.start_flusher();
    let accounts = Arc::new(
        crate::reputation::accounts::Accounts::new(config.accounts.clone(), Some(state.clone()))
            .sharing(outbox.map(|o| o as Arc<dyn crate::reputation::accounts::DecisionSink>)),
    );
    if let (Some(c), Some(settings), Some(rx)) = (&cluster, &config.cluster, changes) {
        let shared = crate::cluster::sync::Shared {
            pools: pools.clone(),
            suppressions: suppressions.clone(),
            accounts: accounts.clone(),
        };
        crate::cluster::sync::start(c.clone(), shared, rx, settings.resync_interval.0);
    }
    let history = Arc::new(
        crate::reputation::history::History::new(Some(state.clone()))
            .sharing((cluster.clone()).map(|c| c as Arc<dyn crate::reputation::history::Farm>)),
    );
    {
        // Counts reach the store once a second; a change of standing is written at once.
        let accounts = accounts.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let a = accounts.clone();
                let _ = tokio::task::spawn_blocking(move || a.flush()).await;
            }
        });
    }
    let reputation = Arc::new(
        crate::reputation::rates::Tracker::new(
            &config.reputation,
            pools.clone(),
            suppressions.clone(),
        )?
        .with_history(history.clone())
        .with_accounts(accounts.clone()),
    );
    let complainers = config.feedback.clone().unwrap_or_default();
    reputation.set_complainers(complainers.suppress, complainers.suppress_for.0);
    {
        // Outcome counts reach the history every 10 s (a crash loses at most that much).
        let (history, pools) = (history.clone(), pools.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
            loop {
                tick.tick().await;
                let (h, p) = (history.clone(), pools.clone());
                let _ = tokio::task::spawn_blocking(move || h.flush(&p)).await;
            }
        });
    }
    let tls_reports = crate::tls_reports::Service::new(
        config.tls_reports.clone(),
        &config.hostname,
        &config.dns.nameservers,
        state.clone(),
        spool.clone(),
        signer.clone(),
    )?;
    if let Some(t) = &tls_reports {
        crate::tls_reports::send::start(t.clone());
    }
    // Who acts on a traced complaint, in order (`feedback::dispatch`): the accounts of the
    // login and sender domain first (they may take the blame), then the IP × provider windows
    // and suppression. Adding one is one line here.
    let complaint_actors: Vec<Arc<dyn crate::feedback::OnComplaint>> =
        vec![accounts.clone(), reputation.clone()];
    let feedback = crate::feedback::Feedback::open(
        config.feedback.clone(),
        &config.hostname,
        config.cluster.is_some(),
        state.clone(),
        pools.clone(),
        complaint_actors,
    )?;
    feedback.start_flusher();
    if let Some(c) = &cluster {
        // Before the listeners: messages are sealed with the farm's key from the start.
        crate::feedback::farm::start(feedback.clone(), c.clone()).await;
    }
    let (queue, control) = crate::delivery::queue::channel(Some(state.clone()));
    let doctor = crate::doctor::start(
        config.doctor_inputs(),
        || doctor_tools(&config),
        pools.clone(),
    )?;
    let feeds = crate::reputation::feeds::start(
        config.feeds.as_ref(),
        &config.reputation,
        &config.data_dir,
        pools.clone(),
    );
    // Postmaster's domain verdicts reach the accounts (`accounts/verdict.rs`); subscribing
    // re-tells the latest ones, so a restart keeps a verdict's hold.
    if let Some(f) = &feeds {
        f.subscribe(accounts.clone());
    }
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(4);
    if let Some(admin) = &config.admin {
        let admin_state = crate::admin::AdminState {
            pools: pools.clone(),
            reputation: reputation.clone(),
            doctor,
            queue,
            spool: spool.clone(),
            relay: Arc::new(crate::admin::Relay {
                hostname: config.hostname.clone(),
                data_dir: config.data_dir.clone(),
                tls: config.tls.as_ref().map(|t| crate::admin::CertFiles {
                    certificate: t.certificate.clone(),
                    private_key: t.private_key.clone(),
                }),
                reputation: config.reputation.clone(),
                feedback: config.feedback.clone().unwrap_or_default(),
            }),
            reload: Some(crate::reload::Trigger(reload_tx)),
            feeds: feeds.clone(),
            tls_reports: tls_reports.clone(),
            feedback: Some(feedback.clone()),
        };
        crate::admin::start(admin, admin_state).await?;
    }
    crate::reputation::dnsbl::start(&config.reputation, &config.dns.nameservers, pools.clone())?;
    let deliverer = crate::delivery::start(
        config.delivery_settings(),
        signer.clone(),
        crate::delivery::Stages {
            spool: spool.clone(),
            pools: pools.clone(),
            reputation: reputation.clone(),
            state: Some(state.clone()),
            feedback: Some(feedback.clone()),
            farm: (cluster.clone())
                .map(|c| c as Arc<dyn crate::delivery::policy::mta_sts::PolicyFarm>),
        },
        committed,
        recovered,
        control,
    )
    .await?;
    if let Some(t) = &tls_reports {
        let sink = crate::tls_reports::Sink(t.collector().clone());
        deliverer.policies.set_results(Box::new(sink));
    }
    let listeners = Arc::new(
        crate::inbound::start(
            config.inbound_settings(),
            spool,
            state,
            signer,
            cluster.map(|c| c as Arc<dyn crate::pool::Counters>),
            accounts.clone(),
            feedback.clone(),
        )
        .await?,
    );
    tracing::info!(hostname = %config.hostname, "poolrelay ready");
    notify_systemd(&[sd_notify::NotifyState::Ready]);

    let grace = config.shutdown_grace.0;
    let mut reloader = crate::reload::Reloader {
        path,
        current: config,
        listeners: listeners.clone(),
        pools: pools.clone(),
        deliverer: deliverer.clone(),
        reputation,
    };
    serve_signals(&mut reloader, &mut reload_rx).await;

    tracing::info!(grace = %humantime::format_duration(grace), "poolrelay stopping");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let started = tokio::time::Instant::now();
    listeners.stop(grace).await;
    let left = grace.saturating_sub(started.elapsed());
    if !deliverer
        .quiesce(left.max(std::time::Duration::from_secs(1)))
        .await
    {
        tracing::warn!("stop: deliveries still in flight; their recipients stay queued");
    }
    let flush = tokio::task::spawn_blocking(move || {
        if let Some(t) = &tls_reports
            && let Err(e) = t.collector().flush()
        {
            tracing::error!(error = %e, "tls-reports: cannot save results");
        }
        pools.flush();
        history.flush(&pools);
        suppressions.flush();
        accounts.flush();
        feedback.flush(false);
    });
    let _ = flush.await;
    tracing::info!("poolrelay stopped");
    Ok(())
}

/// Serves reloads (SIGHUP, the admin API) until SIGTERM or SIGINT.
async fn serve_signals(
    reloader: &mut crate::reload::Reloader,
    requests: &mut tokio::sync::mpsc::Receiver<crate::reload::Request>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                let _ = reloader.reload(None).await;
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            Some(req) = requests.recv() => {
                notify_systemd(&[sd_notify::NotifyState::Reloading]);
                let _ = req.reply.send(reloader.reload(req.config).await);
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}

/// Tells systemd (Type=notify) where the relay is; nothing without `NOTIFY_SOCKET`.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// What the doctor's checks go through: the relay's resolver, DNSBLs, routes, TLS and MTA-STS,
/// as delivery builds them.
pub fn doctor_tools(config: &Config) -> Result<crate::doctor::Tools, crate::doctor::DoctorError> {
    use crate::doctor::DoctorError;
    let resolver =
        crate::routing::build_resolver(&config.dns.nameservers).map_err(DoctorError::Resolver)?;
    let lists = crate::reputation::dnsbl::List::from_settings(&config.reputation)?;
    let router = crate::routing::Router::new(
        &config.route,
        &config.dns,
        config.delivery.port,
        config.delivery.tls,
    )
    .map_err(DoctorError::Routing)?;
    let connectors = crate::delivery::tls::connectors(&config.delivery).ok();
    let (tls, verifying) = match connectors {
        Some(c) => (Some(c.opportunistic), c.required),
        None => (None, None),
    };
    let sts =
        crate::delivery::policy::mta_sts::MtaSts::new(&config.delivery.mta_sts, verifying, None);
    Ok(crate::doctor::Tools {
        sts,
        ptrs: crate::doctor::dns::PtrClient::new(&config.dns.nameservers)?,
        resolver,
        lists,
        router,
        tls,
    })
}
