//! What a client connection knows about itself, filled in once when it is
//! accepted and borrowed by every request on it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

use super::Scheme;

/// What a connection knows about itself.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// How the client reached us (which listener).
    pub scheme: Scheme,
    /// The TLS server name the client asked for (lowercase), on https.
    pub sni: Option<Box<str>>,
    /// The peer's address as a header value, formatted once.
    pub peer_value: HeaderValue,
    /// The negotiated TLS version (`TLSv1.3`), on https.
    pub tls_version: Option<&'static str>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, scheme: Scheme, sni: Option<Box<str>>) -> Self {
        ConnInfo {
            peer,
            local,
            scheme,
            sni,
            peer_value: ip_value(canonical_ip(peer.ip())),
            tls_version: None,
        }
    }

    /// The same, with the TLS version the handshake settled on.
    pub fn with_tls_version(mut self, version: Option<rustls::ProtocolVersion>) -> Self {
        self.tls_version = version.map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        });
        self
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack
/// listeners) to plain IPv4 so CIDR rules written for IPv4 apply.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the right-most address in `X-Forwarded-For` that is not itself
/// a trusted proxy.
pub fn client_ip(
    headers: &http::HeaderMap,
    peer: IpAddr,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for addr in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match addr.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// An IP address as a header value.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_walks_trusted_chain() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("9.9.9.9, 1.2.3.4, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(&h, peer, trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let untrusted: IpAddr = "5.5.5.5".parse().unwrap();
        assert_eq!(client_ip(&h, untrusted, trusted), untrusted);
    }
}
