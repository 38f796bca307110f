//! Ranges of every number and duration in the config: what `serve` can handle, checked by
//! `Config::parse` so `check-config` and `serve` agree and no value can make `serve` panic.
//!
//! Rules: every duration is at most [`MAX_DURATION`] (checked when it is read); timeouts and
//! intervals are at least 100 ms (a zero interval panics a timer, a zero timeout ends every
//! session); counts that size a semaphore, a table or a window have an upper bound far above any
//! real use; rates are finite shares from 0 to 1; warm-up `daily` caps are at least 1. Each error names the section's key and its line.

use std::time::Duration;

use super::{Config, ConfigError};

/// The longest duration any key takes (10 years): far beyond any timeout or retention, and far
/// from overflowing a deadline (`Instant + Duration`) or a count of milliseconds.
pub use crate::util::settings::MAX_DURATION;

const MIN_TIMER: Duration = Duration::from_millis(100);
const MILLION: u64 = 1_000_000;
const BILLION: u64 = 1_000_000_000;
const TERA: u64 = 1_000_000_000_000;

/// `(section, key, value, min, max)` for every count.
fn counts(c: &Config) -> Vec<(&'static str, &'static str, u64, u64, u64)> {
    let (l, d, w, r) = (&c.limits, &c.delivery, &c.warmup, &c.reputation);
    let v = vec![
        (
            "access",
            "auth_max_failures",
            c.access.auth_max_failures.into(),
            1,
            MILLION,
        ),
        ("limits", "message_size", l.message_size.0, 1, TERA),
        (
            "limits",
            "recipients_per_message",
            l.recipients_per_message as u64,
            1,
            100_000,
        ),
        ("limits", "per_user_daily", l.per_user_daily, 0, TERA),
        ("limits", "max_sessions", l.max_sessions as u64, 1, MILLION),
        ("limits", "max_errors", l.max_errors.into(), 1, MILLION),
        (
            "limits",
            "network_sessions",
            l.network_sessions as u64,
            0,
            MILLION,
        ),
        (
            "limits",
            "network_prefix_v4",
            l.network_prefix_v4.into(),
            8,
            32,
        ),
        (
            "limits",
            "network_prefix_v6",
            l.network_prefix_v6.into(),
            16,
            64,
        ),
        (
            "limits",
            "spool_min_free",
            l.spool_min_free.0,
            0,
            1000 * TERA,
        ),
        ("delivery", "port", d.port.into(), 1, 65535),
        (
            "delivery",
            "concurrency_per_destination",
            d.concurrency_per_destination as u64,
            1,
            100_000,
        ),
        ("delivery", "concurrency", d.concurrency as u64, 1, 100_000),
        ("warmup", "idle_days", w.idle_days, 1, 3650),
        ("warmup", "burst", w.burst, 1, 1000),
        (
            "reputation",
            "clean_checks",
            r.clean_checks.into(),
            1,
            10_000,
        ),
        (
            "reputation",
            "block_threshold",
            r.block_threshold.into(),
            1,
            MILLION,
        ),
        ("reputation", "window", r.window as u64, 1, MILLION),
        (
            "reputation",
            "min_samples",
            r.min_samples as u64,
            1,
            MILLION,
        ),
        (
            "reputation",
            "probe_samples",
            r.probe_samples as u64,
            1,
            MILLION,
        ),
        ("reputation", "probe_per_hour", r.probe_per_hour, 0, BILLION),
        ("reputation", "throttle_cuts", r.throttle_cuts.into(), 1, 64),
    ];
    let mut v = v;
    if let Some(a) = &c.accounts {
        v.push(("accounts", "min_volume", a.min_volume, 1, TERA));
        v.push((
            "accounts",
            "throttle_per_hour",
            a.throttle_per_hour,
            0,
            BILLION,
        ));
        let domains = a.max_sender_domains as u64;
        v.push(("accounts", "max_sender_domains", domains, 1, 10 * MILLION));
    }
    v
}

/// `(section, entry, key, value, min, max)` for every count in an array of tables; `entry`
/// counts `[[section]]` headers from 0 (for `pool.ip`, over all pools).
fn entry_counts(c: &Config) -> Vec<(&'static str, usize, &'static str, u64, u64, u64)> {
    let mut v = Vec::new();
    for (n, s) in c.warmup.schedule.iter().enumerate() {
        for &d in &s.daily {
            // A cap of 0 can never be a sending day: the ramp would never move again.
            v.push(("warmup.schedule", n, "daily", d, 1, BILLION));
        }
        let back = s.step_back_days.into();
        v.push(("warmup.schedule", n, "step_back_days", back, 0, 10_000));
    }
    for (n, p) in c.provider.iter().enumerate() {
        let conns = p.max_connections.into();
        v.push(("provider", n, "max_connections", conns, 0, 100_000));
        v.push(("provider", n, "max_per_hour", p.max_per_hour, 0, TERA));
        let farm = p.farm_max_per_hour;
        v.push(("provider", n, "farm_max_per_hour", farm, 0, TERA));
        let per_conn = p.max_per_connection.into();
        v.push(("provider", n, "max_per_connection", per_conn, 0, BILLION));
    }
    let ips = c.pool.iter().flat_map(|p| &p.ip);
    for (n, ip) in ips.enumerate() {
        v.push(("pool.ip", n, "weight", ip.weight.into(), 1, MILLION));
    }
    v
}

