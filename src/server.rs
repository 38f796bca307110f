//! Wires the stages together for `poolrelay serve`.

use std::sync::Arc;

use crate::config::Config;
use crate::spool::Spool;
use crate::state::State;

pub async fn run(config: Config) -> Result<(), String> {
    let config = Arc::new(config);
    let (spool, committed) = Spool::open(&config.data_dir)
        .map_err(|e| format!("cannot open spool under {}: {e}", config.data_dir.display()))?;
    let state = Arc::new(State::open(&config.data_dir).map_err(|e| e.to_string())?);
    spool
        .clean_tmp()
        .map_err(|e| format!("spool recovery failed: {e}"))?;
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
        crate::signing::Signer::from_config(&config).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?,
    );

    let pools = Arc::new(crate::pool::Pools::new(&config, Some(state.clone()))?);
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
    let suppressions = Arc::new(crate::reputation::suppress::Suppressions::open(
        &config.data_dir,
    ));
    suppressions.start_flusher();
    let history = Arc::new(crate::reputation::history::History::new(Some(
        state.clone(),
    )));
    let reputation = Arc::new(
        crate::reputation::rates::Tracker::new(&config.reputation, pools.clone(), suppressions)?
            .with_history(history.clone()),
    );
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
    let (queue, control) = crate::delivery::queue::channel(Some(state.clone()));
    let doctor = crate::doctor::start(config.clone(), pools.clone())?;
    if let Some(admin) = &config.admin {
        let admin_state = crate::admin::AdminState {
            pools: pools.clone(),
            reputation: reputation.clone(),
            doctor,
            queue,
            spool: spool.clone(),
            config: config.clone(),
        };
        crate::admin::start(admin.listen, admin_state).await?;
    }
    crate::reputation::dnsbl::start(&config, pools.clone())?;
    crate::delivery::start(
        config.clone(),
        spool.clone(),
        pools.clone(),
        reputation,
        committed,
        recovered,
        control,
    )
    .await?;
    crate::inbound::start(config.clone(), spool, state, signer).await?;
    tracing::info!(hostname = %config.hostname, "poolrelay ready");

    shutdown_signal().await;
    tracing::info!("poolrelay stopping");
    pools.flush();
    history.flush(&pools);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
