//! The HTTP vocabulary every floor above shares: the one body type
//! ([`body::Body`]), the one request error with its status and page
//! ([`error::ProxyError`]), a cause chain for logging transport errors
//! ([`Cause`]) and small enums used instead of strings ([`Scheme`]).
//!
//! Nothing here knows about routes, sessions, sockets or the snapshot: it
//! imports only `config` (never a floor above), so `h1`, `tls`,
//! `upstream`, `auth` and `acme` can all use it without the proxy.

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

/// An error with every cause below it, `outer: inner: innermost`, for
/// logs and for errors that carry a transport failure as text (a
/// `hyper_util` client error alone says only "client error (Connect)").
pub struct Cause<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(inner) = src {
            write!(f, ": {inner}")?;
            src = inner.source();
        }
        Ok(())
    }
}

/// [`Cause`] as a `String`.
pub fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    Cause(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connect failed")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn cause_names_every_layer() {
        let e = Wrapped(std::io::Error::other("connection refused"));
        assert_eq!(cause(&e), "connect failed: connection refused");
    }
}
