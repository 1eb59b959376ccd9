//! Who a signed-in user is, and the headers that tell a backend.
//!
//! Header values are built once, when the identity is made (at login,
//! refresh, or when a session is loaded), so the request path only clones
//! them (a reference count) into the forwarded request.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::IdentityHeaders;

/// Authentik proxy outpost header names.
pub const AUTHENTIK_USERNAME: HeaderName = HeaderName::from_static("x-authentik-username");
pub const AUTHENTIK_GROUPS: HeaderName = HeaderName::from_static("x-authentik-groups");
pub const AUTHENTIK_EMAIL: HeaderName = HeaderName::from_static("x-authentik-email");
pub const AUTHENTIK_NAME: HeaderName = HeaderName::from_static("x-authentik-name");
pub const AUTHENTIK_UID: HeaderName = HeaderName::from_static("x-authentik-uid");
/// oauth2-proxy header names.
pub const FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const FORWARDED_PREFERRED_USERNAME: HeaderName =
    HeaderName::from_static("x-forwarded-preferred-username");
pub const FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");

/// The claims we keep about a user, as stored with a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    pub sub: String,
    /// `preferred_username`, else the email, else `sub`.
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A user plus the ready-made header values.
#[derive(Debug, Clone)]
pub struct Identity {
    pub claims: UserClaims,
    username: Option<HeaderValue>,
    uid: Option<HeaderValue>,
    email: Option<HeaderValue>,
    name: Option<HeaderValue>,
    groups_pipe: Option<HeaderValue>,
    groups_comma: Option<HeaderValue>,
    /// The same headers already written as HTTP/1.1 header lines, per
    /// style, appended as they are to a request going to a backend.
    authentik_lines: bytes::Bytes,
    forwarded_lines: bytes::Bytes,
}

/// A header value from user-controlled text: UTF-8 is passed as is (as
/// Authentik does); control characters, which could split headers, are
/// dropped.
fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(s.as_bytes()).ok().or_else(|| {
        let clean: String = s.chars().filter(|c| !c.is_control()).collect();
        HeaderValue::from_bytes(clean.as_bytes()).ok()
    })
}

impl Identity {
    pub fn new(claims: UserClaims) -> Self {
        let mut id = Identity {
            username: value(&claims.username),
            uid: value(&claims.sub),
            email: claims.email.as_deref().and_then(value),
            name: claims.name.as_deref().and_then(value),
            groups_pipe: value(&claims.groups.join("|")),
            groups_comma: value(&claims.groups.join(",")),
            claims,
            authentik_lines: bytes::Bytes::new(),
            forwarded_lines: bytes::Bytes::new(),
        };
        id.authentik_lines = id.lines(IdentityHeaders::Authentik);
        id.forwarded_lines = id.lines(IdentityHeaders::Forwarded);
        id
    }

