//! The code flow against a discovered provider: the authorization URL,
//! the code exchange, refresh, ID-token verification and userinfo.

use super::*;

impl Provider {
    /// The authorization URL for a new login: code flow, PKCE S256, fresh
    /// `state` and `nonce`.
    pub fn authorize(
        &self,
        d: &Discovered,
        scopes: &[String],
        redirect_uri: &str,
    ) -> Result<AuthRequest, String> {
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| e.to_string())?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = d
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            // `openid` is added by the client itself.
            .add_scopes(
                scopes
                    .iter()
                    .filter(|s| *s != "openid")
                    .map(|s| Scope::new(s.clone())),
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect))
            .url();
        Ok(AuthRequest {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges an authorization code.
    pub async fn exchange_code(
        &self,
        d: &Discovered,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, FlowError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| FlowError::Invalid(e.to_string()))?;
        d.client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| FlowError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(token_error)
    }

    /// Exchanges a refresh token.
    pub async fn refresh(
        &self,
        d: &Discovered,
        refresh_token: &str,
    ) -> Result<TokenResponse, FlowError> {
        let rt = RefreshToken::new(refresh_token.to_string());
        d.client
            .exchange_refresh_token(&rt)
            .map_err(|e| FlowError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(token_error)
    }

    /// Verifies an ID token (signature with an advertised algorithm, `iss`,
    /// `aud`, `exp`, and the nonce when given), refetching the JWKS once if
    /// the token names an unknown key or its signature fails under a known
    /// one (a key rotated under the same `kid`).
    pub async fn verify_id_token(
        &self,
        mut d: Arc<Discovered>,
        token: &OidcIdToken,
        nonce: Option<&str>,
    ) -> Result<IdClaims, FlowError> {
        let mut refetched = false;
        loop {
            let result = {
                let verifier = d.client.id_token_verifier();
                match nonce {
                    Some(n) => {
                        let n = Nonce::new(n.to_string());
                        token.claims(&verifier, &n).cloned()
                    }
                    // Refreshed ID tokens carry no nonce.
                    None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())).cloned(),
                }
            };
            match result {
                Ok(c) => return Ok(c),
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey
                    | SignatureVerificationError::CryptoError(_),
                )) if !refetched && signed_with_provider_key(token) => {
                    refetched = true;
                    match self.refetch_jwks(&d).await {
                        Some(newer) => d = newer,
                        None => {
                            return Err(FlowError::Invalid(
                                "signed with an unknown key (or a bad signature)".to_string(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(FlowError::Invalid(e.to_string())),
            }
        }
    }

    /// Userinfo for `sub`, used when the ID token lacks the profile claims.
    pub async fn userinfo(
        &self,
        d: &Discovered,
        access_token: &str,
        sub: &str,
    ) -> Result<UserInfo, FlowError> {
        let req = d
            .client
            .user_info(
                AccessToken::new(access_token.to_string()),
                Some(SubjectIdentifier::new(sub.to_string())),
            )
            .map_err(|e| FlowError::Unavailable(e.to_string()))?;
        req.request_async(&self.http)
            .await
            .map_err(|e| FlowError::Unavailable(crate::http::error::chain(&e)))
    }
}

/// Signed with a key from the JWKS, not the client secret: only then can
/// refetching the keys change the outcome.
fn signed_with_provider_key(token: &OidcIdToken) -> bool {
    use openidconnect::JwsSigningAlgorithm as _;
    token.signing_alg().is_ok_and(|a| !a.uses_shared_secret())
}
