//! The real `poolrelay` binary as a child process.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::wait_until;

/// The line `poolrelay serve` logs once its admin API and listeners are bound.
const READY: &str = "poolrelay ready";

/// A running `poolrelay serve` with its config in `dir/poolrelay.toml`, cwd `dir`, log in
/// `dir/relay.log` (appended across restarts). Dropping it kills the process.
pub struct Relay {
    pub dir: PathBuf,
    config: String,
    child: Option<Child>,
    /// Byte offset in relay.log where the current run's output starts.
    log_start: u64,
}

impl Relay {
    /// Writes the config, starts the relay and waits until it is ready: every `[[listen]]`
    /// address accepts TCP connections and it logged `poolrelay ready` (20 s; panics with the
    /// log otherwise, at once with "relay exited before ready" if the process ends first).
    pub fn start(dir: &Path, config_toml: &str) -> Relay {
        let mut r = Relay::configured(dir, config_toml);
        r.spawn();
        r
    }

    /// Like `start` but does not wait for the listeners: returns the exit status and log if the
    /// process ends within `timeout` (for config-error tests), else `None` (still running).
    pub fn start_expect_exit(
        dir: &Path,
        config_toml: &str,
        timeout: Duration,
    ) -> (Option<std::process::ExitStatus>, String) {
        let mut r = Relay::configured(dir, config_toml);
        r.spawn_child();
        let mut status = None;
        wait_until(timeout, || {
            status = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        if status.is_some() {
            r.child = None;
        }
        (status, r.log())
    }

    /// Not running yet: the config written to `dir/poolrelay.toml`.
    fn configured(dir: &Path, config_toml: &str) -> Relay {
        std::fs::write(dir.join("poolrelay.toml"), config_toml).expect("write poolrelay.toml");
        Relay {
            dir: dir.to_path_buf(),
            config: config_toml.to_string(),
            child: None,
            log_start: 0,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("relay.log")
    }

    fn spawn_child(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open relay.log");
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        if self.log_start > 0 {
            let _ = writeln!(log, "===== test kit: relay restart =====");
            self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        }
        let err: File = log.try_clone().expect("clone log fd");
        super::admin::register(&self.dir, &self.config);
        let child = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
            .args(["serve", "--config", "poolrelay.toml"])
            .current_dir(&self.dir)
            .env("POOLRELAY_LOG", "debug")
            // Plain text in relay.log, so `key=value` needles match.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn poolrelay");
        self.child = Some(child);
    }

    /// Starts the process and waits until it is ready: every `[[listen]]` address accepts TCP
    /// connections and the current run logged `poolrelay ready` (after the admin API and the
    /// listeners are bound). A process that exits first fails the test at once with its log:
    /// a port answering is not enough, another process (or the relay's own admin API) may
    /// hold it while the relay is refusing to start.
    fn spawn(&mut self) {
        self.spawn_child();
        let addrs = listen_addresses(&self.config);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut waiting = addrs.as_slice();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "relay exited before ready ({status}); log:\n{}",
                    self.log_current()
                );
            }
            while let Some(addr) = waiting.first() {
                if TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
                    break;
                }
                waiting = &waiting[1..];
            }
            if waiting.is_empty() && self.log_current().contains(READY) {
                // Exited right after the line (a late fatal error): still not ready.
                if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                    self.child = None;
                    panic!(
                        "relay exited before ready ({status}); log:\n{}",
                        self.log_current()
                    );
                }
                return;
            }
            if Instant::now() >= deadline {
                match waiting.first() {
                    Some(addr) => panic!(
                        "poolrelay not listening on {addr} after 20 s; log:\n{}",
                        self.log()
                    ),
                    None => panic!(
                        "poolrelay not ready (no `{READY}` line) after 20 s; log:\n{}",
                        self.log()
                    ),
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL (a crash) and wait for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop) and wait up to 20 s; panics (after SIGKILL) if it does not end.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("relay is not running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("poolrelay ignored SIGTERM for 20 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the relay again with the same dir and config (after `kill` or `stop`; kills a
    /// running one first) and waits for its listeners.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Replaces the config file (takes effect on the next `restart`).
    pub fn set_config(&mut self, config_toml: &str) {
        self.config = config_toml.to_string();
        std::fs::write(self.dir.join("poolrelay.toml"), config_toml).expect("write config");
    }

    /// Process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True if the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The whole log (all runs).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The log without ANSI colour codes, so `field=value` can be searched.
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log())
    }

    /// The log of the current run only (since the last start/restart).
    pub fn log_current(&self) -> String {
        let all = std::fs::read(self.log_path()).unwrap_or_default();
        let start = (self.log_start as usize).min(all.len());
        String::from_utf8_lossy(&all[start..]).into_owned()
    }

    /// Polls the current run's log until it contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_current().contains(needle))
    }

