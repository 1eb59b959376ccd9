//! Request path normalisation, done once per request, so routing, the auth
//! gate and the backend all see exactly the same path.
//!
//! - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!   decoded; every other escape is kept, with its hex digits uppercased.
//! - Escapes that decode to `/`, `\` or NUL, a raw `\`, a raw control byte,
//!   and malformed escapes are refused (the caller answers 400): they are
//!   how path-based rules get bypassed on backends that decode differently.
//! - Runs of `/` are merged and `.`/`..` segments resolved (RFC 3986
//!   5.2.4); `..` never climbs above `/`.
//!
//! The common case (nothing to change) borrows the input and allocates
//! nothing.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`/`%5C`, raw `\`: a separator the backend might read differently.
    EncodedSeparator,
    /// NUL or another control byte.
    ControlByte,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// Does not start with `/`.
    NotAbsolute,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::EncodedSeparator => {
                "The request path contains an encoded slash or a backslash."
            }
            PathError::ControlByte => "The request path contains a control character.",
            PathError::BadEscape => "The request path contains an invalid percent-escape.",
            PathError::NotAbsolute => "The request target is not a path.",
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a request path (without the query). See the module docs.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(b)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_escapes(b)?;
    let out = resolve_segments(&decoded);
    // Only ASCII went in (every path comes from an `http::Uri`, which
    // refuses other bytes), and every escape we kept is ASCII too.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| PathError::BadEscape)
}

/// The fast scan: does anything need decoding or resolving? Refuses a raw
/// backslash or control byte on the way.
fn needs_work(b: &[u8]) -> Result<bool, PathError> {
    let mut needs_work = false;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' => needs_work = true,
            b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::ControlByte),
            b'/' => {
                if let Some(&n) = b.get(i + 1)
                    && (n == b'/' || n == b'.')
                {
                    needs_work = true;
                }
            }
            _ => {}
        }
    }
    Ok(needs_work)
}

/// Decodes unreserved escapes, uppercases the hex of the others, and
/// refuses escaped separators, control bytes and malformed escapes.
fn decode_escapes(b: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::ControlByte),
                v if is_unreserved(v) => decoded.push(v),
                v => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.extend_from_slice(&[
                        b'%',
                        HEX[(v >> 4) as usize],
                        HEX[(v & 15) as usize],
                    ]);
                }
            }
            i += 3;
        } else {
            decoded.push(b[i]);
            i += 1;
        }
    }
    Ok(decoded)
}

/// Merges runs of `/` and resolves `.` and `..` segments (RFC 3986 5.2.4);
/// `..` never climbs above `/`, and a path ending in a slash, `.` or `..`
/// keeps its trailing slash.
fn resolve_segments(decoded: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let ends_with_slash_segment = {
        let last = decoded.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
        last.is_empty() || last == b"." || last == b".."
    };
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                // Drop the last segment (and its slash); never above root.
                match out.iter().rposition(|&c| c == b'/') {
                    Some(p) => out.truncate(p),
                    None => out.clear(),
                }
            }
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    if out.is_empty() || ends_with_slash_segment {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/admin/..%2e/x", "/admin/.../x"),
            ("/admin/%2e%2e/x", "/x"),
            ("/.portcullis/../x", "/x"),
            ("/a/.b/..c", "/a/.b/..c"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn borrows_when_clean() {
        assert!(matches!(
            normalize_path("/api/v1/users").unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn refuses_tricks() {
        let cases = [
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::EncodedSeparator),
            ("/a%00b", PathError::ControlByte),
            ("/a%0d%0ab", PathError::ControlByte),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("a", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn idempotent() {
        for p in ["//a/./b/../c/", "/%7euser/%2e/x", "/x/%41%42"] {
            let once = normalize_path(p).unwrap().into_owned();
            assert_eq!(normalize_path(&once).unwrap(), once, "{p}");
        }
    }
}
