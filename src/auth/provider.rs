//! One identity provider at run time: discovery (at start, on reload, and
//! retried in the background while the provider is down), the JWKS cache
//! (refetched, rate-limited, when a token names an unknown `kid` or its
//! signature fails with a known one: keys rotated under the same id), and the
//! OpenID Connect exchanges: authorization URL with PKCE, code exchange,
//! ID token verification, refresh and userinfo (the claims themselves are
//! in `claims`).
//!
//! A `Provider` outlives reloads as long as its identity (issuer, client
//! id, secret, CA file) is unchanged, so reloads keep the discovered
//! metadata and a reload never makes logins fail while it rediscovers.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreSubjectIdentifierType, CoreTokenIntrospectionResponse,
};
use openidconnect::{
    AccessToken, AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    JwsSigningAlgorithm as _, LogoutProviderMetadata, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::claims::{ExtraClaims, IdClaims, OidcIdToken, TokenResponse, UserInfo};
use super::http::ProviderHttp;
use super::jwt;
use crate::config::{OidcConfig, Secret};

/// The code flow against a discovered provider: authorize, exchange,
/// refresh, ID-token checks, userinfo.
mod tokens;

/// Bound on one exchange with the provider.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests may trigger a discovery attempt at most this often.
const DISCOVERY_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A token with an unknown `kid`, or a bad signature under a known one,
/// refetches the JWKS at most this often.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Background discovery retry: doubling from 1 s up to this.
const DISCOVERY_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a reachability probe before a login is trusted.
const PROBE_OK_FOR: Duration = Duration::from_secs(2);
const PROBE_FAILED_FOR: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

type OidcClient = openidconnect::Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Discovery fields beyond openidconnect's: RFC 9207's promise to put
/// `iss` on every authorization response.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IssResponseMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_response_iss_parameter_supported: Option<bool>,
}
impl AdditionalProviderMetadata for IssResponseMetadata {}

type Metadata = ProviderMetadata<
    LogoutProviderMetadata<IssResponseMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// What discovery found, with a client built from it.
pub struct Discovered {
    metadata: Metadata,
    client: OidcClient,
    /// `id_token_signing_alg_values_supported`: exactly these are accepted
    /// on ID tokens and logout tokens.
    pub id_token_algs: Vec<CoreJwsSigningAlgorithm>,
    pub end_session: Option<String>,
    /// The provider advertises `authorization_response_iss_parameter_supported`:
    /// a callback without `iss` is then refused (RFC 9207 §2.4).
    pub iss_in_response: bool,
}

impl Discovered {
    fn new(metadata: Metadata, client_id: &str, secret: &Secret) -> Self {
        let client = OidcClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(client_id.to_string()),
            Some(ClientSecret::new(secret.expose().to_string())),
        );
        Discovered {
            id_token_algs: metadata.id_token_signing_alg_values_supported().clone(),
            end_session: metadata
                .additional_metadata()
                .end_session_endpoint
                .as_ref()
                .map(|u| u.url().to_string()),
            iss_in_response: metadata
                .additional_metadata()
                .additional_metadata
                .authorization_response_iss_parameter_supported
                == Some(true),
            client,
            metadata,
        }
    }

    pub fn jwks(&self) -> &CoreJsonWebKeySet {
        self.metadata.jwks()
    }
}

/// Why an exchange with the provider failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlowError {
    /// Not reachable, timed out, or answered with garbage: try later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused (e.g. `invalid_grant`).
    #[error("provider refused: {0}")]
    Rejected(String),
    /// What it sent does not verify.
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> FlowError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let mut s = r.error().to_string();
            if let Some(d) = r.error_description() {
                s.push_str(": ");
                s.push_str(d);
            }
            FlowError::Rejected(s)
        }
        RequestTokenError::Request(e) => FlowError::Unavailable(crate::http::error::chain(&e)),
        RequestTokenError::Parse(e, _) => {
            FlowError::Unavailable(format!("unreadable token response: {e}"))
        }
        RequestTokenError::Other(s) => FlowError::Unavailable(s),
    }
}

