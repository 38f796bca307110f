//! Microsoft SNDS (Smart Network Data Services), automated data access.
//!
//! Rules:
//! - The data file (`data.aspx?key=…`) is CSV without a header, one row per IP and activity
//!   period: IP, period start, period end, RCPT commands, DATA commands, message recipients,
//!   filter result (GREEN/YELLOW/RED), complaint rate ("< 0.1%"), trap period start, trap
//!   period end, trap hits, sample HELO, sample MAIL FROM (JMR P1 sender), comments.
//! - The IP status file (`ipStatus.aspx?key=…`) is CSV: first IP, last IP, blocked (Yes/No),
//!   details.
//! - Only pool IPs are judged; rows for other IPs are read and ignored.
//! - RED, more trap hits than `trap_hits_max`, or an IP inside a blocked range → quarantine
//!   for the provider (`microsoft`); YELLOW → probation; GREEN → nothing (a quarantine ends by
//!   its own cool-down and probation). One IP with several rows: the worst verdict wins.
//! - A file we cannot read whole (a row with too few columns, a filter result or a count we
//!   do not know, a header we do not know) is not trusted at all: an error, no verdict. A
//!   first line naming the columns ("IP Address,…") is skipped.

use std::net::IpAddr;

use super::verdict::{IpVerdict, Verdict};

/// Why an SNDS file is not trusted (module doc): the first row that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SndsError {
    #[error("not CSV: {0}")]
    NotCsv(#[source] csv::Error),
    #[error("line {line}: {got} columns, expected at least {want}")]
    Columns {
        line: usize,
        got: usize,
        want: usize,
    },
    #[error("line {line}: {text:?} is not an IP address")]
    NotIp { line: usize, text: String },
    #[error("line {line}: unknown filter result {text:?}")]
    Filter { line: usize, text: String },
    #[error("line {line}: {what} {text:?} is not a count")]
    NotCount {
        line: usize,
        what: &'static str,
        text: String,
    },
    #[error("line {line}: blocked is {text:?}, not Yes/No")]
    Blocked { line: usize, text: String },
}

/// SNDS's filter result for an IP in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    Green,
    Yellow,
    Red,
}

impl Filter {
    fn parse(s: &str) -> Option<Filter> {
        match s.trim().to_ascii_uppercase().as_str() {
            "GREEN" => Some(Filter::Green),
            "YELLOW" => Some(Filter::Yellow),
            "RED" => Some(Filter::Red),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Filter::Green => "GREEN",
            Filter::Yellow => "YELLOW",
            Filter::Red => "RED",
        }
    }
}

/// One row of the data file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataRow {
    pub ip: IpAddr,
    pub period: String,
    pub recipients: u64,
    pub filter: Filter,
    pub complaint_rate: String,
    pub trap_hits: u64,
    pub helo: String,
}

/// One row of the IP status file.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub first: IpAddr,
    pub last: IpAddr,
    pub blocked: bool,
    pub details: String,
}

const DATA_COLUMNS: usize = 11;

fn records(text: &str) -> Result<Vec<csv::StringRecord>, SndsError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for r in reader.records() {
        let r = r.map_err(SndsError::NotCsv)?;
        if r.iter().all(str::is_empty) {
            continue;
        }
        out.push(r);
    }
    Ok(out)
}

/// A first line naming the columns.
fn is_header(r: &csv::StringRecord) -> bool {
    r.get(0)
        .is_some_and(|f| f.to_ascii_lowercase().starts_with("ip") && f.parse::<IpAddr>().is_err())
}

fn count(field: Option<&str>, line: usize, what: &'static str) -> Result<u64, SndsError> {
    let f = field.unwrap_or("").trim();
    if f.is_empty() {
        return Ok(0);
    }
    f.parse().map_err(|_| SndsError::NotCount {
        line,
        what,
        text: f.to_string(),
    })
}

