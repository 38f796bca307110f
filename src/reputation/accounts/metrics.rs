//! Account metrics on `GET /metrics`. Label cardinality stays bounded: sender domains are
//! unbounded in number, so per-account series exist only for accounts not in good standing,
//! at most `MAX_SERIES` of them (logins first, then domains, by name).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AccountView, Kind, Standing};

/// Per-account series at most.
pub const MAX_SERIES: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindStanding {
    kind: &'static str,
    standing: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Account {
    kind: &'static str,
    name: String,
    standing: &'static str,
}

const STANDINGS: [Standing; 3] = [Standing::Good, Standing::Throttled, Standing::Suspended];

/// Registers the account gauges for `accounts` (logins and sender domains) into `r`.
pub fn register(r: &mut Registry, accounts: &[AccountView]) {
    let totals = Family::<KindStanding, Gauge>::default();
    for kind in [Kind::Login, Kind::Domain] {
        for standing in STANDINGS {
            let n = accounts
                .iter()
                .filter(|a| a.kind == kind && a.standing == standing)
                .count();
            totals
                .get_or_create(&KindStanding {
                    kind: kind.as_str(),
                    standing: standing.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    r.register(
        "accounts",
        "Logins (kind=\"login\") and sender domains (kind=\"domain\") per standing",
        totals,
    );
    let mut held: Vec<&AccountView> = accounts
        .iter()
        .filter(|a| a.standing != Standing::Good)
        .collect();
    held.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    let each = Family::<Account, Gauge>::default();
    for a in held.into_iter().take(MAX_SERIES) {
        each.get_or_create(&Account {
            kind: a.kind.as_str(),
            name: a.name.clone(),
            standing: a.standing.as_str(),
        })
        .set(1);
    }
    r.register(
        "account_standing",
        "1 per login or sender domain throttled or suspended (at most 100 series; see GET /api/logins)",
        each,
    );
}