/// A login about to be sent to the provider.
pub struct AuthRequest {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// One provider at run time.
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    secret: Secret,
    ca_file: Option<PathBuf>,
    http: ProviderHttp,
    current: ArcSwapOption<Discovered>,
    /// Serialises discovery attempts; holds the time of the last one.
    discovery: Mutex<Option<Instant>>,
    /// Serialises JWKS refetches; holds the time of the last one.
    jwks_fetch: Mutex<Option<Instant>>,
    /// Last reachability probe: when, and whether it answered.
    probe: Mutex<Option<(Instant, bool)>>,
    retrying: AtomicBool,
}

impl Provider {
    pub fn new(cfg: &OidcConfig) -> Result<Arc<Provider>, String> {
        let http = ProviderHttp::new(cfg.ca_file.as_deref(), HTTP_TIMEOUT)?;
        Ok(Arc::new(Provider {
            name: cfg.name.clone(),
            issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            secret: cfg.client_secret.clone(),
            ca_file: cfg.ca_file.clone(),
            http,
            current: ArcSwapOption::empty(),
            discovery: Mutex::new(None),
            jwks_fetch: Mutex::new(None),
            probe: Mutex::new(None),
            retrying: AtomicBool::new(false),
        }))
    }

    /// Same provider and client as `cfg` (so a reload may keep this one)?
    pub fn same_identity(&self, cfg: &OidcConfig) -> bool {
        self.name == cfg.name
            && self.issuer == cfg.issuer
            && self.client_id == cfg.client_id
            && self.secret == cfg.client_secret
            && self.ca_file == cfg.ca_file
    }

    pub fn client_secret(&self) -> &str {
        self.secret.expose()
    }

    /// The discovered metadata, if discovery has succeeded.
    #[inline]
    pub fn discovered(&self) -> Option<Arc<Discovered>> {
        self.current.load_full()
    }

