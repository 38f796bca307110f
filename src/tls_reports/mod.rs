//! TLS reporting (RFC 8460): every session to an MX host of a destination domain reports its TLS
//! outcome under the policy that applied (`results`); the counts are kept per period, domain and
//! policy in the state store (`store`); once a period is over each domain that publishes a
//! `_smtp._tls` record gets one gzipped JSON report (`report`) by mail through the relay's own
//! queue or by HTTPS POST (`send`). Settings: `[tls_reports]` (`settings`).

pub mod report;
pub mod results;
pub mod send;
pub mod settings;
pub mod store;

pub use results::Sink;
pub use send::{Sent, Service};
pub use settings::Settings;
pub use store::Collector;
