//! `[[access.sender_login]]` (like Postfix's `smtpd_sender_login_maps`): which envelope senders
//! and `From:` addresses a login may use.
//!
//! Rules:
//! - An authenticated user may use the `senders` of the entries naming it (`user`), plus its own
//!   login's domain when the login is an address (`alice@example.com` may use `*@example.com`,
//!   not its subdomains). A login that is not an address and has no entry may use no sender;
//!   `senders = ["*"]` grants any sender explicitly. No entries at all means the same: there is
//!   no "unrestricted" default (`serve` warns at start about logins that may use nothing).
//! - A client of `access.networks` without AUTH is bound only when an entry's `network` contains
//!   its address; otherwise it may use any sender (a trusted Postfix box relays for many domains).
//! - A pattern is a case-insensitive glob (`*`, `?`) on the whole address; one without `@` names
//!   a domain (`example.com` = `*@example.com`; `*.example.com` = its subdomains).
//! - The null sender `<>` passes MAIL FROM (bounces); the message's `From:` is still checked.
//! - A sender not allowed gets `553 5.7.1` at MAIL FROM; a `From:` or `Sender:` address not
//!   allowed gets `550 5.7.1` at the end of DATA, before any DKIM key is chosen: nothing is signed
//!   for a domain the login may not use. A malformed or missing `From:` is refused before that
//!   (`author`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::reply::Reply;
use crate::util::glob::glob;

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
        let Some(user) = user else {
            let ip = super::access::normalise(ip);
            let patterns: Vec<String> = rules
                .iter()
                .filter(|r| r.network.is_some_and(|n| n.contains(&ip)))
                .flat_map(|r| r.senders.iter().map(|s| s.trim().to_string()))
                .collect();
            return if patterns.is_empty() {
                Senders::Any
            } else {
                Senders::Only(patterns)
            };
        };
        let mut patterns: Vec<String> = rules
            .iter()
            .filter(|r| r.user.as_deref() == Some(user))
            .flat_map(|r| r.senders.iter().map(|s| s.trim().to_string()))
            .collect();
        patterns.extend(login_domain(user));
        Senders::Only(patterns)
    }

    pub fn allows(&self, address: &str) -> bool {
        match self {
            Senders::Any => true,
            Senders::Only(patterns) => patterns.iter().any(|p| matches(p, address)),
        }
    }

    /// MAIL FROM: `553 5.7.1` unless the envelope sender is allowed (`<>` always is).
    pub fn check_mail_from(&self, sender: &str) -> Result<(), Reply> {
        match self {
            _ if sender.is_empty() || self.allows(sender) => Ok(()),
            // Says what the operator has to add, not just "no".
            Senders::Only(patterns) if patterns.is_empty() => Err(Reply::new(
                553,
                "5.7.1",
                "This login may use no sender: it is not an address and no [[access.sender_login]] entry names it",
            )),
            _ => Err(Reply::new(
                553,
                "5.7.1",
                "Sender address not owned by this login",
            )),
        }
    }
}

/// The domain pattern a login that is an address (`alice@example.com`) may use; `None` for other
/// logins, and for a "domain" that is not a plain host name (it must not act as a glob).
pub fn login_domain(login: &str) -> Option<String> {
    let (local, domain) = login.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    let plain = domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    (!local.is_empty() && plain).then(|| domain.to_ascii_lowercase())
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

/// A login that is not an address and has no entry gets `553` at every MAIL FROM: say so at
/// start (and on reload), not only to the client.
pub fn warn_logins_without_senders<'a>(
    logins: impl Iterator<Item = &'a str>,
    rules: &[SenderLogin],
) {
    let mut bare: Vec<&str> = logins
        .filter(|u| {
            login_domain(u).is_none() && !rules.iter().any(|r| r.user.as_deref() == Some(*u))
        })
        .collect();
    if !bare.is_empty() {
        bare.sort_unstable();
        tracing::warn!(
            logins = %bare.join(","),
            "these logins may use no sender (553 5.7.1): give each an [[access.sender_login]] entry (senders = [\"*\"] for any)"
        );
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
    }

    #[test]
    fn the_default_is_the_logins_own_domain_and_nothing_else() {
        let ip = "127.0.0.1".parse().unwrap();
        // No entries at all: no longer "anyone may send as anyone".
        let shop = Senders::for_client(&[], Some("shop@Example.COM"), ip);
        assert_eq!(shop, Senders::Only(vec!["example.com".into()]));
        assert!(shop.allows("news@example.com") && shop.allows("shop@EXAMPLE.com"));
        // Subdomains and look-alikes are not implied.
        for bad in [
            "a@mail.example.com",
            "a@example.com.evil",
            "a@other.example",
        ] {
            assert!(!shop.allows(bad), "{bad}");
        }
        // An entry adds to the own domain.
        let r = rules();
        let extra = toml::from_str::<SenderLogin>(
            "user = \"shop@example.com\"\nsenders = [\"*.example.com\"]",
        )
        .unwrap();
        let shop = Senders::for_client(&[r, vec![extra]].concat(), Some("shop@example.com"), ip);
        assert!(shop.allows("a@example.com") && shop.allows("a@mail.example.com"));
        assert!(!shop.allows("a@example.org"));

        // A login that is not an address, without an entry: no sender, and a reply that says why.
        let nobody = Senders::for_client(&[], Some("carol"), ip);
        assert_eq!(nobody, Senders::Only(Vec::new()));
        let e = nobody.check_mail_from("carol@example.com").unwrap_err();
        assert_eq!((e.code, e.status.as_str()), (553, "5.7.1"));
        assert!(e.text.contains("[[access.sender_login]]"), "{}", e.text);
        assert!(nobody.check_mail_from("").is_ok());

        // `*` grants any sender explicitly.
        let any = toml::from_str::<SenderLogin>("user = \"relay\"\nsenders = [\"*\"]").unwrap();
        let relay = Senders::for_client(&[any], Some("relay"), ip);
        assert!(relay.allows("ceo@othercustomer.example") && relay.allows("x@y.example"));
        assert!(relay.check_mail_from("a@b.example").is_ok());
    }

    #[test]
    fn only_plain_host_names_make_a_login_domain() {
        assert_eq!(login_domain("a@Example.com."), Some("example.com".into()));
        for login in [
            "alice",
            "@example.com",
            "a@",
            "a@*",
            "a@*.example.com",
            "a@ex?mple.com",
            "a@b..c",
        ] {
            assert_eq!(login_domain(login), None, "{login}");
        }
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
