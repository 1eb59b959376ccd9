//! One ACME issuance for one host: order → challenge → finalize → chain.
//! Failures come back in plain words: which host, which stage, which
//! challenge, and the CA's problem document (type and detail).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, Problem,
    RetryPolicy,
};

use crate::config::ChallengeKind;
use crate::tls::CertStore;

/// Why an issuance failed.
#[derive(Debug)]
pub struct OrderFailure {
    pub host: String,
    pub stage: &'static str,
    pub challenge: ChallengeKind,
    pub detail: String,
    /// The CA said the account does not exist (e.g. the CA was reset).
    pub account_missing: bool,
}

impl fmt::Display for OrderFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate for {} failed while {} ({} challenge): {}",
            self.host,
            self.stage,
            self.challenge.as_str(),
            self.detail
        )
    }
}

/// A problem document in plain words: "type: detail".
pub fn describe_problem(p: &Problem) -> String {
    let mut s = String::new();
    if let Some(t) = &p.r#type {
        s.push_str(t.trim_start_matches("urn:ietf:params:acme:error:"));
    }
    if let Some(d) = &p.detail {
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(d);
    }
    for sp in &p.subproblems {
        s.push_str("; ");
        s.push_str(&sp.to_string());
    }
    if s.is_empty() {
        s.push_str("the CA gave no details");
    }
    s
}

fn describe(e: &instant_acme::Error) -> (String, bool) {
    match e {
        instant_acme::Error::Api(p) => (
            describe_problem(p),
            p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"),
        ),
        other => (crate::http::error::chain(other), false),
    }
}

/// Removes registered challenge material when the order ends, however it ends.
struct ChallengeGuard<'a> {
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.store.http_tokens.remove(t);
        }
        for h in &self.alpn_hosts {
            self.store.alpn_challenges.remove(h);
        }
    }
}

/// Orders a certificate for `host`. Returns (chain PEM, key PEM).
pub async fn issue(
    account: &Account,
    host: &str,
    kind: ChallengeKind,
    store: &CertStore,
) -> Result<(String, String), OrderFailure> {
    let fail = |stage: &'static str, e: &instant_acme::Error| {
        let (detail, account_missing) = describe(e);
        OrderFailure {
            host: host.to_string(),
            stage,
            challenge: kind,
            detail,
            account_missing,
        }
    };
    let plain = |stage: &'static str, detail: String| OrderFailure {
        host: host.to_string(),
        stage,
        challenge: kind,
        detail,
        account_missing: false,
    };

    let identifiers = [Identifier::Dns(host.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| fail("creating the order", &e))?;

    let mut guard = ChallengeGuard {
        store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
    let ctype = match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| fail("fetching the authorization", &e))?;
            match a.status {
                // Reused from an earlier order: nothing to prove.
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(plain(
                        "checking the authorization",
                        format!("the authorization is {other:?}"),
                    ));
                }
            }
            let mut ch = a.challenge(ctype.clone()).ok_or_else(|| {
                plain(
                    "choosing a challenge",
                    format!("the CA did not offer {}", kind.as_str()),
                )
            })?;
            let key_auth = ch.key_authorization();
            match kind {
                ChallengeKind::Http01 => {
                    store
                        .http_tokens
                        .insert(ch.token.clone(), key_auth.as_str().to_string());
                    guard.tokens.push(ch.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let ck = alpn_certificate(host, key_auth.digest().as_ref())
                        .map_err(|e| plain("making the TLS-ALPN-01 certificate", e))?;
                    store.alpn_challenges.insert(host.to_string(), ck);
                    guard.alpn_hosts.push(host.to_string());
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| fail("telling the CA the challenge is ready", &e))?;
        }
    }

    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| fail("waiting for validation", &e))?;
    if status != OrderStatus::Ready {
        // Find the CA's reason on the failed challenge.
        let mut reason = format!("the order became {status:?}");
        let mut authzs = order.authorizations();
        while let Some(Ok(mut a)) = authzs.next().await {
            if let Ok(state) = a.refresh().await
                && let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref())
            {
                reason = describe_problem(p);
            }
        }
        return Err(plain("validating the challenge", reason));
    }

    let key = rcgen::KeyPair::generate().map_err(|e| plain("generating a key", e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(|e| plain("building the CSR", e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| plain("building the CSR", e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| fail("finalizing the order", &e))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| fail("downloading the certificate", &e))?;
    drop(guard);
    Ok((chain, key.serialize_pem()))
}

/// The self-signed certificate a TLS-ALPN-01 validator expects (RFC 8737).
fn alpn_certificate(host: &str, digest: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    crate::pki::certified_key_unchecked(vec![cert.der().clone()], der).map(Arc::new)
}
