//! Compact JWS tokens that are not ID tokens: bearer access tokens and
//! back-channel logout tokens. openidconnect verifies ID tokens itself but
//! keeps its generic JWT verifier private, so this module parses the token
//! and checks the signature with openidconnect's public key types
//! ([`JsonWebKey::verify_signature`] on the provider's JWKS, or the client
//! secret for HMAC), then checks the registered claims.
//!
//! The `alg` and `kid` in the header are attacker-controlled: the algorithm
//! must be in the caller's allow-list and match the key's type, and a `kid`
//! only narrows the candidate keys, never widens them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{
    JsonWebKey as _, JsonWebKeyAlgorithm, JsonWebKeyUse as _, JwsSigningAlgorithm as _,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("algorithm `{0}` is not accepted")]
    Algorithm(String),
    /// No key in the JWKS fits the `kid` and algorithm: the provider may
    /// have rotated its keys.
    #[error("no matching key")]
    NoMatchingKey,
    #[error("bad signature")]
    BadSignature,
    #[error("{0}")]
    Claims(&'static str),
}

#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A parsed, not yet verified token.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    pub alg: CoreJwsSigningAlgorithm,
    pub claims: Map<String, Value>,
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

/// Splits and decodes `header.payload.signature`.
pub fn parse(token: &str) -> Result<Unverified<'_>, JwtError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| JwtError::Malformed);
    let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| JwtError::Malformed)?;
    if header.crit.is_some() {
        return Err(JwtError::Claims(
            "critical header parameters are not supported",
        ));
    }
    let alg: CoreJwsSigningAlgorithm = serde_json::from_value(Value::String(header.alg.clone()))
        .map_err(|_| JwtError::Algorithm(header.alg.clone()))?;
    let claims = match serde_json::from_slice::<Value>(&decode(p)?) {
        Ok(Value::Object(m)) => m,
        _ => return Err(JwtError::Malformed),
    };
    let signature = decode(s)?;
    Ok(Unverified {
        header,
        alg,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

impl Unverified<'_> {
    /// Checks the signature. `allowed` is the algorithm allow-list; HMAC
    /// algorithms also need `secret` (the client secret).
    pub fn verify_signature(
        &self,
        allowed: &[CoreJwsSigningAlgorithm],
        jwks: &CoreJsonWebKeySet,
        secret: Option<&str>,
    ) -> Result<(), JwtError> {
        let alg = &self.alg;
        if *alg == CoreJwsSigningAlgorithm::None || !allowed.contains(alg) {
            return Err(JwtError::Algorithm(self.header.alg.clone()));
        }
        if alg.uses_shared_secret() {
            let Some(secret) = secret else {
                return Err(JwtError::Algorithm(self.header.alg.clone()));
            };
            let key = CoreJsonWebKey::new_symmetric(secret.as_bytes().to_vec());
            return key
                .verify_signature(alg, self.signing_input, &self.signature)
                .map_err(|_| JwtError::BadSignature);
        }
        let want_type = alg.key_type();
        let mut candidates = 0;
        for key in jwks.keys() {
            if let Some(kid) = &self.header.kid
                && key.key_id().map(|k| k.as_str()) != Some(kid.as_str())
            {
                continue;
            }
            if key.key_use().is_some_and(|u| !u.allows_signature()) {
                continue;
            }
            if Some(key.key_type()) != want_type.as_ref() {
                continue;
            }
            match key.signing_alg() {
                JsonWebKeyAlgorithm::Algorithm(a) if a != alg => continue,
                JsonWebKeyAlgorithm::Unsupported => continue,
                _ => {}
            }
            candidates += 1;
            if key
                .verify_signature(alg, self.signing_input, &self.signature)
                .is_ok()
            {
                return Ok(());
            }
        }
        if candidates == 0 {
            Err(JwtError::NoMatchingKey)
        } else {
            Err(JwtError::BadSignature)
        }
    }

    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn num_claim(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        })
    }

    /// `iss` is exactly `issuer`.
    pub fn check_issuer(&self, issuer: &str) -> Result<(), JwtError> {
        if self.str_claim("iss") == Some(issuer) {
            Ok(())
        } else {
            Err(JwtError::Claims("wrong issuer"))
        }
    }

    /// `aud` (a string or a list) names at least one of `accepted`.
    pub fn check_audience<'a>(
        &self,
        mut accepted: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), JwtError> {
        let ok = match self.claims.get("aud") {
            Some(Value::String(a)) => accepted.any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| accepted.clone().any(|x| x == a)),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::Claims("wrong audience"))
        }
    }

    /// `exp` (required when `require_exp`) is in the future and `nbf`, if
    /// present, in the past, both with [`LEEWAY_SECS`].
    pub fn check_times(&self, now: u64, require_exp: bool) -> Result<(), JwtError> {
        match self.num_claim("exp") {
            Some(exp) if exp.saturating_add(LEEWAY_SECS) <= now => {
                return Err(JwtError::Claims("expired"));
            }
            None if require_exp || self.claims.contains_key("exp") => {
                return Err(JwtError::Claims("no valid exp claim"));
            }
            _ => {}
        }
        if let Some(nbf) = self.num_claim("nbf")
            && nbf > now.saturating_add(LEEWAY_SECS)
        {
            return Err(JwtError::Claims("not yet valid"));
        }
        if self.claims.contains_key("nbf") && self.num_claim("nbf").is_none() {
            return Err(JwtError::Claims("invalid nbf claim"));
        }
        Ok(())
    }

    /// Explicit typing (RFC 8725 §3.11): an access token, never an ID
    /// token or a logout token signed by the same keys. `typ` is `at+jwt`
    /// (RFC 9068), or `JWT` or absent (providers that do not type their
    /// access tokens, Authentik among them); and no claim that only ID
    /// tokens (`nonce`, `at_hash`, `c_hash`) or logout tokens (`events`)
    /// carry.
    pub fn check_access_token_type(&self) -> Result<(), JwtError> {
        let typ = self.header.typ.as_deref().map(|t| {
            let t = t.trim();
            match t.get(..12) {
                Some(p) if p.eq_ignore_ascii_case("application/") => &t[12..],
                _ => t,
            }
        });
        match typ {
            None => {}
            Some(t) if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("jwt") => {}
            Some(_) => return Err(JwtError::Claims("not an access token (typ)")),
        }
        if ["nonce", "at_hash", "c_hash", "events"]
            .iter()
            .any(|c| self.claims.contains_key(*c))
        {
            return Err(JwtError::Claims(
                "an ID token or logout token, not an access token",
            ));
        }
        Ok(())
    }
}

