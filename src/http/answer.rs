//! Answers the gateway makes itself, with no backend: ACME HTTP-01
//! answers, the redirect to HTTPS, and `redirect` / `respond` routes.
//! (Error pages are [`super::error`]'s.)

use http::Response;
use http::header::{self, HeaderValue};

use super::body::Body;
use crate::config::{Redirect, Respond};

/// Answers an ACME HTTP-01 validator: the key authorization of the token
/// asked for, or 404 when no order waits on it.
pub(crate) fn acme_challenge(key_auth: Option<String>) -> Response<Body> {
    match key_auth {
        Some(key_auth) => {
            let mut r = Response::new(Body::full(key_auth));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        None => {
            let mut r = Response::new(Body::full("unknown challenge token\n"));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r
        }
    }
}

/// 308 to the same host and path on https.
pub(crate) fn https_redirect(host: &str, port: u16, uri: &http::Uri) -> Response<Body> {
    let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub(crate) fn respond(r: &Respond) -> Response<Body> {
    let mut resp = Response::new(Body::full(r.body.clone()));
    *resp.status_mut() = r.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, r.content_type.clone());
    resp
}

/// The redirect target: `to`, plus the request path and query unless the
/// route says `keep_path = false`.
pub(crate) fn redirect_location(r: &Redirect, uri: &http::Uri) -> String {
    if !r.keep_path {
        return r.to.clone();
    }
    let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
    let base = r.to.trim_end_matches('/');
    // `to` without a path (`https://x`) or with one (`https://x/new/`):
    // the request path is appended either way.
    format!("{base}{pq}")
}

pub(crate) fn redirect(r: &Redirect, uri: &http::Uri) -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&redirect_location(r, uri)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations() {
        let r = |to: &str, keep: bool| Redirect {
            to: to.into(),
            status: http::StatusCode::PERMANENT_REDIRECT,
            keep_path: keep,
        };
        let uri: http::Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(
            redirect_location(&r("https://x.com", true), &uri),
            "https://x.com/a/b?x=1"
        );
        assert_eq!(
            redirect_location(&r("https://x.com/", true), &uri),
            "https://x.com/a/b?x=1"
        );
        assert_eq!(
            redirect_location(&r("https://x.com/new/", true), &uri),
            "https://x.com/new/a/b?x=1"
        );
        assert_eq!(
            redirect_location(&r("https://x.com/", false), &uri),
            "https://x.com/"
        );
    }
}