/// Reads the data file (module doc); `Err` when any row cannot be read.
pub fn parse_data(text: &str) -> Result<Vec<DataRow>, SndsError> {
    let mut rows = Vec::new();
    for (i, r) in records(text)?.iter().enumerate() {
        let line = i + 1;
        if i == 0 && is_header(r) {
            continue;
        }
        if r.len() < DATA_COLUMNS {
            return Err(SndsError::Columns {
                line,
                got: r.len(),
                want: DATA_COLUMNS,
            });
        }
        let ip = r[0].parse::<IpAddr>().map_err(|_| SndsError::NotIp {
            line,
            text: r[0].to_string(),
        })?;
        let filter = Filter::parse(&r[6]).ok_or_else(|| SndsError::Filter {
            line,
            text: r[6].to_string(),
        })?;
        count(r.get(3), line, "RCPT commands")?;
        count(r.get(4), line, "DATA commands")?;
        rows.push(DataRow {
            ip,
            period: format!("{}–{}", &r[1], &r[2]),
            recipients: count(r.get(5), line, "message recipients")?,
            filter,
            complaint_rate: r[7].to_string(),
            trap_hits: count(r.get(10), line, "trap hits")?,
            helo: r.get(11).unwrap_or("").to_string(),
        });
    }
    Ok(rows)
}

/// Reads the IP status file (module doc); `Err` when any row cannot be read.
pub fn parse_status(text: &str) -> Result<Vec<StatusRow>, SndsError> {
    let mut rows = Vec::new();
    for (i, r) in records(text)?.iter().enumerate() {
        let line = i + 1;
        if i == 0 && is_header(r) {
            continue;
        }
        if r.len() < 3 {
            return Err(SndsError::Columns {
                line,
                got: r.len(),
                want: 3,
            });
        }
        let ip = |f: &str| {
            f.parse::<IpAddr>().map_err(|_| SndsError::NotIp {
                line,
                text: f.to_string(),
            })
        };
        let blocked = match r[2].to_ascii_lowercase().as_str() {
            "yes" | "blocked" | "true" => true,
            "no" | "false" => false,
            other => {
                return Err(SndsError::Blocked {
                    line,
                    text: other.to_string(),
                });
            }
        };
        rows.push(StatusRow {
            first: ip(&r[0])?,
            last: ip(&r[1])?,
            blocked,
            details: r.get(3).unwrap_or("").to_string(),
        });
    }
    Ok(rows)
}

/// The verdicts on pool IPs (module doc); `provider` and `trap_hits_max` from `[feeds.snds]`;
/// `today` (`YYYY-MM-DD`) dates the IP status list, which has no date of its own (a block
/// that lasts is a verdict each day).
pub fn judge(
    data: &[DataRow],
    status: &[StatusRow],
    pool: &[IpAddr],
    provider: &str,
    trap_hits_max: u64,
    today: &str,
) -> Vec<IpVerdict> {
    let mut out = Vec::new();
    for &ip in pool {
        let mut worst: Option<(Verdict, String)> = None;
        let mut consider = |v: Verdict, evidence: String| {
            if worst.as_ref().is_none_or(|(w, _)| v > *w) {
                worst = Some((v, evidence));
            }
        };
        for row in data.iter().filter(|r| r.ip == ip) {
            let traps = row.trap_hits > trap_hits_max;
            let verdict = match row.filter {
                Filter::Red => Verdict::Quarantine,
                _ if traps => Verdict::Quarantine,
                Filter::Yellow => Verdict::Probation,
                Filter::Green => continue,
            };
            consider(verdict, row_evidence(row));
        }
        for row in status
            .iter()
            .filter(|r| r.blocked && r.first <= ip && ip <= r.last)
        {
            let evidence = format!(
                "SNDS IP status {today}: {}-{} blocked{}",
                row.first,
                row.last,
                if row.details.is_empty() {
                    String::new()
                } else {
                    format!(": {}", row.details)
                }
            );
            consider(Verdict::Quarantine, evidence);
        }
        if let Some((verdict, evidence)) = worst {
            out.push(IpVerdict {
                ip,
                provider: provider.to_string(),
                verdict,
                evidence,
            });
        }
    }
    out
}

