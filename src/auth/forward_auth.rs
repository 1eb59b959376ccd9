//! `/.portcullis/auth`: the check other proxies call before serving a
//! request themselves (nginx `auth_request`, Traefik and Caddy
//! `forward_auth`). The route matching the original host and path decides,
//! exactly as if the request had come to us.

use ::http::header::{self, HeaderName, HeaderValue};
use ::http::{Request, Response};

use super::flow::{self, LoginTarget};
use super::gate::{Identified, decide, effective_scheme, identify, is_browser, resolve};
use super::session::unix_now;
use crate::config::RouteAuth;
use crate::http::body::Body;
use crate::http::conn::ConnInfo;
use crate::http::error::ProxyError;
use crate::state::{Shared, Snapshot, canonical_ip};

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// `/.portcullis/auth` for other proxies (nginx `auth_request`, Traefik
/// and Caddy `forward_auth`): the route matching the original host and URI
/// decides. 200 with identity headers, 403, or 401; with
/// `X-Forwarded-Host` from a trusted proxy, browsers get the login redirect.
pub(super) async fn forward_auth(
    shared: &Shared,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: &Request<crate::http::body::Body>,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let headers = req.headers();
    let trusted = snap.is_trusted_proxy(canonical_ip(conn.peer.ip()));
    let from_proxy = |name: &HeaderName| {
        trusted
            .then(|| headers.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
    };
    let fwd_host = from_proxy(&X_FORWARDED_HOST);
    let target_host = fwd_host.unwrap_or(raw_host);
    let uri = from_proxy(&X_FORWARDED_URI)
        .or_else(|| from_proxy(&X_ORIGINAL_URI))
        .filter(|u| u.starts_with('/'))
        .unwrap_or("/");
    let path = uri.split(['?', '#']).next().unwrap_or("/");
    let mut buf = [0u8; crate::routing::HOST_BUF_LEN];
    let host = crate::routing::normalize_host(target_host, &mut buf)
        .ok_or(ProxyError::BadRequest("The forwarded host is not valid."))?;
    let route = snap.table.lookup(host, path).ok_or(ProxyError::NoRoute)?;
    let ok = || {
        let mut r = Response::new(Body::Empty);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let RouteAuth::Oidc(policy) = &route.config.auth else {
        return Ok(ok());
    };
    let (view, sessions) = match resolve(shared, snap, policy) {
        Ok(x) => x,
        Err(_) => return Err(ProxyError::Internal),
    };
    let accept = headers.get(header::ACCEPT);
    match identify(sessions, view, headers, unix_now()).await {
        Identified::Who(who) => match decide(policy, who, request_id, accept) {
            Ok(who) => {
                let mut r = ok();
                who.identity()
                    .apply(r.headers_mut(), policy.identity_headers);
                Ok(r)
            }
            Err(stop) => stop.into_result(&mut None),
        },
        Identified::BadToken => Err(ProxyError::InvalidToken),
        Identified::Unavailable => Err(ProxyError::LoginUnavailable),
        Identified::Nobody if fwd_host.is_some() && is_browser(req.method(), headers) => {
            let scheme = match from_proxy(&HeaderName::from_static("x-forwarded-proto")) {
                Some(p) if p.eq_ignore_ascii_case("https") => "https",
                Some(_) => "http",
                None => effective_scheme(snap, conn, headers),
            };
            let target = LoginTarget {
                scheme,
                host: target_host,
                path_and_query: uri,
            };
            flow::start_login(&shared.auth, view, &target, headers).await
        }
        Identified::Nobody => Err(ProxyError::Unauthorized),
    }
}
