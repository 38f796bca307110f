//! poolrelay: an SMTP smarthost relay that sends through a pool of source IPs.
//!
//! One message's path, one module per stage:
//! inbound → spool → signing → routing → pool → delivery → outcome (→ reputation).

pub mod admin;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod doctor;
pub mod feedback;
pub mod inbound;
pub mod metrics;
pub mod outcome;
pub mod pool;
pub mod reload;
pub mod reply;
pub mod reputation;
pub mod routing;
pub mod send;
pub mod server;
pub mod signing;
pub mod spool;
pub mod state;
pub mod text;
pub mod tls;
pub mod tls_reports;
pub mod util;
