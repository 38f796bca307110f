//! The feedback trace keys shared by the farm (`feedback::farm`'s rules): the sealing key
//! `PREFIX:feedback:trace-key` (set once, `SET NX`) and every key ever sealed with in the set
//! `PREFIX:feedback:trace-keys`.

use futures_util::future::BoxFuture;

use super::Cluster;
use crate::feedback::farm::KeyFarm;

impl KeyFarm for Cluster {
    fn exchange_keys(
        &self,
        mine: String,
        local: Vec<String>,
    ) -> BoxFuture<'_, Option<(Option<String>, Vec<String>)>> {
        Box::pin(async move {
            let (current_key, all_key) = (
                self.key("feedback:trace-key"),
                self.key("feedback:trace-keys"),
            );
            self.run("feedback keys", |mut conn| async move {
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
            .await
        })
    }
}
