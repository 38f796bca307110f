//! MAIL FROM and RCPT TO: the envelope of one transaction, relay access and per-user caps.

use super::address::{AddrError, is_xtext, parse_params, parse_path, split_command};
use super::message::Bdat;
use super::session::{Flow, Session};
use super::settings::ListenAuth;
use crate::reply::Reply;
use crate::spool::Recipient;

/// ESMTP parameters: upper-cased keyword, value.
type Params = Vec<(String, Option<String>)>;

/// The mail transaction between MAIL FROM and the end of DATA.
pub(super) struct Tx {
    pub(super) sender: String,
    pub(super) smtputf8: bool,
    pub(super) body_8bit: bool,
    pub(super) ret: Option<String>,
    pub(super) envid: Option<String>,
    pub(super) rcpts: Vec<Recipient>,
    /// The message being received with BDAT, between chunks.
    pub(super) bdat: Option<Bdat>,
    /// `SIZE=` from MAIL FROM, 0 if none.
    pub(super) declared_size: u64,
    /// `REQUIRETLS` on MAIL FROM (RFC 8689), only accepted inside TLS.
    pub(super) requiretls: bool,
    /// Its recipients are `[feedback] addresses`: a report, handled, not relayed.
    pub(super) feedback: bool,
    /// Its place in the accounts' hourly count: given back when the transaction is dropped.
    pub(super) slot: Option<crate::reputation::accounts::Slot>,
}

