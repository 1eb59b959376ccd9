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

/// An IP address as a header value.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}
