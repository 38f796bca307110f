//! Google Postmaster Tools: a service-account token, then per verified domain the spam rate
//! (API v2) and the IP reputation buckets (v1 traffic stats; v2 has no IP metric).
//!
//! Rules:
//! - Token: OAuth 2.0 JWT bearer grant (RFC 7523) at the key file's `token_uri`, the JWT signed
//!   RS256 with the key file's `private_key` (RFC 7515/7518), scopes `postmaster.traffic.readonly`
//!   (v2) and `postmaster.readonly` (v1). A refused token: the feed's error, no change.
//! - Spam rate: `POST {api_base}/v2/domains/{domain}/domainStats:query`, standard metric
//!   `SPAM_RATE`, daily, for the day before yesterday and yesterday (UTC); the latest day
//!   answered counts. The value is a fraction (like v1 `userReportedSpamRatio`): at or above
//!   `spam_rate_over` → `Over`, at or above `spam_rate_warning` → `Warning`, else `Ok`.
//!   No day answered → a note (not published yet), no verdict.
//! - IP reputation: `GET {api_base}/v1/domains/{domain}/trafficStats/{YYYYMMDD}` for yesterday,
//!   `ipReputations[]` buckets: `BAD` → quarantine for the provider (`gmail`), `LOW` →
//!   probation, `MEDIUM`/`HIGH` → nothing. Only the bucket's `sampleIps` are named (Google
//!   lists samples, not every IP); only pool IPs are judged. 404 → a note, no verdict.
//! - An answer we cannot read (not JSON, a bucket we do not know, a rate that is not a
//!   fraction) is an error for that request: no verdict from it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::fetch::{Body, Client, FetchError};
use super::settings::Postmaster;
use super::verdict::{DomainVerdict, IpVerdict, Level, Verdict};

pub const SCOPES: &str = "https://www.googleapis.com/auth/postmaster.traffic.readonly https://www.googleapis.com/auth/postmaster.readonly";

/// Why there is no token, or an answer cannot be read (module doc). No text quotes the key.
#[derive(Debug, thiserror::Error)]
pub enum PostmasterError {
    #[error("key_file {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key_file {}: not a service-account key (client_email, private_key, token_uri): line {line} column {column}",
        path.display()
    )]
    NotServiceAccount {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("key_file: private_key is not a PKCS#8 PEM key")]
    NotPkcs8,
    #[error("key_file: private_key is not an RSA key")]
    NotRsa,
    #[error("cannot sign the token request")]
    Sign,
    #[error("token refused: {0}")]
    TokenRefused(#[source] FetchError),
    #[error("{uri}: the token answer is not JSON")]
    TokenNotJson { uri: String },
    #[error("{uri}: no access_token in the answer")]
    NoAccessToken { uri: String },
    #[error("answer is not JSON")]
    NotJson,
    /// A field that must be a list (`domainStats`, `ipReputations`, `sampleIps`).
    #[error("{0} is not a list")]
    NotList(&'static str),
    #[error("a domainStat has no date")]
    NoDate,
    #[error("a spam_rate has no doubleValue/floatValue")]
    NoRate,
    #[error("spam rate {0} is not a fraction")]
    NotFraction(f64),
    #[error("unknown IP reputation {0:?}")]
    UnknownReputation(String),
    /// The sample as JSON.
    #[error("sample IP {0} is not an IP address")]
    SampleNotIp(String),
}

/// The fields of a service-account key file this needs.
#[derive(Deserialize)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

impl ServiceAccount {
    /// Reads the key file; errors never quote its contents.
    pub fn load(path: &Path) -> Result<ServiceAccount, PostmasterError> {
        let text = std::fs::read_to_string(path).map_err(|source| PostmasterError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        // The line and column only: serde's message may quote the key.
        serde_json::from_str(&text).map_err(|e| PostmasterError::NotServiceAccount {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
        })
    }

    /// The signed JWT for the bearer grant, valid an hour from `now`.
    pub fn assertion(&self, now: u64) -> Result<String, PostmasterError> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(self.private_key.as_bytes())
            .map_err(|_| PostmasterError::NotPkcs8)?;
        let key = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| PostmasterError::NotRsa)?;
        let header = json!({"alg": "RS256", "typ": "JWT"});
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPES,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; key.public_modulus_len()];
        key.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut sig,
        )
        .map_err(|_| PostmasterError::Sign)?;
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// An access token from `token_uri`.
    pub fn token(&self, client: &Client, now: u64) -> Result<String, PostmasterError> {
        let assertion = self.assertion(now)?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ];
        let text = client
            .request(&self.token_uri, &self.token_uri, None, Body::Form(&form))
            .map_err(PostmasterError::TokenRefused)?;
        let v: Value = serde_json::from_str(&text).map_err(|_| PostmasterError::TokenNotJson {
            uri: self.token_uri.clone(),
        })?;
        v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| PostmasterError::NoAccessToken {
                uri: self.token_uri.clone(),
            })
    }
}

/// A calendar day (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day {
    pub year: u32,
    pub month: u32,
    pub day: u32,
}