fn row_evidence(r: &DataRow) -> String {
    format!(
        "SNDS {}: filter {}, complaint rate {}, trap hits {}, {} recipients, HELO {}",
        r.period,
        r.filter.as_str(),
        if r.complaint_rate.is_empty() {
            "-"
        } else {
            &r.complaint_rate
        },
        r.trap_hits,
        r.recipients,
        if r.helo.is_empty() { "-" } else { &r.helo }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = "\
127.0.0.10,12/6/2026 12:00 AM,12/7/2026 12:00 AM,1200,1180,1190,RED,0.5%,,,0,out1.test,bounce@a.test,
127.0.0.11,12/6/2026 12:00 AM,12/7/2026 12:00 AM,800,800,800,YELLOW,< 0.1%,,,0,out2.test,bounce@a.test,
127.0.0.12,12/6/2026 12:00 AM,12/7/2026 12:00 AM,500,500,500,GREEN,< 0.1%,12/6/2026 3:00 PM,12/6/2026 4:00 PM,3,out3.test,bounce@a.test,
127.0.0.13,12/6/2026 12:00 AM,12/7/2026 12:00 AM,500,500,500,GREEN,< 0.1%,,,0,\"out4.test, really\",bounce@a.test,
192.0.2.1,12/6/2026 12:00 AM,12/7/2026 12:00 AM,9,9,9,RED,2%,,,0,x.test,b@x.test,
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_rows_and_judges_pool_ips_only() {
        let rows = parse_data(DATA).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[3].helo, "out4.test, really");
        let status = parse_status(
            "127.0.0.14,127.0.0.15,Yes,Blocked due to user complaints\n127.0.0.13,127.0.0.13,No,\n",
        )
        .unwrap();
        let pool: Vec<IpAddr> = (10..=16).map(|n| ip(&format!("127.0.0.{n}"))).collect();
        let v = judge(&rows, &status, &pool, "microsoft", 0, "2026-12-07");
        let got: Vec<(String, Verdict)> = v.iter().map(|v| (v.ip.to_string(), v.verdict)).collect();
        assert_eq!(
            got,
            [
                ("127.0.0.10".to_string(), Verdict::Quarantine),
                ("127.0.0.11".to_string(), Verdict::Probation),
                ("127.0.0.12".to_string(), Verdict::Quarantine),
                ("127.0.0.14".to_string(), Verdict::Quarantine),
                ("127.0.0.15".to_string(), Verdict::Quarantine),
            ]
        );
        assert!(
            v[0].evidence.contains("filter RED, complaint rate 0.5%"),
            "{}",
            v[0].evidence
        );
        assert!(v[2].evidence.contains("trap hits 3"), "{}", v[2].evidence);
        assert!(
            v[3].evidence
                .contains("blocked: Blocked due to user complaints")
        );
        // A higher threshold lets the trap row pass.
        assert_eq!(
            judge(
                &rows,
                &[],
                &[ip("127.0.0.12")],
                "microsoft",
                5,
                "2026-12-07"
            )
            .len(),
            0
        );
    }

    #[test]
    fn garbled_files_are_refused_whole() {
        let shifted = "127.0.0.10,a,b,1,1,1,1,RED,0.1%,,,0,h\n";
        assert!(
            parse_data(shifted)
                .unwrap_err()
                .to_string()
                .contains("unknown filter result")
        );
        assert!(parse_data("<html>Service unavailable</html>\n").is_err());
        assert!(parse_data("Date,Clicks,Opens\n1,2,3\n").is_err());
        let header = "IP Address,Activity start,Activity end,RCPT,DATA,Recipients,Filter,Complaint,Trap start,Trap end,Trap hits,HELO,From,Comments\n";
        assert_eq!(parse_data(&format!("{header}{DATA}")).unwrap().len(), 5);
        assert!(parse_data("").unwrap().is_empty());
        assert!(parse_status("127.0.0.1,127.0.0.2,Maybe,x\n").is_err());
    }
}
