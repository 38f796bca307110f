//! Delivery: takes every queued message to its destinations.
//! - `queue` schedules messages by next attempt time;
//! - `deliverer` runs one attempt of one message (route, group per destination, record every
//!   recipient's outcome, DSNs, removal);
//! - `destination` is one destination transaction: the pool picks the source IP for the
//!   message, then a session of that IP is reused (`connections`) or opened (`client`).
//! - `policy` decides which TLS each MX host needs (route, DANE, MTA-STS, opportunistic);
//!   `secure` opens the session that way.
//! - `recorded` keeps the bytes of the replies a session reads, so an enhanced status code is
//!   read whole (smtp-proto 0.2 cuts a detail past 255: `4.7.650` → `4.7.255`).

pub mod client;
mod connections;
mod deliverer;
mod destination;
mod dotstuff;
pub mod policy;
pub mod queue;
pub(crate) mod recorded;
mod secure;
pub mod settings;
pub mod tls;
mod transaction;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::spool::Envelope;

pub use deliverer::{Attempted, Deliverer, Stages, StartError, Written};

pub async fn start(
    settings: settings::Settings,
    signer: Arc<crate::signing::Signer>,
    with: Stages,
    committed: mpsc::UnboundedReceiver<Envelope>,
    recovered: mpsc::Receiver<Vec<Envelope>>,
    control: queue::Control,
) -> Result<Arc<Deliverer>, StartError> {
    let d = Arc::new(Deliverer::new(settings, signer, with)?);
    tokio::spawn(queue::run(d.clone(), committed, recovered, control));
    // Said once, before any DANE mail waits on a resolver that strips DNSSEC.
    let checked = d.clone();
    tokio::spawn(async move { policy::dane::check::run(checked.policies.dane()).await });
    let deliverer = d.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            d.reap_idle();
        }
    });
    Ok(deliverer)
}
