//! TLS termination: the rustls server config (TLS 1.2 + 1.3, ALPN h2 and
//! http/1.1, server cipher preference, session tickets), the handshake of
//! one accepted connection ([`handshake`]), and the certificate store it
//! resolves SNI names against. The accept loop that calls it lives with
//! the other accept loops in `proxy::server`: this module knows nothing of
//! requests.
//!
//! The ClientHello is read before a config is chosen, so that a name we have
//! no certificate for is refused with an `unrecognized_name` alert (never
//! another host's certificate) and `acme-tls/1` handshakes get the
//! TLS-ALPN-01 challenge certificate.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

pub use store::CertStore;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A fatal `unrecognized_name` alert record (RFC 6066): content type 21,
/// legacy version 3.3, length 2, level fatal (2), description 112.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Resolves certificates from the store by SNI.
#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertStore")
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.0
            .resolve(&name.to_ascii_lowercase())
            .map(|e| e.key.clone())
    }
}

/// Always the one challenge certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// TLS 1.3 and 1.2 only (Mozilla "intermediate").
static VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// Cipher suites in the server's order of preference, as in Mozilla's
/// "intermediate" profile: AES-128-GCM first (secure, and cheaper than
/// AES-256-GCM with its SHA-384 key schedule: about a tenth less CPU per
/// full handshake here), then AES-256-GCM, then ChaCha20-Poly1305.
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The server config for public HTTPS.
pub fn server_config(store: Arc<CertStore>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    Ok(Arc::new(cfg))
}

fn challenge_config(ck: Arc<CertifiedKey>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(ck)));
    cfg.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Everything the HTTPS accept path needs.
pub struct TlsContext {
    pub store: Arc<CertStore>,
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
}

// Returned once per connection and moved straight into the connection
// task: boxing the stream would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Handshake {
    /// Done: the stream and the (lowercase) server name the client asked for.
    Done(tokio_rustls::server::TlsStream<TcpStream>, String),
    UnknownName,
    /// A TLS-ALPN-01 validation, answered and closed.
    Challenge,
    Failed,
}

/// Reads the ClientHello, picks the config, completes the handshake.
pub async fn handshake(mut tcp: TcpStream, tls: &TlsContext) -> Handshake {
    let mut acceptor = Acceptor::default();
    let mut buf = vec![0u8; 4096];
    let accepted = loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return Handshake::Failed,
            Ok(n) => n,
        };
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            if acceptor.read_tls(&mut rd).is_err() {
                return Handshake::Failed;
            }
        }
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => continue,
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                let _ = alert.write_all(&mut out);
                let _ = tcp.write_all(&out).await;
                tracing::debug!(error = %e, "invalid ClientHello");
                return Handshake::Failed;
            }
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
    let wants_acme = hello
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));

    if wants_acme {
        let mut ck = sni
            .as_deref()
            .and_then(|s| tls.store.alpn_challenges.get(s).map(|c| c.clone()));
        // Another instance's order (`[cluster]`): the CA may reach any.
        if ck.is_none()
            && let (Some(s), Some(shared)) = (sni.as_deref(), tls.store.shared.get())
        {
            ck = shared.alpn_challenge(s).await;
        }
        let Some(ck) = ck else {
            let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            return Handshake::UnknownName;
        };
        let Ok(cfg) = challenge_config(ck) else {
            return Handshake::Failed;
        };
        // The validator only needs the handshake; then we are done.
        if let Ok(mut s) = StartHandshake::from_parts(accepted, tcp)
            .into_stream(cfg)
            .await
        {
            let _ = s.shutdown().await;
        }
        tracing::debug!(
            host = sni.as_deref().unwrap_or(""),
            "answered a TLS-ALPN-01 challenge"
        );
        return Handshake::Challenge;
    }

    let Some(sni) = sni.filter(|s| tls.store.resolve(s).is_some()) else {
        // Never fall back to another host's certificate.
        let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        let _ = tcp.shutdown().await;
        return Handshake::UnknownName;
    };
    match StartHandshake::from_parts(accepted, tcp)
        .into_stream(tls.config.clone())
        .await
    {
        Ok(s) => Handshake::Done(s, sni),
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Handshake::Failed
        }
    }
}
