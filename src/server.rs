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
    let recovered = spool
        .recover()
        .map_err(|e| format!("spool recovery failed: {e}"))?;
    tracing::info!(messages = recovered.len(), "spool recovered");
    let signer = Arc::new(
        crate::signing::Signer::from_config(&config).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?,
    );

    crate::delivery::start(
        config.clone(),
        spool.clone(),
        state.clone(),
        committed,
        recovered,
    )
    .await?;
    crate::inbound::start(config.clone(), spool, state, signer).await?;
    tracing::info!(hostname = %config.hostname, "poolrelay ready");

    shutdown_signal().await;
    tracing::info!("poolrelay stopping");
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
