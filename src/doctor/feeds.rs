//! The feeds' section of `poolrelay doctor`, read from the status the relay wrote
//! (`data_dir/feeds.json`): each configured feed's last poll (never, failed, stale, ok) and
//! each domain's spam-rate level.

use crate::doctor::Check;
use crate::reputation::feeds::poller::{FeedsView, status_path};
use crate::reputation::feeds::verdict::Level;

/// One check per configured feed and per domain verdict; empty without `[feeds]`.
/// `data_dir`: where the relay writes the feeds' status.
pub fn checks(
    settings: Option<&crate::reputation::feeds::Settings>,
    data_dir: &std::path::Path,
) -> Vec<Check> {
    let Some(settings) = settings else {
        return Vec::new();
    };
    let view: Option<FeedsView> = std::fs::read(status_path(data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let now = crate::spool::now_unix();
    // Two intervals and the first poll's delay: a day's poll may come late, not twice.
    let stale_after = 2 * settings.interval.0.as_secs() + settings.first_poll.0.as_secs();
    let configured = [
        ("snds", settings.snds.is_some()),
        ("postmaster", settings.postmaster.is_some()),
    ];
    let mut out = Vec::new();
    for (feed, on) in configured {
        if !on {
            continue;
        }
        let status = view
            .as_ref()
            .and_then(|v| v.feeds.iter().find(|f| f.feed == feed));
        let check = match status {
            None => Check::info("feed", "not polled yet (poolrelay feeds poll polls now)"),
            Some(s) => match (s.last_fetch, &s.error) {
                (_, Some(e)) => Check::warn("feed", format!("last poll failed: {e}"))
                    .fix("check the key and the URL in [feeds]; poolrelay feeds poll tries again"),
                (Some(t), None) if now.saturating_sub(t) > stale_after => {
                    Check::warn("feed", format!("last poll {}s ago", now - t))
                        .fix("is the relay running? poolrelay feeds poll polls now")
                }
                (t, None) => Check::pass(
                    "feed",
                    format!(
                        "ok {}s ago: {} rows, {} verdicts",
                        now.saturating_sub(t.unwrap_or(now)),
                        s.rows,
                        s.actions.len()
                    ),
                ),
            },
        };
        out.push(check.about(feed));
    }
    for d in view.iter().flat_map(|v| &v.domains) {
        let detail = format!("{} (level {})", d.evidence, d.level.as_str());
        let check = match d.level {
            Level::Over => Check::fail(
                "spam_rate",
                detail,
                "find the logins sending for this domain and stop the mail people mark as spam",
            ),
            Level::Warning => Check::warn("spam_rate", detail),
            Level::Ok => Check::pass("spam_rate", detail),
        };
        out.push(check.about(&d.domain));
    }
    out
}