/// `(section, key, value, min)` for every duration with a floor.
fn timers(c: &Config) -> Vec<(&'static str, &'static str, Duration, Duration)> {
    let (l, d) = (&c.limits, &c.delivery);
    let mut v = vec![
        ("limits", "command_timeout", l.command_timeout.0, MIN_TIMER),
        ("limits", "data_timeout", l.data_timeout.0, MIN_TIMER),
        (
            "limits",
            "preauth_timeout",
            l.preauth_timeout.0,
            Duration::from_secs(1),
        ),
        (
            "delivery",
            "connect_timeout",
            d.connect_timeout.0,
            MIN_TIMER,
        ),
        (
            "delivery",
            "command_timeout",
            d.command_timeout.0,
            MIN_TIMER,
        ),
        ("delivery", "max_age", d.max_age.0, Duration::from_secs(1)),
        (
            "reputation",
            "check_interval",
            c.reputation.check_interval.0,
            MIN_TIMER,
        ),
        ("reputation", "cooldown", c.reputation.cooldown.0, MIN_TIMER),
        (
            "reputation",
            "max_cooldown",
            c.reputation.max_cooldown.0,
            MIN_TIMER,
        ),
        (
            "throttle",
            "hold_warning_interval",
            c.throttle.hold_warning_interval.0,
            MIN_TIMER,
        ),
        (
            "doctor",
            "check_interval",
            c.doctor.check_interval.0,
            MIN_TIMER,
        ),
        (
            "doctor",
            "probe_timeout",
            c.doctor.probe_timeout.0,
            MIN_TIMER,
        ),
    ];
    if let Some(a) = &c.accounts {
        // Counts are kept per day: a shorter window is one day.
        v.push((
            "accounts",
            "window",
            a.window.0,
            Duration::from_secs(86_400),
        ));
    }
    if let Some(w) = d.delay_warning {
        v.push(("delivery", "delay_warning", w.0, Duration::from_secs(1)));
    }
    for r in &d.retry {
        v.push(("delivery", "retry", r.0, MIN_TIMER));
    }
    v
}

pub(super) fn check(c: &Config, path: &std::path::Path, text: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut entries = Vec::new();
    let mut err = |section: &str, key: &str, message: String| {
        errors.push(ConfigError {
            file: path.to_owned(),
            line: key_line(text, section, key),
            message: format!("{section}.{key}: {message}"),
        })
    };
    for (section, key, value, min, max) in counts(c) {
        if value < min || value > max {
            err(
                section,
                key,
                format!("{value} is out of range ({min} to {max})"),
            );
        }
    }
    for (section, n, key, value, min, max) in entry_counts(c) {
        if value < min || value > max {
            entries.push(ConfigError {
                file: path.to_owned(),
                line: entry_line(text, section, n, key).or_else(|| key_line(text, section, key)),
                message: format!("{section}.{key}: {value} is out of range ({min} to {max})"),
            });
        }
    }
    for (section, key, value, min) in timers(c) {
        if value < min {
            err(
                section,
                key,
                format!(
                    "{} is too short (at least {})",
                    humantime::format_duration(value),
                    humantime::format_duration(min)
                ),
            );
        }
    }
    let r = &c.reputation;
    for (key, rate) in [
        ("max_bounce_rate", r.max_bounce_rate),
        ("max_deferral_rate", r.max_deferral_rate),
        ("bad_recipient_warning", r.bad_recipient_warning),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            err(
                "reputation",
                key,
                format!("{rate} is not a share from 0 to 1"),
            );
        }
    }
    if let Some(a) = &c.accounts {
        for (key, rate) in [
            ("max_complaint_rate", a.max_complaint_rate),
            ("max_bounce_rate", a.max_bounce_rate),
            ("max_block_rate", a.max_block_rate),
            ("throttle_at", a.throttle_at),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                err(
                    "accounts",
                    key,
                    format!("{rate} is not a share from 0 to 1"),
                );
            }
        }
    }
    errors.append(&mut entries);
    for (n, s) in c.warmup.schedule.iter().enumerate() {
        for (key, message) in schedule_problems(s) {
            errors.push(ConfigError {
                file: path.to_owned(),
                line: entry_line(text, "warmup.schedule", n, key)
                    .or_else(|| key_line(text, "warmup.schedule", key)),
                message: format!("warmup.schedule.{key}: schedule {:?}: {message}", s.name),
            });
        }
    }
    errors
}

