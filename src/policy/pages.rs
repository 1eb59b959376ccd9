//! Custom error pages (`error_pages`, route or `[server]`) and `[server]
//! default_route`. A page replaces the gateway's own page for its status
//! (errors, and the answers of the route's options: an access list's 401,
//! a rate limit's 429); clients that prefer JSON still get the JSON
//! variant. Backends' answers are never replaced.

use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{DefaultRoute, ErrorPages};
use crate::http::body::Body;
use crate::http::error::{GatewayPage, ProxyError, wants_json};

/// The error's response, with the configured page when there is one.
pub fn error_page(
    e: &ProxyError,
    pages: &ErrorPages,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    own_page(e.response(request_id, accept), pages, request_id, accept)
}

/// A response the gateway made itself ([`GatewayPage`]: an error page,
/// an access list's 401, a rate limit's 429) with the configured page for
/// its status, when there is one and the client does not prefer JSON.
/// Status and headers stay (`WWW-Authenticate`, `Retry-After`); any other
/// response is returned as it is.
pub fn own_page(
    mut resp: Response<Body>,
    pages: &ErrorPages,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    let status = resp.status().as_u16();
    if wants_json(accept) || resp.extensions().get::<GatewayPage>().is_none() {
        return resp;
    }
    if let Some(page) = pages.find(status) {
        let body = page
            .replace("{status}", &status.to_string())
            .replace("{request_id}", request_id.to_str().unwrap_or(""));
        *resp.body_mut() = Body::full(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp
}

/// What a request no route matches gets instead of the 404 page, if the
/// server says so: a 302 to `default_route.redirect` (the path kept).
pub fn default_route(d: &DefaultRoute, target: &http::Uri) -> Option<Response<Body>> {
    let DefaultRoute::Redirect(to) = d else {
        return None;
    };
    let pq = target.path_and_query().map_or("/", |t| t.as_str());
    let location = format!("{}{pq}", to.trim_end_matches('/'));
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = StatusCode::FOUND;
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")),
    );
    Some(r)
}
