//! A private `redis-server` for cluster tests: on 127.0.0.1 at a free port, no persistence,
//! never a system instance. Redis is an installed tool: tests using it are `#[ignore]`d and
//! this helper panics (the test fails) when `redis-server` is missing.
//!
//! ```ignore
//! let mut redis = RedisServer::start(&dir);          // or start_with_password(&dir, "pw")
//! let url = redis.url();                             // redis://[:pw@]127.0.0.1:PORT/0
//! redis.kill();                                      // SIGKILL (an outage)
//! redis.pause(); redis.resume();                     // SIGSTOP/SIGCONT (a hung server)
//! redis.restart();                                   // same port, empty data
//! let v: Option<String> = redis.query(&["GET", "k"]);
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::wait_until;

/// A free port below the kernel's ephemeral range (32768+), where `free_port()` picks the
/// relays' ports: a Redis that keeps its port for the whole test never takes a port a relay of
/// a test running beside it has chosen but not yet bound.
fn redis_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1000) as u16 * 10;
    for _ in 0..12_000 {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for redis-server in 20000-31999");
}

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    /// TLS on `port` with these certificate and key files; a plain port beside it for the
    /// test's own queries.
    tls: Option<(PathBuf, PathBuf, u16)>,
    dir: PathBuf,
}

/// Where the test finds `redis-server` (PATH, then the Debian package's path).
fn binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    let debian = PathBuf::from("/usr/bin/redis-server");
    assert!(
        debian.is_file(),
        "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
    );
    debian
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        Self::launch(dir, None)
    }

    pub fn start_with_password(dir: &Path, password: &str) -> RedisServer {
        Self::launch(dir, Some(password.to_string()))
    }

    /// TLS only on its port, with `certs` (from `make_certs`, valid for 127.0.0.1); clients
    /// need no certificate.
    pub fn start_tls(dir: &Path, certs: &super::certs::Certs) -> RedisServer {
        let plain = redis_port();
        Self::launch_with(
            dir,
            None,
            Some((certs.cert.clone(), certs.key.clone(), plain)),
        )
    }

    fn launch(dir: &Path, password: Option<String>) -> RedisServer {
        Self::launch_with(dir, password, None)
    }

    fn launch_with(
        dir: &Path,
        password: Option<String>,
        tls: Option<(PathBuf, PathBuf, u16)>,
    ) -> RedisServer {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = RedisServer {
            child: None,
            port: redis_port(),
            password,
            tls,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.current_dir(&self.dir);
        match &self.tls {
            Some((cert, key, plain)) => {
                cmd.args(["--port", &plain.to_string()])
                    .args(["--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &cert.display().to_string()])
                    .args(["--tls-key-file", &key.display().to_string()])
                    .args(["--tls-auth-clients", "no"]);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--logfile", "redis.log"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server");
        self.child = Some(child);
        assert!(
            self.wait_ready(Duration::from_secs(20)),
            "redis-server on port {} did not answer PING; see {}/redis.log",
            self.port,
            self.dir.display()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The URL for `[cluster] redis` (with the password, if any; `rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("{scheme}://127.0.0.1:{}/0", self.port),
        }
    }

    /// Polls PING until Redis answers PONG.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                && self.try_query::<String>(&["PING"]).as_deref() == Ok("PONG")
        })
    }

    /// A crash: SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid (a stopped one dies on SIGKILL too).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A hung server: SIGSTOP (connections stay open, nothing answers).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after `pause`: it answers again, with its data.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(pid as libc::pid_t, sig) },
            0,
            "kill {sig}"
        );
    }

    /// Starts again on the same port (empty: nothing is saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let port = self.tls.as_ref().map_or(self.port, |t| t.2);
        let url = match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{port}/0"),
            None => format!("redis://127.0.0.1:{port}/0"),
        };
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(conn)
    }

    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = self.connection()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    /// One command (`["GET", "k"]`); panics on an error.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut k: Vec<String> = self.query(&["KEYS", pattern]);
        k.sort();
        k
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A farm test's set-up: a fresh dir `name`, a private redis-server in it, and the bench (its
/// sink with `script` if given).
pub fn farm(
    name: &str,
    script: Option<fn(&super::sink::Step) -> Option<String>>,
) -> (PathBuf, RedisServer, super::bench::Bench) {
    let dir = super::net::tempdir(name);
    let redis = RedisServer::start(&dir);
    let b = super::bench::bench(script);
    (dir, redis, b)
}