/// The largest `max_growth` taken: a day's accepted volume × 100 is already no ramp at all.
const MAX_GROWTH: f64 = 100.0;

/// The ramp keys of one `[[warmup.schedule]]` (`pool::ramp`): (key, problem).
fn schedule_problems(s: &super::WarmupSchedule) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    let share = |x: f64| (0.0..=1.0).contains(&x);
    if !(s.advance_at > 0.0 && s.advance_at <= 1.0) {
        v.push((
            "advance_at",
            format!("{} is not a share above 0 and at most 1", s.advance_at),
        ));
    }
    for (key, x) in [
        ("hold_above", s.hold_above),
        ("step_back_above", s.step_back_above),
    ] {
        if !share(x) {
            v.push((key, format!("{x} is not a share from 0 to 1")));
        }
    }
    if share(s.hold_above) && share(s.step_back_above) && s.step_back_above < s.hold_above {
        v.push((
            "step_back_above",
            format!(
                "{} is below hold_above ({}): a day would step back before it is held",
                s.step_back_above, s.hold_above
            ),
        ));
    }
    if !(1.0..=MAX_GROWTH).contains(&s.max_growth) {
        v.push((
            "max_growth",
            format!("{} is out of range (1 to {MAX_GROWTH})", s.max_growth),
        ));
    }
    // One error for an empty table, the one that says why it is needed.
    if s.adaptive && s.daily.is_empty() {
        v.push((
            "adaptive",
            "an adaptive schedule needs a table (daily): it is the plan for a receiver that says nothing".into(),
        ));
    } else if s.daily.is_empty() {
        v.push(("daily", "has no days".into()));
    }
    if !s.daily.is_empty() && s.rewarm_day as usize >= s.daily.len() {
        v.push((
            "rewarm_day",
            format!(
                "day {} is beyond the table (days 0 to {})",
                s.rewarm_day,
                s.daily.len() - 1
            ),
        ));
    }
    v
}

/// The line setting `key` in the `n`th `[[section]]` entry (from 0), else that entry's header
/// line; None when the file has no such header (an inline array).
pub(super) fn entry_line(text: &str, section: &str, n: usize, key: &str) -> Option<usize> {
    let header = format!("[[{section}]]");
    let mut entry: Option<usize> = None;
    let mut inside = false;
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.starts_with('[') {
            // Keys under a subtable or another table are not this entry's.
            inside = l.replace(' ', "") == header;
            if inside {
                let k = entry.map_or(0, |k| k + 1);
                if k > n {
                    break;
                }
                entry = Some(k);
                if k == n {
                    found = Some(i + 1);
                }
            }
        } else if inside
            && entry == Some(n)
            && !key.is_empty()
            && l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    found
}

