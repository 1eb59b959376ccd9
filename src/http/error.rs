//! The one request error, [`ProxyError`], and the one place where a
//! failure becomes a status code and a page. A failure that is not the
//! client's carries its [`Cause`], so the log line written for it explains
//! it from the error alone. Pages show the status, a plain explanation and
//! the request id, never the cause (no upstream addresses, no error
//! chains).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::Body;

/// Who is at fault, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The backend failed us.
    Upstream,
    /// Our own fault.
    Internal,
}

/// Why a request failed, for the log only: a fixed reason, or an error
/// with every error below it, written `outer: inner: innermost` (a
/// transport error alone often says only "client error (Connect)").
#[derive(Clone)]
pub enum Cause {
    Said(&'static str),
    Error(Arc<dyn Error + Send + Sync>),
}

impl Cause {
    /// The cause is this error (and its sources).
    pub fn error(e: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Cause::Error(Arc::from(e.into()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Said(s) => f.write_str(s),
            Cause::Error(e) => write_chain(f, &**e),
        }
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cause({self})")
    }
}

/// `e` and every error below it, `outer: inner: innermost`, for errors
/// that keep a failure as text (an OIDC or ACME error message).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    struct Chain<'a>(&'a (dyn Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_chain(f, self.0)
        }
    }
    Chain(e).to_string()
}

fn write_chain(f: &mut fmt::Formatter<'_>, e: &(dyn Error + 'static)) -> fmt::Result {
    write!(f, "{e}")?;
    let mut src = e.source();
    while let Some(inner) = src {
        write!(f, ": {inner}")?;
        src = inner.source();
    }
    Ok(())
}

/// A failed request: what the client is told (status and page) and, when
/// it is not the client's fault, why (the [`Cause`], for the log).
#[derive(Debug, Clone)]
pub enum ProxyError {
    /// No route for this host and path.
    NoRoute,
    /// The request is malformed; the reason is safe to show.
    BadRequest(&'static str),
    /// The TLS name and the Host header name different sites.
    Misdirected,
    /// Could not connect to the upstream (refused, unreachable, DNS), or
    /// none is usable.
    UpstreamUnavailable(Cause),
    /// The upstream (or the connect) took longer than the route allows.
    UpstreamTimeout(Cause),
    /// The upstream answered with something that is not HTTP, or hung up.
    UpstreamBroken(Cause),
    /// The client's address is not allowed on this route.
    AddressDenied,
    /// The request body is larger than the route allows.
    PayloadTooLarge,
    /// The client stopped sending its request body.
    RequestTimeout,
    // --- single sign-on ---
    /// A protected route and no session or bearer token (non-browser clients).
    Unauthorized,
    /// A bearer token that does not verify.
    InvalidToken,
    /// Signed in, but the route's policy does not allow this user (the page
    /// naming the user comes from [`forbidden_response`]).
    Forbidden,
    /// The identity provider cannot be reached, so nobody can sign in now.
    LoginUnavailable(Cause),
    /// The shared session store (Redis) cannot be reached, so sessions
    /// cannot be checked nor new sign-ins started.
    SessionStoreUnavailable,
    /// A sign-in callback we refuse; the reason is safe to show.
    LoginFailed(&'static str),
    /// A bug or resource problem on our side.
    Internal(Cause),
}

impl fmt::Display for ProxyError {
    /// The kind, then the reason or cause: `upstream_unavailable: connect
    /// to 127.0.0.1:8080: Connection refused (os error 111)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())?;
        match self {
            ProxyError::BadRequest(reason) | ProxyError::LoginFailed(reason) => {
                write!(f, ": {reason}")
            }
            _ => match self.cause() {
                Some(c) => write!(f, ": {c}"),
                None => Ok(()),
            },
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamBroken(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::AddressDenied => StatusCode::FORBIDDEN,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Unauthorized | ProxyError::InvalidToken => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::LoginUnavailable(_) | ProxyError::SessionStoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::LoginFailed(_) => StatusCode::BAD_REQUEST,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::Misdirected
            | ProxyError::AddressDenied
            | ProxyError::PayloadTooLarge
            | ProxyError::RequestTimeout
            | ProxyError::Unauthorized
            | ProxyError::InvalidToken
            | ProxyError::Forbidden
            | ProxyError::LoginFailed(_) => Side::Downstream,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::LoginUnavailable(_)
            | ProxyError::SessionStoreUnavailable => Side::Upstream,
            ProxyError::Internal(_) => Side::Internal,
        }
    }

    /// A short machine-readable kind for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Misdirected => "misdirected",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamBroken(_) => "upstream_broken",
            ProxyError::AddressDenied => "address_denied",
            ProxyError::PayloadTooLarge => "payload_too_large",
            ProxyError::RequestTimeout => "request_timeout",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::InvalidToken => "invalid_token",
            ProxyError::Forbidden => "forbidden",
            ProxyError::LoginUnavailable(_) => "login_unavailable",
            ProxyError::SessionStoreUnavailable => "session_store_unavailable",
            ProxyError::LoginFailed(_) => "login_failed",
            ProxyError::Internal(_) => "internal",
        }
    }

