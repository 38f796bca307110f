//! `poolrelay doctor`: what receivers check about a sender, checked before they refuse — per
//! pool IP (PTR, forward-confirmed reverse DNS, HELO name, DNSBLs) and per sending domain (SPF
//! evaluated for every sending IP, DKIM keys as published, DMARC, MX, MTA-STS (record and policy file), TLS-RPT, and
//! postmaster@/abuse@ at RCPT). Run from the CLI, and by `serve` in the background, where it
//! can keep an IP failing FCrDNS or SPF out of rotation (`[doctor] enforce`).

pub mod blocklist;
pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod feeds;
pub mod inputs;
pub mod monitor;
pub mod mx;
pub mod probe;
pub mod ptr;
pub mod report;
pub mod run;
pub mod settings;
pub mod spf;
pub mod sts_policy;
pub mod targets;

pub use inputs::Inputs;
pub use monitor::{Latest, LatestView, REASON, start};
pub use report::{Check, DomainReport, IpReport, Report, Status};
pub use run::{Doctor, DoctorError, Options, Tools};
pub use settings::{Settings, check_config};
