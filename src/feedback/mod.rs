//! Complaints: ARF reports (RFC 5965) from receivers' feedback loops, traced back to the message
//! poolrelay sent, and handed to whoever acts on them.
//!
//! Rules:
//! - A report arrives over SMTP to a `[feedback] addresses` recipient (never relayed), through
//!   `poolrelay feedback < report.eml`, or `POST /api/feedback`; not a report → counted and
//!   logged once, never an error for the sender.
//! - Tracing prefers the trace header poolrelay signed into the message (a reference
//!   authenticated with a key in the state store: a forged one is refused), then the report's
//!   `Source-IP`, the receiver's `Received:` in the original, then poolrelay's delivery records.
//!   A login, sender domain or queue id comes only from the trace header or poolrelay's own
//!   record of the original (`attribute`), never from what the report says.
//! - A traced `Complaint` goes to every `OnComplaint` in order: the login's and sender domain's
//!   accounts first (they may take the blame), then the IP × provider windows and suppression.
//!
//! One file per concern (the shared types are `reputation::complaint`): `settings` (`[feedback]`), `trace`
//! (the headers stamped at signing), `report` (reading reports), `store` (delivery records and
//! keys in the state store), `attribute` (tracing one report), `service` (intake, dispatch),
//! `farm` (the farm's key). `poolrelay feedback` is `cli::feedback`.

mod attribute;
pub mod farm;
pub mod report;
pub mod service;
pub mod settings;
pub mod store;
pub mod trace;

pub use crate::reputation::complaint::{Charge, Complaint, Evidence, OnComplaint, dispatch};
pub use service::{Feedback, Handled, OpenError, Traced, Via};
pub use settings::Settings;
