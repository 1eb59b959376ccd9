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

/// A response extension saying the response must not be sent: the
/// server closes the connection without answering (HTTP/1) or resets the
/// request's stream (HTTP/2), like nginx's `return 444`. The response's
/// status (444, nginx's code for it) is what the access log and the
/// metrics record.
#[derive(Debug, Clone, Copy)]
pub struct CloseWithoutAnswer;

impl CloseWithoutAnswer {
    /// The status recorded for a request answered this way.
    pub const STATUS: u16 = 444;

    /// A response carrying the mark.
    pub fn response() -> http::Response<body::Body> {
        let mut r = http::Response::new(body::Body::Empty);
        *r.status_mut() = http::StatusCode::from_u16(Self::STATUS).expect("444 is a valid status");
        r.extensions_mut().insert(CloseWithoutAnswer);
        r
    }

    /// Whether `resp` carries the mark.
    pub fn is_on<B>(resp: &http::Response<B>) -> bool {
        resp.extensions().get::<CloseWithoutAnswer>().is_some()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
