//! Is each pool IP still good: DNSBL checks of every pool IP, reply classes and outcome windows
//! per IP × provider, complaint rates, and the quarantines they lead to (through the pool's
//! API).

pub mod accounts;
pub mod bounce;
pub mod complaint;
pub mod complaints;
pub mod dnsbl;
pub mod feeds;
pub mod history;
pub mod rates;
pub mod settings;
pub mod suppress;

pub use settings::{Dnsbl, DnsblSpec, Settings, check_config};
