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

use super::Feedback;
use crate::cluster::Cluster;

const REFRESH: Duration = Duration::from_secs(10);

/// One exchange with the farm: offers our keys, adopts the farm's. False when Redis did not
/// answer.
pub async fn share(feedback: &Arc<Feedback>, cluster: &Cluster) -> bool {
    let local = feedback.stored_keys();
    let Some(mine) = local.first().cloned() else {
        return false;
    };
    let (current_key, all_key) = (
        cluster.key("feedback:trace-key"),
        cluster.key("feedback:trace-keys"),
    );
    let answer: Option<(Option<String>, Vec<String>)> = cluster
        .run("feedback keys", |mut conn| async move {
            redis::pipe()
                .cmd("SET")
                .arg(&current_key)
                .arg(&mine)
                .arg("NX")
                .ignore()
                .sadd(&all_key, &local)
                .ignore()
                .get(&current_key)
                .smembers(&all_key)
                .query_async(&mut conn)
                .await
        })
        .await;
    let Some((Some(current), all)) = answer else {
        return false;
    };
    let f = feedback.clone();
    tokio::task::spawn_blocking(move || f.adopt_keys(&current, &all))
        .await
        .unwrap_or(false)
}

/// Shares now (bounded by the Redis timeout), then every `REFRESH` in the background.
pub async fn start(feedback: Arc<Feedback>, cluster: Arc<Cluster>) {
    if !share(&feedback, &cluster).await {
        tracing::warn!(
            "feedback: farm trace keys not reached; sealing with this relay's own key until Redis answers"
        );
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH).await;
            share(&feedback, &cluster).await;
        }
    });
}
