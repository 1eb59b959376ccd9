//! Opening a connection to a backend: TCP, then TLS for `https://` (the
//! name sent and verified, the ALPN offer), with what went wrong said in
//! plain words in the log. The client only ever sees a 502/504.

use crate::http::error::Cause;
use std::time::Duration;

use tokio::net::TcpStream;

use super::conn::Stream;
use crate::config::UpstreamTarget;
use crate::http::error::ProxyError;

/// Which protocols the TLS handshake offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
    Auto,
}

/// A new connection and what it speaks.
pub struct Opened {
    pub stream: Stream,
    /// ALPN settled on h2.
    pub h2: bool,
    /// The backend asked for a client certificate and none is configured.
    pub cert_requested: bool,
}

/// Opens a connection to `target` within `timeout` (TCP connect and TLS
/// handshake together).
pub async fn open(
    target: &UpstreamTarget,
    timeout: Duration,
    alpn: Alpn,
) -> Result<Opened, ProxyError> {
    match tokio::time::timeout(timeout, open_inner(target, alpn)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!(upstream = %target.url, "connecting timed out");
            Err(ProxyError::UpstreamTimeout(Cause::Said(
                "connecting (TCP and TLS) took longer than upstream_connect_timeout",
            )))
        }
    }
}

async fn open_inner(target: &UpstreamTarget, alpn: Alpn) -> Result<Opened, ProxyError> {
    let host = target
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let default_port = if target.tls.is_some() { 443 } else { 80 };
    let port = target.authority.port_u16().unwrap_or(default_port);
    let tcp = match TcpStream::connect((host, port)).await {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(ProxyError::UpstreamTimeout(Cause::error(e)));
        }
        Err(e) => return Err(ProxyError::UpstreamUnavailable(Cause::error(e))),
        Ok(s) => s,
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(Opened {
            stream: Stream::Plain(tcp),
            h2: false,
            cert_requested: false,
        });
    };
    let config = match alpn {
        Alpn::Http1 => &tls.clients.http1,
        Alpn::H2 => &tls.clients.h2,
        Alpn::Auto => &tls.clients.auto,
    };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let mut handshake = connector.connect(tls.server_name.clone(), tcp);
    // The certificate request is noted on this thread while the handshake
    // future is polled (see `trust::take_cert_requested`).
    let mut cert_requested = false;
    let done = std::future::poll_fn(|cx| {
        crate::trust::take_cert_requested();
        let r = std::pin::Pin::new(&mut handshake).poll(cx);
        cert_requested |= crate::trust::take_cert_requested();
        r
    })
    .await;
    let stream = match done {
        Ok(s) => s,
        Err(e) => {
            let reason = if alpn == Alpn::H2 && refused_alpn(&e) {
                // A server that knows ALPN but none of ours (nginx without
                // `http2`) ends the handshake with an alert rather than
                // choosing nothing: the same cause as below, said the same way.
                "backend did not offer h2".to_string()
            } else {
                tls_failure(&e, host, &tls.server_name, cert_requested)
            };
            tracing::warn!(upstream = %target.url, reason = %reason, "TLS to the backend failed");
            return Err(ProxyError::UpstreamBroken(Cause::error(format!(
                "TLS to the backend failed: {reason}"
            ))));
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if alpn == Alpn::H2 && !h2 {
        tracing::warn!(upstream = %target.url, reason = "backend did not offer h2", "TLS to the backend failed");
        return Err(ProxyError::UpstreamBroken(Cause::Said(
            "TLS to the backend: it did not offer h2",
        )));
    }
    Ok(Opened {
        stream: Stream::Tls(Box::new(stream)),
        h2,
        cert_requested,
    })
}

/// Why a handshake failed, for the log.
/// The backend ended the handshake because it speaks none of the
/// protocols offered by ALPN (`no_application_protocol`, RFC 7301 3.2).
fn refused_alpn(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

fn tls_failure(
    e: &std::io::Error,
    host: &str,
    name: &rustls_pki_types::ServerName<'_>,
    cert_requested: bool,
) -> String {
    use rustls::{CertificateError as C, Error as E};
    let name = name.to_str();
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return format!("handshake broke off: {e}");
    };
    match err {
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("certificate for {host} is not valid for name {name}")
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "unknown issuer (set upstream_tls.ca_file or pin_sha256)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("certificate for {host} has expired")
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("certificate for {host} is not valid yet")
        }
        E::General(m) if m == crate::trust::PIN_MISMATCH => {
            "pin mismatch (the certificate's key is not one of upstream_tls.pin_sha256)".into()
        }
        E::AlertReceived(a) if cert_requested => format!(
            "the backend wants a client certificate (set upstream_tls.client_cert_file and client_key_file): alert {a:?}"
        ),
        E::AlertReceived(a) => format!("the backend refused the handshake: alert {a:?}"),
        other => other.to_string(),
    }
}
