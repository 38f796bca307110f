//! Several relays, one farm (issue 19): caps that hold across nodes through a real
//! `redis-server` (started by each test on a free loopback port, never a system one). Redis is
//! an installed tool, so every test here is `#[ignore]`d (run by .ci/run) and fails when
//! `redis-server` is missing. Source IPs 127.0.0.10–12; `a.test` → mx.alpha.test (127.0.0.20,
//! provider alpha), `b.test` → mx.beta.test (127.0.0.21, provider beta).

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A relay's own directory under the test's.
fn node_dir(dir: &std::path::Path, node: &str) -> std::path::PathBuf {
    let d = dir.join(node);
    std::fs::create_dir_all(&d).expect("node dir");
    d
}

fn cluster_section(redis: &RedisServer, node: &str) -> String {
    format!(
        "[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nprefix = \"farm\"\n",
        redis.url()
    )
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn nodes_beat_and_outages_are_logged_once_without_the_password() {
    let dir = tempdir("cluster-heartbeat");
    let mut redis = RedisServer::start_with_password(&dir, "s3cret-pw");
    let b = bench(None);
    let cfg = b
        .config()
        .pool("default", &[PoolIp::new(10, "out10.test")])
        .section(&cluster_section(&redis, "node-a"));
    let relay = Relay::start(&node_dir(&dir, "a"), &cfg.to_toml());
    assert!(
        wait_until(WAIT, || redis.keys("farm:node:*") == ["farm:node:node-a"]),
        "heartbeat key: {:?}",
        redis.keys("*")
    );
    let beat: String = redis.query(&["GET", "farm:node:node-a"]);
    let beat: serde_json::Value = serde_json::from_str(&beat).unwrap();
    assert_eq!(beat["ips"], serde_json::json!(["127.0.0.10"]), "{beat}");
    let ttl: i64 = redis.query(&["PTTL", "farm:node:node-a"]);
    assert!(ttl > 0 && ttl <= 10_000, "heartbeats expire: {ttl}");

    redis.kill();
    assert!(
        relay.wait_for_log("cluster: Redis down", WAIT),
        "{}",
        relay.log()
    );
    redis.restart();
    assert!(
        relay.wait_for_log("cluster: Redis up", WAIT),
        "{}",
        relay.log()
    );
    assert!(wait_until(WAIT, || !redis.keys("farm:node:*").is_empty()));
    let log = relay.log();
    assert_eq!(log.matches("cluster: Redis down").count(), 1, "{log}");
    assert!(!log.contains("s3cret-pw"), "password logged: {log}");
    assert!(log.contains(":***@127.0.0.1"), "{log}");
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_relay_starts_and_accepts_while_redis_is_unreachable() {
    let dir = tempdir("cluster-unreachable");
    let mut redis = RedisServer::start(&dir);
    let url = redis.url();
    redis.kill();
    let b = bench(None);
    let cfg = b
        .config()
        .pool("default", &[PoolIp::new(10, "out10.test")])
        .section(&format!(
            "[cluster]\nredis = \"{url}\"\nnode = \"lonely\"\n"
        ));
    let relay = Relay::start(&node_dir(&dir, "a"), &cfg.to_toml());
    assert!(
        relay.wait_for_log("Redis unreachable at start", WAIT),
        "{}",
        relay.log()
    );
    let mut c = SmtpClient::connect(relay.addr());
    c.ehlo("client.test");
    let r = c.send_mail("s@snd.test", &["x@a.test"], b"Subject: t\r\n\r\nhi\r\n");
    assert_eq!(r.code, 250, "{r}");
    b.sink.wait_for_messages(1, WAIT);
    redis.restart();
    assert!(
        relay.wait_for_log("cluster: Redis up", WAIT),
        "{}",
        relay.log()
    );
    assert!(wait_until(WAIT, || redis.keys("poolrelay:node:*")
        == ["poolrelay:node:lonely"]));
}