impl Day {
    /// The day `days_ago` days before the day of `now` (unix seconds).
    pub fn before(now: u64, days_ago: u64) -> Day {
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(now.saturating_sub(days_ago * 86400));
        let s = humantime::format_rfc3339_seconds(t).to_string();
        let n = |r: std::ops::Range<usize>| s[r].parse().unwrap_or(0);
        Day {
            year: n(0..4),
            month: n(5..7),
            day: n(8..10),
        }
    }

    fn from_json(v: &Value) -> Option<Day> {
        let n = |k: &str| v[k].as_u64().and_then(|x| u32::try_from(x).ok());
        Some(Day {
            year: n("year")?,
            month: n("month")?,
            day: n("day")?,
        })
    }

    fn json(self) -> Value {
        json!({"year": self.year, "month": self.month, "day": self.day})
    }

    pub fn compact(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// The v2 query body for the spam rate on `days`.
pub fn spam_rate_query(days: &[Day]) -> Value {
    json!({
        "metricDefinitions": [{"name": "spam_rate", "baseMetric": {"standardMetric": "SPAM_RATE"}}],
        "timeQuery": {"dateList": {"dates": days.iter().map(|d| d.json()).collect::<Vec<_>>()}},
        "aggregationGranularity": "DAILY",
    })
}

/// The latest day's spam rate in a v2 `QueryDomainStatsResponse`; `Ok(None)`: no day in it.
pub fn parse_spam_rate(text: &str) -> Result<Option<(Day, f64)>, PostmasterError> {
    let v: Value = serde_json::from_str(text).map_err(|_| PostmasterError::NotJson)?;
    let Some(stats) = v.get("domainStats") else {
        return Ok(None);
    };
    let stats = stats
        .as_array()
        .ok_or(PostmasterError::NotList("domainStats"))?;
    let mut latest: Option<(Day, f64)> = None;
    for s in stats.iter().filter(|s| s["metric"] == "spam_rate") {
        let day = Day::from_json(&s["date"]).ok_or(PostmasterError::NoDate)?;
        let value = &s["value"];
        let rate = value["doubleValue"]
            .as_f64()
            .or_else(|| value["floatValue"].as_f64())
            .ok_or(PostmasterError::NoRate)?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(PostmasterError::NotFraction(rate));
        }
        if latest.is_none_or(|(d, _)| day > d) {
            latest = Some((day, rate));
        }
    }
    Ok(latest)
}

/// Postmaster's IP reputation bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    High,
    Medium,
    Low,
    Bad,
}

/// `ipReputations[]` of a v1 `TrafficStats`: (bucket, sample IPs).
pub fn parse_ip_reputations(text: &str) -> Result<Vec<(Bucket, Vec<IpAddr>)>, PostmasterError> {
    let v: Value = serde_json::from_str(text).map_err(|_| PostmasterError::NotJson)?;
    let Some(reps) = v.get("ipReputations") else {
        return Ok(Vec::new());
    };
    let reps = reps
        .as_array()
        .ok_or(PostmasterError::NotList("ipReputations"))?;
    let mut out = Vec::new();
    for r in reps {
        let bucket = match r["reputation"].as_str().unwrap_or("") {
            "HIGH" => Bucket::High,
            "MEDIUM" => Bucket::Medium,
            "LOW" => Bucket::Low,
            "BAD" => Bucket::Bad,
            // Google's "no value" enum member: nothing to judge.
            "REPUTATION_CATEGORY_UNSPECIFIED" => continue,
            other => return Err(PostmasterError::UnknownReputation(other.to_string())),
        };
        let ips = match r.get("sampleIps") {
            None => Vec::new(),
            Some(list) => list
                .as_array()
                .ok_or(PostmasterError::NotList("sampleIps"))?
                .iter()
                .map(|ip| {
                    ip.as_str()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .ok_or_else(|| PostmasterError::SampleNotIp(ip.to_string()))
                })
                .collect::<Result<_, _>>()?,
        };
        out.push((bucket, ips));
    }
    Ok(out)
}

/// The level of `rate` against the configured lines.
pub fn level(rate: f64, s: &Postmaster) -> Level {
    if rate >= s.spam_rate_over {
        Level::Over
    } else if rate >= s.spam_rate_warning {
        Level::Warning
    } else {
        Level::Ok
    }
}

/// Verdicts on pool IPs from one domain's buckets (module doc).
pub fn judge_ips(
    buckets: &[(Bucket, Vec<IpAddr>)],
    pool: &[IpAddr],
    provider: &str,
    domain: &str,
    day: Day,
) -> Vec<IpVerdict> {
    let mut out = Vec::new();
    for (bucket, ips) in buckets {
        let (verdict, name) = match bucket {
            Bucket::Bad => (Verdict::Quarantine, "BAD"),
            Bucket::Low => (Verdict::Probation, "LOW"),
            Bucket::High | Bucket::Medium => continue,
        };
        for ip in ips.iter().filter(|ip| pool.contains(ip)) {
            out.push(IpVerdict {
                ip: *ip,
                provider: provider.to_string(),
                verdict,
                evidence: format!("Postmaster {day} {domain}: IP reputation {name}"),
            });
        }
    }
    out
}

