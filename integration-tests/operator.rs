//! The operator's first hour (issue 28): a second relay on a running relay's `data_dir` says
//! so and stops; `check-config` takes `--config` like every other command.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn poolrelay(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_poolrelay"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run poolrelay");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_relay_on_the_same_data_dir_says_another_one_runs() {
    let first = Relay::start(&tempdir("operator-first"), &RelayConfig::new().to_toml());
    let data_dir = first.data_dir();
    // Its own listen port, the first one's data_dir.
    let toml = RelayConfig::new().to_toml().replace(
        "data_dir = \"data\"",
        &format!("data_dir = \"{}\"", data_dir.display()),
    );
    let (status, log) =
        Relay::start_expect_exit(&tempdir("operator-second"), &toml, Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("the second relay still runs:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "another poolrelay is running with data_dir {}",
            data_dir.display()
        )),
        "{log}"
    );
    assert!(!log.contains("Database already open"), "{log}");
    // The usual slip: the same command twice (same config, same listen address). The lock is
    // taken before any listener, so the message is the same.
    let config = std::fs::read_to_string(first.dir().join("poolrelay.toml")).unwrap();
    let again = tempdir("operator-again");
    let toml = config.replace(
        "data_dir = \"data\"",
        &format!("data_dir = \"{}\"", data_dir.display()),
    );
    let (status, log) = Relay::start_expect_exit(&again, &toml, Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("another poolrelay is running with data_dir")
            && !log.contains("Address already in use"),
        "{log}"
    );
    // The first one is untouched: it still takes mail.
    let mut c = SmtpClient::connect(first.addr());
    c.ehlo("client.test");
    c.cmd("MAIL FROM:<a@example.com>").expect(250);
    c.quit();
}

#[test]
fn check_config_takes_config_like_every_command() {
    let dir = tempdir("operator-check");
    std::fs::write(dir.join("poolrelay.toml"), RelayConfig::new().to_toml()).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        "hostname = \"x.test\"\nnot_a_key = 1\n",
    )
    .unwrap();
    for args in [
        &["check-config", "--config", "poolrelay.toml"][..],
        &["check-config", "-c", "poolrelay.toml"],
        // The older positional form keeps working.
        &["check-config", "poolrelay.toml"],
    ] {
        let (code, out, err) = poolrelay(&dir, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(out, "poolrelay.toml: ok\n", "{args:?}");
    }
    let (code, _, err) = poolrelay(&dir, &["check-config", "--config", "bad.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad.toml:2"), "{err}");
    // Both forms at once is a usage error, not a guess.
    let (code, _, err) = poolrelay(&dir, &["check-config", "-c", "a.toml", "b.toml"]);
    assert_eq!(code, Some(2), "{err}");
    // Without either: the default of every other command.
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::copy(
        dir.join("poolrelay.toml"),
        dir.join("config/poolrelay.toml"),
    )
    .unwrap();
    let (code, out, err) = poolrelay(&dir, &["check-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "config/poolrelay.toml: ok\n");
}
