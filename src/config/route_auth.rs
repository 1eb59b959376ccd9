//! Validation of a route's single sign-on settings: `auth` (public, or a
//! provider plus group/email policy) and `identity_headers`, and whether
//! every protected route can receive its provider's session cookie.

use std::sync::Arc;

use toml::Spanned;

use super::cx::Cx;
use super::file::FileAuth;
use super::oidc_section::OidcSet;
use super::{HostPattern, RouteConfig};

/// Who may use a route.
#[derive(Debug, Clone, Default)]
pub enum RouteAuth {
    #[default]
    Public,
    /// Signed in through a provider, and allowed by the policy.
    Oidc(Arc<OidcPolicy>),
}

/// `auth = { oidc = "NAME", groups, emails, email_domains }` plus the
/// route's `identity_headers`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcPolicy {
    /// The provider's name.
    pub provider: String,
    /// Index of the provider in [`Config::oidc`](super::Config::oidc).
    pub provider_index: usize,
    /// Allowed if in any of these groups (exact, case-sensitive).
    pub groups: Vec<String>,
    /// Allowed if the email is one of these (lowercase).
    pub emails: Vec<String>,
    /// Allowed if the email's domain is one of these (lowercase, no `@`).
    pub email_domains: Vec<String>,
    pub identity_headers: IdentityHeaders,
}

impl OidcPolicy {
    /// True when any signed-in user of the provider is allowed.
    pub fn allows_everyone(&self) -> bool {
        self.groups.is_empty() && self.emails.is_empty() && self.email_domains.is_empty()
    }
}

/// Which identity headers a backend receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeaders {
    /// The Authentik proxy outpost's `X-authentik-*` headers.
    Authentik,
    /// oauth2-proxy's `X-Forwarded-User`, `-Email`, `-Preferred-Username`, `-Groups`.
    Forwarded,
    None,
}

impl Cx<'_> {
    /// A route's `auth` and `identity_headers`.
    pub(super) fn route_auth(
        &mut self,
        key: &str,
        auth: Option<Spanned<FileAuth>>,
        identity_headers: Option<Spanned<String>>,
        oidc: &OidcSet,
    ) -> Option<RouteAuth> {
        let ih_key = format!("{key}.identity_headers");
        let headers = match &identity_headers {
            None => None,
            Some(h) => match h.get_ref().as_str() {
                "authentik" => Some(IdentityHeaders::Authentik),
                "forwarded" => Some(IdentityHeaders::Forwarded),
                "none" => Some(IdentityHeaders::None),
                other => {
                    self.err(
                        Some(h.span()),
                        &ih_key,
                        format!("`{other}`: use \"authentik\", \"forwarded\" or \"none\""),
                    );
                    return None;
                }
            },
        };
        let auth_key = format!("{key}.auth");
        let Some(auth) = auth else {
            if let Some(h) = &identity_headers {
                self.err(
                    Some(h.span()),
                    &ih_key,
                    "identity headers need a signed-in user: set auth = { oidc = \"NAME\" }".into(),
                );
                return None;
            }
            return Some(RouteAuth::Public);
        };
        let span = auth.span();
        match auth.into_inner() {
            FileAuth::Scalar(k) if k == "public" => {
                if let Some(h) = &identity_headers {
                    self.err(
                        Some(h.span()),
                        &ih_key,
                        "identity headers need a signed-in user: this route is public".into(),
                    );
                    return None;
                }
                Some(RouteAuth::Public)
            }
            FileAuth::Scalar(other) => {
                self.err(
                    Some(span),
                    &auth_key,
                    format!("`{other}`: use \"public\" or {{ oidc = \"NAME\" }}"),
                );
                None
            }
            FileAuth::Table(t) => {
                let Some(index) = oidc.list.iter().position(|p| p.name == t.oidc) else {
                    if !oidc.broken.contains(&t.oidc) {
                        let known: Vec<&str> = oidc.list.iter().map(|p| p.name.as_str()).collect();
                        let msg = if known.is_empty() {
                            format!(
                                "unknown provider `{}`: there is no [oidc.{}] section",
                                t.oidc, t.oidc
                            )
                        } else {
                            format!(
                                "unknown provider `{}`; known providers: {}",
                                t.oidc,
                                known.join(", ")
                            )
                        };
                        self.err(Some(span), &auth_key, msg);
                    }
                    return None;
                };
                let mut bad = Vec::new();
                let groups = t.groups.unwrap_or_default();
                if groups.iter().any(|g| g.is_empty()) {
                    bad.push("an empty group name");
                }
                let emails: Vec<String> = t
                    .emails
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| e.trim().to_ascii_lowercase())
                    .collect();
                if emails
                    .iter()
                    .any(|e| e.len() < 3 || e.starts_with('@') || !e.contains('@'))
                {
                    bad.push("an entry in `emails` that is not an email address");
                }
                let email_domains: Vec<String> = t
                    .email_domains
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                    .collect();
                if email_domains
                    .iter()
                    .any(|d| !matches!(super::parse_host_pattern(d), Ok(HostPattern::Exact(_))))
                {
                    bad.push(
                        "an entry in `email_domains` that is not a domain (e.g. \"example.com\")",
                    );
                }
                if !bad.is_empty() {
                    for b in bad {
                        self.err(Some(span.clone()), &auth_key, b.to_string());
                    }
                    return None;
                }
                Some(RouteAuth::Oidc(Arc::new(OidcPolicy {
                    provider: t.oidc,
                    provider_index: index,
                    groups,
                    emails,
                    email_domains,
                    identity_headers: headers.unwrap_or(IdentityHeaders::Authentik),
                })))
            }
        }
    }

    /// A protected route's host must be inside its provider's
    /// `cookie_domain`, or the browser never sends the cookie back there
    /// (a login loop).
    pub(super) fn check_oidc_routes(&mut self, routes: &[RouteConfig], oidc: &OidcSet) {
        for r in routes {
            let RouteAuth::Oidc(p) = &r.auth else {
                continue;
            };
            let Some(provider) = oidc.list.get(p.provider_index) else {
                continue;
            };
            let Some(domain) = &provider.cookie_domain else {
                continue;
            };
            let inside = |h: &str| h == domain || h.ends_with(&format!(".{domain}"));
            let ok = match &r.host {
                HostPattern::Exact(h) | HostPattern::Wildcard(h) => inside(h),
                HostPattern::Any => false,
            };
            if !ok {
                self.err_route(
                    r,
                    "route.auth",
                    format!(
                        "host `{}` is outside cookie_domain `{domain}` of [oidc.{}]: the session cookie would never reach it",
                        r.host, provider.name
                    ),
                );
            }
        }
    }
}