/// What one domain's requests gave.
#[derive(Debug, Default)]
pub struct DomainRound {
    pub rows: usize,
    pub verdicts: Vec<IpVerdict>,
    pub domain: Option<DomainVerdict>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// Both requests for `domain` with `token` (blocking).
pub fn poll_domain(
    client: &Client,
    s: &Postmaster,
    token: &str,
    domain: &str,
    pool: &[IpAddr],
    now: u64,
) -> DomainRound {
    let mut round = DomainRound::default();
    let base = s.api_base.trim_end_matches('/');
    let (yesterday, before) = (Day::before(now, 1), Day::before(now, 2));
    let url = format!("{base}/v2/domains/{domain}/domainStats:query");
    let query = spam_rate_query(&[before, yesterday]);
    match client
        .request(&url, &url, Some(token), Body::Json(&query))
        .map_err(|e| e.message)
        .and_then(|t| parse_spam_rate(&t).map_err(|e| format!("{url}: {e}")))
    {
        Ok(Some((day, rate))) => {
            round.rows += 1;
            let level = level(rate, s);
            round.domain = Some(DomainVerdict {
                domain: domain.to_string(),
                spam_rate: rate,
                level,
                date: day.to_string(),
                evidence: format!("Postmaster {day} {domain}: spam rate {:.2} %", rate * 100.0),
            });
        }
        Ok(None) => round
            .notes
            .push(format!("{domain}: no spam rate for {yesterday} yet")),
        Err(e) => round.errors.push(e),
    }
    if !s.ip_reputation {
        return round;
    }
    let url = format!(
        "{base}/v1/domains/{domain}/trafficStats/{}",
        yesterday.compact()
    );
    match client.request(&url, &url, Some(token), Body::None) {
        Ok(text) => match parse_ip_reputations(&text) {
            Ok(buckets) => {
                round.rows += buckets.len();
                round.verdicts = judge_ips(&buckets, pool, &s.provider, domain, yesterday);
            }
            Err(e) => round.errors.push(format!("{url}: {e}")),
        },
        Err(e) if e.status == Some(404) => round
            .notes
            .push(format!("{domain}: no traffic stats for {yesterday} yet")),
        Err(e) => round.errors.push(e.message),
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_queries() {
        // 2026-12-07T17:00:00Z
        let now = 1_796_662_800;
        assert_eq!(Day::before(now, 1).to_string(), "2026-12-06");
        assert_eq!(Day::before(now, 7).compact(), "20261130");
        let q = spam_rate_query(&[Day::before(now, 1)]);
        assert_eq!(q["timeQuery"]["dateList"]["dates"][0]["day"], 6);
        assert_eq!(
            q["metricDefinitions"][0]["baseMetric"]["standardMetric"],
            "SPAM_RATE"
        );
    }

    #[test]
    fn reads_rates_and_buckets() {
        let text = r#"{"domainStats": [
            {"name": "domains/a.test/domainStats/x", "metric": "spam_rate", "value": {"doubleValue": 0.001}, "date": {"year": 2026, "month": 12, "day": 5}},
            {"name": "domains/a.test/domainStats/y", "metric": "spam_rate", "value": {"doubleValue": 0.0042}, "date": {"year": 2026, "month": 12, "day": 6}}
        ]}"#;
        let (day, rate) = parse_spam_rate(text).unwrap().unwrap();
        assert_eq!((day.to_string(), rate), ("2026-12-06".to_string(), 0.0042));
        assert_eq!(parse_spam_rate("{}").unwrap(), None);
        assert!(parse_spam_rate("<html>").is_err());
        assert!(parse_spam_rate(r#"{"domainStats":[{"metric":"spam_rate","value":{"doubleValue":4.2},"date":{"year":2026,"month":12,"day":6}}]}"#).is_err());
        let reps = r#"{"ipReputations": [
            {"reputation": "BAD", "ipCount": "1", "sampleIps": ["127.0.0.12"]},
            {"reputation": "LOW", "ipCount": "2", "sampleIps": ["127.0.0.13", "192.0.2.9"]},
            {"reputation": "HIGH", "ipCount": "1", "sampleIps": ["127.0.0.10"]}
        ]}"#;
        let b = parse_ip_reputations(reps).unwrap();
        let pool: Vec<IpAddr> = ["127.0.0.10", "127.0.0.12", "127.0.0.13"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let day = Day {
            year: 2026,
            month: 12,
            day: 6,
        };
        let v = judge_ips(&b, &pool, "gmail", "a.test", day);
        let got: Vec<(String, Verdict)> = v.iter().map(|v| (v.ip.to_string(), v.verdict)).collect();
        assert_eq!(
            got,
            [
                ("127.0.0.12".into(), Verdict::Quarantine),
                ("127.0.0.13".into(), Verdict::Probation)
            ]
        );
        assert!(parse_ip_reputations(r#"{"ipReputations":[{"reputation":"TERRIBLE"}]}"#).is_err());
    }
}
