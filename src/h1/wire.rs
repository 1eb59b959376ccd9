//! HTTP/1.1 message framing shared by both sides of the proxy: the
//! `Content-Length` value rules, the `Transfer-Encoding` rule (`chunked`
//! is the only transfer coding implemented), the chunked-body decoder
//! (RFC 9112) and the request-method rule.

use bytes::{Buf, Bytes, BytesMut};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Bytes of one chunk's extensions (and the padding before them) skipped
/// before giving up. Counted per chunk: a long stream of chunks that each
/// carry a small extension is fine, one huge extension line is not.
pub const MAX_CHUNK_EXTENSION: usize = 4 * 1024;

/// Bodies up to this size are copied out of a read buffer rather than
/// shared with it.
const COPY_BELOW: usize = 2048;

/// The first `n` bytes of `buf`. A small piece is copied: shared, it would
/// pin the whole read buffer until the other side has written it, and the
/// buffer's owner would need a new one for its next read. A large one is
/// shared, not copied.
pub fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let b = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        b
    } else {
        buf.split_to(n).freeze()
    }
}

/// Whether a request method is accepted: any token (the parsers check
/// that) without lowercase letters. Every registered method is uppercase,
/// and nginx refuses lowercase ones too; a backend that reads methods
/// case-insensitively would otherwise see `get` or `delete` as a method
/// the gateway's own rules never compared it with. Uppercase extension
/// methods (WebDAV's `PROPFIND`, `MKCOL`, …) pass.
#[inline]
pub fn method_allowed(method: &[u8]) -> bool {
    !method.iter().any(u8::is_ascii_lowercase)
}

/// A `Content-Length` value in the plain form it is sent on in: digits,
/// no leading zero.
fn is_plain_length(v: &[u8]) -> bool {
    !v.is_empty() && (!v.starts_with(b"0") || v.len() == 1) && v.iter().all(u8::is_ascii_digit)
}

/// Makes a request's `Content-Length` lines one plain value, as the
/// HTTP/1 parser does while it reads them: for heads that did not come
/// through it (HTTP/2, whose layer lets identical repeats and leading
/// zeros through). `Err` for an invalid value or unequal ones.
pub fn one_length(headers: &mut HeaderMap) -> Result<Option<u64>, BadLength> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let n = parse_length(first.as_bytes()).ok_or(BadLength::Invalid)?;
    let mut plain = is_plain_length(first.as_bytes());
    for v in values {
        match parse_length(v.as_bytes()) {
            None => return Err(BadLength::Invalid),
            Some(m) if m != n => return Err(BadLength::Conflicting),
            Some(_) => plain = false,
        }
    }
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Some(n))
}

/// The message's declared body length (`Content-Length`), if valid, read
/// by the same rules as the HTTP/1 parsers (digits, or a list of equal
/// values).
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    parse_length(h.get(header::CONTENT_LENGTH)?.as_bytes())
}

/// A `Content-Length` value: digits only, or a list of identical values.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let mut out = None;
    for part in v.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

