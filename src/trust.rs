//! How the gateway trusts a backend's TLS certificate, and the rustls
//! client configs for `https://` upstreams. A leaf on the bottom floor:
//! `config` builds these while it checks `upstream_tls` (so a missing CA
//! file or a bad key is reported where it is named), `upstream` uses them
//! to connect.
//!
//! Three ways to trust, in this order:
//! - `insecure_skip_verify`: anything (the handshake's signatures are
//!   still checked, so the peer holds the key of what it showed);
//! - `pin_sha256`: the leaf's SubjectPublicKeyInfo hashes to one of the
//!   pins; no CA and no name needed (self-signed appliances);
//! - otherwise the system roots plus `ca_file`, and the name.
//!
//! With no client certificate configured, the client says so to a
//! backend that asks for one, and notes on this thread that it was asked
//! ([`take_cert_requested`]): the connect step turns the backend's later
//! refusal into a reason for the log.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What `upstream_tls` asks for, files already resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Settings {
    pub ca_file: Option<std::path::PathBuf>,
    pub server_name: Option<String>,
    pub client_cert_file: Option<std::path::PathBuf>,
    pub client_key_file: Option<std::path::PathBuf>,
    /// Base64 SHA-256 of a SubjectPublicKeyInfo, as written.
    pub pin_sha256: Vec<String>,
    pub insecure_skip_verify: bool,
}

/// The client configs of one `upstream_tls`, one per ALPN offer; they
/// share one session cache (resumption works whichever is used).
#[derive(Debug)]
pub struct Clients {
    /// ALPN `http/1.1` only.
    pub http1: Arc<rustls::ClientConfig>,
    /// ALPN `h2` only.
    pub h2: Arc<rustls::ClientConfig>,
    /// ALPN `h2`, `http/1.1` (the backend picks).
    pub auto: Arc<rustls::ClientConfig>,
}

/// A pin as written: base64 of 32 bytes.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("`{text}` is not base64 (a SHA-256 of the SubjectPublicKeyInfo, e.g. from `openssl x509 -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`)"))?;
    bytes
        .try_into()
        .map_err(|_| format!("`{text}` is not 32 bytes long once decoded (a SHA-256)"))
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, c.tbs_certificate.subject_pki.raw);
    d.as_ref().try_into().ok()
}

/// Builds the client configs; the error names what is wrong (a file
/// that does not load, a bad pin).
pub fn clients(s: &Settings) -> Result<Clients, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let pins = s
        .pin_sha256
        .iter()
        .map(|p| parse_pin(p))
        .collect::<Result<Vec<_>, _>>()?;
    let webpki = if s.insecure_skip_verify || !pins.is_empty() {
        None
    } else {
        let roots = crate::pki::client_roots(s.ca_file.as_deref())?;
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )
    };
    let verifier = Arc::new(Verifier {
        webpki,
        pins,
        insecure: s.insecure_skip_verify,
        algs,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut base = match (&s.client_cert_file, &s.client_key_file) {
        (Some(c), Some(k)) => {
            let key = crate::pki::load_pair(c, k)?;
            builder.with_client_cert_resolver(Arc::new(Fixed(key)))
        }
        (None, None) => builder.with_client_cert_resolver(Arc::new(NoCert)),
        _ => {
            return Err("client_cert_file and client_key_file go together".into());
        }
    };
    base.enable_sni = true;
    let with = |alpn: &[&[u8]]| {
        let mut c = base.clone();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(c)
    };
    Ok(Clients {
        http1: with(&[b"http/1.1"]),
        h2: with(&[b"h2"]),
        auto: with(&[b"h2", b"http/1.1"]),
    })
}

/// Checks that a path names a readable file (for `portcullis check`).
pub fn readable(p: &Path) -> Result<(), String> {
    std::fs::metadata(p)
        .map_err(|e| format!("{}: {e}", p.display()))
        .map(|_| ())
}

#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<[u8; 32]>,
    insecure: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        if !self.pins.is_empty() {
            return match spki_sha256(end_entity) {
                Some(h) if self.pins.contains(&h) => Ok(ServerCertVerified::assertion()),
                _ => Err(rustls::Error::General(PIN_MISMATCH.into())),
            };
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::General(PIN_MISMATCH.into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The text of a pin mismatch (the connect step recognises it).
pub const PIN_MISMATCH: &str = "pin mismatch";

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

thread_local! {
    static CERT_REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// No client certificate: answers a request for one with none, and notes
/// the request on this thread.
#[derive(Debug)]
struct NoCert;

impl ResolvesClientCert for NoCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        CERT_REQUESTED.set(true);
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

/// Whether a backend asked this thread for a client certificate we do
/// not have since the last call. The handshake runs inside the poll of
/// its connect future, so a caller that clears this before each poll and
/// reads it after learns about its own handshake.
pub fn take_cert_requested() -> bool {
    CERT_REQUESTED.replace(false)
}
