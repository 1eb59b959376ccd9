//! Certificates and keys from PEM (files or strings), self-signed
//! certificates for local use, the client trust roots for outgoing TLS,
//! and the facts about a certificate that the admin view and the renewal
//! schedule need. A leaf on the bottom floor: `config` loads certificate
//! files while it checks them (so `portcullis check` reports a bad pair
//! where it is named), and `tls`, `acme` and `auth` use the same loaders.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Loads a PEM chain and key and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    certified_key_from_pem(&chain_pem, &key_pem)
        .map(Arc::new)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
}

/// Builds a signing `CertifiedKey` from PEM bytes (chain leaf-first, key).
pub fn certified_key_from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM is not valid: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block in the certificate file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("private key PEM is not valid: {e}"))?;
    certified_key(chain, key)
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let ck = certified_key_unchecked(chain, key)?;
    ck.keys_match()
        .map_err(|_| "the private key does not match the certificate".to_string())?;
    Ok(ck)
}

/// Without the key/certificate match check, which needs a certificate the
/// path validator can parse: the TLS-ALPN-01 certificate carries a critical
/// extension it rejects, and we made that pair ourselves a moment ago.
pub fn certified_key_unchecked(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("private key not usable: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// A self-signed certificate for `names` (local use; browsers will warn).
pub fn self_signed(names: &[String]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis self-signed");
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    certified_key(vec![cert.der().clone()], der).map(Arc::new)
}

/// A TLS client config for talking to an outside service (the ACME CA,
/// the OIDC provider): the system roots (loaded once per process) plus
/// the CA certificates in `ca_file`, if given.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let roots = client_roots(ca_file)?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// The system roots (loaded once per process) plus the CA certificates in
/// `ca_file`; a file without any certificate is an error.
pub fn client_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    static NATIVE: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    let mut roots = rustls::RootCertStore::empty();
    for c in NATIVE.get_or_init(|| rustls_native_certs::load_native_certs().certs) {
        let _ = roots.add(c.clone());
    }
    if let Some(f) = ca_file {
        let mut added = 0;
        let certs =
            CertificateDer::pem_file_iter(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("{}: {e}", f.display()))?;
            roots.add(c).map_err(|e| format!("{}: {e}", f.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate in it", f.display()));
        }
    }
    Ok(roots)
}

/// What the admin view and the renewal schedule need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub issuer: String,
    /// DNS names from the subjectAltName extension.
    pub names: Vec<String>,
}

/// Reads validity, issuer and names from a DER certificate.
pub fn facts(der: &CertificateDer<'_>) -> Option<CertFacts> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(CertFacts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_roundtrip_and_facts() {
        crate::install_crypto_provider();
        let ck = self_signed(&["a.example.com".into()]).unwrap();
        let f = facts(&ck.cert[0]).unwrap();
        assert_eq!(f.names, vec!["a.example.com"]);
        assert!(f.not_after > f.not_before);
    }

    #[test]
    fn mismatched_key_is_refused() {
        crate::install_crypto_provider();
        let k1 = rcgen::KeyPair::generate().unwrap();
        let k2 = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&k1)
            .unwrap();
        let err = certified_key_from_pem(cert.pem().as_bytes(), k2.serialize_pem().as_bytes())
            .unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        assert!(
            certified_key_from_pem(cert.pem().as_bytes(), k1.serialize_pem().as_bytes()).is_ok()
        );
    }
}
