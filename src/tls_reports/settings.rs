//! `[tls_reports]` in the config: whether poolrelay reports its TLS results (RFC 8460) to the
//! domains that ask for them, who it says it is, and how often.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::util::settings::DurationStr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Collect results and send reports. Off: nothing is collected.
    #[serde(default)]
    pub enabled: bool,
    /// `organization-name` of every report (required when enabled).
    #[serde(default)]
    pub organization: String,
    /// `contact-info`: an address or URL where the receiving domain can reach the operator
    /// (required when enabled).
    #[serde(default)]
    pub contact: String,
    /// Length of one report period, aligned on the Unix epoch (so `1d` = UTC days, as RFC 8460
    /// §4.1 asks); a report is sent for each period once it is over.
    #[serde(default = "default_interval")]
    pub interval: DurationStr,
    /// `From:` of mailed reports (DKIM-signed when a `[[dkim]]` key covers its domain);
    /// default `noreply-tls-reports@HOSTNAME`.
    #[serde(default)]
    pub from: Option<String>,
    /// `TLS-Report-Submitter` and the report id's domain; default the relay's `hostname`.
    #[serde(default)]
    pub submitter: Option<String>,
    /// Extra trust anchors (PEM) for `https:` report URIs, besides the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Connect and transfer timeout of one `https:` POST.
    #[serde(default = "default_http_timeout")]
    pub http_timeout: DurationStr,
}

impl Default for Settings {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl Settings {
    /// Checks the types cannot make: (key, message) for each problem.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.enabled {
            return out;
        }
        if self.organization.trim().is_empty() {
            out.push((
                "organization",
                "required when enabled (the report's organization-name)".into(),
            ));
        }
        if self.contact.trim().is_empty() {
            out.push((
                "contact",
                "required when enabled (the report's contact-info, e.g. mailto:tls@example.net)"
                    .into(),
            ));
        }
        if self.interval.0 < Duration::from_secs(1) {
            out.push(("interval", "must be at least 1s".into()));
        }
        if let Some(from) = &self.from
            && !from.contains('@')
        {
            out.push(("from", format!("{from:?} is not an address")));
        }
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            out.push(("ca_file", format!("file {} not found", ca.display())));
        }
        out
    }

    pub fn submitter(&self, hostname: &str) -> String {
        self.submitter
            .clone()
            .unwrap_or_else(|| hostname.to_string())
    }

    pub fn from(&self, hostname: &str) -> String {
        self.from
            .clone()
            .unwrap_or_else(|| format!("noreply-tls-reports@{hostname}"))
    }
}

fn default_interval() -> DurationStr {
    DurationStr(Duration::from_secs(86_400))
}
fn default_http_timeout() -> DurationStr {
    DurationStr(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const MIN: &str = "hostname = \"relay.test\"\n[[listen]]\naddress = \"127.0.0.1:2525\"\ntls = \"none\"\nauth = \"none\"\n";

    fn errors(extra: &str) -> Vec<String> {
        match crate::config::Config::parse(Path::new("t.toml"), &format!("{MIN}{extra}")) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn config_errors_name_the_file_and_line() {
        assert!(errors("").is_empty());
        assert!(
            errors("[tls_reports]\norganization = \"\"\n").is_empty(),
            "off: unchecked"
        );
        let e = errors("[tls_reports]\nenabled = true\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "t.toml:6: tls_reports.organization: required when enabled (the report's organization-name)"
        );
        assert!(
            e[1].starts_with("t.toml:6: tls_reports.contact: required"),
            "{e:?}"
        );
        let ok =
            "[tls_reports]\nenabled = true\norganization = \"O\"\ncontact = \"mailto:a@b.test\"\n";
        assert!(errors(ok).is_empty());
        let e = errors(&format!("{ok}interval = \"0s\"\n"));
        assert_eq!(e, ["t.toml:10: tls_reports.interval: must be at least 1s"]);
        let e = errors(&format!("{ok}from = \"nobody\"\n"));
        assert_eq!(
            e,
            ["t.toml:10: tls_reports.from: \"nobody\" is not an address"]
        );
        let e = errors("[tls_reports]\nenabld = true\n");
        assert!(
            e[0].starts_with("t.toml:7:") && e[0].contains("enabld"),
            "{e:?}"
        );
    }
}
