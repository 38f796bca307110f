//! DNSBL status of a pool IP now, per configured zone, through the reputation stage's own query
//! (same zones, DQS key and listing codes): a listing fails with the list's TXT reason, a query
//! that gets no verdict (timeout, "query refused" code) warns.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;

use super::report::Check;
use crate::reputation::dnsbl::{self, Answer, List};

pub async fn check(resolver: &TokioResolver, lists: &[List], ip: IpAddr) -> Vec<Check> {
    let mut out = Vec::with_capacity(lists.len());
    for list in lists {
        let c = match dnsbl::check(resolver, list, ip).await {
            Answer::Clean => Check::pass("dnsbl", "not listed"),
            Answer::Listed { code, txt } => {
                let reason = if txt.is_empty() {
                    String::new()
                } else {
                    format!(" \"{txt}\"")
                };
                Check::fail(
                    "dnsbl",
                    format!("listed: {code}{reason}"),
                    format!(
                        "find and stop the cause, then request removal from {} (the TXT reason above usually links the form); the reputation monitor quarantines the IP while listed",
                        list.zone
                    ),
                )
            }
            Answer::Error(e) => Check::warn("dnsbl", format!("no verdict: {e}")),
        };
        out.push(c.about(list.zone.clone()));
    }
    out
}
