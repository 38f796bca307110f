//! What an RFC 3463 enhanced status code says about a failure (IANA registry, RFC 3463, 4954,
//! 7293, 7372, 7505, 8689 and the common 5.7.28).
//!
//! Rules: a detail with one meaning that MTAs use for that meaning only is `Definite` (a full
//! mailbox, a missing PTR, a failed DMARC check, expiry); a detail that MTAs also send for other
//! refusals is `Likely` (5.1.1 and 5.2.1 are often a spam or policy refusal in disguise); the
//! subject digit alone (`X.7.Y`: security or policy) is `Subject`, the weakest signal, used only
//! when nothing else speaks. Generic details (X.0.0, X.7.1, X.2.0, X.5.0) say nothing beyond the
//! subject.

use super::{Class, Scope};

/// How far a status code can be trusted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    Subject,
    Likely,
    Definite,
}

impl Strength {
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::Subject => "subject only",
            Strength::Likely => "likely",
            Strength::Definite => "definite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    pub class: Class,
    /// Only when it differs from the class's default.
    pub scope: Option<Scope>,
    pub strength: Strength,
    /// The registry's name for the code (or its subject).
    pub what: &'static str,
}

/// `5.7.26` → (5, 7, 26); None unless `X.Y.Z` with X in 2/4/5.
pub fn split(status: &str) -> Option<(u8, u16, u16)> {
    let mut it = status.trim().split('.');
    let c: u8 = it.next()?.parse().ok()?;
    let s: u16 = it.next()?.parse().ok()?;
    let d: u16 = it.next()?.parse().ok()?;
    (it.next().is_none() && matches!(c, 2 | 4 | 5)).then_some((c, s, d))
}

