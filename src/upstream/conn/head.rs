//! Reading a backend's response head (RFC 9112), strictly: see the rules
//! in [`super`]. A body under any transfer coding but a lone `chunked`
//! (`gzip, chunked`, `gzip`) is refused (502), as nginx does: only
//! `chunked` is implemented, and passing the coded bytes on without a
//! header that says so would hand the client something it cannot read.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::{BackendFraming, Failure, Head, MAX_HEAD, MAX_HEADERS};
use crate::h1::wire::{BadLength, FramingHeaders};

/// Where each header's name and value sit in a head: start and end of
/// the name, start and end of the value.
type Spans = [(u32, u32, u32, u32); MAX_HEADERS];

/// Parses one response head from the front of `buf` and consumes it;
/// `None` when more bytes are needed. The headers go into `spare`'s room
/// (taken, left empty).
pub fn parse_head(
    buf: &mut BytesMut,
    method_is_head: bool,
    spare: &mut HeaderMap,
) -> Result<Option<Head>, Failure> {
    // Where each header's name and value sit in the head, so they can be
    // taken from one shared buffer instead of copied one by one.
    let mut spans: Spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let Some((len, code, minor, count)) = locate(buf, &mut spans)? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(code).map_err(|_| Failure::Broken("invalid status code"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(len).freeze();

    let mut headers = std::mem::take(spare);
    headers.clear();
    headers.reserve(count);
    let mut seen = FramingHeaders::dropping_plain_connection();
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| Failure::Broken("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| Failure::Broken("invalid header value"))?;
        seen.add(&mut headers, name, value).map_err(|e| match e {
            BadLength::Invalid => Failure::Broken("invalid Content-Length"),
            BadLength::Conflicting => Failure::Broken("conflicting Content-Length"),
        })?;
    }
    let mut keep_alive = seen.keep_alive(version);
    let bodiless = method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        BackendFraming::None
    } else if seen.chunked.is_some() && version == Version::HTTP_10 {
        // RFC 9112 6.1: faulty framing; the sender may have kept part of
        // the message, so neither reading nor reusing it is safe.
        return Err(Failure::Broken("Transfer-Encoding in an HTTP/1.0 response"));
    } else {
        body_framing(&seen, &mut headers, &mut keep_alive)?
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// Runs httparse over `buf`: once the head is complete, its length,
/// status code, minor version and header count, with each header's
/// place in `spans`.
#[inline(always)]
fn locate(buf: &BytesMut, spans: &mut Spans) -> Result<Option<(usize, u16, u8, usize)>, Failure> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Failure::Broken("too many header lines"));
        }
        Err(_) => return Err(Failure::Broken("not an HTTP/1 response")),
    };
    if len > MAX_HEAD {
        return Err(Failure::Broken("response head too large"));
    }
    let base = buf.as_ptr() as usize;
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        *span = (
            n as u32,
            (n + h.name.len()) as u32,
            v as u32,
            (v + h.value.len()) as u32,
        );
    }
    Ok(Some((
        len,
        resp.code.unwrap_or(0),
        resp.version.unwrap_or(1),
        resp.headers.len(),
    )))
}

/// How a response that may have a body is framed (RFC 9112 6.3); a
/// length sent with `chunked` is dropped from `headers` and the
/// connection not kept.
#[inline(always)]
fn body_framing(
    seen: &FramingHeaders,
    headers: &mut HeaderMap,
    keep_alive: &mut bool,
) -> Result<BackendFraming, Failure> {
    let (length, chunked) = (seen.length, seen.chunked);
    if chunked == Some(false) || seen.other_codings() {
        return Err(Failure::Broken(
            "unsupported Transfer-Encoding (only chunked is implemented)",
        ));
    }
    Ok(if let Some(is_chunked) = chunked {
        if length.is_some() {
            // Both: the length is a lie or a smuggling attempt; do not
            // pass it on, and do not trust this connection again.
            headers.remove(header::CONTENT_LENGTH);
            *keep_alive = false;
        }
        if is_chunked {
            BackendFraming::Chunked
        } else {
            *keep_alive = false;
            BackendFraming::UntilClose
        }
    } else if let Some(n) = length {
        BackendFraming::Length(n)
    } else {
        *keep_alive = false;
        BackendFraming::UntilClose
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Head>, Failure> {
        parse_head(
            &mut BytesMut::from(s.as_bytes()),
            false,
            &mut HeaderMap::new(),
        )
    }

    fn framing(s: &str) -> (BackendFraming, bool) {
        let h = parse(s).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            (BackendFraming::Length(5), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (BackendFraming::Chunked, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            (BackendFraming::UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
            (BackendFraming::None, true)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n"),
            (BackendFraming::None, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"),
            (BackendFraming::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            (BackendFraming::Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n"),
            (BackendFraming::Length(1), true)
        );
        // Identical repeats are one length.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n"),
            (BackendFraming::Length(3), true)
        );
    }

    #[test]
    fn repeated_or_listed_lengths_go_on_as_one_value() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        let v: Vec<_> = h.headers.get_all("content-length").iter().collect();
        assert_eq!(v, ["3"]);
    }

    #[test]
    fn transfer_encoding_beats_content_length_and_is_not_reused() {
        let h = parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BackendFraming::Chunked);
        assert!(!h.keep_alive);
        assert!(h.headers.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_refused() {
        let refused = Err(Failure::Broken(
            "unsupported Transfer-Encoding (only chunked is implemented)",
        ));
        for (te, want) in [
            ("chunked", Ok(BackendFraming::Chunked)),
            ("Chunked", Ok(BackendFraming::Chunked)),
            ("gzip, chunked", refused),
            ("gzip\r\nTransfer-Encoding: chunked", refused),
            ("chunked, chunked", refused),
            ("chunked, gzip", refused),
            ("gzip", refused),
            ("identity", refused),
        ] {
            let got = parse(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n"
            ))
            .map(|h| h.unwrap().framing);
            assert_eq!(got, want, "{te:?}");
        }
        // No body to decode: nothing to refuse.
        let h = parse_head(
            &mut BytesMut::from(
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            ),
            true,
            &mut HeaderMap::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, BackendFraming::None);
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").0,
            BackendFraming::None
        );
    }

    #[test]
    fn head_responses_have_no_body() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..]);
        let h = parse_head(&mut b, true, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BackendFraming::None);
        assert_eq!(h.headers[header::CONTENT_LENGTH], "1234");
        assert!(b.is_empty());
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HELLO\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            // Transfer-Encoding on HTTP/1.0: faulty framing (RFC 9112 6.1).
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Failure::Broken(_))),
                "accepted {bad:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn a_partial_head_waits_and_the_rest_stays_buffered() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP"[..]);
        let h = parse_head(&mut b, false, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(&b[..], b"okHTTP");
    }
}
