//! Reading a client's request head (RFC 9112), strictly: what httparse
//! refuses (bad tokens, spaces before colons, obsolete line folding) is a
//! 400 (it accepts bare LF line endings, as RFC 9112 2.2 allows); a head
//! over the size limit or with more than [`MAX_HEADERS`] lines is a 431; a
//! `Transfer-Encoding` whose last coding is not `chunked`, or one on an
//! HTTP/1.0 request, is a 400; one that names codings before `chunked`
//! (`gzip, chunked`) is a 501, as only `chunked` is implemented (RFC 9112
//! 6.1). Conflicting `Content-Length` values, a method with lowercase
//! letters (see [`method_allowed`]) and an HTTP/1.1 absolute-form request
//! without `Host` (RFC 9112 3.2) are 400s. `Transfer-Encoding` with
//! `Content-Length` is read as chunked, the length is dropped, and the
//! connection is closed after the response (RFC 9112 6.3), so nothing can
//! be smuggled behind it.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::wire::{BadLength, FramingHeaders, method_allowed};

/// Most header lines accepted in a request head (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// Emptied header maps kept per thread for the next request's head
/// (a map is two allocations); idle connections hold none.
const SPARE_MAPS: usize = 64;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn spare_map() -> HeaderMap {
    SPARES.with_borrow_mut(|s| s.pop()).unwrap_or_default()
}

/// Keeps a header map (emptied here) for a later request head.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > 64 {
        return;
    }
    map.clear();
    SPARES.with_borrow_mut(|s| {
        if s.len() < SPARE_MAPS {
            s.push(map);
        }
    });
}

/// Why a request head was refused, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with a reason safe to show.
    Bad(&'static str),
    /// 431: the head is over the size limit or has too many lines.
    TooLarge,
    /// 501: a transfer coding other than `chunked`.
    NotImplemented(&'static str),
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
#[derive(Debug)]
pub struct Parsed {
    pub request: Request<()>,
    pub framing: BodyFraming,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: say so before reading the body.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header (HTTP/1.1).
    pub upgrade: bool,
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete,
/// read more. On success also returns the head's length in bytes. The
/// head is copied into its own buffer, so `buf` can be reused at once.
pub fn parse(buf: &[u8], max_head: usize) -> Result<Option<(Parsed, usize)>, HeadError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Some(len) = tokenize(&mut req, buf, &mut storage, max_head)? else {
        return Ok(None);
    };
    // One small copy of the head: the header values and the URI share it,
    // and the connection's read buffer stays free for the next read.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let from = s.as_ptr() as usize - base;
        head.slice(from..from + s.len())
    };
    let (method, uri, version) = request_line(&req, at)?;
    let fields = fields(req.headers, at)?;

    // Without Host, an origin-form request is refused later with the
    // routing's own 400; an absolute-form one names its host in the
    // target, but HTTP/1.1 requires the header all the same.
    if !fields.has_host && version == Version::HTTP_11 && uri.authority().is_some() {
        return Err(HeadError::Bad("The request has no Host header."));
    }
    let Fields {
        mut headers,
        framing,
        has_upgrade,
        expect_continue,
        ..
    } = fields;
    let (framing, keep_alive, conn_upgrade) = body_framing(&framing, &mut headers, version)?;

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some((
        Parsed {
            request,
            framing,
            keep_alive,
            expect_continue: expect_continue && version == Version::HTTP_11,
            upgrade: conn_upgrade && has_upgrade && version == Version::HTTP_11,
        },
        len,
    )))
}

/// Runs httparse over `buf`: the head's length once it is complete
/// (`None`: read more), or why it is refused.
#[inline(always)]
fn tokenize<'b, 'h>(
    req: &mut httparse::Request<'h, 'b>,
    buf: &'b [u8],
    storage: &'h mut [MaybeUninit<httparse::Header<'b>>],
    max_head: usize,
) -> Result<Option<usize>, HeadError> {
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(req, buf, storage)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Bad(
                "Only HTTP/1.0 and HTTP/1.1 are spoken here.",
            ));
        }
        Err(_) => return Err(HeadError::Bad("The request head is malformed.")),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    Ok(Some(len))
}

