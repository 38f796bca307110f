//! One RFC 8460 report: the JSON of one policy domain's period (§4), gzipped (§5.3), the
//! domain's `_smtp._tls` record that says where it goes (§3), and the mail that carries it.
//!
//! The types are mail-auth's (`TlsReport`, `Policy`, …, with the RFC's field names); absent
//! optional fields are left out of the JSON rather than written as `null`, which the RFC's
//! schema does not allow.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{DateRange, TlsReport};

use super::store::DomainPeriod;

/// Who reports: the `[tls_reports]` names.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub organization: String,
    pub contact: String,
    pub submitter: String,
}

/// The report of one domain's period `[start, end]` (unix seconds, end inclusive).
pub fn build(who: &Reporter, dp: &DomainPeriod, end: u64, nonce: u32) -> TlsReport {
    TlsReport {
        organization_name: Some(who.organization.clone()),
        date_range: DateRange::from_timestamps(dp.start as i64, end as i64),
        contact_info: Some(who.contact.clone()).filter(|c| !c.is_empty()),
        report_id: report_id(dp.start, &dp.domain, &who.submitter, nonce),
        policies: dp.policies.clone(),
    }
}

/// Unique per period, domain and send: `START.DOMAIN.NONCE@SUBMITTER`.
fn report_id(start: u64, domain: &str, submitter: &str, nonce: u32) -> String {
    format!("{start}.{domain}.{nonce:08x}@{submitter}")
}

/// The report as JSON, absent optional fields left out.
pub fn to_json(report: &TlsReport) -> String {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    drop_nulls(&mut v);
    v.to_string()
}

fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

/// Where reports for a domain go, from its `_smtp._tls` TXT records (§3): exactly one record
/// starting `v=TLSRPTv1;` (others are ignored; none or several means no reporting), with at
/// least one `mailto:` or `https:` URI.
pub fn rua(records: &[String]) -> Option<Vec<ReportUri>> {
    let mut ours = records.iter().filter(|r| r.starts_with("v=TLSRPTv1"));
    let (Some(one), None) = (ours.next(), ours.next()) else {
        return None;
    };
    TlsRpt::parse(one.as_bytes())
        .ok()
        .map(|r| r.rua)
        .filter(|r| !r.is_empty())
}

/// The report mail (§5.3): `multipart/report; report-type="tlsrpt"`, the gzipped JSON as
/// `application/tlsrpt+gzip`, `TLS-Report-Domain`, `TLS-Report-Submitter` and the Subject
/// `Report Domain: D Submitter: S Report-ID: <ID>`. CRLF line endings.
pub fn message(
    report: &TlsReport,
    domain: &str,
    submitter: &str,
    from: &str,
    to: &[String],
    gz: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(gz.len() * 2 + 2048);
    report.write_rfc5322_from_bytes(
        domain,
        submitter,
        from,
        to.iter().map(String::as_str),
        gz,
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::policy::{PolicyKind, ReportPolicy, SessionResult, TlsFailure};
    use crate::tls_reports::store::Collector;
    use std::sync::Arc;

    #[test]
    fn the_record_says_where_reports_go() {
        let one = |s: &str| rua(&[s.to_string()]);
        assert_eq!(
            one("v=TLSRPTv1; rua=mailto:tls@d.test,https://r.d.test/v1"),
            Some(vec![
                ReportUri::Mail("tls@d.test".into()),
                ReportUri::Http("https://r.d.test/v1".into())
            ])
        );
        assert_eq!(one("v=TLSRPTv1;"), None);
        assert_eq!(one("v=spf1 -all"), None);
        let two = [
            "v=TLSRPTv1; rua=mailto:a@d.test".to_string(),
            "v=TLSRPTv1; rua=mailto:b@d.test".to_string(),
        ];
        assert_eq!(rua(&two), None, "two records: no reporting (RFC 8460 §3)");
        let other = [
            "v=TLSRPTv1; rua=mailto:a@d.test".to_string(),
            "google-site-verification=x".to_string(),
        ];
        assert_eq!(rua(&other).map(|r| r.len()), Some(1));
    }

    #[test]
    fn the_json_has_the_rfc_field_names_and_no_nulls() {
        let c = Collector::new(None, std::time::Duration::from_secs(86_400));
        let fail = SessionResult {
            policy: Arc::new(ReportPolicy {
                domain: "d.test".into(),
                kind: PolicyKind::NoPolicyFound,
                strings: Vec::new(),
                mx_patterns: Vec::new(),
            }),
            sending_ip: None,
            mx_host: "mx.d.test".into(),
            receiving_ip: Some("127.0.0.20".parse().unwrap()),
            result: Err(TlsFailure::StarttlsNotSupported),
        };
        c.record(&fail, 86_400 + 7);
        let mut ok = fail.clone();
        ok.result = Ok(());
        c.record(&ok, 86_400 + 8);
        let dp = &c.collected(None).unwrap()[0];
        let who = Reporter {
            organization: "Example Net".into(),
            contact: "mailto:ops@example.net".into(),
            submitter: "relay.example.net".into(),
        };
        let report = build(&who, dp, 2 * 86_400 - 1, 1);
        let v: serde_json::Value = serde_json::from_str(&to_json(&report)).unwrap();
        assert_eq!(v["organization-name"], "Example Net");
        assert_eq!(v["contact-info"], "mailto:ops@example.net");
        assert_eq!(v["date-range"]["start-datetime"], "1970-01-02T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "1970-01-02T23:59:59Z");
        assert_eq!(v["report-id"], "86400.d.test.00000001@relay.example.net");
        let p = &v["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "no-policy-found");
        assert_eq!(p["policy"]["policy-domain"], "d.test");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        let d = &p["failure-details"][0];
        assert_eq!(d["result-type"], "starttls-not-supported");
        assert_eq!(d["receiving-mx-hostname"], "mx.d.test");
        assert_eq!(d["receiving-ip"], "127.0.0.20");
        assert_eq!(d["failed-session-count"], 1);
        assert!(d.get("sending-mta-ip").is_none(), "no nulls: {d}");
        // Round trip through gzip and mail-auth's parser of the mail.
        let gz = gzip(to_json(&report).as_bytes());
        let mail = message(
            &report,
            "d.test",
            "relay.example.net",
            "tls@example.net",
            &["tls@d.test".into()],
            &gz,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&mail);
        assert!(text.contains("TLS-Report-Domain: d.test\r\n"), "{text}");
        assert!(text.contains("report-type=\"tlsrpt\"") || text.contains("report-type=tlsrpt"));
        let parsed = TlsReport::parse_rfc5322(&mail, 1 << 20).unwrap();
        assert_eq!(parsed.report_id, report.report_id);
    }
}
