//! Route options as a chain built once per route when the snapshot is
//! built (floor 4 of docs/ARCHITECTURE.md; imports `config`, `http`,
//! `telemetry`): the access list (`access`), the rate limit (`rate`),
//! header rules (`rules`), and the response side — compression with
//! tower-http's layer, response header rules and security headers —
//! as one tower service (`respond`).
//!
//! A route that sets none of these has no [`Policy`] (`Route::policy` is
//! `None`): the pipeline tests one `Option` and pays nothing else.
//!
//! The request side is not a tower service: forwarding borrows the
//! request's connection and snapshot state, which a service built once
//! cannot hold, so the pipeline calls [`Policy::admit`] (access list,
//! before single sign-on), [`Policy::limit`] (after it, so `by = "user"`
//! knows the user) and [`Policy::request_headers`] (after the gateway's own
//! header rewriting), then runs the response through [`Policy::respond`].

pub mod access;
pub mod pages;
pub mod rate;
pub mod respond;
pub mod rules;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response};

use crate::config::RouteOptions;
use crate::http::Scheme;
use crate::http::body::Body;
use crate::http::error::ProxyError;
use crate::telemetry::metrics::RouteMetrics;

/// What the placeholders of header rules stand for, for one request.
/// Built only for a route whose rules use them (or that compresses): see
/// [`Policy::needs_placeholders`]. Nothing in it is copied from the
/// request: the host and request id are shared header values.
#[derive(Debug, Clone)]
pub struct Placeholders {
    pub client_ip: IpAddr,
    pub host: RequestHost,
    pub request_id: HeaderValue,
    pub user: Option<Arc<str>>,
    pub scheme: Scheme,
}

/// The host as the client sent it, shared with the request rather than
/// copied: the URI's authority (HTTP/2's `:authority`, an absolute-form
/// target) when there is one, else the Host header.
#[derive(Debug, Clone)]
pub enum RequestHost {
    Authority(http::uri::Authority),
    Header(HeaderValue),
}

impl RequestHost {
    pub fn as_str(&self) -> &str {
        match self {
            RequestHost::Authority(a) => a.as_str(),
            RequestHost::Header(h) => h.to_str().unwrap_or(""),
        }
    }
}

/// A request the policy turned away: an error page, or a response of its
/// own (401 with a challenge, 429 with `Retry-After`).
pub enum Refusal {
    Error(ProxyError),
    Respond(Box<Response<Body>>),
}

/// One route's options, ready to run.
pub struct Policy {
    access: Option<access::Gate>,
    limiter: Option<Arc<rate::Limiter>>,
    by: crate::config::RateBy,
    request_rules: crate::config::HeaderRules,
    /// The request rules' values as header lines, when all are literal
    /// (`rules::literal_lines`); then only removals touch the map.
    request_lines: Option<Box<[u8]>>,
    /// A rule's value uses a placeholder, or the response is compressed
    /// (its tower chain takes them with the client's Accept-Encoding).
    placeholders: bool,
    /// Authorization is removed before forwarding (access list with
    /// passwords and `pass_auth = false`).
    strip_authorization: bool,
    response: Option<respond::Chain>,
    metrics: Arc<RouteMetrics>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").finish_non_exhaustive()
    }
}

impl Policy {
    /// The chain for a route's options; `None` when there is nothing to
    /// run per request (error pages alone are applied where errors become
    /// pages).
    pub fn build(
        options: &RouteOptions,
        limiters: &mut rate::Shared,
        metrics: Arc<RouteMetrics>,
    ) -> Option<Policy> {
        let response = respond::Chain::build(options);
        if options.access.is_none()
            && options.rate_limit.is_none()
            && options.request_headers.is_empty()
            && response.is_none()
        {
            return None;
        }
        let placeholders = rules::uses_placeholders(&options.request_headers)
            || rules::uses_placeholders(&options.response_headers)
            || options.compress.is_some();
        Some(Policy {
            placeholders,
            request_lines: rules::literal_lines(&options.request_headers),
            access: options.access.clone().map(access::Gate::new),
            limiter: options.rate_limit.map(|r| limiters.get(r)),
            by: options
                .rate_limit
                .map_or(crate::config::RateBy::Ip, |r| r.by),
            request_rules: options.request_headers.clone(),
            strip_authorization: options
                .access
                .as_ref()
                .is_some_and(|a| a.basic_auth_file.is_some() && !a.pass_auth),
            response,
            metrics,
        })
    }

    /// Whether the route has an access list (else [`Policy::admit`] has
    /// nothing to do, and the caller need not box its future).
    pub fn has_access(&self) -> bool {
        self.access.is_some()
    }

    /// Whether forwarding needs the placeholders: a rule's value uses one,
    /// or the response is compressed. A route with only a rate limit, or
    /// rules with literal values, builds none (and passes `None` to
    /// [`Policy::request_headers`] and [`Policy::respond_in_place`]).
    pub fn needs_placeholders(&self) -> bool {
        self.placeholders
    }

    /// Whether [`Policy::request_headers`] has anything to do.
    pub fn has_request_rules(&self) -> bool {
        self.strip_authorization || !self.request_rules.is_empty()
    }

