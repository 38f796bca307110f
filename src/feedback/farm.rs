//! With `[cluster]`, every relay of the farm seals and opens trace references with the same
//! keys, so a report that reaches another relay than the one that sent the message verifies.
//!
//! Rules:
//! - The farm's sealing key is `<prefix>:feedback:trace-key` in Redis, set once by the first
//!   relay to get there (`SET NX`); every key any relay ever sealed with is in the set
//!   `<prefix>:feedback:trace-keys` (a relay that sealed alone while Redis was down adds its
//!   own, so the others learn to open those references too).
//! - Each relay adopts the farm's keys at start (before its listeners open) and every
//!   `REFRESH` after, and stores them in its state store: it keeps opening and sealing while
//!   Redis is down.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::Feedback;

const REFRESH: Duration = Duration::from_secs(10);

/// The farm's trace keys (`[cluster]`, implemented by `cluster`).
pub trait KeyFarm: Send + Sync {
    /// Offers `mine` as the farm's sealing key (kept only if none is set yet), adds `local` to
    /// the farm's set, and answers (the farm's sealing key, every key of the set). `None`:
    /// Redis did not answer.
    fn exchange_keys(
        &self,
        mine: String,
        local: Vec<String>,
    ) -> BoxFuture<'_, Option<(Option<String>, Vec<String>)>>;
}

/// One exchange with the farm: offers our keys, adopts the farm's. False when Redis did not
/// answer.
pub async fn share(feedback: &Arc<Feedback>, farm: &dyn KeyFarm) -> bool {
    let local = feedback.stored_keys();
    let Some(mine) = local.first().cloned() else {
        return false;
    };
    let answer = farm.exchange_keys(mine, local).await;
    let Some((Some(current), all)) = answer else {
        return false;
    };
    let f = feedback.clone();
    tokio::task::spawn_blocking(move || f.adopt_keys(&current, &all))
        .await
        .unwrap_or(false)
}

/// Shares now (bounded by the Redis timeout), then every `REFRESH` in the background.
pub async fn start(feedback: Arc<Feedback>, farm: Arc<dyn KeyFarm>) {
    if !share(&feedback, farm.as_ref()).await {
        tracing::warn!(
            "feedback: farm trace keys not reached; sealing with this relay's own key until Redis answers"
        );
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH).await;
            share(&feedback, farm.as_ref()).await;
        }
    });
}
