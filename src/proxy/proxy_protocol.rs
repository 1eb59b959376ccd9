//! The PROXY protocol (v1 text, v2 binary) on the public listeners
//! (`[server] proxy_protocol = true`): a TCP load balancer in front tells
//! us the client's address before the first byte of TLS or HTTP.
//!
//! Only peers in `trusted_proxies` may send it; from anyone else a PROXY
//! header is refused (the connection is closed), so a client cannot claim
//! another address. A trusted peer may also connect without one (health
//! checks). The header is framed here (signature, length) and parsed by
//! the `ppp` crate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIG: &[u8; 6] = b"PROXY ";
/// A v1 header is at most 107 bytes with its CRLF.
const V1_MAX: usize = 107;
/// v2 headers we accept: addresses and a few TLVs.
const V2_MAX: usize = 16 + 1024;

/// Why a connection is dropped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A PROXY header from a peer outside `trusted_proxies`.
    Untrusted,
    /// A malformed header, or it did not arrive in time.
    Invalid,
}

enum Kind {
    V1,
    V2,
    None,
}

/// Peeks until the first bytes say whether a header starts.
async fn classify(stream: &TcpStream) -> Option<Kind> {
    let mut buf = [0u8; 12];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let b = &buf[..n];
        let v2 = V2_SIG.starts_with(b) || b.starts_with(V2_SIG);
        let v1 = V1_SIG.starts_with(b) || b.starts_with(V1_SIG);
        if b.len() >= V2_SIG.len() && b.starts_with(V2_SIG) {
            return Some(Kind::V2);
        }
        if b.len() >= V1_SIG.len() && b.starts_with(V1_SIG) {
            return Some(Kind::V1);
        }
        if !v1 && !v2 {
            return Some(Kind::None);
        }
        // A prefix so far: the rest is normally in the same packet.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads a PROXY header if the connection starts with one. `Ok(Some)`:
/// the client's address it names; `Ok(None)`: no header (or a `LOCAL` /
/// `UNKNOWN` one): keep the TCP peer.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    trusted: bool,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Refused> {
    let work = async {
        let kind = classify(stream).await.ok_or(Refused::Invalid)?;
        if !matches!(kind, Kind::None) && !trusted {
            return Err(Refused::Untrusted);
        }
        match kind {
            Kind::None => Ok(None),
            Kind::V2 => {
                let mut head = [0u8; 16];
                stream
                    .read_exact(&mut head)
                    .await
                    .map_err(|_| Refused::Invalid)?;
                let len = u16::from_be_bytes([head[14], head[15]]) as usize;
                if 16 + len > V2_MAX {
                    return Err(Refused::Invalid);
                }
                let mut all = head.to_vec();
                all.resize(16 + len, 0);
                stream
                    .read_exact(&mut all[16..])
                    .await
                    .map_err(|_| Refused::Invalid)?;
                let h = ppp::v2::Header::try_from(all.as_slice()).map_err(|_| Refused::Invalid)?;
                if h.command == ppp::v2::Command::Local {
                    return Ok(None);
                }
                Ok(match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                })
            }
            Kind::V1 => {
                let mut buf = [0u8; V1_MAX];
                let end = loop {
                    let n = stream.peek(&mut buf).await.map_err(|_| Refused::Invalid)?;
                    if n == 0 {
                        return Err(Refused::Invalid);
                    }
                    if let Some(i) = buf[..n].windows(2).position(|w| w == b"\r\n") {
                        break i + 2;
                    }
                    if n == V1_MAX {
                        return Err(Refused::Invalid);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                let mut line = vec![0u8; end];
                stream
                    .read_exact(&mut line)
                    .await
                    .map_err(|_| Refused::Invalid)?;
                let h = ppp::v1::Header::try_from(line.as_slice()).map_err(|_| Refused::Invalid)?;
                Ok(match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                })
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Refused::Invalid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    async fn read(
        bytes: &'static [u8],
        trusted: bool,
    ) -> (Result<Option<SocketAddr>, Refused>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(bytes).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            c
        });
        let (mut s, _) = l.accept().await.unwrap();
        let _c = client.await.unwrap();
        let r = read_header(&mut s, trusted, Duration::from_secs(2)).await;
        let mut rest = vec![0u8; 16];
        if r.is_ok() {
            s.read_exact(&mut rest).await.unwrap();
        }
        (r, rest)
    }

    #[tokio::test]
    async fn v1_v2_and_none() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n", true).await;
        assert_eq!(r, Ok(Some("192.0.2.7:5555".parse().unwrap())));
        assert_eq!(
            rest, b"GET / HTTP/1.1\r\n",
            "exactly the header is consumed"
        );

        let v2: &[u8] = &[
            b'\r', b'\n', b'\r', b'\n', 0, b'\r', b'\n', b'Q', b'U', b'I', b'T', b'\n', 0x21, 0x11,
            0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
        ];
        let (r, rest) = read(v2, true).await;
        assert_eq!(r, Ok(Some("198.51.100.9:8080".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (r, rest) = read(b"", true).await;
        assert_eq!(r, Ok(None));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");

        let (r, _) = read(b"PROXY TCP4 192.0.2.7 10.0.0.1 5555 443\r\n", false).await;
        assert_eq!(r, Err(Refused::Untrusted));
        let (r, _) = read(b"PROXY TCP9 nonsense\r\n", true).await;
        assert_eq!(r, Err(Refused::Invalid));
    }
}
