//! The command side of an inbound session: strict line framing, smtp-proto's verb parser and our
//! MAIL/RCPT path and parameter parsers, on arbitrary bytes. Must never panic; an accepted path
//! must obey the routing policy (one `@`, no `%`/`!` tricks) and parse again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolrelay_parsers::inbound::address::{parse_params, parse_path, split_command};
use smtp_proto::Request;

fn check_path(inner: &str, utf8: bool) {
    if let Ok(path) = parse_path(inner, utf8) {
        if path.is_empty() {
            return;
        }
        let (local, domain) = path.rsplit_once('@').expect("an accepted path has an @");
        assert!(!domain.is_empty() && !domain.contains('@'), "{path:?}");
        assert!(!domain.ends_with('.'), "trailing dot accepted: {path:?}");
        if !local.starts_with('"') {
            assert!(
                !local.contains('@') && !local.contains('%') && !local.contains('!'),
                "routing trick accepted: {inner:?} -> {path:?}"
            );
        }
        assert_eq!(
            parse_path(&path, utf8).as_deref(),
            Ok(path.as_str()),
            "not stable: {inner:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Commands are CRLF lines; the session refuses any other CR or LF before parsing.
    for line in data.split(|&b| b == b'\n') {
        let Some(body) = line.strip_suffix(b"\r") else {
            continue;
        };
        if body.contains(&b'\r') || body.len() > 4096 {
            continue;
        }
        let verb_end = body.iter().position(|&b| b == b' ').unwrap_or(body.len());
        let verb = body[..verb_end].to_ascii_uppercase();
        if verb == b"MAIL" || verb == b"RCPT" {
            let Ok(rest) = std::str::from_utf8(body.get(verb_end + 1..).unwrap_or_default()) else {
                continue;
            };
            let kw = if verb == b"MAIL" { "FROM" } else { "TO" };
            if let Some((path, params)) = split_command(rest, kw) {
                check_path(path, false);
                check_path(path, true);
                let _ = parse_params(params);
            }
        } else {
            let mut with_crlf = body.to_vec();
            with_crlf.extend_from_slice(b"\r\n");
            let _ = Request::parse(&mut with_crlf.iter()).map(|r| r.into_owned());
        }
    }
    // The path parser on its own, without the command around it.
    if let Ok(s) = std::str::from_utf8(data) {
        check_path(s, true);
        let _ = parse_params(s);
    }
});
