//! Who may ask what of the admin API. Rules, in order:
//! 0. `Host` (and an absolute request target) must name the listener (`host.rs`): 400 when
//!    missing or malformed on HTTP/1.1, 421 when it names anything else — before every route,
//!    the open ones included (DNS rebinding).
//! 1. A request with an `Origin` whose host:port differs from `Host`, or that a browser marks
//!    `Sec-Fetch-Site: cross-site`, is refused (403): web pages cannot drive the API.
//! 2. Every request carries `Authorization: Bearer <token>` (compared in constant time), else 401
//!    — except `GET /` (the page's shell, which holds no data) and, when the operator allows it,
//!    `GET /api/pool` from a loopback peer.
//! 3. Anything but GET/HEAD must be `Content-Type: application/json` (415): a form or
//!    `text/plain` POST, which browsers send cross-site without asking, never acts.
//! 4. A declared body over the cap gets 413 (bodies without a length are capped by the router).
//!
//! Pure over the request head (no I/O), so the fuzz target runs it on arbitrary requests.

use std::net::IpAddr;

use http::{HeaderMap, Method, Version, header};
use subtle::ConstantTimeEq;

use super::host::{self, Allowed};

/// What the guard knows besides the request.
pub struct Policy {
    /// The names `Host` may give (rule 0).
    pub hosts: Allowed,
    pub token: String,
    pub loopback_pool_status_without_token: bool,
    pub max_body: usize,
    /// The body limit of `POST /api/feedback` (a whole report, base64 in JSON).
    pub max_report_body: usize,
}

/// `POST` a whole complaint report here (`admin::feedback`): its own body limit.
pub const REPORT_PATH: &str = "/api/feedback";

