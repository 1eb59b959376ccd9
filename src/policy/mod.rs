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
#[derive(Debug, Clone)]
pub struct Placeholders {
    pub client_ip: IpAddr,
    pub host: String,
    pub request_id: HeaderValue,
    pub user: Option<Arc<str>>,
    pub scheme: Scheme,
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
        Some(Policy {
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

    /// Whether forwarding needs the placeholders: request or response
    /// rules, compression, or an Authorization header to strip. A route
    /// with only a rate limit builds none.
    pub fn needs_placeholders(&self) -> bool {
        self.strip_authorization || !self.request_rules.is_empty() || self.response.is_some()
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
    pub fn request_headers(&self, headers: &mut HeaderMap, p: &Placeholders) {
        if self.strip_authorization {
            headers.remove(http::header::AUTHORIZATION);
        }
        rules::apply(&self.request_rules, headers, p);
    }

    /// The response side when it has nothing to wait for (no compression):
    /// done in place, without the future of [`Policy::respond`] (boxed by
    /// the caller, it cost a large allocation per request). False: call
    /// `respond`.
    pub fn respond_in_place(&self, resp: &mut Response<Body>, p: &Placeholders) -> bool {
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