pub fn last_token(v: &[u8]) -> Option<&[u8]> {
    v.rsplit(|&b| b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A byte of a token (RFC 9110 5.6.2), as in a field name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (`digits` so far).
    Size(u8),
    /// Whitespace after the size.
    SizeWs,
    /// Skipping a chunk extension up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer field's name, before its colon.
    TrailerName,
    /// In a trailer field's value.
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental chunked-body decoder.
#[derive(Debug, Clone)]
pub struct Dechunker {
    at: Chunk,
    size: u64,
    /// Bytes skipped in the current chunk's extension, or in the trailer
    /// section once the last chunk was read.
    extras: usize,
    /// Largest trailer section accepted.
    max_trailers: usize,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Needs more bytes.
    More,
    End,
}

impl Dechunker {
    /// A decoder that accepts a trailer section of up to `max_trailers`
    /// bytes (a bound like the one on the message's head).
    pub fn new(max_trailers: usize) -> Self {
        Dechunker {
            at: Chunk::Size(0),
            size: 0,
            extras: 0,
            max_trailers,
        }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.at {
                Chunk::Done => return Ok(Step::End),
                Chunk::Data if self.size == 0 => {
                    self.at = Chunk::DataCr;
                    continue;
                }
                Chunk::Data => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = self.size.min(buf.len() as u64) as usize;
                    self.size -= n as u64;
                    return Ok(Step::Data(take(buf, n)));
                }
                _ => {}
            }
            let Some(&b) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.at = match (self.at, b) {
                (Chunk::Size(digits), b) if b.is_ascii_hexdigit() => {
                    if digits >= 16 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    self.size = (self.size << 4) | u64::from(d);
                    Chunk::Size(digits + 1)
                }
                (Chunk::Size(d), b';') if d > 0 => Chunk::Extension,
                // Whitespace may only pad the size before `;` or CR.
                (Chunk::Size(d), b' ' | b'\t') if d > 0 => Chunk::SizeWs,
                (Chunk::SizeWs, b' ' | b'\t') => {
                    self.skip_extension()?;
                    Chunk::SizeWs
                }
                (Chunk::SizeWs, b';') => Chunk::Extension,
                (Chunk::SizeWs, b'\r') => Chunk::SizeLf,
                (Chunk::SizeWs, _) => return Err("invalid chunk size"),
                (Chunk::Size(d), b'\r') if d > 0 => Chunk::SizeLf,
                (Chunk::Size(_), _) => return Err("invalid chunk size"),
                (Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Extension, b'\n') => return Err("invalid chunk extension"),
                (Chunk::Extension, _) => {
                    self.skip_extension()?;
                    Chunk::Extension
                }
                (Chunk::SizeLf, b'\n') if self.size == 0 => {
                    self.extras = 0;
                    Chunk::TrailerStart
                }
                (Chunk::SizeLf, b'\n') => Chunk::Data,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => {
                    // The extension budget is per chunk.
                    self.extras = 0;
                    Chunk::Size(0)
                }
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                // Each trailer line is a field line (RFC 9112 7.1.2):
                // a token, a colon, a value of visible bytes, SP and HTAB.
                (Chunk::TrailerStart | Chunk::TrailerName, b) if is_tchar(b) => {
                    self.trailer_byte()?;
                    Chunk::TrailerName
                }
                (Chunk::TrailerName, b':') => {
                    self.trailer_byte()?;
                    Chunk::TrailerLine
                }
                (Chunk::TrailerLine, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                    self.trailer_byte()?;
                    Chunk::TrailerLine
                }
                (Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerLine, _) => {
                    return Err("invalid trailer");
                }
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err("invalid chunk framing"),
            };
        }
    }

    fn trailer_byte(&mut self) -> Result<(), &'static str> {
        self.extras += 1;
        if self.extras > self.max_trailers {
            return Err("trailer section too large");
        }
        Ok(())
    }

    fn skip_extension(&mut self) -> Result<(), &'static str> {
        self.extras += 1;
        if self.extras > MAX_CHUNK_EXTENSION {
            return Err("chunk extension too large");
        }
        Ok(())
    }
}

/// Appends one chunk of a chunked body (its size line, data, CRLF).
pub fn encode_chunk(dst: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    let mut n = data.len();
    let mut i = size.len();
    loop {
        i -= 1;
        size[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&size[i..]);
    dst.extend_from_slice(b"\r\n");
    dst.extend_from_slice(data);
    dst.extend_from_slice(b"\r\n");
}

/// What a message's framing headers say (`Content-Length`,
/// `Transfer-Encoding`, `Connection`), noted as its header lines are read;
/// shared by the request and response parsers.
#[derive(Debug, Default)]
pub struct FramingHeaders {
    pub length: Option<u64>,
    /// `Some(true)` when the last transfer coding is `chunked`.
    pub chunked: Option<bool>,
    /// Transfer codings named, over all `Transfer-Encoding` lines.
    codings: usize,
    close: bool,
    keep_alive: bool,
    /// `Connection` names `upgrade`.
    pub upgrade: bool,
    /// Leave out a `Connection` header that only says `keep-alive` (its
    /// meaning is kept in the fields above).
    drop_plain_connection: bool,
}

/// A `Content-Length` that cannot frame the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLength {
    Invalid,
    Conflicting,
}

