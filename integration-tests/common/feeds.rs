//! A model of the providers' feed endpoints for `feeds.rs`: one HTTPS server (rustls, a test CA
//! from `certs.rs`) on 127.0.0.1, answers set per path by the test, every request recorded.
//! The fixtures below are the rules of this model, in one place.
//!
//! Sources of the formats:
//! - SNDS automated data access (Microsoft, "SNDS FAQ" and the automated-access page of the
//!   SNDS portal): `data.aspx?key=K` is CSV without a header, one row per IP × activity
//!   period: IP, period start, period end, RCPT commands, DATA commands, message recipients,
//!   filter result (GREEN/YELLOW/RED), complaint rate ("< 0.1%"), trap period start, trap
//!   period end, trap hits, sample HELO, JMR P1 sender, comments. `ipStatus.aspx?key=K` is CSV:
//!   first IP, last IP, blocked (Yes/No), details.
//! - Google Postmaster Tools API: v2 `POST /v2/domains/{d}/domainStats:query` answers
//!   `QueryDomainStatsResponse { domainStats: [{ name, metric, value: { doubleValue }, date:
//!   { year, month, day } }] }`; v1 `GET /v1/domains/{d}/trafficStats/{YYYYMMDD}` answers
//!   `TrafficStats { name, ipReputations: [{ reputation: HIGH|MEDIUM|LOW|BAD, ipCount,
//!   sampleIps }], userReportedSpamRatio, … }`.
//! - OAuth 2.0 service accounts (RFC 7523 JWT bearer grant, RS256 per RFC 7518): `POST
//!   token_uri` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`
//!   answers `{ access_token, token_type, expires_in }` or 400 `{ error: "invalid_grant" }`.
//!
//! What each fixture row means is written beside it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::certs::make_certs;
use super::client::install_crypto_provider;

/// The SNDS key the fixtures expect (a secret: the relay must never log it).
pub const SNDS_KEY: &str = "k3y-0f-snds-5ecret";
/// The access token the fixture token endpoint hands out for a valid JWT.
pub const ACCESS_TOKEN: &str = "ya29.test-access-token";

/// SNDS data for the pool 127.0.0.10–127.0.0.14 (and one IP outside it):
/// - 127.0.0.10 RED, complaint rate 0.5 %: quarantine for microsoft;
/// - 127.0.0.11 YELLOW: probation for microsoft;
/// - 127.0.0.12 GREEN but 3 trap hits (over `trap_hits_max` 0): quarantine for microsoft;
/// - 127.0.0.13 GREEN, no traps, a HELO with a comma (quoted): nothing;
/// - 192.0.2.1 RED: not a pool IP, ignored.
pub const SNDS_DATA: &str = "\
127.0.0.10,12/6/2026 12:00 AM,12/7/2026 12:00 AM,1200,1180,1190,RED,0.5%,,,0,out10.test,bounce@snd.test,
127.0.0.11,12/6/2026 12:00 AM,12/7/2026 12:00 AM,800,800,800,YELLOW,< 0.1%,,,0,out11.test,bounce@snd.test,
127.0.0.12,12/6/2026 12:00 AM,12/7/2026 12:00 AM,500,500,500,GREEN,< 0.1%,12/6/2026 3:00 PM,12/6/2026 4:00 PM,3,out12.test,bounce@snd.test,
127.0.0.13,12/6/2026 12:00 AM,12/7/2026 12:00 AM,500,500,500,GREEN,< 0.1%,,,0,\"out13.test, mta\",bounce@snd.test,
192.0.2.1,12/6/2026 12:00 AM,12/7/2026 12:00 AM,9,9,9,RED,2%,,,0,x.test,b@x.test,
";

/// SNDS IP status: 127.0.0.14 inside a blocked range (quarantine); 127.0.0.13 listed as not
/// blocked (nothing).
pub const SNDS_STATUS: &str = "\
127.0.0.14,127.0.0.14,Yes,Blocked due to user complaints or other evidence of spamming
127.0.0.13,127.0.0.13,No,
";

/// Only 127.0.0.10 RED (the one-IP pool test).
pub const SNDS_DATA_RED_10: &str = "\
127.0.0.10,12/6/2026 12:00 AM,12/7/2026 12:00 AM,1200,1180,1190,RED,0.5%,,,0,out10.test,bounce@snd.test,
";

/// A data file whose columns moved (a new column after the IP): the filter result is not
/// where SNDS puts it, so the whole file is refused.
pub const SNDS_DATA_SHIFTED: &str = "\
127.0.0.10,extra,12/6/2026 12:00 AM,12/7/2026 12:00 AM,1200,1180,1190,RED,0.5%,,,0,out10.test,bounce@snd.test,
";

/// An error page where a status CSV should be.
pub const GARBLED: &str = "<html><body>Service temporarily unavailable</body></html>\n";

/// v2 spam rate for the domain: 0.42 % yesterday (over Google's 0.3 %), 0.05 % the day before.
pub fn spam_rate_json(domain: &str) -> String {
    serde_json::json!({"domainStats": [
        {"name": format!("domains/{domain}/domainStats/a1"), "metric": "spam_rate",
         "value": {"doubleValue": 0.0005}, "date": {"year": 2026, "month": 12, "day": 5}},
        {"name": format!("domains/{domain}/domainStats/a2"), "metric": "spam_rate",
         "value": {"doubleValue": 0.0042}, "date": {"year": 2026, "month": 12, "day": 6}}
    ]})
    .to_string()
}

