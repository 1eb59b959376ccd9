//! Header rules at the proxy boundary: hop-by-hop removal, spoofable
//! identity and forwarding headers, `X-Forwarded-*` (request ids are in
//! `request_id`).
//!
//! Header names are compared the way a backend framework might read them:
//! lowercased, with `_` and `.` read as `-`, so `X_Authentik_Username` is
//! treated exactly like `X-Authentik-Username`.

use std::net::IpAddr;

use crate::http::Scheme;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection and never cross the proxy.
const HOP_BY_HOP: [HeaderName; UPGRADE_BIT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Identity headers our SSO sets (and others' SSO proxies set), which a
/// client must never be able to send to a backend. Normalised form.
const IDENTITY_EXACT: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-forwarded-uid",
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
    "x-remote-user",
    "x-webauth-user",
    "x-webauth-email",
    "x-webauth-name",
    "x-webauth-groups",
];
const IDENTITY_PREFIXES: &[&str] = &["x-authentik-", "x-auth-request-"];

/// Forwarding headers believed only from trusted proxies. Normalised form.
const FORWARDING_PREFIX: &str = "x-forwarded-";
const FORWARDING_EXACT: &[&str] = &["forwarded", "x-real-ip"];

/// Compares a header name with a normalised name, reading `_` and `.` as `-`.
fn normalized_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && name.iter().zip(want).all(|(&a, &b)| norm(a) == b)
}

fn normalized_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && normalized_eq(&name[..prefix.len()], prefix)
}

#[inline]
fn norm(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// True for any spelling of an identity header.
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    IDENTITY_PREFIXES
        .iter()
        .any(|p| normalized_starts_with(n, p.as_bytes()))
        || IDENTITY_EXACT
            .iter()
            .any(|e| normalized_eq(n, e.as_bytes()))
}

/// True for any spelling of a forwarding header (`X-Forwarded-*`,
/// `Forwarded`, `X-Real-IP`).
pub fn is_forwarding_header(name: &str) -> bool {
    let n = name.as_bytes();
    normalized_starts_with(n, FORWARDING_PREFIX.as_bytes())
        || FORWARDING_EXACT
            .iter()
            .any(|e| normalized_eq(n, e.as_bytes()))
}

/// Removes hop-by-hop headers, including every header named in
/// `Connection`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade`
/// survive so an upgrade can be relayed.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names notes which of these are present: most
    // requests carry none, most upstream responses only `connection:
    // keep-alive`, so only those are removed (each removal hashes a name).
    let mut present = 0u16;
    for n in headers.keys() {
        if let Some(i) = hop_by_hop_index(n.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            // Byte-wise: one non-ASCII byte elsewhere in the value must not
            // make us forward the headers it names (found by fuzzing).
            for token in v.as_bytes().split(|&b| b == b',') {
                let t = token.trim_ascii();
                // `keep-alive` is removed below anyway; `upgrade` is handled
                // last. Any other option, `close` included, may also be the
                // name of a header that must not cross (found by fuzzing).
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t) {
                    named.push(n);
                }
            }
        }
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & (1 << UPGRADE_BIT) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// `upgrade`'s bit in [`hop_by_hop_index`]'s numbering (after [`HOP_BY_HOP`]).
const UPGRADE_BIT: usize = 8;

/// The index in [`HOP_BY_HOP`] of this (lowercase) name, or
/// [`UPGRADE_BIT`] for `upgrade`.
fn hop_by_hop_index(n: &str) -> Option<usize> {
    let i = match n.as_bytes().first()? {
        b'c' if n == "connection" => 0,
        b'k' if n == "keep-alive" => 1,
        b'p' => match n {
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            _ => return None,
        },
        b't' => match n {
            "te" => 5,
            "trailer" => 6,
            "transfer-encoding" => 7,
            _ => return None,
        },
        b'u' if n == "upgrade" => UPGRADE_BIT,
        _ => return None,
    };
    Some(i)
}

/// Joins the `Cookie` fields of a request into one, separated by `"; "`.
/// HTTP/2 browsers send each cookie as its own field ("crumbs"); before an
/// HTTP/1.1 hop they must be one line (RFC 9113, section 8.2.3), since many
/// frameworks read only the first. Allocates only for more than one field.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let b = v.as_bytes().trim_ascii();
        if b.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(b);
    }
    headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// True when the request asks for a protocol upgrade (WebSocket etc.).
/// `Upgrade: h2c` is not relayed: the upgrade header is then dropped like
/// any other hop-by-hop header and the request proxied as plain HTTP/1.1.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).is_some_and(|u| {
        !u.as_bytes()
            .split(|&b| b == b',')
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    }) && headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    })
}

/// Removes every client-sent identity header, `X-Request-Id` in any
/// spelling (the gateway sends its own, adopting a valid one the client
/// sent; `x_request_id` would reach CGI-style backends as the same name)
/// and, unless the
/// peer is a trusted proxy, every forwarding header. Runs on every route.
pub fn strip_spoofable(headers: &mut HeaderMap, peer_trusted: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let s = name.as_str();
        // Cheap first-byte filter: every name we strip starts with x, r or f.
        let first = s.as_bytes()[0];
        if first != b'x' && first != b'r' && first != b'f' {
            continue;
        }
        if is_identity_header(s)
            || (!peer_trusted && is_forwarding_header(s))
            || normalized_eq(s.as_bytes(), b"x-request-id")
        {
            doomed.push(name.clone());
        }
    }
    for n in doomed {
        headers.remove(n);
    }
}

/// What we know about where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The TCP peer as a header value, formatted once per connection.
    pub peer_value: &'a HeaderValue,
    /// Is the TCP peer a trusted proxy?
    pub peer_trusted: bool,
    /// How the client reached us.
    pub scheme: Scheme,
    /// The host the client asked for, as sent.
    pub host: &'a HeaderValue,
}

