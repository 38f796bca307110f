//! The admin API's request guard on arbitrary requests: raw bytes parsed by httparse (hyper's
//! HTTP/1 parser) into the `http` types hyper hands to the router, then `guard::check`. Must
//! never panic; whatever it lets through must carry the token (unless open by the rules), be
//! JSON when not a read, come from no foreign Origin, and declare no body over the cap.
#![no_main]

use http::{HeaderMap, Method, header};
use libfuzzer_sys::fuzz_target;
use poolrelay_parsers::admin::guard::{Policy, RequestHead, check};

const TOKEN: &str = "fuzz-token-0123456789abcdefghij";
const MAX_BODY: usize = 64 * 1024;

fn text<'a>(headers: &'a HeaderMap, name: header::HeaderName) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

fuzz_target!(|data: &[u8]| {
    // First byte: the peer is loopback (bit 0), the operator opened GET /api/pool (bit 1).
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
    let policy = Policy {
        token: TOKEN.into(),
        loopback_pool_status_without_token: flags & 2 != 0,
        max_body: MAX_BODY,
    };
    let head = RequestHead {
        method: &method,
        path: uri.path(),
        headers: &headers,
        peer_is_loopback: flags & 1 != 0,
    };
    let verdict = check(&head, &policy);
    assert_eq!(verdict, check(&head, &policy), "not deterministic");
    if verdict.is_err() {
        return;
    }
    let read_only = method == Method::GET || method == Method::HEAD;
    let open = read_only && (uri.path() == "/" || (uri.path() == "/api/pool" && flags & 3 == 3));
    if !open {
        let auth = text(&headers, header::AUTHORIZATION).expect("let through without a token");
        assert!(auth.len() > 7 && auth[..7].eq_ignore_ascii_case(b"bearer "));
        assert_eq!(auth[7..].trim_ascii(), TOKEN.as_bytes(), "wrong token let through");
    }
    if !read_only {
        let ct = text(&headers, header::CONTENT_TYPE).expect("a POST without a content type");
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        assert!(ct.trim_start().starts_with("application/json"), "{ct:?}");
    }
    if let Some(origin) = text(&headers, header::ORIGIN) {
        let host = text(&headers, header::HOST).expect("an Origin without a Host");
        let origin = String::from_utf8_lossy(origin);
        let authority = origin.split_once("://").map(|(_, a)| a.trim_end_matches('/'));
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
