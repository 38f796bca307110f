//! Config ranges (issue 18): every numeric and duration key, fed extreme values. `check-config`
//! either refuses the value with `file:line` naming the key, or `serve` starts with it and takes a
//! message; never a panic (a huge `command_timeout` once overflowed a deadline in every session,
//! a huge `max_sessions` panicked at start). And one check for every path (issue 25): each bad
//! config is refused alike by `check-config`, by `serve` at start and by a running relay's
//! reload (SIGHUP and `poolrelay reload`), each error once at its own line, every refusal logged.

mod common;

use std::path::Path;
use std::sync::Mutex;

use common::*;

/// Where a key lives: a plain table, or an array-of-tables entry that needs its other keys.
#[derive(Clone, Copy)]
enum At {
    Table(&'static str),
    Provider,
    PoolIp,
    Schedule,
    Dkim,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Duration,
    Rate,
    Size,
}

const KEYS: &[(At, &str, Kind)] = &[
    (At::Table("access"), "auth_max_failures", Kind::Int),
    (At::Table("access"), "auth_lockout", Kind::Duration),
    (At::Table("limits"), "message_size", Kind::Size),
    (At::Table("limits"), "recipients_per_message", Kind::Int),
    (At::Table("limits"), "per_user_daily", Kind::Int),
    (At::Table("limits"), "max_sessions", Kind::Int),
    (At::Table("limits"), "max_errors", Kind::Int),
    (At::Table("limits"), "command_timeout", Kind::Duration),
    (At::Table("limits"), "data_timeout", Kind::Duration),
    (At::Table("limits"), "spool_min_free", Kind::Size),
    (At::Table("limits"), "network_sessions", Kind::Int),
    (At::Table("limits"), "network_prefix_v4", Kind::Int),
    (At::Table("limits"), "network_prefix_v6", Kind::Int),
    (At::Table("limits"), "preauth_timeout", Kind::Duration),
    (At::Table("delivery"), "port", Kind::Int),
    (At::Table("delivery"), "max_age", Kind::Duration),
    (At::Table("delivery"), "delay_warning", Kind::Duration),
    (
        At::Table("delivery"),
        "concurrency_per_destination",
        Kind::Int,
    ),
    (At::Table("delivery"), "concurrency", Kind::Int),
    (At::Table("delivery"), "connect_timeout", Kind::Duration),
    (At::Table("delivery"), "command_timeout", Kind::Duration),
    (At::Table("delivery"), "idle_timeout", Kind::Duration),
    (At::Table("delivery"), "retry", Kind::Duration),
    (At::Table("warmup"), "day", Kind::Duration),
    (At::Table("warmup"), "idle_days", Kind::Int),
    (At::Table("warmup"), "burst", Kind::Int),
    (At::Table("throttle"), "backoff", Kind::Duration),
    (
        At::Table("throttle"),
        "hold_warning_interval",
        Kind::Duration,
    ),
    (At::Table("reputation"), "check_interval", Kind::Duration),
    (At::Table("reputation"), "clean_checks", Kind::Int),
    (At::Table("reputation"), "block_threshold", Kind::Int),
    (At::Table("reputation"), "window", Kind::Int),
    (At::Table("reputation"), "min_samples", Kind::Int),
    (At::Table("reputation"), "max_bounce_rate", Kind::Rate),
    (At::Table("reputation"), "max_deferral_rate", Kind::Rate),
    (At::Table("reputation"), "bad_recipient_warning", Kind::Rate),
    (At::Table("reputation"), "cooldown", Kind::Duration),
    (At::Table("reputation"), "max_cooldown", Kind::Duration),
    (At::Table("reputation"), "probe_samples", Kind::Int),
    (At::Table("reputation"), "probe_per_hour", Kind::Int),
    (At::Table("reputation"), "suppress_for", Kind::Duration),
    (At::Table("doctor"), "check_interval", Kind::Duration),
    (At::Table("doctor"), "probe_timeout", Kind::Duration),
    (At::Table("admin"), "max_connections", Kind::Int),
    (At::Table("admin"), "max_connections_per_client", Kind::Int),
    (At::Table("admin"), "header_timeout", Kind::Duration),
    (At::Provider, "max_connections", Kind::Int),
    (At::Provider, "max_per_hour", Kind::Int),
    (At::Provider, "farm_max_per_hour", Kind::Int),
    (At::Provider, "max_per_connection", Kind::Int),
    (At::Provider, "backoff", Kind::Duration),
    (At::PoolIp, "weight", Kind::Int),
    (At::Schedule, "daily", Kind::Int),
    (At::Schedule, "advance_at", Kind::Rate),
    (At::Schedule, "hold_above", Kind::Rate),
    (At::Schedule, "step_back_above", Kind::Rate),
    (At::Schedule, "max_growth", Kind::Rate),
    (At::Schedule, "step_back_days", Kind::Int),
    (At::Schedule, "rewarm_day", Kind::Int),
    (At::Dkim, "expire", Kind::Duration),
];

fn values(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Int => &["0", "-1", "4294967296", "9223372036854775807"],
        Kind::Duration => &[
            "\"0s\"",
            "\"-1s\"",
            "\"3650d\"",
            "\"999999999999d\"",
            "\"18446744073709551615s\"",
            "5",
        ],
        Kind::Rate => &["-1", "1.5", "nan", "inf"],
        Kind::Size => &["0", "-1", "\"999999999999GB\"", "9223372036854775807"],
    }
}

