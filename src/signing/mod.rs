//! DKIM signing (filled in by the DKIM issue).

use crate::config::{Config, ConfigError};

pub struct Signer {}

/// What signing added to a message.
pub struct Signed {
    /// CRLF-terminated `DKIM-Signature:` header lines to put before the message.
    pub headers: String,
}

impl Signer {
    pub fn from_config(_config: &Config) -> Result<Signer, Vec<ConfigError>> {
        Ok(Signer {})
    }

    /// Signs `message` (headers + body as received). `Err` carries the reply to send at DATA when
    /// signing is required and impossible.
    pub fn sign(&self, _message: &[u8]) -> Result<Signed, crate::reply::Reply> {
        Ok(Signed {
            headers: String::new(),
        })
    }
}
