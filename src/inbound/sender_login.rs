//! `[[access.sender_login]]` (like Postfix's `smtpd_sender_login_maps`): which envelope senders
//! and `From:` addresses a login may use.
//!
//! Rules:
//! - No entry at all: no restriction (configs from before this key keep working; `serve` warns
//!   once at start when AUTH is offered).
//! - With entries, an authenticated user may use only addresses matching the `senders` of the
//!   entries naming it (`user`); a user without an entry may use none.
//! - A client of `access.networks` without AUTH is bound only when an entry's `network` contains
//!   its address; otherwise it may use any sender (a trusted Postfix box relays for many domains).
//! - A pattern is a case-insensitive glob (`*`, `?`) on the whole address; one without `@` names
//!   a domain (`example.com` = `*@example.com`; `*.example.com` = its subdomains).
//! - The null sender `<>` passes MAIL FROM (bounces); the message's `From:` is still checked.
//! - A sender not allowed gets `553 5.7.1` at MAIL FROM; a `From:` address not allowed (or a
//!   `From:` without a readable address) gets `550 5.7.1` at the end of DATA, before any DKIM
//!   key is chosen: nothing is signed for a domain the login may not use.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::pool::rules::glob;
use crate::reply::Reply;

/// One `[[access.sender_login]]` entry: a user or a network, and its sender patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderLogin {
    /// A user of `access.users_file`.
    pub user: Option<String>,
    /// Clients in this network (without AUTH).
    pub network: Option<IpNet>,
    /// Address patterns (`*@example.com`, `news-*@example.org`) or domains (`example.com`).
    pub senders: Vec<String>,
}

impl SenderLogin {
    /// What the TOML types cannot say: one of `user`/`network`, and at least one pattern.
    pub fn problem(&self) -> Option<String> {
        match (&self.user, &self.network) {
            (Some(_), Some(_)) => return Some("give user or network, not both".into()),
            (None, None) => return Some("needs user or network".into()),
            _ => {}
        }
        if self.senders.is_empty() || self.senders.iter().any(|s| s.trim().is_empty()) {
            return Some("senders needs at least one non-empty pattern".into());
        }
        None
    }
}

/// The senders one client may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Senders {
    Any,
    Only(Vec<String>),
}

impl Senders {
    /// The patterns that bind `user` (when authenticated) or else the client at `ip`.
    pub fn for_client(rules: &[SenderLogin], user: Option<&str>, ip: IpAddr) -> Senders {
        if rules.is_empty() {
            return Senders::Any;
        }
        let ip = super::access::normalise(ip);
        let mine = |r: &&SenderLogin| match user {
            Some(u) => r.user.as_deref() == Some(u),
            None => r.network.is_some_and(|n| n.contains(&ip)),
        };
        let matching: Vec<&SenderLogin> = rules.iter().filter(mine).collect();
        if user.is_none() && matching.is_empty() {
            return Senders::Any;
        }
        Senders::Only(
            matching
                .iter()
                .flat_map(|r| r.senders.iter().map(|s| s.trim().to_string()))
                .collect(),
        )
    }

    pub fn allows(&self, address: &str) -> bool {
        match self {
            Senders::Any => true,
            Senders::Only(patterns) => patterns.iter().any(|p| matches(p, address)),
        }
    }

    /// MAIL FROM: `553 5.7.1` unless the envelope sender is allowed (`<>` always is).
    pub fn check_mail_from(&self, sender: &str) -> Result<(), Reply> {
        if sender.is_empty() || self.allows(sender) {
            Ok(())
        } else {
            Err(Reply::new(
                553,
                "5.7.1",
                "Sender address not owned by this login",
            ))
        }
    }
}

/// `From:` refused at the end of DATA.
pub fn from_refused() -> Reply {
    Reply::new(550, "5.7.1", "From: address not owned by this login")
}

fn matches(pattern: &str, address: &str) -> bool {
    if pattern.contains('@') {
        return glob(pattern, address);
    }
    // A domain pattern: the address's domain (after the last `@`, a quoted local part may hold
    // one) must match it.
    match address.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            glob(pattern.trim_end_matches('.'), domain.trim_end_matches('.'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<SenderLogin> {
        toml::from_str::<std::collections::HashMap<String, Vec<SenderLogin>>>(
            r#"
            r = [
              { user = "alice", senders = ["example.com", "*.example.com"] },
              { user = "alice", senders = ["news-*@example.org"] },
              { user = "bob", senders = ["bob@other.example"] },
              { network = "10.1.0.0/16", senders = ["app.example"] },
            ]"#,
        )
        .unwrap()
        .remove("r")
        .unwrap()
    }

    #[test]
    fn users_get_only_their_patterns() {
        let r = rules();
        let ip = "127.0.0.1".parse().unwrap();
        let alice = Senders::for_client(&r, Some("alice"), ip);
        for ok in [
            "a@example.com",
            "A@EXAMPLE.COM",
            "x@mail.example.com",
            "news-1@example.org",
        ] {
            assert!(alice.allows(ok), "{ok}");
        }
        for bad in [
            "ceo@othercustomer.example",
            "a@example.com.evil",
            "a@notexample.com",
            "news@example.org",
            "\"x@example.com\"@evil.example",
            "example.com",
            "",
        ] {
            assert!(!alice.allows(bad), "{bad}");
        }
        assert!(alice.check_mail_from("").is_ok());
        let e = alice.check_mail_from("b@other.example").unwrap_err();
        assert_eq!((e.code, e.status.as_str()), (553, "5.7.1"));
        // A user without an entry may use nothing; a network client only its entry's patterns.
        assert!(!Senders::for_client(&r, Some("carol"), ip).allows("c@example.com"));
        let app = Senders::for_client(&r, None, "10.1.2.3".parse().unwrap());
        assert!(app.allows("x@app.example") && !app.allows("x@example.com"));
        assert_eq!(Senders::for_client(&r, None, ip), Senders::Any);
        assert_eq!(Senders::for_client(&[], Some("alice"), ip), Senders::Any);
    }

    #[test]
    fn entries_need_one_subject_and_patterns() {
        let bad = |s: &str| toml::from_str::<SenderLogin>(s).unwrap().problem();
        assert!(bad("senders = [\"a.example\"]").is_some());
        assert!(bad("user = \"a\"\nnetwork = \"10.0.0.0/8\"\nsenders = [\"x\"]").is_some());
        assert!(bad("user = \"a\"\nsenders = []").is_some());
        assert!(bad("user = \"a\"\nsenders = [\"a.example\"]").is_none());
    }
}
