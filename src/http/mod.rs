//! The HTTP vocabulary every floor above shares: the one body type
//! ([`body::Body`]), the one request error with its cause, status and page
//! ([`error::ProxyError`]), the answers the gateway makes itself
//! (`answer`), path normalisation, request ids and small enums used
//! instead of strings ([`Scheme`]).
//!
//! Nothing here knows about routes, sessions, sockets or the snapshot: it
//! imports only `config` (never a floor above), so `h1`, `tls`,
//! `upstream`, `auth` and `acme` can all use it without the proxy.

pub(crate) mod answer;
pub mod body;
pub mod conn;
pub mod error;
pub mod normalize;
pub mod request_id;

use std::fmt;

/// The scheme a client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn is_https(self) -> bool {
        self == Scheme::Https
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
