//! Tracing one report to what poolrelay sent (the order is `service`'s rules): the trace
//! header, `Source-IP`, `Received:`, then the delivery records.
//!
//! Rules:
//! - Who sent it (login, sender domain) and which message (queue id) come only from what
//!   poolrelay itself wrote: an opened trace header, or a delivery record matched by the
//!   original's Message-ID hash and the named recipient together (or the record of a queue id
//!   a trace header gave). Nothing the report says (`From:`, `Source-IP`, `Received:`, a
//!   Message-ID or a recipient alone) names a customer: anyone can write those.
//! - A report with only `Source-IP`/`Received:` evidence (or a record found by Message-ID
//!   alone, or by recipient alone) counts against the pool IP × provider, with no login,
//!   sender domain or queue id.
//! - The topmost trace header counts, and only on the message it was sealed for: when it
//!   carries a Message-ID hash, the original's Message-ID must have that hash; a genuine
//!   header copied onto another message is passed over (the other evidence traces the report),
//!   one that does not open refuses the report.

use std::net::IpAddr;

use super::report::Report;
use super::store::{self, Delivery};
use super::trace::{self, Facts, Forged, Keys};
use super::{Complaint, Evidence};
use crate::spool::now_unix;
use crate::state::{State, StateError};

/// The rules of `service`'s module doc. `Ok(Err)`: forged; `Ok(Ok(None))`: untraced.
#[allow(clippy::type_complexity)]
pub(super) fn trace(
    r: &Report,
    keys: &Keys,
    state: &State,
    pool_ips: &[IpAddr],
) -> Result<Result<Option<Complaint>, Forged>, StateError> {
    let ours = |ip: &IpAddr| pool_ips.contains(ip);
    let recipient = r
        .rcpt_to
        .iter()
        .chain(r.original.recipient.iter())
        .find(|a| a.contains('@') && !a.contains("redacted"))
        .cloned();
    let mut c = Complaint {
        feedback_type: r.feedback_type.clone(),
        reporter: r.reporter.clone(),
        provider: None,
        source_ip: None,
        queue_id: None,
        login: None,
        sender_domain: None,
        recipient: recipient.clone(),
        arrived_at: now_unix(),
        evidence: Evidence::Trace,
    };
    let mut evidence = None;
    // Our record of the original: may name the login, sender domain and queue id.
    let mut record = None;
    // A record that only says where a message went (IP, provider).
    let mut hint = None;
    if let Some(value) = r.original.traces.first() {
        let facts = match keys.open(value) {
            Ok(f) => f,
            Err(forged) => return Ok(Err(forged)),
        };
        if sealed_for(&facts, r) {
            evidence = Some(Evidence::Trace);
            let records = store::by_queue(state, &facts.queue_id)?;
            record = pick(records, recipient.as_deref(), r.source_ip);
            c.queue_id = Some(facts.queue_id);
            c.login = facts.login;
            c.sender_domain = facts.sender_domain;
        }
    }
    if record.is_none() {
        if let Some(ip) = r.source_ip.filter(|ip| ours(ip)) {
            c.source_ip = Some(ip);
            evidence.get_or_insert(Evidence::SourceIp);
        } else if let Some(ip) = r.original.received_ips.iter().find(|ip| ours(ip)) {
            c.source_ip = Some(*ip);
            evidence.get_or_insert(Evidence::Received);
        }
    }
    if record.is_none() && c.queue_id.is_none() {
        record = matched(state, r, recipient.as_deref())?;
        if record.is_none() {
            hint = hinted(state, r, recipient.as_deref(), c.source_ip)?;
        }
        if record.is_some() || hint.is_some() {
            evidence.get_or_insert(Evidence::Records);
        }
    }
    let Some(evidence) = evidence else {
        return Ok(Ok(None));
    };
    c.evidence = evidence;
    if let Some(d) = record {
        c.source_ip = c.source_ip.or(Some(d.source_ip));
        c.provider = Some(d.provider);
        if c.queue_id.is_none() {
            c.queue_id = Some(d.queue_id);
            c.login = d.login;
        }
        c.sender_domain = c.sender_domain.or(d.sender_domain);
        c.recipient = c.recipient.or(Some(d.recipient));
    } else if let Some(d) = hint {
        c.source_ip = c.source_ip.or(Some(d.source_ip));
        c.provider = Some(d.provider);
    }
    Ok(Ok(Some(c)))
}

/// Whether an opened trace header was sealed for the original it is on (its Message-ID hash,
/// when it has one, is the original's).
fn sealed_for(facts: &Facts, r: &Report) -> bool {
    let Some(sealed) = &facts.message_id else {
        return true;
    };
    let original = r.original.message_id.as_deref().map(trace::message_id_hash);
    if original.as_ref() == Some(sealed) {
        return true;
    }
    tracing::warn!(
        queue_id = %facts.queue_id,
        "feedback: trace header of another message (Message-ID differs), passed over"
    );
    false
}

/// Our delivery record of the original: its Message-ID hash and the named recipient.
fn matched(
    state: &State,
    r: &Report,
    recipient: Option<&str>,
) -> Result<Option<Delivery>, StateError> {
    let (Some(mid), Some(rcpt)) = (&r.original.message_id, recipient) else {
        return Ok(None);
    };
    Ok(store::by_message_id(state, &trace::message_id_hash(mid))?
        .into_iter()
        .find(|d| d.recipient == rcpt))
}

/// A record that says where the original went, not who sent it: by its Message-ID alone,
/// else the newest delivery to the recipient (from `ip`, when known).
fn hinted(
    state: &State,
    r: &Report,
    recipient: Option<&str>,
    ip: Option<IpAddr>,
) -> Result<Option<Delivery>, StateError> {
    let mut found = Vec::new();
    if let Some(mid) = &r.original.message_id {
        found = store::by_message_id(state, &trace::message_id_hash(mid))?;
    }
    if found.is_empty()
        && let Some(rcpt) = recipient
    {
        found = store::by_recipient(state, rcpt)?;
        found.retain(|d| ip.is_none_or(|ip| ip == d.source_ip));
        found = found.pop().into_iter().collect();
    }
    Ok(pick(found, recipient, ip))
}

/// The record for this complaint among a message's: the named recipient's, else the one from
/// the report's source IP, else the only IP the message left from.
fn pick(records: Vec<Delivery>, rcpt: Option<&str>, ip: Option<IpAddr>) -> Option<Delivery> {
    if let Some(rcpt) = rcpt
        && let Some(d) = records.iter().find(|d| d.recipient == rcpt)
    {
        return Some(d.clone());
    }
    if let Some(ip) = ip
        && let Some(d) = records.iter().find(|d| d.source_ip == ip)
    {
        return Some(d.clone());
    }
    let first = records.first()?;
    records
        .iter()
        .all(|d| d.source_ip == first.source_ip)
        .then(|| first.clone())
}

/// The value of our trace header among CRLF header lines (the envelope's `prepend`).
pub(super) fn trace_in(prepend: &str) -> Option<String> {
    let mut lines = prepend.split("\r\n");
    let name = format!("{}:", trace::TRACE_HEADER);
    let first = lines.find(|l| {
        l.get(..name.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&name))
    })?;
    let mut value = first[name.len()..].to_string();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            value.push_str(l);
        } else {
            break;
        }
    }
    Some(value)
}
