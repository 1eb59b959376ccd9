//! The claims we read from a provider (Authentik's `groups`, `sid`), the
//! openidconnect types built on them, and how they become a
//! [`UserClaims`](super::identity::UserClaims).

use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, EmptyExtraTokenFields, IdToken, IdTokenClaims, IdTokenFields,
    StandardTokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Deserializer, Serialize};

/// Claims beyond the standard ones: Authentik's `groups`, and `sid`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    #[serde(default, deserialize_with = "string_or_list")]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub sid: Option<String>,
}
impl AdditionalClaims for ExtraClaims {}

/// `groups` as a list (Authentik), tolerating a single string.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum G {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<G>::deserialize(d)? {
        None => None,
        Some(G::One(s)) => Some(vec![s]),
        Some(G::Many(v)) => Some(v),
    })
}

type IdFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type TokenResponse = StandardTokenResponse<IdFields, CoreTokenType>;
pub type OidcIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type IdClaims = IdTokenClaims<ExtraClaims, CoreGenderClaim>;
pub type UserInfo = UserInfoClaims<ExtraClaims, CoreGenderClaim>;
/// The user as the ID token describes them.
pub fn user_claims(c: &IdClaims) -> crate::auth::identity::UserClaims {
    let sub = c.subject().as_str().to_string();
    let email = c.email().map(|e| e.as_str().to_string());
    let preferred = c.preferred_username().map(|u| u.as_str());
    crate::auth::identity::UserClaims {
        username: crate::auth::identity::username_of(preferred, email.as_deref(), &sub),
        email_verified: c.email_verified(),
        name: c
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string()),
        groups: c.additional_claims().groups.clone().unwrap_or_default(),
        email,
        sub,
    }
}

/// Fills what the ID token left out from a userinfo answer.
pub fn merge_userinfo(
    mut user: crate::auth::identity::UserClaims,
    info: &UserInfo,
) -> crate::auth::identity::UserClaims {
    if user.email.is_none() {
        user.email = info.email().map(|e| e.as_str().to_string());
        user.email_verified = info.email_verified();
    }
    if user.name.is_none() {
        user.name = info
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string());
    }
    if user.groups.is_empty()
        && let Some(g) = &info.additional_claims().groups
    {
        user.groups = g.clone();
    }
    if user.username == user.sub
        && let Some(u) = info.preferred_username()
    {
        user.username = u.as_str().to_string();
    }
    user
}