/// The parts of a request the rules look at.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub version: Version,
    /// The request target's authority when it is in absolute form.
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub peer_is_loopback: bool,
    /// The address the connection reached (the listener's, or one of the host's for a
    /// wildcard listener).
    pub local: IpAddr,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host` on HTTP/1.1, several, or not `host[:port]`.
    BadHost,
    /// A `Host` that does not name the listener.
    ForeignHost,
    CrossSite,
    NoToken,
    WrongToken,
    NotJson,
    TooLarge,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadHost => 400,
            Refusal::ForeignHost => 421,
            Refusal::CrossSite => 403,
            Refusal::NoToken | Refusal::WrongToken => 401,
            Refusal::NotJson => 415,
            Refusal::TooLarge => 413,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadHost => "missing or malformed Host header",
            Refusal::ForeignHost => {
                "Host does not name this listener (add the name to [admin] allowed_hosts)"
            }
            Refusal::CrossSite => "cross-site request refused (Origin does not match Host)",
            Refusal::NoToken => {
                "authentication required: send Authorization: Bearer <token> (the [admin] token_file)"
            }
            Refusal::WrongToken => "wrong admin token",
            Refusal::NotJson => "POST needs Content-Type: application/json",
            Refusal::TooLarge => "request body too large",
        }
    }
}

/// Applies the rules above; `Ok` means the handler may run.
pub fn check(req: &RequestHead<'_>, policy: &Policy) -> Result<(), Refusal> {
    check_host(req, &policy.hosts)?;
    if is_cross_site(req.headers) {
        return Err(Refusal::CrossSite);
    }
    let read_only = req.method == Method::GET || req.method == Method::HEAD;
    let open = read_only
        && (req.path == "/"
            || (req.path == "/api/pool"
                && policy.loopback_pool_status_without_token
                && req.peer_is_loopback));
    if !open {
        match bearer(req.headers) {
            None => return Err(Refusal::NoToken),
            Some(t) if !bool::from(t.ct_eq(policy.token.as_bytes())) => {
                return Err(Refusal::WrongToken);
            }
            Some(_) => {}
        }
    }
    if !read_only && !is_json(req.headers) {
        return Err(Refusal::NotJson);
    }
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max = if req.path == REPORT_PATH {
        policy.max_report_body.max(policy.max_body)
    } else {
        policy.max_body
    };
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Refusal::TooLarge);
    }
    Ok(())
}

/// Rule 0: every authority the request gives names the listener.
fn check_host(req: &RequestHead<'_>, hosts: &Allowed) -> Result<(), Refusal> {
    let mut values = req.headers.get_all(header::HOST).iter();
    let given = match (values.next(), values.next()) {
        (Some(v), None) => Some(v.to_str().map_err(|_| Refusal::BadHost)?),
        (None, _) if req.version <= Version::HTTP_10 => None,
        _ => return Err(Refusal::BadHost),
    };
    for authority in req.authority.into_iter().chain(given) {
        let (name, _port) = host::parse_authority(authority).ok_or(Refusal::BadHost)?;
        if !hosts.admits(&name, req.local) {
            return Err(Refusal::ForeignHost);
        }
    }
    Ok(())
}

/// The token of `Authorization: Bearer …` (scheme case-insensitive), if any.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A browser's cross-origin request: `Origin` not naming the `Host` it was sent to.
fn is_cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).map(|h| h.as_bytes());
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (authority, host) {
        (Some(a), Some(h)) => !a.as_bytes().eq_ignore_ascii_case(h),
        // `Origin: null` (sandboxed or file pages) or no Host: not our page.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn policy(open_pool: bool) -> Policy {
        Policy {
            hosts: Allowed::new("127.0.0.1".parse().unwrap(), "relay.test", &[]),
            token: TOKEN.into(),
            loopback_pool_status_without_token: open_pool,
            max_body: 64 * 1024,
            max_report_body: 64 * 1024,
        }
    }

    fn run(
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        loopback: bool,
    ) -> Result<(), Refusal> {
        let mut map = HeaderMap::new();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            map.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8025"));
        }
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let head = RequestHead {
            method: &method,
            version: Version::HTTP_11,
            authority: None,
            path,
            headers: &map,
            peer_is_loopback: loopback,
            local: "127.0.0.1".parse().unwrap(),
        };
        check(&head, &policy(path == "/api/pool"))
    }

    const AUTH: (&str, &str) = ("authorization", "Bearer 0123456789abcdef0123456789abcdef");
    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");

    #[test]
    fn token_needed_except_shell_and_allowed_pool_read() {
        assert_eq!(
            run(Method::GET, "/api/queue", &[], true),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            run(
                Method::GET,
                "/metrics",
                &[("authorization", "Bearer nope")],
                true
            ),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            run(
                Method::GET,
                "/metrics",
                &[("authorization", "Basic eDp5")],
                true
            ),
            Err(Refusal::NoToken)
        );
        assert_eq!(run(Method::GET, "/metrics", &[AUTH], false), Ok(()));
        assert_eq!(
            run(
                Method::GET,
                "/metrics",
                &[("authorization", &format!("bearer  {TOKEN} "))],
                false
            ),
            Ok(())
        );
        assert_eq!(run(Method::GET, "/", &[], false), Ok(()));
        assert_eq!(run(Method::GET, "/api/pool", &[], true), Ok(()));
        assert_eq!(
            run(Method::GET, "/api/pool", &[], false),
            Err(Refusal::NoToken)
        );
        assert_eq!(
            run(Method::POST, "/api/pool", &[JSON], true),
            Err(Refusal::NoToken)
        );
    }

    #[test]
    fn post_must_be_json_and_small() {
        let text = ("content-type", "text/plain");
        assert_eq!(
            run(Method::POST, "/api/pool/drain", &[AUTH, text], true),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            run(Method::POST, "/api/pool/drain", &[AUTH], true),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            run(Method::POST, "/api/pool/drain", &[AUTH, JSON], true),
            Ok(())
        );
        assert_eq!(
            run(
                Method::POST,
                "/api/pool/drain",
                &[AUTH, JSON, ("content-length", "70000")],
                true
            ),
            Err(Refusal::TooLarge)
        );
    }

    #[test]
    fn cross_site_refused_same_origin_allowed() {
        let host = ("host", "127.0.0.1:8025");
        assert_eq!(
            run(
                Method::POST,
                "/api/pool/drain",
                &[AUTH, JSON, host, ("origin", "http://evil.test")],
                true
            ),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            run(
                Method::POST,
                "/api/pool/drain",
                &[AUTH, JSON, host, ("origin", "null")],
                true
            ),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            run(
                Method::GET,
                "/",
                &[host, ("sec-fetch-site", "cross-site")],
                true
            ),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            run(
                Method::POST,
                "/api/pool/drain",
                &[AUTH, JSON, host, ("origin", "http://127.0.0.1:8025")],
                true
            ),
            Ok(())
        );
    }

    #[test]
    fn host_must_name_the_listener_before_any_route() {
        let evil = ("host", "evil.example:8025");
        // Even the open routes: a rebound page sends its own name.
        assert_eq!(
            run(Method::GET, "/api/pool", &[evil], true),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(
            run(Method::GET, "/", &[evil], true),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(
            run(Method::GET, "/api/pool", &[("host", "relay.test")], true),
            Ok(())
        );
        assert_eq!(
            run(Method::GET, "/api/pool", &[("host", "localhost:1")], true),
            Ok(())
        );
        assert_eq!(
            run(Method::GET, "/", &[("host", "a b")], true),
            Err(Refusal::BadHost)
        );
        let two = [("host", "127.0.0.1"), ("host", "127.0.0.1")];
        assert_eq!(run(Method::GET, "/", &two, true), Err(Refusal::BadHost));
        assert_eq!(Refusal::ForeignHost.status(), 421);

        let map = HeaderMap::new();
        let mut head = RequestHead {
            method: &Method::GET,
            version: Version::HTTP_11,
            authority: None,
            path: "/",
            headers: &map,
            peer_is_loopback: true,
            local: "127.0.0.1".parse().unwrap(),
        };
        assert_eq!(check(&head, &policy(false)), Err(Refusal::BadHost));
        head.version = Version::HTTP_10;
        assert_eq!(check(&head, &policy(false)), Ok(()));
        // An absolute target names the host that counts.
        head.authority = Some("evil.example");
        assert_eq!(check(&head, &policy(false)), Err(Refusal::ForeignHost));
        head.authority = Some("127.0.0.1:8025");
        assert_eq!(check(&head, &policy(false)), Ok(()));
    }
}