    /// The relay's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `data_dir` from the config, resolved against the relay's cwd (default `data`).
    pub fn data_dir(&self) -> PathBuf {
        let v: toml::Value = toml::from_str(&self.config).expect("config is TOML");
        let d = v.get("data_dir").and_then(|d| d.as_str()).unwrap_or("data");
        self.dir.join(d)
    }

    /// Queued messages (envelope as JSON, message bytes): the spool log and `spool/queue`.
    pub fn queued(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        poolrelay::spool::inspect(&self.data_dir())
            .expect("spool readable")
            .into_iter()
            .map(|(env, msg)| (serde_json::to_value(&env).expect("envelope as JSON"), msg))
            .collect()
    }

    /// Queued envelopes (JSON), oldest first.
    pub fn queued_envelopes(&self) -> Vec<serde_json::Value> {
        self.queued().into_iter().map(|(e, _)| e).collect()
    }

    /// Queue ids of the queued messages, oldest first.
    pub fn queued_ids(&self) -> Vec<String> {
        self.queued_envelopes()
            .iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Files in `data_dir/spool/queue` with the given extension: messages that left the log
    /// (deferred, held) or were too large for it.
    pub fn spool_files(&self, ext: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.data_dir().join("spool").join("queue"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == ext))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The first `[[listen]]` address (convenience for single-listener configs).
    pub fn addr(&self) -> SocketAddr {
        listen_addresses(&self.config)[0]
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every `[[listen]] address` in a config.
pub fn listen_addresses(config_toml: &str) -> Vec<SocketAddr> {
    let v: toml::Value = toml::from_str(config_toml).expect("config is TOML");
    v.get("listen")
        .and_then(|l| l.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("address")?.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a users file (`user:hash` lines, hashed by `poolrelay hash-password`) into `dir`.
pub fn write_users(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut out = String::new();
    for (user, pass) in users {
        let mut child = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hash-password");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(pass.as_bytes())
            .expect("write password");
        let o = child.wait_with_output().expect("hash-password");
        assert!(
            o.status.success(),
            "hash-password failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.push_str(&format!(
            "{user}:{}\n",
            String::from_utf8_lossy(&o.stdout).trim()
        ));
    }
    let path = dir.join("users");
    std::fs::write(&path, out).expect("write users");
    path
}

/// `s` without ANSI escape sequences (the log's colours).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs the `poolrelay` binary with `args`, cwd `dir` (where a relative `--config` and the
/// config's data_dir are found): (exit code, -1 for a signal; stdout then stderr).
pub fn run_poolrelay(dir: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run poolrelay");
    (o.status.code().unwrap_or(-1), output_text(&o))
}

/// A finished command's stdout then stderr, as text.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `poolrelay suppression ARGS` against the relay's config; asserts that it succeeded and
/// returns its stdout.
pub fn suppression_cli(relay: &Relay, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .arg("suppression")
        .args(args)
        .args(["--config", "poolrelay.toml"])
        .current_dir(relay.dir())
        .output()
        .expect("run poolrelay suppression");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `toml` as `dir/check.toml` and runs `poolrelay check-config` on that path: (exit
/// code, stderr). Its messages name the file as `<dir>/check.toml`.
pub fn check_config(dir: &Path, toml: &str) -> (Option<i32>, String) {
    let file = dir.join("check.toml");
    std::fs::write(&file, toml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The queued recipient `rcpt` (first of its envelope) once its first attempt is recorded;
/// panics with the log if that takes longer than `wait`.
pub fn deferred_once(relay: &Relay, rcpt: &str, wait: Duration) -> serde_json::Value {
    let find = || {
        relay.queued_envelopes().into_iter().find(|e| {
            let r = &e["recipients"][0];
            r["address"] == rcpt && r["attempts"] == 1
        })
    };
    assert!(
        wait_until(wait, || find().is_some()),
        "{}",
        relay.plain_log()
    );
    find().unwrap()["recipients"][0].clone()
}
