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

use super::dns::{Presented, Solver};
use super::shared::AcmeShared;
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

/// Orders one certificate for `names` (the first names it in messages).
/// Returns (chain PEM, key PEM). The whole order gets `budget`; DNS records
/// written for it are removed afterwards however it ended, even on timeout.
pub async fn issue(
    account: &Account,
    names: &[String],
    kind: ChallengeKind,
    store: &CertStore,
    dns: Option<&Solver>,
    budget: Duration,
    shared: Option<&AcmeShared>,
) -> Result<(String, String), OrderFailure> {
    let host = names.first().map(String::as_str).unwrap_or_default();
    let mut presented = Vec::new();
    let mut published = Vec::new();
    let r = tokio::time::timeout(
        budget,
        issue_inner(
            account,
            names,
            kind,
            store,
            dns,
            &mut presented,
            (shared, &mut published),
        ),
    )
    .await;
    if let Some(sh) = shared {
        sh.remove(&published).await;
    }
    if let Some(solver) = dns {
        for p in presented.drain(..) {
            match solver.cleanup(&p).await {
                Ok(()) => tracing::debug!(host, record = %p.fqdn, "removed the dns-01 TXT record"),
                Err(e) => tracing::warn!(
                    host,
                    record = %p.fqdn,
                    provider = solver.provider_name(),
                    "could not remove the dns-01 TXT record: {e}"
                ),
            }
        }
    }
    match r {
        Ok(r) => r,
        Err(_) => Err(OrderFailure {
            host: host.to_string(),
            stage: "waiting for the order",
            challenge: kind,
            detail: format!("the order took longer than {}s", budget.as_secs()),
            account_missing: false,
        }),
    }
}

async fn issue_inner(
    account: &Account,
    names: &[String],
    kind: ChallengeKind,
    store: &CertStore,
    dns: Option<&Solver>,
    presented: &mut Vec<Presented>,
    (shared, published): (Option<&AcmeShared>, &mut Vec<String>),
) -> Result<(String, String), OrderFailure> {
    let host = names.first().map(String::as_str).unwrap_or_default();
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

    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
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
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    };
    let solver = match (kind, dns) {
        (ChallengeKind::Dns01, Some(s)) => Some(s),
        (ChallengeKind::Dns01, None) => {
            return Err(plain(
                "choosing a challenge",
                "dns-01 without a DNS provider".into(),
            ));
        }
        _ => None,
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
                    // Whichever instance the CA reaches answers.
                    if let Some(sh) = shared {
                        let k = sh
                            .publish_http(&ch.token, key_auth.as_str())
                            .await
                            .map_err(|e| {
                                plain("publishing the challenge to Redis", e.to_string())
                            })?;
                        published.push(k);
                    }
                }
                ChallengeKind::TlsAlpn01 => {
                    let ck = alpn_certificate(host, key_auth.digest().as_ref())
                        .map_err(|e| plain("making the TLS-ALPN-01 certificate", e))?;
                    store.alpn_challenges.insert(host.to_string(), ck);
                    guard.alpn_hosts.push(host.to_string());
                    if let Some(sh) = shared {
                        let k = sh
                            .publish_alpn(host, key_auth.digest().as_ref())
                            .await
                            .map_err(|e| {
                                plain("publishing the challenge to Redis", e.to_string())
                            })?;
                        published.push(k);
                    }
                }
                ChallengeKind::Dns01 => {
                    // Presented now, announced to the CA once all are
                    // visible (below).
                    let solver = solver.expect("checked above");
                    let name = ch.identifier().to_string();
                    let fqdn = Solver::record_name(&name);
                    let p = solver
                        .present(&fqdn, &key_auth.dns_value())
                        .await
                        .map_err(|e| {
                            plain(
                                "writing the TXT record",
                                format!("{} provider: {e}", solver.provider_name()),
                            )
                        })?;
                    tracing::info!(host, record = %fqdn, provider = solver.provider_name(), "dns-01 TXT record written");
                    presented.push(p);
                    continue;
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| fail("telling the CA the challenge is ready", &e))?;
        }
    }
    if let Some(solver) = solver
        && !presented.is_empty()
    {
        solver.wait_propagated(presented).await.map_err(|e| {
            plain(
                "waiting for DNS propagation",
                format!("{} provider: {e}", solver.provider_name()),
            )
        })?;
        tracing::info!(
            host,
            records = presented.len(),
            "dns-01 TXT records visible; asking the CA to validate"
        );
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| fail("fetching the authorization", &e))?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = a.challenge(ChallengeType::Dns01) {
                ch.set_ready()
                    .await
                    .map_err(|e| fail("telling the CA the challenge is ready", &e))?;
            }
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
    let mut params = rcgen::CertificateParams::new(names.to_vec())
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
pub(super) fn alpn_certificate(
    host: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    crate::pki::certified_key_unchecked(vec![cert.der().clone()], der).map(Arc::new)
}