    fn explanation(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "No site is configured at this address.",
            ProxyError::BadRequest(reason) => reason,
            ProxyError::Misdirected => {
                "This connection was made for a different site; please retry the request."
            }
            ProxyError::UpstreamUnavailable(_) => {
                "The service behind this address is not reachable right now. Please try again shortly."
            }
            ProxyError::UpstreamTimeout(_) => {
                "The service behind this address did not answer in time. Please try again shortly."
            }
            ProxyError::UpstreamBroken(_) => {
                "The service behind this address sent an invalid response."
            }
            ProxyError::AddressDenied => "Your network address is not allowed to use this site.",
            ProxyError::PayloadTooLarge => "The request body is larger than this site accepts.",
            ProxyError::RequestTimeout => "The request body did not arrive in time.",
            ProxyError::Unauthorized => {
                "Sign-in is required. Open this address in a browser, or send a bearer token from the identity provider."
            }
            ProxyError::InvalidToken => "The bearer token was not accepted.",
            ProxyError::Forbidden => "Your account is not allowed to use this site.",
            ProxyError::LoginUnavailable(_) => {
                "Sign-in is not available right now because the identity provider cannot be reached. Please try again shortly."
            }
            ProxyError::SessionStoreUnavailable => {
                "Sign-in is not available right now because the session store cannot be reached. Please try again shortly."
            }
            ProxyError::LoginFailed(reason) => reason,
            ProxyError::Internal(_) => "Something went wrong on our side.",
        }
    }

    /// The answer to a gRPC client (`content-type: application/grpc`): a
    /// gateway-side failure is a gRPC status (HTTP 200, trailers-only),
    /// which gRPC clients understand, not a page; None for other errors.
    pub fn grpc_response(&self) -> Option<Response<Body>> {
        let (code, message) = match self.status().as_u16() {
            502 | 503 => ("14", "upstream unavailable"),
            504 => ("4", "upstream timed out"),
            _ => return None,
        };
        let mut resp = Response::new(Body::Empty);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(message));
        Some(resp)
    }

    /// Why it failed, when that is more than the kind says: for the log.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            ProxyError::UpstreamUnavailable(c)
            | ProxyError::UpstreamTimeout(c)
            | ProxyError::UpstreamBroken(c)
            | ProxyError::LoginUnavailable(c)
            | ProxyError::Internal(c) => Some(c),
            _ => None,
        }
    }

    /// Builds the error response: JSON when the client prefers it, HTML
    /// otherwise. The cause stays out of it.
    pub fn response(
        &self,
        request_id: &HeaderValue,
        accept: Option<&HeaderValue>,
    ) -> Response<Body> {
        let mut resp = render(
            self.status(),
            self.explanation(),
            request_id,
            wants_json(accept),
        );
        // 401s say how to authenticate (RFC 6750 3).
        let challenge = match self {
            ProxyError::Unauthorized => Some("Bearer realm=\"portcullis\""),
            ProxyError::InvalidToken => {
                Some("Bearer realm=\"portcullis\", error=\"invalid_token\"")
            }
            _ => None,
        };
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if matches!(
            self,
            ProxyError::LoginUnavailable(_) | ProxyError::SessionStoreUnavailable
        ) {
            // Discovery is retried in the background within seconds: tell
            // clients (and the browser user reading the page) when to retry.
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(LOGIN_RETRY_AFTER_SECS),
            );
        }
        resp
    }
}

/// `Retry-After` on the 503 "sign-in unavailable" answer, in seconds.
pub const LOGIN_RETRY_AFTER_SECS: &str = "10";

/// The 403 for a signed-in user the route's policy refuses: names the user
/// (their username, nothing from their tokens) so they know which account
/// they are signed in with.
pub fn forbidden_response(
    user: &str,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    let text = format!(
        "You are signed in as {user}, but this account is not allowed to use this site. Ask an administrator for access, or sign out and use another account."
    );
    let status = ProxyError::Forbidden.status();
    let reason = status.canonical_reason().unwrap_or("Error");
    render_page(
        status,
        &format!("{} {reason}", status.as_u16()),
        &text,
        "<p><a href=\"/.portcullis/logout\">Sign out</a></p>",
        request_id,
        wants_json(accept),
    )
}

