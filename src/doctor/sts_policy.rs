//! The operator's own MTA-STS policy file, as a sending MTA will see it:
//! - only when `_mta-sts.DOMAIN` has one valid `v=STSv1` record (the record itself is the
//!   `mta_sts` check in `mx.rs`);
//! - fetched and parsed exactly as delivery does (`delivery::policy::mta_sts`): HTTPS to
//!   `mta-sts.DOMAIN`, certificate verified, no redirects, 64 KiB, `fetch_timeout`;
//! - fetch or parse failure warns (senders then ignore the policy); an MX host not matched by
//!   an `enforce` policy fails (senders with MTA-STS will not deliver to it), by a `testing`
//!   one warns.

use hickory_resolver::TokioResolver;

use super::dns::{self, Found};
use super::report::Check;
use crate::delivery::policy::mta_sts::{self, Mode, MtaSts};

const NAME: &str = "mta_sts_policy";

/// None when the domain publishes no usable `_mta-sts` record (nothing to fetch).
pub async fn check(resolver: &TokioResolver, sts: &MtaSts, domain: &str) -> Option<Check> {
    mta_sts::txt_id(domain, resolver).await?;
    let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
    let policy = match sts.fetch_now(domain, resolver).await {
        Ok(p) => p,
        Err(e) => {
            let (failure, why) = (e.failure(), e);
            return Some(
                Check::warn(NAME, format!("{url}: {why} ({failure}): senders ignore the policy"))
                    .fix(format!(
                        "serve {url} as text/plain over HTTPS with a certificate valid for mta-sts.{domain}, without redirects (RFC 8461 §3.3)"
                    )),
            );
        }
    };
    let summary = format!(
        "mode={}, mx={}, max_age={}",
        policy.mode.as_str(),
        policy.mx.join(" "),
        policy.max_age
    );
    let hosts = match dns::mx(resolver, domain).await {
        Found::Records(mx) => mx.into_iter().map(|(_, h)| h).collect(),
        _ => Vec::new(),
    };
    let outside: Vec<&str> = hosts
        .iter()
        .filter(|h| !h.is_empty() && !policy.allows(h))
        .map(String::as_str)
        .collect();
    if outside.is_empty() || policy.mode == Mode::None {
        return Some(Check::pass(NAME, summary));
    }
    let detail = format!(
        "{summary}: MX {} not matched by the policy's mx patterns",
        outside.join(", ")
    );
    let fix = format!(
        "add \"mx: {}\" to {url} (and change the id in _mta-sts.{domain})",
        outside[0]
    );
    Some(match policy.mode {
        Mode::Enforce => Check::fail(
            NAME,
            format!("{detail}: senders with MTA-STS will not deliver there"),
            fix,
        ),
        _ => Check::warn(NAME, detail).fix(fix),
    })
}