/// The test config with `key = value` put where the key lives.
fn config_with(dir: &Path, at: At, key: &str, value: &str) -> String {
    let list = |v: &str| {
        if key == "retry" || key == "daily" {
            format!("[{v}]")
        } else {
            v.to_string()
        }
    };
    let kv = format!("{key} = {}", list(value));
    let mut cfg = RelayConfig::new()
        .nameserver("127.0.0.1:9")
        .no_delivery()
        .route("*", "127.0.0.1:9");
    let mut doctor = "[doctor]\nprobe = false\n".to_string();
    let mut pool_weight = String::new();
    let mut schedule = "daily = [10, 20]".to_string();
    let mut provider = String::new();
    let mut dkim = String::new();
    match at {
        At::Table("access") => cfg = cfg.access(key, list(value)),
        At::Table("limits") => cfg = cfg.limit(key, list(value)),
        At::Table("delivery") => cfg = cfg.delivery(key, list(value)),
        At::Table("doctor") => doctor.push_str(&format!("{kv}\n")),
        At::Table("admin") => cfg = cfg.admin().admin_key(key, list(value)),
        At::Table(t) => cfg = cfg.section(&format!("[{t}]\n{kv}")),
        At::Provider => provider = format!("{kv}\n"),
        At::PoolIp => pool_weight = format!("{kv}\n"),
        At::Schedule if key == "daily" => schedule = kv,
        // The ramp keys on an adaptive schedule with its table.
        At::Schedule => schedule = format!("{schedule}\nadaptive = true\n{kv}"),
        At::Dkim => dkim = format!("{kv}\n"),
    }
    let (key_path, _) = keygen(dir, "example.com", "s1", "ed25519");
    cfg.section(&doctor)
        .section(&format!(
            "[[provider]]\nname = \"alpha\"\nmx_suffixes = [\"alpha.test\"]\n{provider}"
        ))
        .section(&format!(
            "[[pool]]\nname = \"default\"\n[[pool.ip]]\naddress = \"127.0.0.10\"\nhelo = \"out.test\"\nwarmup = \"slow\"\n{pool_weight}"
        ))
        .section(&format!("[[warmup.schedule]]\nname = \"slow\"\n{schedule}"))
        .section(&format!(
            "[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{}\"\n{dkim}",
            key_path.display()
        ))
        .to_toml()
}

/// One case: None when it behaved, else what went wrong (its directory then kept).
fn check_case(n: usize, at: At, key: &str, value: &str) -> Option<String> {
    let dir = tempdir(&format!("ranges-{n}"));
    let failure = check_case_in(&dir, at, key, value);
    // The scope's worker threads end as the test does: their thread-end cleanup can be cut
    // short by the process exiting, so a case that behaved removes its directory itself.
    if failure.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    failure
}