impl Session {
    /// `FROM:<path> params` / `TO:<path> params`: the path's inside and the parsed parameters.
    fn path_and_params<'a>(
        &self,
        args: &'a str,
        keyword: &str,
    ) -> Result<(&'a str, Params), Reply> {
        let verb = if keyword == "FROM" { "MAIL" } else { "RCPT" };
        let (path, params) = split_command(args, keyword).ok_or_else(|| {
            Reply::new(
                501,
                "5.5.4",
                format!("Syntax: {verb} {keyword}:<address> [parameters]"),
            )
        })?;
        let params = parse_params(params)?;
        if !self.esmtp && !params.is_empty() {
            return Err(Reply::new(555, "5.5.4", "Parameters need EHLO"));
        }
        Ok((path, params))
    }

    pub(super) fn mail(&mut self, args: &str) -> Flow {
        if self.helo.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO/HELO first"));
        }
        if self.tx.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Nested MAIL command"));
        }
        // For the log of a refusal; cleared once accepted (then `tx.sender` is logged).
        self.mail_from = split_command(args, "FROM").map(|(p, _)| p.to_string());
        if self.listen.auth == ListenAuth::Required && self.user.is_none() {
            return self.refuse("mail", Reply::new(530, "5.7.0", "Authentication required"));
        }
        let (path, params) = match self.path_and_params(args, "FROM") {
            Ok(p) => p,
            Err(r) => return self.send(r),
        };
        if !self.trusted
            && let Err((why, log)) = self.ctx.anvil.message(self.peer, std::time::Instant::now())
        {
            let r = why.reply(&self.settings().hostname, self.peer);
            crate::metrics::refused("mail", r.code);
            if let Some(unlogged) = log {
                tracing::warn!(client = %self.peer, user = self.user.as_deref().unwrap_or(""), limit = why.as_str(), unlogged, reply = %r, "per-client limit reached, message refused");
            }
            return self.send(r);
        }
        let mut tx = Tx {
            sender: String::new(),
            smtputf8: false,
            body_8bit: false,
            ret: None,
            envid: None,
            rcpts: Vec::new(),
            bdat: None,
            declared_size: 0,
            requiretls: false,
            feedback: false,
            slot: None,
        };
        let max = self.settings().limits.message_size.0;
        for (key, value) in params {
            let v = value.as_deref();
            match (key.as_str(), v) {
                ("SIZE", Some(n)) if n.bytes().all(|c| c.is_ascii_digit()) => {
                    // Digits past u64 are over any limit too (RFC 1870: 552, not a syntax error).
                    let Some(n) = n.parse::<u64>().ok().filter(|&n| n <= max) else {
                        return self.refuse(
                            "mail",
                            Reply::new(
                                552,
                                "5.3.4",
                                "Message size exceeds fixed maximum message size",
                            ),
                        );
                    };
                    // RFC 1870 §6.1: too big for the space left now is a temporary 452.
                    if let Err(r) = self.spool_has_room(n) {
                        return self.refuse("mail", r);
                    }
                    tx.declared_size = n;
                }
                ("BODY", Some(b)) if b.eq_ignore_ascii_case("8BITMIME") => tx.body_8bit = true,
                ("BODY", Some(b)) if b.eq_ignore_ascii_case("7BIT") => {}
                ("BODY", _) => {
                    return self.send(Reply::new(555, "5.5.4", "Unsupported BODY type"));
                }
                ("SMTPUTF8", None) => tx.smtputf8 = true,
                ("RET", Some(r))
                    if r.eq_ignore_ascii_case("FULL") || r.eq_ignore_ascii_case("HDRS") =>
                {
                    tx.ret = Some(r.to_ascii_uppercase());
                }
                ("ENVID", Some(e)) if e.len() <= 100 && is_xtext(e) => {
                    tx.envid = Some(e.to_string());
                }
                // RFC 8689 §4.1: only over TLS; kept with the message for every later hop.
                ("REQUIRETLS", None) if self.tls.is_some() => tx.requiretls = true,
                ("REQUIRETLS", None) => {
                    return self.refuse("mail", requiretls_needs_tls());
                }
                // RFC 4954 §5: accepted and not passed on (we are not a trusted submitter).
                ("AUTH", Some(a)) if a == "<>" || is_xtext(a) => {}
                ("SIZE" | "SMTPUTF8" | "RET" | "ENVID" | "AUTH" | "REQUIRETLS", _) => {
                    return self.send(Reply::new(501, "5.5.4", format!("Bad {key} parameter")));
                }
                _ => {
                    return self.send(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ));
                }
            }
        }
        match parse_path(path, tx.smtputf8) {
            Ok(sender) => tx.sender = sender,
            Err(AddrError::NeedsUtf8) => {
                return self.refuse("mail", needs_utf8());
            }
            Err(AddrError::Syntax(why)) => {
                return self.refuse(
                    "mail",
                    Reply::new(501, "5.1.7", format!("Bad sender address syntax: {why}")),
                );
            }
        }
        if let Err(r) = self.senders().check_mail_from(&tx.sender) {
            return self.refuse("mail", r);
        }
        if let Some(user) = self.user.clone()
            && let Err(r) = self.ctx.cap.check(&self.ctx.state, &user)
        {
            return self.refuse("mail", r);
        }
        let domain = crate::reputation::accounts::sender_domain(None, &tx.sender);
        match self.ctx.accounts.admit(self.user.as_deref(), domain) {
            Ok(slot) => tx.slot = Some(slot),
            Err(gate) => {
                if let Some(r) = gate.reply() {
                    return self.refuse("mail", r);
                }
            }
        }
        self.tx = Some(tx);
        self.mail_from = None;
        self.send(Reply::new(250, "2.1.0", "Ok"))
    }

    pub(super) fn rcpt(&mut self, args: &str) -> Flow {
        let Some(smtputf8) = self.tx.as_ref().map(|t| t.smtputf8) else {
            return self.send(Reply::new(503, "5.5.1", "Need MAIL command"));
        };
        if self.tx.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.send(Reply::new(503, "5.5.1", "RCPT after BDAT"));
        }
        // Feedback addresses take reports from anyone (`inbound::feedback`).
        if let Some(flow) = self.feedback_rcpt(args, smtputf8) {
            return flow;
        }
        // Whatever the address looks like: no relay without AUTH or a trusted address.
        if !self.may_relay() {
            return self.refuse("rcpt", relay_denied());
        }
        let (path, params) = match self.path_and_params(args, "TO") {
            Ok(p) => p,
            Err(r) => return self.send(r),
        };
        let (mut notify, mut orcpt) = (None, None);
        for (key, value) in params {
            match (key.as_str(), value) {
                ("NOTIFY", Some(n)) if valid_notify(&n) => notify = Some(n.to_ascii_uppercase()),
                ("ORCPT", Some(o)) if valid_orcpt(&o) => orcpt = Some(o),
                ("NOTIFY" | "ORCPT", _) => {
                    return self.send(Reply::new(501, "5.5.4", format!("Bad {key} parameter")));
                }
                _ => {
                    return self.send(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {key}"),
                    ));
                }
            }
        }
        let address = match parse_path(path, smtputf8) {
            Ok(a) if a.is_empty() => {
                return self.refuse("rcpt", Reply::new(501, "5.1.3", "Null recipient"));
            }
            Ok(a) => a,
            Err(AddrError::NeedsUtf8) => return self.refuse("rcpt", needs_utf8()),
            Err(AddrError::Syntax(why)) => {
                return self.refuse(
                    "rcpt",
                    Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {why}")),
                );
            }
        };
        let count = self.tx.as_ref().map(|t| t.rcpts.len()).unwrap_or(0);
        if count >= self.settings().limits.recipients_per_message {
            return self.refuse("rcpt", Reply::new(452, "4.5.3", "Too many recipients"));
        }
        if let Some(user) = self.user.clone()
            && let Err(r) = self.ctx.cap.check(&self.ctx.state, &user)
        {
            return self.refuse("rcpt", r);
        }
        let mut r = Recipient::new(address);
        r.notify = notify;
        r.orcpt = orcpt;
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(r);
        }
        self.send(Reply::new(250, "2.1.5", "Ok"))
    }
}

pub(super) fn relay_denied() -> Reply {
    Reply::new(554, "5.7.1", "Relay access denied")
}

/// REQUIRETLS asked in a plaintext session (RFC 8689 §4.1; 5.7.10 "Encryption needed").
fn requiretls_needs_tls() -> Reply {
    Reply::new(530, "5.7.10", "REQUIRETLS needed: start TLS first")
}

fn needs_utf8() -> Reply {
    Reply::new(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
}

/// RFC 3461 §4.1: `NEVER`, or a comma list of SUCCESS / FAILURE / DELAY.
fn valid_notify(v: &str) -> bool {
    let v = v.to_ascii_uppercase();
    v == "NEVER"
        || v.split(',')
            .all(|p| matches!(p, "SUCCESS" | "FAILURE" | "DELAY"))
}

/// RFC 3461 §4.2: `addr-type ";" xtext`.
fn valid_orcpt(v: &str) -> bool {
    v.split_once(';').is_some_and(|(t, a)| {
        !t.is_empty()
            && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && is_xtext(a)
            && !a.is_empty()
    })
}