/// True when the client asked for JSON rather than a page.
pub fn wants_json(accept: Option<&HeaderValue>) -> bool {
    let Some(a) = accept.and_then(|a| a.to_str().ok()) else {
        return false;
    };
    let json = a.find("application/json");
    let html = a.find("text/html");
    match (json, html) {
        (Some(_), None) => true,
        (Some(j), Some(h)) => j < h,
        _ => false,
    }
}

/// A small status page (or JSON object) with an explanation and the request id.
pub fn render(
    status: StatusCode,
    explanation: &str,
    request_id: &HeaderValue,
    json: bool,
) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    render_titled(
        status,
        &format!("{} {reason}", status.as_u16()),
        explanation,
        request_id,
        json,
    )
}

/// [`render`] with a page title other than the status line (e.g. the
/// signed-out page).
pub fn render_titled(
    status: StatusCode,
    title: &str,
    explanation: &str,
    request_id: &HeaderValue,
    json: bool,
) -> Response<Body> {
    render_page(status, title, explanation, "", request_id, json)
}

/// [`render_titled`] with `extra_html` (a link, a form) after the
/// explanation on the HTML page; JSON answers leave it out. `extra_html`
/// is written as it is: callers escape whatever they put in it.
pub fn render_page(
    status: StatusCode,
    title: &str,
    explanation: &str,
    extra_html: &str,
    request_id: &HeaderValue,
    json: bool,
) -> Response<Body> {
    let id = request_id.to_str().unwrap_or("");
    let reason = status.canonical_reason().unwrap_or("Error");
    let (body, content_type) = if json {
        let v = serde_json::json!({
            "status": status.as_u16(),
            "error": reason,
            "message": explanation,
            "request_id": id,
        });
        (v.to_string(), "application/json")
    } else {
        (
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width\">\
                 <title>{title}</title>\
                 <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
                 small{{color:#666}}</style></head>\
                 <body><h1>{title}</h1><p>{text}</p>{extra_html}\
                 <p><small>Request ID: <code>{id}</code></small></p></body></html>\n",
                title = html_escape(title),
                text = html_escape(explanation),
                id = html_escape(id),
            ),
            "text/html; charset=utf-8",
        )
    };
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(GatewayPage);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Marks a response whose body the gateway wrote itself (an error page,
/// the 401 of an access list, a 429), so configured `error_pages` may
/// replace it wherever it was made; a backend's answer never has it.
#[derive(Debug, Clone, Copy)]
pub struct GatewayPage;

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::Misdirected, 421),
            (ProxyError::UpstreamUnavailable(Cause::Said("x")), 502),
            (ProxyError::UpstreamBroken(Cause::Said("x")), 502),
            (ProxyError::UpstreamTimeout(Cause::Said("x")), 504),
            (ProxyError::AddressDenied, 403),
            (ProxyError::PayloadTooLarge, 413),
            (ProxyError::RequestTimeout, 408),
            (ProxyError::Unauthorized, 401),
            (ProxyError::InvalidToken, 401),
            (ProxyError::Forbidden, 403),
            (ProxyError::LoginUnavailable(Cause::Said("x")), 503),
            (ProxyError::LoginFailed("x"), 400),
            (ProxyError::Internal(Cause::Said("x")), 500),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
        }
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connect failed")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn cause_names_every_layer() {
        let e = Wrapped(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e), "connect failed: connection refused");
        let e = ProxyError::UpstreamUnavailable(Cause::error(e));
        assert_eq!(
            e.to_string(),
            "upstream_unavailable: connect failed: connection refused"
        );
    }

    #[test]
    fn the_cause_is_logged_never_shown() {
        let e = ProxyError::UpstreamUnavailable(Cause::Said("connect to 10.0.0.7:8080 refused"));
        assert!(e.to_string().contains("10.0.0.7"));
        let id = HeaderValue::from_static("req-1");
        for accept in [None, Some(HeaderValue::from_static("application/json"))] {
            let page = e.response(&id, accept.as_ref());
            let Body::Full(Some(bytes)) = page.body() else {
                panic!("error pages have a full body")
            };
            let text = std::str::from_utf8(bytes).unwrap();
            assert!(text.contains("not reachable right now"), "{text}");
            assert!(!text.contains("10.0.0.7"), "{text}");
        }
    }

    #[test]
    fn json_only_when_preferred() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(wants_json(Some(&v("application/json"))));
        assert!(!wants_json(Some(&v("text/html,application/json"))));
        assert!(wants_json(Some(&v("application/json, text/html;q=0.5"))));
        assert!(!wants_json(None));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