/// The method, target and version of a tokenised head; `at` maps a slice
/// of the read buffer to the same bytes in the head's own copy.
#[inline(always)]
fn request_line(
    req: &httparse::Request<'_, '_>,
    at: impl Fn(&[u8]) -> Bytes,
) -> Result<(Method, Uri, Version), HeadError> {
    let method = req.method.unwrap_or("").as_bytes();
    if !method_allowed(method) {
        return Err(HeadError::Bad(
            "The request method is not valid (methods are uppercase).",
        ));
    }
    let method = Method::from_bytes(method)
        .map_err(|_| HeadError::Bad("The request method is not valid."))?;
    let uri = Uri::from_maybe_shared(at(req.path.unwrap_or("").as_bytes()))
        .map_err(|_| HeadError::Bad("The request target is not valid."))?;
    // CONNECT names only a host and port (authority form, RFC 9112
    // 3.2.3); any other target is malformed, and a backend could read it
    // as a path the gateway's rules never compared. That form is CONNECT's,
    // and only CONNECT takes it.
    let authority_form =
        uri.scheme().is_none() && uri.path_and_query().is_none() && uri.authority().is_some();
    if method == Method::CONNECT && !authority_form {
        return Err(HeadError::Bad(
            "A CONNECT request must name a host and port.",
        ));
    }
    if method != Method::CONNECT && authority_form {
        return Err(HeadError::Bad("The request target is not valid."));
    }
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok((method, uri, version))
}

/// A request's header lines, read into a map, with what the connection
/// needs to know about them.
struct Fields {
    headers: HeaderMap,
    framing: FramingHeaders,
    has_upgrade: bool,
    expect_continue: bool,
    has_host: bool,
}

