//! HTTP/1.1 message framing shared by both sides of the proxy: the
//! `Content-Length` value rules and the chunked-body decoder (RFC 9112).

use bytes::{Buf, Bytes, BytesMut};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Bytes of chunk extensions or trailers skipped before giving up.
pub const MAX_CHUNK_EXTRAS: usize = 16 * 1024;

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
    extras: usize,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// Needs more bytes.
    More,
    End,
}

impl Default for Dechunker {
    fn default() -> Self {
        Dechunker {
            at: Chunk::Size(0),
            size: 0,
            extras: 0,
        }
    }
}

impl Dechunker {
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
                    self.skip_extra()?;
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
                    self.skip_extra()?;
                    Chunk::Extension
                }
                (Chunk::SizeLf, b'\n') if self.size == 0 => Chunk::TrailerStart,
                (Chunk::SizeLf, b'\n') => Chunk::Data,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size(0),
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => {
                    return Err("invalid trailer");
                }
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => {
                    self.skip_extra()?;
                    Chunk::TrailerLine
                }
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err("invalid chunk framing"),
            };
        }
    }

    fn skip_extra(&mut self) -> Result<(), &'static str> {
        self.extras += 1;
        if self.extras > MAX_CHUNK_EXTRAS {
            return Err("chunk extensions or trailers too large");
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
                let v = value.as_bytes();
                let plain =
                    (!v.starts_with(b"0") || v.len() == 1) && v.iter().all(u8::is_ascii_digit);
                headers.append(name, if plain { value } else { HeaderValue::from(n) });
            }
            return Ok(());
        }
        if name == header::TRANSFER_ENCODING {
            // The last coding decides: chunked must come last to frame.
            self.chunked = Some(
                last_token(value.as_bytes()).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
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

    /// Whether the sender allows another message on the connection.
    pub fn keep_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(parts: &[&[u8]]) -> Result<Vec<u8>, &'static str> {
        let mut d = Dechunker::default();
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
        let mut d = Dechunker::default();
        let mut buf = BytesMut::from(&b"0\r\n\r\nNEXT"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Step::End));
        assert_eq!(&buf[..], b"NEXT");
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
        let long_ext = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_EXTRAS + 1));
        assert_eq!(
            dechunk(&[long_ext.as_bytes()]),
            Err("chunk extensions or trailers too large")
        );
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
