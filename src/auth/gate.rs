//! The auth gate: once per request on a protected route, after routing.
//! The session cookie is looked up in the hot cache first, then a bearer
//! token; with neither, a browser is sent to the provider and anything
//! else gets 401. The route's policy then allows the user or answers 403.

use std::sync::Arc;

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Request, Response};

use super::Ctx;
use super::flow::{self, LoginTarget};
use super::identity::Identity;
use super::session::{Found, Session, Sessions, unix_now};
use super::{ProviderView, bearer, policy};
use crate::config::RouteConfig;
use crate::config::{OidcPolicy, RouteAuth};
use crate::http::body::Body;
use crate::http::conn::ConnInfo;
use crate::http::error::{self, Cause, ProxyError};

/// Who a request is from.
pub enum Who {
    Session(Arc<Session>),
    Bearer(Box<Identity>),
}

impl Who {
    #[inline]
    pub fn identity(&self) -> &Identity {
        match self {
            Who::Session(s) => &s.identity,
            Who::Bearer(i) => i,
        }
    }
}

/// The gate said no: a response to send (redirect, 403 page), or an error.
/// (Boxed: this is the rare path, and keeps `Result<Who, Stop>` small.)
pub enum Stop {
    Respond(Box<Response<Body>>, Option<ProxyError>),
    Error(ProxyError),
}

impl Stop {
    /// For `route_request`: the response to return, noting the error kind
    /// for the access log and metrics.
    pub fn into_result(self, error: &mut Option<ProxyError>) -> Result<Response<Body>, ProxyError> {
        match self {
            Stop::Respond(r, e) => {
                *error = e;
                Ok(*r)
            }
            Stop::Error(e) => Err(e),
        }
    }
}

pub(super) enum Identified {
    Who(Who),
    Nobody,
    BadToken,
    Unavailable,
    /// The shared session store cannot be reached.
    StoreDown,
}

/// The auth gate for a chosen route. Public routes pass at once.
#[inline]
pub async fn check(
    cx: Ctx<'_>,
    conn: &ConnInfo,
    req: &Request<crate::http::body::Body>,
    route: &RouteConfig,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Option<Who>, Stop> {
    let RouteAuth::Oidc(policy) = &route.auth else {
        return Ok(None);
    };
    protected(cx, conn, req, policy, raw_host, request_id)
        .await
        .map(Some)
}

async fn protected(
    cx: Ctx<'_>,
    conn: &ConnInfo,
    req: &Request<crate::http::body::Body>,
    policy: &OidcPolicy,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Who, Stop> {
    let (view, sessions) = resolve(&cx, policy)?;
    let headers = req.headers();
    match identify(sessions, view, headers, unix_now()).await {
        Identified::Who(who) => decide(policy, who, request_id, headers.get(header::ACCEPT)),
        Identified::BadToken => Err(Stop::Error(ProxyError::InvalidToken)),
        Identified::Unavailable => Err(Stop::Error(ProxyError::LoginUnavailable(BEARER_UNCHECKED))),
        Identified::StoreDown => Err(Stop::Error(ProxyError::SessionStoreUnavailable)),
        Identified::Nobody if is_browser(req.method(), headers) => {
            let target = LoginTarget {
                scheme: effective_scheme(&cx, conn, headers),
                host: raw_host,
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            };
            match flow::start_login(cx.shared, view, &target, headers).await {
                Ok(r) => Err(Stop::Respond(Box::new(r), None)),
                Err(e) => Err(Stop::Error(e)),
            }
        }
        Identified::Nobody => Err(Stop::Error(ProxyError::Unauthorized)),
    }
}

/// Why a bearer token could not be checked: the provider's signing keys
/// cannot be fetched.
pub(super) const BEARER_UNCHECKED: Cause =
    Cause::Said("the identity provider's signing keys cannot be fetched to check a bearer token");

pub(super) fn resolve<'a>(
    cx: &Ctx<'a>,
    policy: &OidcPolicy,
) -> Result<(&'a ProviderView, &'a Arc<Sessions>), Stop> {
    let view = cx.snap.providers.get(policy.provider_index);
    match (view, cx.shared.sessions()) {
        (Some(v), Some(s)) if v.config.name == policy.provider => Ok((v, s)),
        _ => Err(Stop::Error(ProxyError::Internal(Cause::error(format!(
            "the route names provider {}, which the snapshot lacks",
            policy.provider
        ))))),
    }
}

/// Session cookie first (so a backend's own `Authorization` header in a
/// signed-in browser is left alone), then a bearer token.
pub(super) async fn identify(
    sessions: &Arc<Sessions>,
    view: &ProviderView,
    headers: &HeaderMap,
    now: u64,
) -> Identified {
    let cfg = &view.config;
    let session = match sessions.find_cached(headers, view.cookie_name, &cfg.name, &cfg.issuer, now)
    {
        Found::Hit(s) => Some(s),
        Found::Miss(id) => match sessions.get(id).await {
            Ok(s) => s.filter(|s| s.usable_for(&cfg.name, &cfg.issuer, now)),
            Err(_) => return Identified::StoreDown,
        },
        Found::None => None,
    };
    if let Some(s) = session {
        let s = if s.needs_refresh(now) {
            sessions.refresh(s, view.provider.clone()).await
        } else {
            s
        };
        return Identified::Who(Who::Session(s));
    }
    match bearer::bearer_token(headers) {
        Some(token) => match bearer::verify_bearer(sessions, view, token, now).await {
            Ok(id) => Identified::Who(Who::Bearer(Box::new(id))),
            Err(bearer::BearerError::Unavailable) => Identified::Unavailable,
            Err(bearer::BearerError::Invalid(e)) => {
                tracing::debug!(provider = %cfg.name, error = %e, "bearer token refused");
                Identified::BadToken
            }
        },
        None => Identified::Nobody,
    }
}

pub(super) fn decide(
    policy: &OidcPolicy,
    who: Who,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Result<Who, Stop> {
    if policy::allows(policy, who.identity()) {
        return Ok(who);
    }
    let user = who.identity().display_name();
    tracing::info!(provider = %policy.provider, user = %user, "access denied by the route policy");
    Err(Stop::Respond(
        Box::new(error::forbidden_response(user, request_id, accept)),
        Some(ProxyError::Forbidden),
    ))
}

/// A top-level navigation that can follow a redirect to a login page:
/// GET/HEAD, HTML accepted, not an XHR/fetch call.
pub(super) fn is_browser(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let html = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
    let xhr = headers
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    html && !xhr
}

/// How the browser reached us: the connection, or a trusted proxy's
/// `X-Forwarded-Proto`.
pub(super) fn effective_scheme(cx: &Ctx<'_>, conn: &ConnInfo, headers: &HeaderMap) -> &'static str {
    if conn.scheme.is_https() {
        return "https";
    }
    let forwarded_https = forwarded_proto(headers).is_some_and(|p| p.eq_ignore_ascii_case("https"));
    if forwarded_https && cx.is_trusted_proxy(conn.peer.ip()) {
        "https"
    } else {
        "http"
    }
}

/// The scheme in `X-Forwarded-Proto` (the caller checks the peer is a
/// trusted proxy). Chained proxies append to the list (`https, http`): the
/// first, leftmost entry is the scheme the client used.
pub(super) fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("x-forwarded-proto")?.to_str().ok()?;
    Some(v.split(',').next()?.trim()).filter(|p| !p.is_empty())
}