    async fn fetch(&self) -> Result<Discovered, String> {
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| crate::http::error::chain(&e))?;
        Ok(Discovered::new(metadata, &self.client_id, &self.secret))
    }

    /// Runs discovery now (waiting for one already running) and publishes
    /// the result. On failure the previous metadata, if any, stays.
    pub async fn discover(&self) -> Result<Arc<Discovered>, String> {
        let mut last = self.discovery.lock().await;
        *last = Some(Instant::now());
        self.discover_locked().await
    }

    async fn discover_locked(&self) -> Result<Arc<Discovered>, String> {
        match self.fetch().await {
            Ok(d) => {
                let d = Arc::new(d);
                let algs: Vec<String> = d
                    .id_token_algs
                    .iter()
                    .filter_map(|a| serde_json::to_value(a).ok())
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                tracing::info!(
                    provider = %self.name,
                    issuer = %self.issuer,
                    id_token_algs = %algs.join(","),
                    keys = d.jwks().keys().len(),
                    end_session = d.end_session.is_some(),
                    "OIDC provider discovered"
                );
                self.current.store(Some(d.clone()));
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(
                    provider = %self.name,
                    issuer = %self.issuer,
                    error = %e,
                    "OIDC discovery failed; logins through this provider answer 503 until it succeeds"
                );
                Err(e)
            }
        }
    }

    /// The metadata, discovering now if there is none yet (rate-limited,
    /// bounded by `wait`). `None` means the provider is unavailable.
    pub async fn ensure(&self, wait: Duration) -> Option<Arc<Discovered>> {
        if let Some(d) = self.discovered() {
            return Some(d);
        }
        let attempt = async {
            let mut last = self.discovery.lock().await;
            // Someone else may have succeeded while we waited for the lock.
            if let Some(d) = self.discovered() {
                return Some(d);
            }
            if last.is_some_and(|t| t.elapsed() < DISCOVERY_MIN_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
            self.discover_locked().await.ok()
        };
        tokio::time::timeout(wait, attempt).await.ok().flatten()
    }

    /// The metadata, if the provider is reachable right now: a browser is
    /// only sent to a provider that answers (a dead one would leave the
    /// user on a browser error page; a 503 from us says what is wrong).
    /// Probes the discovery document, cached briefly.
    pub async fn reachable(&self, wait: Duration) -> Option<Arc<Discovered>> {
        let d = self.ensure(wait).await?;
        let mut probe = self.probe.lock().await;
        if let Some((at, ok)) = *probe {
            let valid_for = if ok { PROBE_OK_FOR } else { PROBE_FAILED_FOR };
            if at.elapsed() < valid_for {
                return ok.then_some(d);
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let req = http::Request::get(url).body(Vec::new()).ok()?;
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.http.send(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        );
        if !ok {
            tracing::warn!(provider = %self.name, issuer = %self.issuer, "identity provider not reachable; new logins answer 503");
        }
        *probe = Some((Instant::now(), ok));
        ok.then_some(d)
    }

    /// Records that an exchange could not reach the provider, so the next
    /// logins answer 503 at once instead of sending browsers there.
    pub fn note_unreachable(&self) {
        if let Ok(mut p) = self.probe.try_lock() {
            *p = Some((Instant::now(), false));
        }
    }

    /// Refetches the JWKS after a token named a key we do not have, or
    /// failed its signature check under a key we have (the provider may
    /// have rotated the key and kept its id); at most once per
    /// [`JWKS_MIN_INTERVAL`]. Returns the refetched metadata.
    pub async fn refetch_jwks(&self, seen: &Arc<Discovered>) -> Option<Arc<Discovered>> {
        let mut last = self.jwks_fetch.lock().await;
        if let Some(now) = self.discovered()
            && !Arc::ptr_eq(&now, seen)
        {
            // Refreshed while we waited.
            return Some(now);
        }
        if last.is_some_and(|t| t.elapsed() < JWKS_MIN_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        let fetched = CoreJsonWebKeySet::fetch_async(seen.metadata.jwks_uri(), &self.http).await;
        match fetched {
            Ok(jwks) => {
                tracing::info!(
                    provider = %self.name,
                    keys = jwks.keys().len(),
                    "refetched the provider's signing keys"
                );
                let metadata = seen.metadata.clone().set_jwks(jwks);
                let d = Arc::new(Discovered::new(metadata, &self.client_id, &self.secret));
                self.current.store(Some(d.clone()));
                Some(d)
            }
            Err(e) => {
                tracing::warn!(
                    provider = %self.name,
                    error = %crate::http::error::chain(&e),
                    "cannot refetch the provider's signing keys"
                );
                None
            }
        }
    }

    /// Checks `t`'s signature against the JWKS of `d` (or `secret` for
    /// HMAC); when no key fits or an asymmetric signature fails, refetches
    /// the keys once (rate-limited, see [`Provider::refetch_jwks`]) and
    /// checks again.
    pub async fn verify_jws(
        &self,
        d: Arc<Discovered>,
        t: &jwt::Unverified<'_>,
        algs: &[CoreJwsSigningAlgorithm],
        secret: Option<&str>,
    ) -> Result<(), jwt::JwtError> {
        let first = t.verify_signature(algs, d.jwks(), secret);
        let retry = match &first {
            Err(jwt::JwtError::NoMatchingKey) => true,
            Err(jwt::JwtError::BadSignature) => !t.alg.uses_shared_secret(),
            _ => false,
        };
        if retry && let Some(newer) = self.refetch_jwks(&d).await {
            return t.verify_signature(algs, newer.jwks(), secret);
        }
        first
    }

    /// Starts a background task that retries discovery with back-off until
    /// it succeeds or this provider is dropped (a reload replaced it). One
    /// per provider at a time.
    pub fn retry_in_background(self: &Arc<Self>) {
        if self.discovered().is_some() || self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Provider> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                let Some(p) = weak.upgrade() else { return };
                if p.discovered().is_some() {
                    p.retrying.store(false, Ordering::Release);
                    return;
                }
                {
                    let mut last = p.discovery.lock().await;
                    if p.discovered().is_none() {
                        *last = Some(Instant::now());
                        let _ = p.discover_locked().await;
                    }
                }
                if p.discovered().is_some() {
                    p.retrying.store(false, Ordering::Release);
                    return;
                }
                drop(p);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(DISCOVERY_RETRY_MAX);
            }
        });
    }
}