impl FramingHeaders {
    /// For a backend's answer: a `Connection` header that only says
    /// `keep-alive` is noted and left out of the map (it is hop-by-hop and
    /// names no other header, so it would only be removed again before the
    /// answer goes on). `close` stays: a header named Close must go too.
    pub fn dropping_plain_connection() -> Self {
        FramingHeaders {
            drop_plain_connection: true,
            ..FramingHeaders::default()
        }
    }

    /// Notes one header line and appends it to `headers`. A
    /// `Content-Length` goes on once, in plain form, whatever repeats or
    /// lists came in (strict parsers refuse a repeated one).
    pub fn add(
        &mut self,
        headers: &mut HeaderMap,
        name: HeaderName,
        value: HeaderValue,
    ) -> Result<(), BadLength> {
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes()).ok_or(BadLength::Invalid)?;
            if self.length.is_some_and(|l| l != n) {
                return Err(BadLength::Conflicting);
            }
            if self.length.replace(n).is_none() {
                let plain = is_plain_length(value.as_bytes());
                headers.append(name, if plain { value } else { HeaderValue::from(n) });
            }
            return Ok(());
        }
        if name == header::TRANSFER_ENCODING {
            // The last coding decides: chunked must come last to frame.
            let v = value.as_bytes();
            self.chunked = Some(last_token(v).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
            self.codings += v
                .split(|&b| b == b',')
                .filter(|t| !t.trim_ascii().is_empty())
                .count();
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for t in value.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                let close = t.eq_ignore_ascii_case(b"close");
                let keep_alive = t.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                // `close` may also name a header called Close, which has
                // to be removed: only a bare keep-alive names nothing.
                names_others |= !(keep_alive || t.is_empty());
            }
            if self.drop_plain_connection && !names_others {
                // Noted above; hop-by-hop and naming no other header, it
                // would only be removed again before the message goes on.
                return Ok(());
            }
        }
        headers.append(name, value);
        Ok(())
    }

    /// `Transfer-Encoding` ends with `chunked` but names more than that one
    /// coding (`gzip, chunked`): only `chunked` is implemented, so the
    /// body could be framed but not decoded (RFC 9112 6.1).
    pub fn other_codings(&self) -> bool {
        self.chunked == Some(true) && self.codings > 1
    }

    /// Whether the sender allows another message on the connection.
    pub fn keep_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAILERS: usize = 8 * 1024;

    fn dechunk(parts: &[&[u8]]) -> Result<Vec<u8>, &'static str> {
        let mut d = Dechunker::new(TRAILERS);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in parts {
            buf.extend_from_slice(p);
            loop {
                match d.decode(&mut buf)? {
                    Step::Data(b) => out.extend_from_slice(&b),
                    Step::More => break,
                    Step::End => return Ok(out),
                }
            }
        }
        Err("unfinished")
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] = b"5;name=val\r\nhello\r\nA\r\n, chunked!\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(dechunk(&[wire]).unwrap(), b"hello, chunked!");
        // Padding before the extension or the line end is allowed.
        assert_eq!(
            dechunk(&[b"3 \t;x=1\r\nabc\r\n2 \r\nde\r\n0\r\n\r\n"]).unwrap(),
            b"abcde"
        );
        // Byte by byte.
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(dechunk(&bytes).unwrap(), b"hello, chunked!");
        // Bytes after the end stay in the buffer.
        let mut d = Dechunker::new(TRAILERS);
        let mut buf = BytesMut::from(&b"0\r\n\r\nNEXT"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Step::End));
        assert_eq!(&buf[..], b"NEXT");
    }

    /// Trailer lines are field lines: a client's `x` or `: v` or a control
    /// byte in a value is refused, as hyper refuses it (found by the
    /// `h1_conn` fuzz target), while valid ones, obs-text included, pass.
    #[test]
    fn trailer_lines_must_be_field_lines() {
        let body = |t: &[u8]| [&b"1\r\nA\r\n0\r\n"[..], t, b"\r\n"].concat();
        for (trailer, ok) in [
            (&b""[..], true),
            (b"x-t: 1\r\n", true),
            (b"x-t:\r\n", true),
            (b"X_T:\tv \xe9\r\n", true),
            (b"a: 1\r\nb: 2\r\n", true),
            (b"x\r\n", false),
            (b": v\r\n", false),
            (b"x t: v\r\n", false),
            (b"x-t : v\r\n", false),
            (b"x-t: a\x01b\r\n", false),
            (b"x-t: a\x7fb\r\n", false),
            (b"x-t: 1\r\nbad\r\n", false),
        ] {
            let wire = body(trailer);
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            for got in [dechunk(&[&wire]), dechunk(&bytes)] {
                assert_eq!(
                    got.is_ok(),
                    ok,
                    "{:?}: {got:?}",
                    String::from_utf8_lossy(trailer)
                );
            }
        }
    }

    #[test]
    fn bad_chunking_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"0\r\nbad\n",
            b"5 junk\r\nhello\r\n",
        ] {
            assert!(
                dechunk(&[bad]).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Extensions are bounded per chunk and the trailer section on its
    /// own, so only one oversized piece is refused, never a long body.
    #[test]
    fn extension_and_trailer_bounds_are_per_piece() {
        let many = |n: usize, ext: &str| {
            let mut w = String::new();
            for _ in 0..n {
                w.push_str(&format!("1;{ext}\r\nx\r\n"));
            }
            w
        };
        // What is counted: the bytes after `;` (or after the first blank
        // behind the size), and each trailer line without its line end.
        let fits = "e".repeat(MAX_CHUNK_EXTENSION);
        let over = "e".repeat(MAX_CHUNK_EXTENSION + 1);
        let trailer_fits = format!("x-t: {}\r\n", "v".repeat(TRAILERS - 5));
        let trailer_over = format!("x-t: {}\r\n", "v".repeat(TRAILERS - 4));
        let cases: Vec<(String, Result<usize, &str>)> = vec![
            // 10,000 chunks with small extensions: far more extension
            // bytes in all than one chunk may have.
            (many(10_000, "seq=12345") + "0\r\n\r\n", Ok(10_000)),
            // One extension just within the bound, many times over.
            (many(8, &fits) + "0\r\n\r\n", Ok(8)),
            (
                format!("1;{over}\r\nx\r\n0\r\n\r\n"),
                Err("chunk extension too large"),
            ),
            // Padding behind the size counts as well.
            (
                format!("1{}\r\nx\r\n0\r\n\r\n", " ".repeat(MAX_CHUNK_EXTENSION + 2)),
                Err("chunk extension too large"),
            ),
            // On the last chunk too.
            (
                format!("0;{over}\r\n\r\n"),
                Err("chunk extension too large"),
            ),
            // Extensions do not eat into the trailer budget, and back.
            (many(4, &fits) + "0\r\n" + &trailer_fits + "\r\n", Ok(4)),
            (
                many(1, "a") + "0\r\n" + &trailer_over + "\r\n",
                Err("trailer section too large"),
            ),
            // Several trailer lines count together.
            (
                format!("0\r\n{}\r\n", "x-a: 1\r\n".repeat(TRAILERS / 6 + 1)),
                Err("trailer section too large"),
            ),
        ];
        for (wire, want) in cases {
            let got = dechunk(&[wire.as_bytes()]).map(|b| b.len());
            assert_eq!(got, want, "{:.60}…", wire);
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_told_apart() {
        let codings = |lines: &[&'static str]| {
            let mut seen = FramingHeaders::default();
            let mut h = HeaderMap::new();
            for l in lines {
                seen.add(
                    &mut h,
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static(l),
                )
                .unwrap();
            }
            (seen.chunked, seen.other_codings())
        };
        for (lines, chunked, other) in [
            (&["chunked"][..], Some(true), false),
            (&["Chunked "], Some(true), false),
            (&["gzip, chunked"], Some(true), true),
            (&["gzip", "chunked"], Some(true), true),
            (&["identity,chunked"], Some(true), true),
            (&["chunked", "chunked"], Some(true), true),
            (&[", chunked"], Some(true), false),
            (&["chunked, gzip"], Some(false), false),
            (&["chunked", "gzip"], Some(false), false),
            (&["chunked,"], Some(false), false),
            (&["gzip"], Some(false), false),
        ] {
            assert_eq!(codings(lines), (chunked, other), "{lines:?}");
        }
        assert_eq!(FramingHeaders::default().chunked, None);
    }

    #[test]
    fn lengths_from_other_parsers_become_one_plain_value() {
        let one = |vals: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            let r = one_length(&mut h);
            let left: Vec<_> = h
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (r, left)
        };
        for (vals, want, left) in [
            (&[][..], Ok(None), &[][..]),
            (&["5"], Ok(Some(5)), &["5"]),
            (&["0"], Ok(Some(0)), &["0"]),
            (&["05"], Ok(Some(5)), &["5"]),
            (&["5", "5"], Ok(Some(5)), &["5"]),
            (&["5", "05", "5, 5"], Ok(Some(5)), &["5"]),
            (&["5", "6"], Err(BadLength::Conflicting), &["5", "6"]),
            (&["5", "x"], Err(BadLength::Invalid), &["5", "x"]),
            (&["+5"], Err(BadLength::Invalid), &["+5"]),
        ] {
            let (r, got) = one(vals);
            assert_eq!(r, want, "{vals:?}");
            assert_eq!(got, left, "{vals:?}");
        }
    }

    #[test]
    fn methods_without_lowercase_letters_are_allowed() {
        for (m, ok) in [
            ("GET", true),
            ("PROPFIND", true),
            ("X-CUSTOM_1", true),
            ("M-SEARCH", true),
            ("get", false),
            ("Get", false),
            ("propfind", false),
            ("gET", false),
        ] {
            assert_eq!(method_allowed(m.as_bytes()), ok, "{m}");
        }
    }

    #[test]
    fn a_plain_connection_header_is_noted_and_left_out_when_asked() {
        let conn = |v: &'static str, drop: bool| {
            let mut seen = if drop {
                FramingHeaders::dropping_plain_connection()
            } else {
                FramingHeaders::default()
            };
            let mut h = HeaderMap::new();
            seen.add(&mut h, header::CONNECTION, HeaderValue::from_static(v))
                .unwrap();
            (seen, h.contains_key(header::CONNECTION))
        };
        let (seen, kept) = conn("keep-alive", true);
        assert!(!kept && seen.keep_alive(Version::HTTP_10));
        // `close` is noted and kept: it may name a header called Close.
        let (seen, kept) = conn("Close", true);
        assert!(kept && !seen.keep_alive(Version::HTTP_11));
        // Naming another header (or an upgrade): kept, so that header can
        // be removed and the upgrade relayed.
        assert!(conn("keep-alive, x-secret", true).1);
        assert!(conn("upgrade", true).1);
        // Requests keep theirs.
        assert!(conn("keep-alive", false).1);
    }
}
