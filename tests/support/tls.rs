//! TLS helpers for tests: a test CA with leaf certificates (rcgen), and a
//! client that handshakes with a chosen SNI and trust roots, then speaks
//! HTTP/1.1 or h2 over the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A CA that signs leaf certificates for test hosts.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        portcullis::install_crypto_provider();
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        let issuer_key = rcgen::KeyPair::from_pem(&key.serialize_pem()).expect("CA key copy");
        let issuer = rcgen::Issuer::new(params, issuer_key);
        TestCa { key, cert, issuer }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A leaf for `names`, signed by this CA; chain PEM is leaf + CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Roots from PEM text (one or more certificates).
pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.expect("PEM certificate")).expect("add root");
    }
    roots
}

/// What a handshake showed.
#[derive(Debug)]
pub struct Handshake {
    /// The cipher suite the server chose.
    pub suite: Option<rustls::CipherSuite>,
    pub alpn: Option<Vec<u8>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Handshake {
    /// The leaf's serial number as hex, to tell certificates apart.
    pub fn leaf_serial(&self) -> String {
        serial_of(&self.chain[0])
    }
}

pub fn serial_of(der: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse leaf");
    c.raw_serial_as_string()
}

/// Connects to `addr` with `sni`, verifying against `roots`, offering `alpn`.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<Handshake, String> {
    portcullis::install_crypto_provider();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake for {sni}: {e}"))?;
    let (_, conn) = stream.get_ref();
    Ok(Handshake {
        alpn: conn.alpn_protocol().map(|p| p.to_vec()),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
        stream,
    })
}

/// A response read over TLS.
#[derive(Debug)]
pub struct TlsResp {
    pub status: http::StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One GET over an established TLS connection, in h2 if ALPN chose it.
pub async fn get(hs: Handshake, host: &str, path: &str) -> TlsResp {
    let h2 = hs.alpn.as_deref() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(hs.stream);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(Full::<Bytes>::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.expect("h2 request")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Full::<Bytes>::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.expect("http1 request")
    };
    let status = resp.status();
    let version = resp.version();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    TlsResp {
        status,
        version,
        headers,
        body,
    }
}

/// A free loopback port (bound, then released; the small race is accepted
/// because Pebble must know the gateway's ports before the gateway starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Accepts any server certificate (self-signed ones, or to see what is
/// served whatever its issuer), but still checks handshake signatures.
#[derive(Debug)]
pub struct AnyCert(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
