//! The response side of a route's options as one tower service, built
//! once per route: tower-http's `CompressionLayer` (gzip, brotli, zstd by
//! the client's `Accept-Encoding` q-values; it skips responses that are
//! already encoded or partial, adds `Vary: Accept-Encoding` and drops
//! `Content-Length`), under a layer that applies the response header
//! rules and security headers. The innermost service hands back the
//! response the pipeline already has: the service's request is a
//! `Request<Response<Body>>` carrying the client's `Accept-Encoding` and
//! the placeholders' values.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_http::compression::{CompressionBody, CompressionLayer, CompressionLevel, Predicate};

use super::Placeholders;
use crate::config::{Compress, CompressLevel, HeaderRules, RouteOptions};
use crate::http::body::{Body, BoxError, Stream};

type Svc = BoxCloneSyncService<Request<Response<Body>>, Response<Body>, Infallible>;

/// A route's response chain.
pub struct Chain {
    svc: Svc,
    /// Without compression: the header rules (and security headers),
    /// applied in place. Through the tower chain they cost a request
    /// wrapper, its extensions map and boxed futures: 33,541 instead of
    /// 27,317 instructions per proxied request for one `remove` rule
    /// (benches/load/profile.sh callgrind with ROUTE_EXTRA).
    direct: Option<(HeaderRules, bool)>,
}

impl Chain {
    pub fn build(o: &RouteOptions) -> Option<Chain> {
        if o.compress.is_none() && o.response_headers.is_empty() && !o.security_headers {
            return None;
        }
        let identity = tower::service_fn(|r: Request<Response<Body>>| {
            std::future::ready(Ok::<_, Infallible>(r.into_body()))
        });
        let mut svc: Svc = match o.compress {
            None => BoxCloneSyncService::new(identity),
            Some(c) => BoxCloneSyncService::new(
                tower::ServiceBuilder::new()
                    .map_response(|r: Response<CompressionBody<Body>>| {
                        r.map(|b| Body::Streamed(Box::new(Compressed(Mutex::new(Box::pin(b))))))
                    })
                    .layer(
                        CompressionLayer::new()
                            .no_deflate()
                            .quality(match c.level {
                                CompressLevel::Fastest => CompressionLevel::Fastest,
                                CompressLevel::Default => CompressionLevel::Default,
                                CompressLevel::Best => CompressionLevel::Best,
                            })
                            .compress_when(Compressible(c)),
                    )
                    .service(identity),
            ),
        };
        if !o.response_headers.is_empty() || o.security_headers {
            let rules = Arc::new((o.response_headers.clone(), o.security_headers));
            let inner = svc;
            svc =
                BoxCloneSyncService::new(tower::service_fn(move |req: Request<Response<Body>>| {
                    let p = req.extensions().get::<Placeholders>().cloned();
                    let (inner, rules) = (inner.clone(), rules.clone());
                    async move {
                        let mut resp = inner.oneshot(req).await?;
                        headers(&rules.0, rules.1, &mut resp, p.as_ref());
                        Ok(resp)
                    }
                }));
        }
        let direct = o
            .compress
            .is_none()
            .then(|| (o.response_headers.clone(), o.security_headers));
        Some(Chain { svc, direct })
    }

    /// Without compression: the header rules applied to `resp` now (an
    /// upgrade's 101 left as the backend sent it). False with compression.
    pub fn run_in_place(&self, resp: &mut Response<Body>, p: Option<&Placeholders>) -> bool {
        let Some((rules, security)) = &self.direct else {
            return false;
        };
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            headers(rules, *security, resp, p);
        }
        true
    }

    pub async fn run(
        &self,
        resp: Response<Body>,
        accept_encoding: Option<HeaderValue>,
        p: Placeholders,
    ) -> Response<Body> {
        let status = resp.status();
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            // An upgraded connection: only header rules could apply, and the
            // hand-over must see the response as the backend sent it.
            return resp;
        }
        if let Some((rules, security)) = &self.direct {
            let mut resp = resp;
            headers(rules, *security, &mut resp, Some(&p));
            return resp;
        }
        let mut req = Request::new(resp);
        if let Some(ae) = accept_encoding {
            req.headers_mut().insert(header::ACCEPT_ENCODING, ae);
        }
        req.extensions_mut().insert(p);
        let mut resp = match self.svc.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        // tower-http answers 406 when the client accepts no encoding it
        // knows (`gzip;q=0`); a proxy sends the body as it is instead
        // (RFC 9110 12.5.3 allows either), so the backend's status stays.
        if resp.status() == http::StatusCode::NOT_ACCEPTABLE && status != resp.status() {
            *resp.status_mut() = status;
        }
        resp
    }
}

fn headers(
    rules: &HeaderRules,
    security: bool,
    resp: &mut Response<Body>,
    p: Option<&Placeholders>,
) {
    super::rules::apply(rules, resp.headers_mut(), p);
    if security {
        let h = resp.headers_mut();
        for (name, value) in [
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
        ] {
            if !h.contains_key(&name) {
                h.insert(name, HeaderValue::from_static(value));
            }
        }
    }
}

/// Which responses are worth compressing: text-like types over the
/// minimum size, not event streams, not marked `no-transform`.
#[derive(Clone, Copy)]
struct Compressible(Compress);

impl Predicate for Compressible {
    fn should_compress<B>(&self, r: &Response<B>) -> bool
    where
        B: http_body::Body,
    {
        // No body to compress (1xx, 204, 304), or a part of one (206).
        let s = r.status().as_u16();
        if s < 200 || matches!(s, 204 | 206 | 304) {
            return false;
        }
        let h = r.headers();
        if h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("no-transform"))
        }) {
            return false;
        }
        let size = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or_else(|| r.body().size_hint().exact());
        if size.is_some_and(|n| n < self.0.min_size) {
            return false;
        }
        let ct = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        compressible_type(&ct)
    }
}

/// text/* (not event streams), JSON, JavaScript, XML, SVG, wasm.
pub fn compressible_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "text/event-stream" {
        return false;
    }
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
        )
}

/// A compressed body as one of [`Body`]'s streamed kinds. The encoders
/// are `Send` but not all `Sync`; the mutex is never contended (one task
/// polls a body).
struct Compressed(Mutex<std::pin::Pin<Box<CompressionBody<Body>>>>);

impl std::fmt::Debug for Compressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressed")
    }
}

impl Stream for Compressed {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let b = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        b.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.lock().map(|b| b.is_end_stream()).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}
