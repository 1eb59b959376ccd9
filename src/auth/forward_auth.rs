//! `/.portcullis/auth`: the check other proxies call before serving a
//! request themselves (nginx `auth_request`, Traefik and Caddy
//! `forward_auth`). The route matching the original host and path decides,
//! exactly as if the request had come to us.

use ::http::header::{self, HeaderName, HeaderValue};
use ::http::{Method, Request, Response, Uri};

use super::Ctx;
use super::flow::{self, LoginTarget};
use super::gate::{
    Identified, decide, effective_scheme, forwarded_proto, identify, is_browser, resolve,
};
use super::session::unix_now;
use crate::config::RouteAuth;
use crate::http::body::Body;
use crate::http::conn::ConnInfo;
use crate::http::error::ProxyError;
use crate::http::normalize::normalize_path;

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// Authentik's own nginx snippets send the whole URL under this name.
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const BAD_URI: &str = "The forwarded URI is not valid.";

/// `/.portcullis/auth` for other proxies (nginx `auth_request`, Traefik
/// and Caddy `forward_auth`): the route matching the original host and URI
/// decides. 200 with identity headers, 403, or 401; with
/// `X-Forwarded-Host` from a trusted proxy, browsers get the login redirect.
///
/// The forwarded path goes through the request path's own steps (URI
/// parsing, normalisation, the route lookup with its lenient reading), so
/// this answers 200 exactly when the same request sent to us would pass
/// the gate, and 400 where the request path would answer 400.
///
/// It fails closed on a set-up that would judge everything as `/`: a
/// trusted proxy must send `X-Forwarded-Uri`, `X-Original-URI` or
/// `X-Original-URL` (a whole URL, as Authentik's nginx snippets send), and
/// any of them from a peer outside `trusted_proxies` is a 400.
pub(super) async fn forward_auth(
    cx: Ctx<'_>,
    conn: &ConnInfo,
    req: &Request<crate::http::body::Body>,
    raw_host: &str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let headers = req.headers();
    let trusted = cx.is_trusted_proxy(conn.peer.ip());
    // A trusted proxy's header; one that is there but unreadable is a 400,
    // never taken for absent (which would judge another host or path).
    // The URI is read as UTF-8, the way the request line is; the other
    // headers as visible ASCII, the way the Host header is.
    let from_proxy = |names: &[HeaderName], what: &'static str| {
        let Some(v) = names
            .iter()
            .find_map(|n| headers.get(n))
            .filter(|_| trusted)
        else {
            return Ok(None);
        };
        let text = if what == BAD_URI {
            std::str::from_utf8(v.as_bytes()).ok()
        } else {
            v.to_str().ok()
        };
        text.map(Some).ok_or(ProxyError::BadRequest(what))
    };
    let fwd_host = from_proxy(&[X_FORWARDED_HOST], "The forwarded host is not valid.")?;
    // Fail closed on a proxy set-up that would judge every request as `/`:
    // a trusted proxy must say which URI it asks about, and a URI header
    // from a peer outside `trusted_proxies` is refused, not ignored.
    let uri_names = [X_FORWARDED_URI, X_ORIGINAL_URI, X_ORIGINAL_URL];
    let uri_sent = uri_names.iter().any(|n| headers.contains_key(n));
    if uri_sent && !trusted {
        return Err(ProxyError::BadRequest(
            "The forwarded URI comes from a peer that is not in trusted_proxies.",
        ));
    }
    if trusted && !uri_sent {
        return Err(ProxyError::BadRequest(
            "A forward-auth check needs X-Forwarded-Uri or X-Original-URI.",
        ));
    }
    let target: Uri = from_proxy(&uri_names, BAD_URI)?
        .unwrap_or("/")
        .parse()
        .map_err(|_| ProxyError::BadRequest(BAD_URI))?;
    // A whole URL (`X-Original-URL`) names the host too, when the proxy
    // sends no `X-Forwarded-Host`.
    let fwd_host = fwd_host.or(target.authority().map(|a| a.as_str()));
    let target_host = fwd_host.unwrap_or(raw_host);
    let path = normalize_path(target.path()).map_err(|e| ProxyError::BadRequest(e.reason()))?;
    let mut buf = [0u8; crate::routing::HOST_BUF_LEN];
    let host = crate::routing::normalize_host(target_host, &mut buf)
        .ok_or(ProxyError::BadRequest("The forwarded host is not valid."))?;
    let route = (cx.find_route)(host, &path)?;
    let ok = || {
        let mut r = Response::new(Body::Empty);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    };
    let RouteAuth::Oidc(policy) = &route.auth else {
        return Ok(ok());
    };
    let (view, sessions) = match resolve(&cx, policy) {
        Ok(x) => x,
        Err(_) => return Err(ProxyError::Internal),
    };
    let accept = headers.get(header::ACCEPT);
    // The method of the request being judged, not of this check (nginx and
    // Traefik always check with GET): a POST must get 401, never a login
    // redirect that would lose its body.
    let method = match from_proxy(&[X_FORWARDED_METHOD, X_ORIGINAL_METHOD], "") {
        Ok(Some(m)) => Method::from_bytes(m.as_bytes()).ok(),
        Ok(None) => Some(req.method().clone()),
        Err(_) => None,
    };
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
        Identified::StoreDown => Err(ProxyError::SessionStoreUnavailable),
        Identified::Nobody
            if fwd_host.is_some() && method.is_some_and(|m| is_browser(&m, headers)) =>
        {
            let scheme = match forwarded_proto(headers).filter(|_| trusted) {
                Some(p) if p.eq_ignore_ascii_case("https") => "https",
                Some(_) => "http",
                None => effective_scheme(&cx, conn, headers),
            };
            // The login comes back to this host: lowercase, no trailing dot
            // (the provider compares `redirect_uri` byte for byte).
            let url_host = crate::routing::normalize_authority(target_host)
                .ok_or(ProxyError::BadRequest("The forwarded host is not valid."))?;
            let path_and_query = match target.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            let target = LoginTarget {
                scheme,
                host: &url_host,
                path_and_query: &path_and_query,
            };
            flow::start_login(cx.shared, view, &target, headers).await
        }
        Identified::Nobody => Err(ProxyError::Unauthorized),
    }
}
