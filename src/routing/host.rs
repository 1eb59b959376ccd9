//! Host normalisation for lookups: lowercase, no port, no trailing dot,
//! written into a caller's stack buffer so a lookup never allocates.

/// Longest host name we route (DNS names are at most 253 bytes).
pub const HOST_BUF_LEN: usize = 256;

/// Normalises a `Host` header or `:authority` value. Returns `None` for a
/// value that is not a host name or IP literal (the caller answers 400).
pub fn normalize_host<'b>(raw: &str, buf: &'b mut [u8; HOST_BUF_LEN]) -> Option<&'b str> {
    let raw = raw.as_bytes();
    let host: &[u8] = if raw.first() == Some(&b'[') {
        // IPv6 literal, optionally with a port.
        let end = raw.iter().position(|&b| b == b']')?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || (rest[0] == b':' && is_port(&rest[1..]))) {
            return None;
        }
        &raw[..=end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) if is_port(&raw[i + 1..]) => &raw[..i],
            Some(_) => return None,
            None => raw,
        }
    };
    let host = match host.last() {
        Some(b'.') => &host[..host.len() - 1],
        _ => host,
    };
    // One trailing dot is the absolute form of a name; a second one (found
    // by fuzzing: `a..:80` became `a.`) is no host at all.
    if host.is_empty() || host.len() > HOST_BUF_LEN || host.last() == Some(&b'.') {
        return None;
    }
    let ipv6 = host[0] == b'[';
    // An empty label (`.a`, `a..b`) names no host: 400, rather than a
    // name that can never match a route or a certificate.
    let mut prev = b'.';
    for (i, &b) in host.iter().enumerate() {
        let ok = b.is_ascii_alphanumeric()
            || b == b'-'
            || (b == b'.' && (ipv6 || prev != b'.'))
            || b == b'_'
            || (ipv6 && matches!(b, b'[' | b']' | b':'));
        if !ok {
            return None;
        }
        buf[i] = b.to_ascii_lowercase();
        prev = b;
    }
    // Only ASCII was written, so this cannot fail.
    std::str::from_utf8(&buf[..host.len()]).ok()
}

/// A `Host`-style value for building URLs: the host normalised as by
/// [`normalize_host`] (lowercase, no trailing dot), its port kept.
/// `None` when it is not a host. Allocates (login redirects only).
pub fn normalize_authority(raw: &str) -> Option<String> {
    let mut buf = [0u8; HOST_BUF_LEN];
    let host = normalize_host(raw, &mut buf)?;
    let after_host = match raw.rfind(']') {
        Some(i) => &raw[i + 1..],
        None => raw.rfind(':').map_or("", |i| &raw[i..]),
    };
    Some(match after_host.strip_prefix(':') {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

fn is_port(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 5
        && b.iter().all(u8::is_ascii_digit)
        && b.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let cases = [
            ("Example.COM", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("example.com.:443", Some("example.com")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("", None),
            (":80", None),
            ("exa mple.com", None),
            ("example.com:http", None),
            ("a/b", None),
            ("[::1]x", None),
            ("a..", None),
            ("...:80", None),
            (".", None),
            (".example.com", None),
            ("a..b", None),
            ("www..example.com:443", None),
            ("example.com:65535", Some("example.com")),
            ("example.com:65536", None),
            ("example.com:99999", None),
        ];
        for (raw, want) in cases {
            let mut buf = [0u8; HOST_BUF_LEN];
            assert_eq!(normalize_host(raw, &mut buf), want, "{raw:?}");
        }
    }

    #[test]
    fn authorities_for_urls() {
        let cases = [
            ("App.Example.COM", Some("app.example.com")),
            ("app.example.com.", Some("app.example.com")),
            ("App.Example.COM.:8443", Some("app.example.com:8443")),
            ("app.example.com:443", Some("app.example.com:443")),
            ("[::1]:8080", Some("[::1]:8080")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1:80")),
            ("a..b", None),
            ("a.test, b.test", None),
            ("evil.test/x", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_authority(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn rejects_overlong() {
        let long = "a".repeat(300);
        let mut buf = [0u8; HOST_BUF_LEN];
        assert_eq!(normalize_host(&long, &mut buf), None);
    }
}
