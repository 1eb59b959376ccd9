//! Custom error pages (`error_pages`, route or `[server]`) and `[server]
//! default_route`. A page replaces the gateway's own HTML page for its
//! status; clients that prefer JSON still get the JSON variant.

use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{DefaultRoute, ErrorPages};
use crate::http::body::Body;
use crate::http::error::{ProxyError, wants_json};

/// The error's response, with the configured page when there is one.
pub fn error_page(
    e: &ProxyError,
    pages: &ErrorPages,
    request_id: &HeaderValue,
    accept: Option<&HeaderValue>,
) -> Response<Body> {
    let mut resp = e.response(request_id, accept);
    let status = resp.status().as_u16();
    if wants_json(accept) {
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