    fn lines(&self, style: IdentityHeaders) -> bytes::Bytes {
        let mut map = HeaderMap::new();
        self.apply(&mut map, style);
        let mut out = Vec::new();
        for (name, value) in &map {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.into()
    }

    /// This user's headers of the given style as HTTP/1.1 header lines
    /// (each ending in CRLF), for a request whose client-sent identity
    /// headers have all been removed. The values are the ones [`apply`]
    /// sets, so they cannot split a line.
    ///
    /// [`apply`]: Identity::apply
    pub fn header_lines(&self, style: IdentityHeaders) -> &[u8] {
        match style {
            IdentityHeaders::Authentik => &self.authentik_lines,
            IdentityHeaders::Forwarded => &self.forwarded_lines,
            IdentityHeaders::None => &[],
        }
    }

    /// How pages name the user: the username (never a token or secret).
    pub fn display_name(&self) -> &str {
        &self.claims.username
    }

    /// The email address for policy checks: absent when the provider says
    /// it is not verified (anyone can type any address into a profile).
    pub fn policy_email(&self) -> Option<&str> {
        match self.claims.email_verified {
            Some(false) => None,
            _ => self.claims.email.as_deref(),
        }
    }

    /// Sets this user's headers of the given style. The caller has already
    /// removed every client-sent identity header.
    pub fn apply(&self, headers: &mut HeaderMap, style: IdentityHeaders) {
        let mut set = |name: HeaderName, v: &Option<HeaderValue>| {
            if let Some(v) = v {
                headers.insert(name, v.clone());
            }
        };
        match style {
            IdentityHeaders::Authentik => {
                set(AUTHENTIK_USERNAME, &self.username);
                set(AUTHENTIK_GROUPS, &self.groups_pipe);
                set(AUTHENTIK_EMAIL, &self.email);
                set(AUTHENTIK_NAME, &self.name);
                set(AUTHENTIK_UID, &self.uid);
            }
            IdentityHeaders::Forwarded => {
                set(FORWARDED_USER, &self.username);
                set(FORWARDED_EMAIL, &self.email);
                set(FORWARDED_PREFERRED_USERNAME, &self.username);
                set(FORWARDED_GROUPS, &self.groups_comma);
            }
            IdentityHeaders::None => {}
        }
    }
}

/// Picks the username the way Authentik's outpost does: the preferred
/// username, falling back to the email, then the subject.
pub fn username_of(preferred: Option<&str>, email: Option<&str>, sub: &str) -> String {
    preferred
        .filter(|s| !s.is_empty())
        .or(email.filter(|s| !s.is_empty()))
        .unwrap_or(sub)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity::new(UserClaims {
            sub: "abc123".into(),
            username: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: Some(true),
            name: Some("Alice Ädmin\r\nX-Evil: 1".into()),
            groups: vec!["admins".into(), "users".into()],
        })
    }

    #[test]
    fn header_lines_match_the_headers_and_cannot_be_split() {
        let id = alice();
        for style in [IdentityHeaders::Authentik, IdentityHeaders::Forwarded] {
            let mut map = HeaderMap::new();
            id.apply(&mut map, style);
            let text = std::str::from_utf8(id.header_lines(style)).unwrap();
            let lines: Vec<&str> = text.split_terminator("\r\n").collect();
            assert_eq!(lines.len(), map.len(), "{text}");
            for (name, value) in &map {
                let want = format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes()));
                assert!(lines.contains(&want.as_str()), "{want} missing from {text}");
            }
            // The name with CR LF in it stays on its line.
            assert!(!text.contains("\r\nX-Evil"), "{text}");
        }
        assert!(id.header_lines(IdentityHeaders::None).is_empty());
    }

    #[test]
    fn authentik_and_forwarded_styles() {
        let id = alice();
        let mut h = HeaderMap::new();
        id.apply(&mut h, IdentityHeaders::Authentik);
        assert_eq!(h["x-authentik-username"], "alice");
        assert_eq!(h["x-authentik-groups"], "admins|users");
        assert_eq!(h["x-authentik-email"], "alice@example.com");
        assert_eq!(h["x-authentik-uid"], "abc123");
        assert_eq!(
            h["x-authentik-name"].as_bytes(),
            "Alice ÄdminX-Evil: 1".as_bytes(),
            "control characters dropped, UTF-8 kept"
        );
        let mut f = HeaderMap::new();
        id.apply(&mut f, IdentityHeaders::Forwarded);
        assert_eq!(f["x-forwarded-user"], "alice");
        assert_eq!(f["x-forwarded-groups"], "admins,users");
        assert_eq!(f["x-forwarded-preferred-username"], "alice");
        assert_eq!(f["x-forwarded-email"], "alice@example.com");
        let mut n = HeaderMap::new();
        id.apply(&mut n, IdentityHeaders::None);
        assert!(n.is_empty());
    }

    #[test]
    fn unverified_email_is_not_used_for_policy() {
        let mut c = alice().claims;
        c.email_verified = Some(false);
        assert_eq!(Identity::new(c.clone()).policy_email(), None);
        c.email_verified = None;
        assert_eq!(Identity::new(c).policy_email(), Some("alice@example.com"));
    }

    #[test]
    fn username_fallbacks() {
        assert_eq!(username_of(Some("a"), Some("e@x"), "s"), "a");
        assert_eq!(username_of(Some(""), Some("e@x"), "s"), "e@x");
        assert_eq!(username_of(None, None, "s"), "s");
    }
}