fn check_case_in(dir: &Path, at: At, key: &str, value: &str) -> Option<String> {
    let toml = config_with(dir, at, key, value);
    let (code, err) = check_config(dir, &toml);
    let file = dir.join("check.toml");
    let case = format!("{key} = {value}");
    if err.contains("panicked") {
        return Some(format!("{case}: check-config panicked: {err}"));
    }
    match code {
        Some(2) => {
            // `check.toml:LINE: …` naming the key.
            let located = err.lines().any(|l| {
                l.strip_prefix(&format!("{}:", file.display()))
                    .and_then(|rest| rest.split(':').next())
                    .is_some_and(|line| line.parse::<usize>().is_ok())
            });
            if !located || !err.contains(key) {
                return Some(format!("{case}: refused without file:line and key: {err}"));
            }
            None
        }
        Some(0) => serve_case(dir, &toml, &case),
        other => Some(format!("{case}: check-config exit {other:?}: {err}")),
    }
}

/// `serve` with an accepted config: it listens, takes a message and does not panic.
fn serve_case(dir: &Path, toml: &str, case: &str) -> Option<String> {
    let log_of = || std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
    let run = std::panic::catch_unwind(|| {
        let relay = Relay::start(dir, toml);
        let mut c = SmtpClient::connect(relay.addr());
        c.ehlo("client.test");
        let r = c.send_mail(
            "a@example.com",
            &["b@example.org"],
            b"From: a@example.com\r\nSubject: t\r\n\r\nhi\r\n",
        );
        c.quit();
        r
    });
    let log = log_of();
    match run {
        _ if log.contains("panicked") => Some(format!("{case}: serve panicked: {log}")),
        Err(_) => Some(format!("{case}: serve failed: {log}")),
        Ok(r) if r.code != 250 => Some(format!("{case}: message not taken: {r}")),
        Ok(_) => None,
    }
}