/// The meaning of a failure status (4.x.x / 5.x.x); None for successes and unparsable codes.
pub fn meaning(status: &str) -> Option<Meaning> {
    use Class::*;
    use Strength::*;
    let (c, s, d) = split(status)?;
    if c == 2 {
        return None;
    }
    let m = |class, strength, what| {
        Some(Meaning {
            class,
            scope: None,
            strength,
            what,
        })
    };
    let temp_or = |permanent| if c == 4 { Transient } else { permanent };
    match (s, d) {
        (1, 1) => m(BadRecipient, Likely, "bad destination mailbox address"),
        (1, 2) => m(Dns, Definite, "bad destination system address"),
        (1, 3) => m(
            BadRecipient,
            Likely,
            "bad destination mailbox address syntax",
        ),
        (1, 4) => m(
            BadRecipient,
            Likely,
            "destination mailbox address ambiguous",
        ),
        (1, 6) => m(BadRecipient, Definite, "destination mailbox has moved"),
        (1, 7) => Some(Meaning {
            class: Policy,
            scope: Some(Scope::Sender),
            strength: Definite,
            what: "bad sender's mailbox address syntax",
        }),
        (1, 8) => Some(Meaning {
            class: Policy,
            scope: Some(Scope::Sender),
            strength: Definite,
            what: "bad sender's system address",
        }),
        // Null MX in the registry, but Exchange Online sends it for any unknown recipient.
        (1, 10) => m(
            BadRecipient,
            Likely,
            "recipient address has null MX / not found",
        ),
        (1, _) => m(temp_or(BadRecipient), Subject, "addressing status"),
        (2, 1) => m(
            BadRecipient,
            Likely,
            "mailbox disabled, not accepting messages",
        ),
        (2, 2) => m(MailboxFull, Definite, "mailbox full"),
        (2, 3) => m(
            Content,
            Definite,
            "message length exceeds administrative limit",
        ),
        (2, 4) => m(temp_or(Other), Likely, "mailing list expansion problem"),
        (2, _) => m(temp_or(Other), Subject, "mailbox status"),
        (3, 1) => m(Transient, Likely, "mail system full"),
        (3, 2) => m(
            temp_or(Other),
            Likely,
            "system not accepting network messages",
        ),
        (3, 3) => m(Content, Likely, "system not capable of selected features"),
        (3, 4) => m(Content, Definite, "message too big for system"),
        (3, _) => m(temp_or(Other), Subject, "mail system status"),
        (4, 3) | (4, 4) => m(Dns, Likely, "directory server failure / unable to route"),
        (4, 7) => m(Transient, Definite, "delivery time expired"),
        (4, 5) => m(Transient, Likely, "mail system congestion"),
        (4, _) => m(Transient, Subject, "network or routing status"),
        (5, 3) => m(RateLimit, Likely, "too many recipients"),
        (5, _) => m(temp_or(Other), Subject, "mail delivery protocol status"),
        // Rarely sent for anything but the message itself.
        (6, _) => m(Content, Likely, "message content or media status"),
        (7, 10) | (7, 11) | (7, 30) => m(Tls, Definite, "encryption required"),
        (7, 4..=6) => m(Policy, Likely, "security features not supported or failed"),
        (7, 7) => m(Content, Likely, "message integrity failure"),
        (7, 8) | (7, 9) | (7, 12) | (7, 14) => m(Policy, Definite, "authentication or credentials"),
        (7, 17) | (7, 18) => m(
            BadRecipient,
            Definite,
            "mailbox or domain owner has changed",
        ),
        (7, 20..=24) | (7, 26) | (7, 29) => Some(Meaning {
            class: Policy,
            scope: Some(Scope::Sender),
            strength: Definite,
            what: "sender authentication (DKIM, SPF, DMARC, ARC) failed",
        }),
        // The host is refused: another IP of the pool may have a PTR.
        (7, 25) => m(Block, Definite, "reverse DNS validation failed"),
        (7, 27) => Some(Meaning {
            class: Policy,
            scope: Some(Scope::Sender),
            strength: Definite,
            what: "sender address has null MX",
        }),
        (7, 28) => m(Reputation, Definite, "mail flood detected"),
        (7, _) => m(temp_or(Policy), Subject, "security or policy status"),
        _ => m(temp_or(Other), Subject, "other or undefined status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cls(s: &str) -> (Class, Strength) {
        let m = meaning(s).unwrap();
        (m.class, m.strength)
    }

    #[test]
    fn details_with_one_meaning_are_definite_and_generic_ones_subject_only() {
        assert_eq!(cls("5.2.2"), (Class::MailboxFull, Strength::Definite));
        assert_eq!(cls("4.2.2"), (Class::MailboxFull, Strength::Definite));
        assert_eq!(cls("5.7.26"), (Class::Policy, Strength::Definite));
        assert_eq!(cls("5.7.25"), (Class::Block, Strength::Definite));
        assert_eq!(cls("4.7.28"), (Class::Reputation, Strength::Definite));
        assert_eq!(cls("4.4.7"), (Class::Transient, Strength::Definite));
        assert_eq!(cls("5.3.4"), (Class::Content, Strength::Definite));
        assert_eq!(cls("5.1.10"), (Class::BadRecipient, Strength::Likely));
        assert_eq!(cls("5.1.8").0, Class::Policy);
        assert_eq!(cls("5.1.1"), (Class::BadRecipient, Strength::Likely));
        assert_eq!(cls("5.2.1"), (Class::BadRecipient, Strength::Likely));
        assert_eq!(cls("5.7.1"), (Class::Policy, Strength::Subject));
        assert_eq!(cls("4.7.1"), (Class::Transient, Strength::Subject));
        assert_eq!(cls("5.0.0"), (Class::Other, Strength::Subject));
        assert_eq!(cls("5.6.0"), (Class::Content, Strength::Likely));
        assert_eq!(cls("5.7.10").0, Class::Tls);
        assert!(meaning("2.0.0").is_none() && meaning("5.x.1").is_none() && meaning("").is_none());
        assert!(meaning("5.999999999.1").is_none());
    }
}
