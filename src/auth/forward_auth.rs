//! `/.portcullis/auth`: the check other proxies call before serving a
//! request themselves (nginx `auth_request`, Traefik and Caddy
//! `forward_auth`). The route matching the original host and path decides,
//! exactly as if the request had come to us.

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ::http::{Method, Request, Response, Uri};

use super::Ctx;
use super::flow::{self, LoginTarget};
use super::gate::{
    BEARER_UNCHECKED, Identified, decide, effective_scheme, forwarded_proto, identify, is_browser,
    resolve,
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
const BAD_HOST: &str = "The forwarded host is not valid.";

/// `/.portcullis/auth` for other proxies (nginx `auth_request`, Traefik
/// and Caddy `forward_auth`): the route matching the original host and URI
/// decides (its address rules, access list and sign-in). 200 with
/// identity headers, 403, or 401; with
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
    let asked = Asked::read(headers, cx.is_trusted_proxy(conn.peer.ip()), raw_host)?;
    let path = normalize_path(asked.uri.path()).map_err(|e| ProxyError::BadRequest(e.reason()))?;
    let mut buf = [0u8; crate::routing::HOST_BUF_LEN];
    let host = crate::routing::normalize_host(asked.host(), &mut buf)
        .ok_or(ProxyError::BadRequest(BAD_HOST))?;
    let route = (cx.find_route)(host, &path)?;
    // The route's address rules, for the client the proxy names: the
    // right-most untrusted address of `X-Forwarded-For` (nginx:
    // `$proxy_add_x_forwarded_for`), else the proxy itself, which fails
    // closed on a route that allows only client addresses.
    let peer = crate::http::conn::canonical_ip(conn.peer.ip());
    let client = crate::http::conn::client_ip(headers, peer, |ip| cx.is_trusted_proxy(ip));
    if !route.limits.allows(client) {
        return Err(ProxyError::AddressDenied);
    }
    // An access list (addresses, htpasswd users) is checked where requests
    // are proxied, not here: saying 200 would let the other proxy serve
    // what the list protects, so such a route is refused (deny by default).
    if route.options.access.is_some() {
        tracing::warn!(
            route = %route.name,
            "forward-auth asked about a route with an access list, which only requests proxied by Portcullis can pass; refused"
        );
        return Err(ProxyError::Forbidden);
    }
    let RouteAuth::Oidc(policy) = &route.auth else {
        return Ok(allowed());
    };
    let (view, sessions) = match resolve(&cx, policy) {
        Ok(x) => x,
        Err(stop) => return stop.into_result(&mut None),
    };
    let accept = headers.get(header::ACCEPT);
    match identify(sessions, view, headers, unix_now()).await {
        Identified::Who(who) => match decide(policy, who, request_id, accept) {
            Ok(who) => {
                let mut r = allowed();
                who.identity()
                    .apply(r.headers_mut(), policy.identity_headers);
                Ok(r)
            }
            Err(stop) => stop.into_result(&mut None),
        },
        Identified::BadToken => Err(ProxyError::InvalidToken),
        Identified::Unavailable => Err(ProxyError::LoginUnavailable(BEARER_UNCHECKED)),
        Identified::StoreDown => Err(ProxyError::SessionStoreUnavailable),
        Identified::Nobody if asked.wants_login(req) => {
            let scheme = asked.scheme(&cx, conn, headers);
            // The login comes back to this host: lowercase, no trailing dot
            // (the provider compares `redirect_uri` byte for byte).
            let url_host = crate::routing::normalize_authority(asked.host())
                .ok_or(ProxyError::BadRequest(BAD_HOST))?;
            let path_and_query = match asked.uri.query() {
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

/// The request a forward-auth check asks about, as its headers name it.
struct Asked<'r> {
    headers: &'r HeaderMap,
    /// The asking peer is one of `trusted_proxies`.
    trusted: bool,
    /// `X-Forwarded-Host` from a trusted proxy.
    fwd_host: Option<&'r str>,
    /// This check's own host.
    raw_host: &'r str,
    uri: Uri,
}

impl<'r> Asked<'r> {
    /// Reads the forwarded host and URI, failing closed on a proxy set-up
    /// that would judge every request as `/`: a trusted proxy must say
    /// which URI it asks about, and a URI header from a peer outside
    /// `trusted_proxies` is refused, not ignored.
    fn read(headers: &'r HeaderMap, trusted: bool, raw_host: &'r str) -> Result<Self, ProxyError> {
        let fwd_host = from_proxy(headers, trusted, &[X_FORWARDED_HOST], BAD_HOST)?;
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
        let uri: Uri = from_proxy(headers, trusted, &uri_names, BAD_URI)?
            .unwrap_or("/")
            .parse()
            .map_err(|_| ProxyError::BadRequest(BAD_URI))?;
        Ok(Asked {
            headers,
            trusted,
            fwd_host,
            raw_host,
            uri,
        })
    }

    /// The host the proxy named: `X-Forwarded-Host`, or the host of a
    /// whole URL (`X-Original-URL`) when it sends no `X-Forwarded-Host`.
    /// Only then may a browser be sent to sign in.
    fn named_host(&self) -> Option<&str> {
        self.fwd_host.or(self.uri.authority().map(|a| a.as_str()))
    }

    /// The host judged: the named one, or this check's own.
    fn host(&self) -> &str {
        self.named_host().unwrap_or(self.raw_host)
    }

    /// Whether to answer with the login redirect: the proxy named the host,
    /// and the request being judged comes from a browser. Its method, not
    /// this check's (nginx and Traefik always check with GET): a POST must
    /// get 401, never a login redirect that would lose its body.
    fn wants_login(&self, req: &Request<Body>) -> bool {
        let method = match from_proxy(
            self.headers,
            self.trusted,
            &[X_FORWARDED_METHOD, X_ORIGINAL_METHOD],
            "",
        ) {
            Ok(Some(m)) => Method::from_bytes(m.as_bytes()).ok(),
            Ok(None) => Some(req.method().clone()),
            Err(_) => None,
        };
        self.named_host().is_some() && method.is_some_and(|m| is_browser(&m, self.headers))
    }

    /// The scheme the login comes back on: a trusted proxy's
    /// `X-Forwarded-Proto`, or this check's own.
    fn scheme(&self, cx: &Ctx<'_>, conn: &ConnInfo, headers: &HeaderMap) -> &'static str {
        match forwarded_proto(headers).filter(|_| self.trusted) {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            Some(_) => "http",
            None => effective_scheme(cx, conn, headers),
        }
    }
}

/// A trusted proxy's header; one that is there but unreadable is a 400,
/// never taken for absent (which would judge another host or path). The
/// URI is read as UTF-8, the way the request line is; the other headers as
/// visible ASCII, the way the Host header is.
fn from_proxy<'h>(
    headers: &'h HeaderMap,
    trusted: bool,
    names: &[HeaderName],
    what: &'static str,
) -> Result<Option<&'h str>, ProxyError> {
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
}

/// The 200 of a check that passes; never cached.
fn allowed() -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
