//! Who an account is: an authenticated login, or a sender domain (the `From:` domain known at
//! acceptance, else MAIL FROM's).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Login,
    Domain,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Login => "login",
            Kind::Domain => "domain",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub name: String,
}

impl Key {
    pub fn login(name: &str) -> Key {
        Key {
            kind: Kind::Login,
            name: name.to_string(),
        }
    }

    /// Domains compare without case.
    pub fn domain(name: &str) -> Key {
        Key {
            kind: Kind::Domain,
            name: name.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// Where an account stands (`policy.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    #[default]
    Good,
    Throttled,
    Suspended,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Good => "good",
            Standing::Throttled => "throttled",
            Standing::Suspended => "suspended",
        }
    }
}

/// The sender domain of an envelope: the `From:` domain if known, else MAIL FROM's; none for
/// the null sender.
pub fn sender_domain<'a>(from_domain: Option<&'a str>, mail_from: &'a str) -> Option<&'a str> {
    from_domain
        .filter(|d| !d.is_empty())
        .or_else(|| mail_from.rsplit_once('@').map(|(_, d)| d))
        .filter(|d| !d.is_empty())
}
