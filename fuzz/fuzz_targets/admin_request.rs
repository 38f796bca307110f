//! The admin API's request guard on arbitrary requests: raw bytes parsed by httparse (hyper's
//! HTTP/1 parser) into the `http` types hyper hands to the router, then `guard::check`. Must
//! never panic; whatever it lets through must name the listener in `Host` (and in an absolute
//! target), carry the token (unless open by the rules), be JSON when not a read, come from no
//! foreign Origin, and declare no body over the cap.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, Method, Version, header};
use libfuzzer_sys::fuzz_target;
use poolrelay_parsers::admin::guard::{Policy, RequestHead, check};
use poolrelay_parsers::admin::host::Allowed;

const TOKEN: &str = "fuzz-token-0123456789abcdefghij";
const MAX_BODY: usize = 64 * 1024;
const HOSTNAME: &str = "relay.fuzz";
const LISTED: &str = "admin.fuzz";

fn text<'a>(headers: &'a HeaderMap, name: header::HeaderName) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

/// Written apart from `host.rs`: the host part of `authority`, lower case, without the port
/// and one trailing dot, if it is one the listener answers to.
fn names_listener(authority: &[u8], local: IpAddr) -> bool {
    let a = String::from_utf8_lossy(authority).to_ascii_lowercase();
    if let Some((v6, _port)) = a.strip_prefix('[').and_then(|r| r.split_once(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .is_ok_and(|ip| IpAddr::V6(ip).to_canonical() == local);
    }
    let host = a.split(':').next().unwrap_or("");
    let host = host.strip_suffix('.').unwrap_or(host);
    host == local.to_string()
        || host == HOSTNAME
        || host == LISTED
        || (host == "localhost" && local.is_loopback())
}

fuzz_target!(|data: &[u8]| {
    // First byte: the peer is loopback and the connection reached 127.0.0.1, else 192.0.2.1
    // (bit 0); the operator opened GET /api/pool (bit 1).
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(raw) else {
        return;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return;
    };
    // What hyper refuses before the router never reaches the guard.
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            header::HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }
    let local = if flags & 1 != 0 {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    };
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let policy = Policy {
        hosts: Allowed::new(local, HOSTNAME, &[LISTED.to_string()]),
        token: TOKEN.into(),
        loopback_pool_status_without_token: flags & 2 != 0,
        max_body: MAX_BODY,
        max_report_body: MAX_BODY,
    };
    let head = RequestHead {
        method: &method,
        version,
        authority: uri.authority().map(|a| a.as_str()),
        path: uri.path(),
        headers: &headers,
        peer_is_loopback: flags & 1 != 0,
        local,
    };
    let verdict = check(&head, &policy);
    assert_eq!(verdict, check(&head, &policy), "not deterministic");
    if verdict.is_err() {
        return;
    }
    let hosts: Vec<&[u8]> = headers
        .get_all(header::HOST)
        .iter()
        .map(|h| h.as_bytes())
        .collect();
    match hosts[..] {
        [h] => assert!(names_listener(h, local), "a foreign Host let through"),
        [] => assert_eq!(
            version,
            Version::HTTP_10,
            "HTTP/1.1 without Host let through"
        ),
        _ => panic!("several Host headers let through"),
    }
    if let Some(a) = uri.authority() {
        assert!(
            names_listener(a.as_str().as_bytes(), local),
            "a foreign target let through"
        );
    }
    let read_only = method == Method::GET || method == Method::HEAD;
    let open = read_only && (uri.path() == "/" || (uri.path() == "/api/pool" && flags & 3 == 3));
    if !open {
        let auth = text(&headers, header::AUTHORIZATION).expect("let through without a token");
        assert!(auth.len() > 7 && auth[..7].eq_ignore_ascii_case(b"bearer "));
        assert_eq!(
            auth[7..].trim_ascii(),
            TOKEN.as_bytes(),
            "wrong token let through"
        );
    }
    if !read_only {
        let ct = text(&headers, header::CONTENT_TYPE).expect("a POST without a content type");
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        assert!(ct.trim_start().starts_with("application/json"), "{ct:?}");
    }
    if let Some(origin) = text(&headers, header::ORIGIN) {
        let host = text(&headers, header::HOST).expect("an Origin without a Host");
        let origin = String::from_utf8_lossy(origin);
        let authority = origin
            .split_once("://")
            .map(|(_, a)| a.trim_end_matches('/'));
        assert_eq!(
            authority.map(|a| a.to_ascii_lowercase()),
            Some(String::from_utf8_lossy(host).to_ascii_lowercase()),
            "a foreign Origin let through"
        );
    }
    if let Some(n) = text(&headers, header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        assert!(n <= MAX_BODY as u64, "declared body {n} let through");
    }
});