    /// Whether [`Policy::respond_in_place`] has anything to do.
    pub fn has_response_side(&self) -> bool {
        self.response.is_some()
    }

    /// The access list: address rules and passwords. The basic-auth user
    /// when a password let the client in.
    pub async fn admit(
        &self,
        ip: IpAddr,
        headers: &HeaderMap,
        request_id: &HeaderValue,
    ) -> Result<Option<Arc<str>>, Refusal> {
        match &self.access {
            None => Ok(None),
            Some(g) => g.admit(ip, headers, request_id).await,
        }
    }

    /// The rate limit, keyed by address or user.
    pub fn limit(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        request_id: &HeaderValue,
    ) -> Result<(), Refusal> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        let key = match (self.by, user) {
            (crate::config::RateBy::User, Some(u)) => rate::Key::User(u.into()),
            _ => rate::Key::Ip(ip),
        };
        match l.check(key) {
            Ok(()) => Ok(()),
            Err(wait) => {
                self.metrics.rate_limited();
                Err(Refusal::Respond(Box::new(rate::too_many(wait, request_id))))
            }
        }
    }

    /// Request header rules, applied after the gateway's own rewriting.
    /// `p` is `None` only when [`Policy::needs_placeholders`] is false.
    pub fn request_headers(&self, headers: &mut HeaderMap, p: Option<&Placeholders>) {
        if self.strip_authorization {
            headers.remove(http::header::AUTHORIZATION);
        }
        match &self.request_lines {
            Some(_) => rules::remove_for_lines(&self.request_rules, headers),
            None => rules::apply(&self.request_rules, headers, p),
        }
    }

    /// Header lines the forwarding step writes into the upstream request
    /// after the client's headers: the request rules' literal values (see
    /// [`Policy::request_headers`]). Empty when they went into the map.
    pub fn request_lines(&self) -> &[u8] {
        self.request_lines.as_deref().unwrap_or_default()
    }

    /// The response side when it has nothing to wait for (no compression):
    /// done in place, without the future of [`Policy::respond`] (boxed by
    /// the caller, it cost a large allocation per request). False: call
    /// `respond`.
    /// `p` is `None` only when [`Policy::needs_placeholders`] is false.
    pub fn respond_in_place(&self, resp: &mut Response<Body>, p: Option<&Placeholders>) -> bool {
        match &self.response {
            None => true,
            Some(c) => c.run_in_place(resp, p),
        }
    }

    /// The response side: compression, response header rules, security
    /// headers.
    pub async fn respond(
        &self,
        resp: Response<Body>,
        accept_encoding: Option<HeaderValue>,
        p: Placeholders,
    ) -> Response<Body> {
        match &self.response {
            None => resp,
            Some(c) => c.run(resp, accept_encoding, p).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compress, CompressLevel, HeaderRules, Piece, Template};

    fn template(pieces: Vec<Piece>, fixed: Option<&'static str>) -> Template {
        Template {
            pieces,
            fixed: fixed.map(HeaderValue::from_static),
            source: String::new(),
        }
    }

    fn build(options: &RouteOptions) -> Policy {
        Policy::build(
            options,
            &mut rate::Shared::default(),
            Arc::new(RouteMetrics::default()),
        )
        .expect("options set")
    }

    #[test]
    fn placeholders_are_built_only_when_a_value_or_compression_needs_them() {
        let literal = RouteOptions {
            request_headers: HeaderRules {
                set: vec![(
                    http::HeaderName::from_static("x-env"),
                    template(vec![Piece::Text("prod".into())], Some("prod")),
                )],
                ..Default::default()
            },
            response_headers: HeaderRules {
                remove: vec![http::header::SERVER],
                ..Default::default()
            },
            security_headers: true,
            ..Default::default()
        };
        let p = build(&literal);
        assert!(!p.needs_placeholders());
        assert!(p.has_request_rules() && p.has_response_side());
        assert_eq!(p.request_lines(), b"x-env: prod\r\n");

        let mut with_placeholder = literal.clone();
        with_placeholder.response_headers.add = vec![(
            http::HeaderName::from_static("x-served-for"),
            template(vec![Piece::ClientIp], None),
        )];
        assert!(build(&with_placeholder).needs_placeholders());

        let mut compressing = literal.clone();
        compressing.compress = Some(Compress {
            level: CompressLevel::Fastest,
            min_size: 1024,
        });
        assert!(build(&compressing).needs_placeholders());
    }

    #[test]
    fn literal_request_rules_leave_only_removals_to_the_map() {
        let options = RouteOptions {
            request_headers: HeaderRules {
                set: vec![(
                    http::HeaderName::from_static("x-env"),
                    template(vec![Piece::Text("prod".into())], Some("prod")),
                )],
                remove: vec![http::HeaderName::from_static("x-debug")],
                ..Default::default()
            },
            ..Default::default()
        };
        let p = build(&options);
        let mut h = HeaderMap::new();
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        p.request_headers(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
        assert_eq!(p.request_lines(), b"x-env: prod\r\n");
    }
}