#[test]
fn extreme_values_are_refused_with_a_line_or_served_without_panic() {
    let cases: Vec<(At, &str, &str)> = KEYS
        .iter()
        .flat_map(|&(at, key, kind)| values(kind).iter().map(move |v| (at, key, *v)))
        .collect();
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(&(at, key, value)) = cases.get(i) else {
                        return;
                    };
                    if let Some(f) = check_case(i, at, key, value) {
                        failures.lock().unwrap().push(f);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// A bad config: what it adds to the base, the error it must get, and the line (its text) the
/// error must point at.
struct Bad {
    name: &'static str,
    cfg: RelayConfig,
    needle: &'static str,
    line: &'static str,
    /// `poolrelay reload` reaches the relay (it cannot when the token file is the fault).
    via_api: bool,
}

fn bad_cases(base: &RelayConfig, dir: &Path) -> Vec<Bad> {
    let mut cases = vec![
        Bad {
            name: "not TOML",
            cfg: base.clone().section("[reputation]\nwindow = = 3"),
            needle: "window",
            line: "window = = 3",
            via_api: true,
        },
        Bad {
            name: "token file is a directory",
            cfg: base
                .clone()
                .admin_key("token_file", format!("\"{}\"", dir.display())),
            needle: "not a regular file",
            line: "token_file = ",
            via_api: false,
        },
        Bad {
            name: "token file is /dev/null",
            cfg: base.clone().admin_key("token_file", "\"/dev/null\""),
            needle: "not a regular file",
            line: "token_file = ",
            via_api: false,
        },
        Bad {
            name: "second pool IP",
            cfg: base.clone().pool(
                "p",
                &[
                    PoolIp::new(10, "a.test").weight(1),
                    PoolIp::new(11, "b.test").weight(0),
                ],
            ),
            needle: "pool.ip.weight: 0 is out of range",
            line: "weight = 0",
            via_api: true,
        },
        Bad {
            name: "second route",
            cfg: base
                .clone()
                .route("a.test", "127.0.0.1:9")
                .route("b.test", "nope"),
            needle: "route host \"nope\"",
            line: "host = \"nope\"",
            via_api: true,
        },
    ];
    // More sessions than the hard open-file limit can serve (unless it is unlimited here).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let hard =
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 }.then_some(lim.rlim_max);
    if hard.is_some_and(|h| h < 1_000_000) {
        cases.push(Bad {
            name: "max_sessions beyond the open-file limit",
            cfg: base.clone().limit("max_sessions", 1_000_000),
            needle: "open file limit too low",
            line: "max_sessions = 1000000",
            via_api: true,
        });
    }
    cases
}

/// `FILE:LINE: ` of `line` in `toml`.
fn at_line(toml: &str, line: &str) -> String {
    let n = toml
        .lines()
        .position(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("{line:?} not in\n{toml}"));
    format!("poolrelay.toml:{}: ", n + 1)
}

/// Lines of `out` with the error of `case`: its line, then its text.
fn errors_of(out: &str, at: &str, needle: &str) -> usize {
    out.lines()
        .filter(|l| l.contains(at) && l.contains(needle))
        .count()
}

fn run_cli(dir: &Path, args: &[&str]) -> (i32, String) {
    run_poolrelay(dir, args)
}

#[test]
fn check_config_start_and_reload_refuse_the_same_configs_each_error_once() {
    let wait = std::time::Duration::from_secs(30);
    let dir = tempdir("paths-relay");
    let base = RelayConfig::new().admin();
    let (mut relay, _admin) = admin::start(&dir, &base, wait);
    for case in bad_cases(&base, &dir) {
        let toml = case.cfg.to_toml();
        let at = at_line(&toml, case.line);
        let what = case.name;

        // check-config: exit 2, the error once, at its line.
        let cdir = tempdir("paths-case");
        std::fs::write(cdir.join("poolrelay.toml"), &toml).unwrap();
        let (code, out) = run_cli(&cdir, &["check-config", "poolrelay.toml"]);
        assert_eq!(code, 2, "{what}: {out}");
        assert_eq!(
            errors_of(&out, &at, case.needle),
            1,
            "{what}: {at} in\n{out}"
        );
        assert_eq!(out.lines().count(), 1, "{what}: one error, once\n{out}");

        // serve: refuses to start with the same error, once.
        let (status, log) = Relay::start_expect_exit(&cdir, &toml, wait);
        let status = status.unwrap_or_else(|| panic!("{what}: serve started\n{log}"));
        assert!(!status.success(), "{what}: {log}");
        let log = strip_ansi(&log);
        assert_eq!(
            errors_of(&log, &at, case.needle),
            1,
            "{what}: {at} in\n{log}"
        );

        // SIGHUP: refused, logged with the error.
        relay.set_config(&toml);
        let logged = |r: &Relay| errors_of(&strip_ansi(&r.log_current()), &at, case.needle);
        let before = logged(&relay);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(relay.pid().unwrap() as i32, libc::SIGHUP) };
        assert!(
            wait_until(wait, || logged(&relay) > before),
            "{what}: SIGHUP refusal not logged\n{}",
            relay.log_current()
        );
        assert_eq!(logged(&relay), before + 1, "{what}: logged once");

        // `poolrelay reload`: refused (exit 2), printed once, logged by the relay once more.
        let (code, out) = run_cli(relay.dir(), &["reload", "--config", "poolrelay.toml"]);
        assert_ne!(code, 0, "{what}: {out}");
        let printed = out.lines().filter(|l| l.contains(case.needle)).count();
        if case.via_api {
            assert_eq!(code, 2, "{what}: {out}");
            assert!(
                wait_until(wait, || logged(&relay) > before + 1),
                "{what}: `poolrelay reload` refusal not logged\n{}",
                relay.log_current()
            );
            assert_eq!(printed, 1, "{what}: {out}");
        } else {
            assert!(printed >= 1, "{what}: {out}");
        }
        assert!(relay.is_running(), "{what}");
    }
    // The running config is the good one still: it reloads.
    relay.set_config(&base.to_toml());
    let (code, out) = run_cli(relay.dir(), &["reload", "--config", "poolrelay.toml"]);
    assert_eq!(code, 0, "{out}");
}