/// Asymmetric algorithms accepted on bearer tokens: their signature can
/// only come from the provider's keys, never from someone who merely
/// knows the client secret.
pub const BEARER_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn hs256(claims: Value, secret: &str) -> String {
        let h = b64(&serde_json::json!({"alg": "HS256", "typ": "JWT"}));
        let p = b64(&claims);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let sig = ring::hmac::sign(&key, format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[test]
    fn hmac_and_claims() {
        let t = hs256(
            serde_json::json!({"iss": "https://i/", "aud": ["x", "api"], "exp": 1000, "iat": 1}),
            "secret",
        );
        let u = parse(&t).unwrap();
        let hs = [CoreJwsSigningAlgorithm::HmacSha256];
        let empty = CoreJsonWebKeySet::new(vec![]);
        assert!(u.verify_signature(&hs, &empty, Some("secret")).is_ok());
        assert_eq!(
            u.verify_signature(&hs, &empty, Some("other")),
            Err(JwtError::BadSignature)
        );
        assert!(matches!(
            u.verify_signature(BEARER_ALGS, &empty, Some("secret")),
            Err(JwtError::Algorithm(_))
        ));
        assert!(u.check_issuer("https://i/").is_ok());
        assert!(u.check_issuer("https://i").is_err());
        assert!(u.check_audience(["api"].into_iter()).is_ok());
        assert!(u.check_audience(["nope"].into_iter()).is_err());
        assert!(u.check_times(1000, true).is_ok(), "within leeway");
        assert!(u.check_times(1000 + LEEWAY_SECS, true).is_err());
    }

    #[test]
    fn access_token_typing() {
        let token = |typ: Option<&str>, claims: Value| {
            let mut h = serde_json::json!({"alg": "RS256"});
            if let Some(t) = typ {
                h["typ"] = Value::String(t.into());
            }
            format!("{}.{}.", b64(&h), b64(&claims))
        };
        let plain = serde_json::json!({"sub": "a", "sid": "s"});
        for typ in [
            None,
            Some("JWT"),
            Some("at+jwt"),
            Some("application/AT+JWT"),
        ] {
            let t = token(typ, plain.clone());
            assert!(
                parse(&t).unwrap().check_access_token_type().is_ok(),
                "{typ:?}"
            );
        }
        for typ in [
            "logout+jwt",
            "id_token+jwt",
            "application/logout+jwt",
            "JOSE",
        ] {
            let t = token(Some(typ), plain.clone());
            assert!(
                parse(&t).unwrap().check_access_token_type().is_err(),
                "{typ}"
            );
        }
        for claim in ["nonce", "at_hash", "c_hash", "events"] {
            let mut c = plain.clone();
            c[claim] = serde_json::json!("x");
            let t = token(Some("JWT"), c);
            assert!(
                parse(&t).unwrap().check_access_token_type().is_err(),
                "{claim}"
            );
        }
    }

    #[test]
    fn malformed_and_none() {
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let h = b64(&serde_json::json!({"alg": "none"}));
        let p = b64(&serde_json::json!({"iss": "x"}));
        let none = format!("{h}.{p}.");
        let u = parse(&none).unwrap();
        let all = [CoreJwsSigningAlgorithm::None];
        assert!(matches!(
            u.verify_signature(&all, &CoreJsonWebKeySet::new(vec![]), None),
            Err(JwtError::Algorithm(_))
        ));
        let crit = b64(&serde_json::json!({"alg": "RS256", "crit": ["x"]}));
        assert!(parse(&format!("{crit}.{p}.")).is_err());
    }
}