/// v1 traffic stats: 127.0.0.12 BAD (quarantine for gmail), 127.0.0.13 LOW (probation),
/// 127.0.0.10 HIGH (nothing), 198.51.100.7 BAD (not a pool IP, ignored).
pub fn traffic_stats_json(domain: &str) -> String {
    serde_json::json!({
        "name": format!("domains/{domain}/trafficStats/20261206"),
        "userReportedSpamRatio": 0.0042,
        "ipReputations": [
            {"reputation": "BAD", "ipCount": "2", "sampleIps": ["127.0.0.12", "198.51.100.7"]},
            {"reputation": "LOW", "ipCount": "1", "sampleIps": ["127.0.0.13"]},
            {"reputation": "HIGH", "ipCount": "1", "sampleIps": ["127.0.0.10"]}
        ]
    })
    .to_string()
}

/// An answer the server gives for one path.
#[derive(Clone)]
pub enum Answer {
    /// Status and body.
    Body(u16, String),
    /// Never answers within `ms`, then closes (a timeout for the client).
    Hang(u64),
    /// The OAuth token endpoint: checks the JWT against the public key.
    Token,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub authorization: Option<String>,
    pub body: String,
}

struct State {
    answers: HashMap<String, Answer>,
    seen: Vec<Seen>,
    /// PKCS#1 RSAPublicKey DER of the service account's key.
    public_key: Vec<u8>,
    token_uri: String,
}

pub struct FeedServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    pub ca: PathBuf,
}

/// An RSA service-account key: (PKCS#8 PEM, PKCS#1 public key DER).
pub fn rsa_key() -> (String, Vec<u8>) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = key.as_der().unwrap();
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    (pem, key.public_key().as_ref().to_vec())
}

impl FeedServer {
    /// Starts on 127.0.0.1 with a certificate of a fresh CA written under `dir`; `public_key`
    /// verifies the token requests.
    pub fn start(dir: &Path, public_key: Vec<u8>) -> FeedServer {
        install_crypto_provider();
        let certs = make_certs(&dir.join("feed-ca"), &["feeds.test"]);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&certs.key).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            answers: HashMap::new(),
            seen: Vec::new(),
            public_key,
            token_uri: format!("https://127.0.0.1:{}/token", addr.port()),
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (st, config) = (st.clone(), config.clone());
                std::thread::spawn(move || serve(tcp, config, st));
            }
        });
        FeedServer {
            addr,
            state,
            ca: certs.ca,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn token_uri(&self) -> String {
        self.state.lock().unwrap().token_uri.clone()
    }

    /// Sets what `path` (without the query) answers.
    pub fn set(&self, path: &str, answer: Answer) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(path.to_string(), answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, state: Arc<Mutex<State>>) {
    tcp.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let path = target.split('?').next().unwrap_or("").to_string();
    let answer = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method,
            target: target.clone(),
            authorization: authorization.clone(),
            body: body.clone(),
        });
        let bearer_ok = authorization.as_deref() == Some(&format!("Bearer {ACCESS_TOKEN}"));
        match st.answers.get(&path).cloned() {
            Some(Answer::Token) => {
                let (code, text) = token_answer(&st, &body);
                Answer::Body(code, text)
            }
            // The API paths want the token the token endpoint handed out.
            Some(_) if path.starts_with("/v") && !bearer_ok => Answer::Body(
                401,
                "{\"error\": {\"code\": 401, \"status\": \"UNAUTHENTICATED\"}}".into(),
            ),
            Some(a) => a,
            None => Answer::Body(
                404,
                "{\"error\": {\"code\": 404, \"status\": \"NOT_FOUND\"}}".into(),
            ),
        }
    };
    let (code, text) = match answer {
        Answer::Hang(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            return;
        }
        Answer::Body(code, text) => (code, text),
        Answer::Token => unreachable!(),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = tls.write_all(response.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
}

/// The token endpoint's rule: a JWT bearer grant whose RS256 signature verifies with the
/// service account's public key, `aud` = the token URI, a scope naming postmaster, and a
/// lifetime of at most an hour.
fn token_answer(st: &State, form: &str) -> (u16, String) {
    let refuse = |why: &str| {
        (
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": why}).to_string(),
        )
    };
    let fields: HashMap<String, String> = form
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), urldecode(v)))
        .collect();
    if fields.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse("grant_type");
    }
    let Some(jwt) = fields.get("assertion") else {
        return refuse("no assertion");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return refuse("not a JWT");
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &st.public_key,
    );
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return refuse("Invalid JWT Signature.");
    }
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_default())
            .unwrap_or_default();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap_or_default())
            .unwrap_or_default();
    let life =
        claims["exp"].as_u64().unwrap_or(0) as i64 - claims["iat"].as_u64().unwrap_or(0) as i64;
    if header["alg"] != "RS256"
        || claims["aud"] != st.token_uri.as_str()
        || !claims["scope"]
            .as_str()
            .unwrap_or("")
            .contains("postmaster")
        || !(1..=3600).contains(&life)
    {
        return refuse("claims");
    }
    (
        200,
        serde_json::json!({"access_token": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 3599})
            .to_string(),
    )
}

fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