#[inline(always)]
fn fields(
    lines: &[httparse::Header<'_>],
    at: impl Fn(&[u8]) -> Bytes,
) -> Result<Fields, HeadError> {
    let mut headers = spare_map();
    headers.reserve(lines.len() + 8);
    let mut framing = FramingHeaders::default();
    let (mut has_upgrade, mut expect_continue, mut has_host) = (false, false, false);
    for h in lines {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Bad("A header name is not valid."))?;
        let value = HeaderValue::from_maybe_shared(at(h.value))
            .map_err(|_| HeadError::Bad("A header value is not valid."))?;
        if name == header::HOST {
            has_host = true;
        } else if name == header::UPGRADE {
            has_upgrade = true;
        } else if name == header::EXPECT {
            expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        framing
            .add(&mut headers, name, value)
            .map_err(|e| match e {
                BadLength::Invalid => HeadError::Bad("The Content-Length header is not valid."),
                BadLength::Conflicting => {
                    HeadError::Bad("The request has conflicting Content-Length headers.")
                }
            })?;
    }
    Ok(Fields {
        headers,
        framing,
        has_upgrade,
        expect_continue,
        has_host,
    })
}

/// How the body is framed (RFC 9112 6.3), whether the connection may be
/// kept, and whether `Connection` asks for an upgrade. A length sent with
/// `chunked` is dropped from `headers`.
#[inline(always)]
fn body_framing(
    framing: &FramingHeaders,
    headers: &mut HeaderMap,
    version: Version,
) -> Result<(BodyFraming, bool, bool), HeadError> {
    if framing.other_codings() && version == Version::HTTP_11 {
        return Err(HeadError::NotImplemented(
            "Only the chunked transfer coding is supported.",
        ));
    }
    let mut keep_alive = framing.keep_alive(version);
    let body = match (framing.chunked, framing.length) {
        (Some(_), _) if version == Version::HTTP_10 => {
            return Err(HeadError::Bad(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request.",
            ));
        }
        (Some(false), _) => {
            return Err(HeadError::Bad(
                "The request's Transfer-Encoding does not end with chunked.",
            ));
        }
        (Some(true), Some(_)) => {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
            BodyFraming::Chunked
        }
        (Some(true), None) => BodyFraming::Chunked,
        (None, Some(0) | None) => BodyFraming::None,
        (None, Some(n)) => BodyFraming::Length(n),
    };
    Ok((body, keep_alive, framing.upgrade))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Parsed {
        let (p, len) = parse(s.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(len, s.len());
        p
    }

    fn err(s: &str) -> HeadError {
        parse(s.as_bytes(), 8192).unwrap_err()
    }

    #[test]
    fn a_simple_request() {
        let p = ok("GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nAccept: */*\r\n\r\n");
        assert_eq!(p.request.method(), Method::GET);
        assert_eq!(p.request.uri(), "/a?b=1");
        assert_eq!(p.request.headers()["host"], "x.test");
        assert_eq!(p.framing, BodyFraming::None);
        assert!(p.keep_alive && !p.upgrade && !p.expect_continue);
    }

    #[test]
    fn incomplete_heads_wait_and_big_ones_are_431() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x", 8192).unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(
            parse(long.as_bytes(), 8192).unwrap_err(),
            HeadError::TooLarge
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            err(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            HeadError::TooLarge
        );
    }

    #[test]
    fn framing_and_connection_rules() {
        let p = ok("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(p.framing, BodyFraming::Length(5));
        let p = ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(p.framing, BodyFraming::Chunked);
        // Both: chunked wins, the length goes, the connection closes after.
        let p = ok("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(p.framing, BodyFraming::Chunked);
        assert!(!p.keep_alive);
        assert!(p.request.headers().get("content-length").is_none());
        assert!(!ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        let p = ok("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(p.upgrade);
        assert!(!ok("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(
            ok("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn repeated_or_listed_lengths_go_on_as_one_value() {
        let p = ok("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 05\r\n\r\n");
        assert_eq!(p.framing, BodyFraming::Length(5));
        let v: Vec<_> = p
            .request
            .headers()
            .get_all("content-length")
            .iter()
            .collect();
        assert_eq!(v, ["5"]);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(err(bad), HeadError::Bad(_)), "accepted {bad:?}");
        }
    }

    #[test]
    fn transfer_codings_host_and_methods() {
        use HeadError::{Bad, NotImplemented};
        let bad = |s| Err(Bad(s));
        let not_impl = Err(NotImplemented(
            "Only the chunked transfer coding is supported.",
        ));
        let no_host = bad("The request has no Host header.");
        let lower = bad("The request method is not valid (methods are uppercase).");
        let cases: &[(&str, Result<BodyFraming, HeadError>)] = &[
            // Transfer codings: chunked alone frames; more before it is 501.
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(BodyFraming::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
                Ok(BodyFraming::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                not_impl,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                not_impl,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                not_impl,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: deflate, chunked\r\n\r\n",
                not_impl,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                bad("The request's Transfer-Encoding does not end with chunked."),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                bad("Transfer-Encoding is not allowed in an HTTP/1.0 request."),
            ),
            // Host: required with an absolute-form target on HTTP/1.1.
            ("GET http://a.test/ HTTP/1.1\r\n\r\n", no_host),
            ("CONNECT a.test:443 HTTP/1.1\r\n\r\n", no_host),
            // CONNECT takes the authority form only.
            (
                "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "CONNECT //x/../y HTTP/1.1\r\nHost: a\r\n\r\n",
                bad("A CONNECT request must name a host and port."),
            ),
            (
                "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n",
                bad("A CONNECT request must name a host and port."),
            ),
            (
                "CONNECT http://a.test:443/ HTTP/1.1\r\nHost: a\r\n\r\n",
                bad("A CONNECT request must name a host and port."),
            ),
            (
                "GET a.test:443 HTTP/1.0\r\n\r\n",
                bad("The request target is not valid."),
            ),
            (
                "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            ("GET http://a.test/ HTTP/1.0\r\n\r\n", Ok(BodyFraming::None)),
            // Origin form without Host: left to the routing's 400.
            ("GET / HTTP/1.1\r\n\r\n", Ok(BodyFraming::None)),
            // Methods: uppercase tokens pass, lowercase letters do not.
            (
                "PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            (
                "M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n",
                Ok(BodyFraming::None),
            ),
            ("get / HTTP/1.1\r\nHost: a\r\n\r\n", lower),
            ("Get / HTTP/1.1\r\nHost: a\r\n\r\n", lower),
            ("propfind / HTTP/1.1\r\nHost: a\r\n\r\n", lower),
        ];
        for (head, want) in cases {
            let got = parse(head.as_bytes(), 8192).map(|p| p.unwrap().0.framing);
            assert_eq!(&got, want, "{head:?}");
        }
    }
}
