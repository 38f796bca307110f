//! MTA-STS policies shared by the farm (`delivery::policy::mta_sts`'s rules):
//! `PREFIX:mta-sts:DOMAIN`, the policy's JSON, expiring with the policy.

use futures_util::future::BoxFuture;

use super::Cluster;
use crate::delivery::policy::mta_sts::PolicyFarm;

impl PolicyFarm for Cluster {
    fn get_policy<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let key = self.key(&format!("mta-sts:{domain}"));
            let json: Option<Option<String>> = self
                .run("MTA-STS policy", |mut conn| async move {
                    redis::AsyncCommands::get(&mut conn, key).await
                })
                .await;
            json.flatten()
        })
    }

    fn put_policy<'a>(&'a self, domain: &'a str, json: String, ttl: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(&format!("mta-sts:{domain}"));
            self.run("MTA-STS policy", |mut conn| async move {
                redis::AsyncCommands::set_ex::<_, _, ()>(&mut conn, key, json, ttl).await
            })
            .await;
        })
    }
}