/// The line setting `key` inside `[section]` / `[[section]]` (the first such table), else the
/// first line setting `key` anywhere.
pub(super) fn key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if current == section
            && l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    super::find_key_line(text, key)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const MIN: &str = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";

    fn errors(extra: &str) -> Vec<String> {
        match super::Config::parse(Path::new("t.toml"), &format!("{MIN}{extra}")) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn account_limits_are_shares_and_the_window_at_least_a_day() {
        let e = errors("[accounts]\nmax_complaint_rate = 3\nwindow = \"1h\"\nmin_volume = 0\n");
        assert_eq!(e.len(), 3, "{e:?}");
        for want in [
            "t.toml:7: accounts.max_complaint_rate: 3 is not a share",
            "t.toml:8: accounts.window: 1h is too short",
            "t.toml:9: accounts.min_volume: 0 is out of range",
        ] {
            assert!(e.iter().any(|l| l.starts_with(want)), "{want} in {e:?}");
        }
        assert!(errors("[accounts]\nmax_complaint_rate = 0.003\n").is_empty());
        let e = errors("[accounts]\nmax_complaint = 0.003\n");
        assert!(e[0].contains("unknown field"), "{e:?}");
    }

    #[test]
    fn out_of_range_values_name_section_key_and_line() {
        let e = errors("[limits]\nmax_sessions = 10000000000\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:7: limits.max_sessions:"), "{e:?}");
        // The same key name in two tables: the line of the right one.
        let e =
            errors("[limits]\ncommand_timeout = \"1s\"\n[delivery]\ncommand_timeout = \"0s\"\n");
        assert!(
            e[0].starts_with("t.toml:9: delivery.command_timeout:"),
            "{e:?}"
        );
        let e = errors("[reputation]\nthrottle_cuts = 0\n");
        assert!(
            e[0].starts_with("t.toml:7: reputation.throttle_cuts:"),
            "{e:?}"
        );
        let e = errors("[reputation]\nmax_bounce_rate = nan\n");
        assert!(e[0].contains("reputation.max_bounce_rate"), "{e:?}");
        let e = errors("[limits]\ncommand_timeout = \"999999999999d\"\n");
        assert!(e[0].starts_with("t.toml:7:"), "{e:?}");
        let e = errors("[limits]\ncommand_timeout = \"3651d\"\n");
        assert!(e[0].contains("at most"), "{e:?}");
        assert!(
            errors("[limits]\ncommand_timeout = \"3650d\"\nmax_sessions = 1000000\n").is_empty()
        );
    }

    #[test]
    fn network_limits_are_range_checked() {
        for (extra, key) in [
            (
                "network_prefix_v4 = 33\n",
                "limits.network_prefix_v4: 33 is out of range (8 to 32)",
            ),
            ("network_prefix_v4 = 7\n", "limits.network_prefix_v4"),
            (
                "network_prefix_v6 = 65\n",
                "limits.network_prefix_v6: 65 is out of range (16 to 64)",
            ),
            ("network_prefix_v6 = 15\n", "limits.network_prefix_v6"),
            ("network_sessions = 1000001\n", "limits.network_sessions"),
            (
                "preauth_timeout = \"500ms\"\n",
                "limits.preauth_timeout: 500ms is too short",
            ),
        ] {
            let e = errors(&format!("[limits]\nmax_sessions = 10\n{extra}"));
            assert_eq!(e.len(), 1, "{extra}: {e:?}");
            assert!(e[0].starts_with(&format!("t.toml:8: {key}")), "{e:?}");
        }
        let ok = "[limits]\nnetwork_prefix_v4 = 32\nnetwork_prefix_v6 = 64\nnetwork_sessions = 0\npreauth_timeout = \"1s\"\n";
        assert!(errors(ok).is_empty());
    }

    const TWO: &str = "[[warmup.schedule]]\nname = \"a\"\ndaily = [10, 20]\n[[warmup.schedule]]\nname = \"b\"\ndaily = [10, 20, 40]\nadaptive = true\n";

    #[test]
    fn a_daily_warmup_cap_of_zero_is_refused() {
        // A cap of 0 is never a sending day: the ramp landing on it would hold mail forever.
        let e = errors("[[warmup.schedule]]\nname = \"a\"\ndaily = [10, 0, 40]\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:8: warmup.schedule.daily:"),
            "{e:?}"
        );
        assert!(errors("[[warmup.schedule]]\nname = \"a\"\ndaily = [1, 40]\n").is_empty());
    }

    #[test]
    fn adaptive_ramp_keys_are_checked_on_their_schedules_line() {
        // MIN is 5 lines, TWO 7 more: the extra keys start on line 13, in the second schedule.
        for (extra, line, key) in [
            ("advance_at = 0\n", 13, "advance_at"),
            ("advance_at = 1.2\n", 13, "advance_at"),
            ("hold_above = -0.1\n", 13, "hold_above"),
            ("step_back_above = 1.5\n", 13, "step_back_above"),
            (
                "hold_above = 0.3\nstep_back_above = 0.2\n",
                14,
                "step_back_above",
            ),
            ("max_growth = 0.5\n", 13, "max_growth"),
            ("max_growth = 1000\n", 13, "max_growth"),
            ("max_growth = nan\n", 13, "max_growth"),
            ("rewarm_day = 3\n", 13, "rewarm_day"),
            ("step_back_days = 100000\n", 13, "step_back_days"),
        ] {
            let e = errors(&format!("{TWO}{extra}"));
            assert_eq!(e.len(), 1, "{extra}: {e:?}");
            assert!(
                e[0].starts_with(&format!("t.toml:{line}: warmup.schedule.{key}:")),
                "{extra}: {e:?}"
            );
        }
        let e = errors("[[warmup.schedule]]\nname = \"a\"\ndaily = []\nadaptive = true\n");
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:9: warmup.schedule.adaptive:")
                    && e.contains("needs a table")),
            "{e:?}"
        );
        // The defaults and a full set of sane keys pass.
        assert!(errors(TWO).is_empty());
        assert!(
            errors(&format!(
                "{TWO}advance_at = 1\nhold_above = 0\nstep_back_above = 0\nmax_growth = 1\nrewarm_day = 2\nstep_back_days = 0\n"
            ))
            .is_empty()
        );
    }
}