use crate::http::conn::ip_value;

// Constants, so the names are checked at compile time, not per request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP`. From an
/// untrusted peer the client's own values were already removed, so these
/// replace them; from a trusted proxy the peer is appended to its chain and
/// its `-Proto`/`-Host` are kept.
///
/// The common case (untrusted peer) copies no bytes: the peer and host
/// values are shared, reference-counted header values.
pub fn set_forwarded(headers: &mut HeaderMap, origin: &Origin<'_>, client_ip: IpAddr) {
    let xff = X_FORWARDED_FOR;
    let chain = if origin.peer_trusted && headers.contains_key(&xff) {
        let prior: Vec<&str> = headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        HeaderValue::try_from(format!("{}, {}", prior.join(", "), origin.peer))
            .unwrap_or_else(|_| origin.peer_value.clone())
    } else {
        origin.peer_value.clone()
    };
    headers.insert(xff, chain);
    let proto = X_FORWARDED_PROTO;
    if !origin.peer_trusted || !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static(origin.scheme.as_str()));
    }
    let fhost = X_FORWARDED_HOST;
    if !origin.peer_trusted || !headers.contains_key(&fhost) {
        headers.insert(fhost, origin.host.clone());
    }
    let real = if client_ip == origin.peer {
        origin.peer_value.clone()
    } else {
        ip_value(client_ip)
    };
    headers.insert(X_REAL_IP, real);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_crumbs_become_one_line() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("cookie", "b=2 "),
            ("cookie", "c=3; d=4"),
        ]);
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3; d=4"]);
        let mut one = map(&[("cookie", "a=1;b=2")]);
        join_cookies(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(one[header::COOKIE], "a=1;b=2");
    }

    #[test]
    fn content_length_reads_like_the_parsers() {
        use crate::h1::wire::content_length;
        let h = map(&[("content-length", "5, 5")]);
        assert_eq!(content_length(&h), Some(5));
        assert_eq!(content_length(&map(&[("content-length", "5, 6")])), None);
        assert_eq!(content_length(&map(&[("content-length", "+5")])), None);
    }

    #[test]
    fn hop_by_hop_bits_match_the_table() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(n.as_str()), Some(i), "{n}");
        }
        assert_eq!(hop_by_hop_index("upgrade"), Some(UPGRADE_BIT));
        for other in ["", "host", "x-te", "tee", "proxy", "content-length"] {
            assert_eq!(hop_by_hop_index(other), None, "{other}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn identity_header_spellings() {
        let spoofed = [
            "X-authentik-username",
            "x_authentik_groups",
            "X.Authentik.Email",
            "x-authentik-jwt",
            "X-Forwarded-User",
            "x_forwarded_email",
            "X-Forwarded-Preferred-Username",
            "x.forwarded.groups",
            "X-Auth-Request-User",
            "Remote-User",
            "X-WEBAUTH-USER",
        ];
        for name in spoofed {
            assert!(is_identity_header(&name.to_ascii_lowercase()), "{name}");
        }
        for ok in ["x-request-id", "accept", "x-forwarded-for", "x-authentik"] {
            assert!(!is_identity_header(ok), "{ok}");
        }
    }

    #[test]
    fn strips_identity_always_and_forwarding_when_untrusted() {
        let mut h = map(&[
            ("x_authentik_username", "admin"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-request-id", "mine"),
            ("x_request_id", "mine-too"),
            ("accept", "*/*"),
        ]);
        let mut trusted = h.clone();
        strip_spoofable(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));

        // The request id is the gateway's to set, whoever the peer is.
        strip_spoofable(&mut trusted, true);
        assert!(!trusted.contains_key("x_authentik_username"));
        assert!(trusted.contains_key("x-forwarded-for"));
        assert!(!trusted.contains_key("x-request-id"));
        assert!(!trusted.contains_key("x_request_id"));
    }

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("x-keep", "1"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    #[test]
    fn connection_named_headers_go_even_in_odd_values() {
        // Fuzzing found both: `close` doubling as a header name, and a
        // non-ASCII byte that made the whole value unreadable.
        let mut h = map(&[("connection", "close"), ("close", "1"), ("x-keep", "1")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret, \xff").unwrap(),
        );
        h.append("x-secret", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
    }

    #[test]
    fn upgrade_survives_when_kept() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn forwarded_replaced_or_appended() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let peer_value = ip_value(peer);
        let host = HeaderValue::from_static("app.example.com");
        let origin = Origin {
            peer,
            peer_value: &peer_value,
            peer_trusted: false,
            scheme: Scheme::Https,
            host: &host,
        };
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &origin, origin.peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example.com");

        let trusted = Origin {
            peer_trusted: true,
            ..origin
        };
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
        ]);
        set_forwarded(&mut h, &trusted, "1.2.3.4".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
    }

    #[test]
    fn identity_headers_auth_sets_are_stripped_from_clients() {
        use crate::auth::identity::{Identity, UserClaims};
        use crate::config::IdentityHeaders;
        let id = Identity::new(UserClaims {
            sub: "abc123".into(),
            username: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: Some(true),
            name: Some("Alice".into()),
            groups: vec!["admins".into(), "users".into()],
        });
        let (mut h, mut f) = (HeaderMap::new(), HeaderMap::new());
        id.apply(&mut h, IdentityHeaders::Authentik);
        id.apply(&mut f, IdentityHeaders::Forwarded);
        // Everything we set is something strip_spoofable removes from clients.
        for name in h.keys().chain(f.keys()) {
            assert!(is_identity_header(name.as_str()), "{name}");
        }
    }
}
